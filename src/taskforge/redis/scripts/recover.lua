-- recover: return jobs whose lease expired (their worker died or hung) to the queue. A crash is a
-- redelivery, not a failed attempt; a job redelivered more than max_redeliveries times is
-- dead-lettered as poison. Also promotes due jobs, trims retention indexes and re-arms the
-- wake-up markers, so lost markers are rebuilt. Run on a schedule by every live worker.
-- Jobs handed to a parked worker that never popped them from its inbox (its parking expired, or
-- their lease did) go back to ready uncounted: they never started.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 max redeliveries, 5 limit, 6 dead retention ms,
--       7 completed retention ms.
-- Returns: {now, recovered, dead_lettered, promoted, returned (unpopped inbox jobs handed back)}.
-- Poison dead-letters and cancellations here are counted per task in the metrics hash
--   (base .. 'metrics'), since no worker reports them (worker/metrics.py counts the others).
local base, channel, queue = ARGV[1], ARGV[2], ARGV[3]
local max_redeliveries, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local dead_ttl, completed_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local recovered, buried, returned = 0, 0, 0
local parked = redis.call('HGETALL', K_PARKED)
for i = 1, #parked, 2 do
  local expires = tonumber(string.match(parked[i + 1], '(%d+)$') or 0)
  if expires <= now then
    redis.call('HDEL', K_PARKED, parked[i])
    returned = returned + return_inbox(base, parked[i])
  end
end

-- The lease of `id` expired while it sat unpopped in its holder's inbox: hand it back (1), or 0.
local function unpopped(id, jk)
  local holder = redis.call('HGET', jk, 'worker')
  if not holder then
    return 0
  end
  -- An inbox holds at most its worker's free slots: a scan is cheap, and rare.
  local ik = base .. 'inbox:' .. holder
  local prefix = id .. '\n'
  for _, entry in ipairs(redis.call('ZRANGE', ik, 0, -1)) do
    if string.sub(entry, 1, #prefix) == prefix then
      redis.call('ZREM', ik, entry)
      return unhand(base, id, holder)
    end
  end
  return 0
end

local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now, 'LIMIT', 0, limit)
for i = 1, #expired do
  local id = expired[i]
  local jk = base .. 'job:' .. id
  local handed_back = unpopped(id, jk)
  returned = returned + handed_back
  if handed_back == 0 then
    redis.call('ZREM', K_ACTIVE, id)
    local f = redis.call('HMGET', jk, 'priority', 'seq', 'attempt', 'key', 'waiters', 'task',
      'cancel')
    if f[1] then
      local redeliveries = redis.call('HINCRBY', jk, 'redeliveries', 1)
      if tonumber(f[3]) > 0 then
        redis.call('HINCRBY', jk, 'attempt', -1)
      end
      if f[7] == '1' then
        redis.call('HSET', jk, 'status', 'canceled', 'finished', now)
        retain(base, jk, f[4], completed_ttl)
        redis.call('HINCRBY', K_STATS, 'canceled', 1)
        redis.call('HINCRBY', base .. 'metrics', 'canceled|' .. (f[6] or ''), 1)
        notify_waiters(base, id, f[5])
        publish(channel, 'canceled', id, queue, f[6], now)
      elseif redeliveries > max_redeliveries then
        redis.call('HSET', jk, 'status', 'dead', 'finished', now, 'error',
          '{"type":"WorkerLost","message":"the worker running this job was lost ' .. redeliveries ..
          ' times (lease expired); dead-lettered as a poison job","traceback":""}')
        retain(base, jk, f[4], dead_ttl)
        redis.call('ZADD', K_DEAD, now, id)
        redis.call('HINCRBY', K_STATS, 'dead', 1)
        redis.call('HINCRBY', base .. 'metrics', 'dead|' .. (f[6] or ''), 1)
        notify_waiters(base, id, f[5])
        publish(channel, 'dead', id, queue, f[6], now)
        buried = buried + 1
      else
        redis.call('HSET', jk, 'status', 'queued')
        redis.call('ZADD', K_READY, ready_score(f[1], f[2]), id)
        publish(channel, 'redelivered', id, queue, f[6], now)
        recovered = recovered + 1
      end
    end
  end
end
if recovered > 0 then
  redis.call('HINCRBY', K_STATS, 'redelivered', recovered)
end
local promoted = promote_due(base, now, limit)
redis.call('ZREMRANGEBYSCORE', K_COMPLETED, '-inf', now - completed_ttl)
redis.call('ZREMRANGEBYSCORE', K_DEAD, '-inf', now - dead_ttl)
rearm()
return {now, recovered, buried, promoted, returned}
