-- cancel: remove a queued, scheduled or retrying job (-> canceled), or ask a running one to stop
-- (its worker sees the request at its next heartbeat and ends the job canceled).
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 id, 5 retention ms.
-- Returns: {outcome, status}: outcome 1 canceled now, 2 cancel requested (job is running),
--   0 already final (status says which), -1 no such job.
local base, channel, queue, id, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local jk = base .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'key', 'waiters', 'task')
if not f[1] then
  return {-1, ''}
end
local status = f[1]
if status == 'active' then
  redis.call('HSET', jk, 'cancel', 1)
  return {2, status}
end
local removed = redis.call('ZREM', K_READY, id) + redis.call('ZREM', K_SCHEDULED, id)
if removed == 0 then
  return {0, status}
end
local now = now_ms()
redis.call('HSET', jk, 'status', 'canceled', 'finished', now)
retain(base, jk, f[2], ttl)
redis.call('HINCRBY', K_STATS, 'canceled', 1)
redis.call('HINCRBY', base .. 'metrics', 'canceled|' .. (f[4] or ''), 1)  -- no worker sees this
notify_waiters(base, id, f[3])
publish(channel, 'canceled', id, queue, f[4], now)
return {1, 'canceled'}
