-- fail: a run ended with an error. Retry later (active -> scheduled, status 'retrying'), or
-- dead-letter (active -> dead) when attempts are used up or the error is final. A job whose
-- cancellation was requested while it ran ends 'canceled' instead.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 id, 5 token, 6 error JSON,
--       7 retry delay ms (-1 = final, no retry), 8 dead retention ms, 9 canceled retention ms.
-- Returns: {now, outcome}: 0 stale token or not active (dropped), 1 retrying, 2 dead, 3 canceled.
local base, channel, queue, id, token, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local delay, dead_ttl, cancel_ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
local jk = base .. 'job:' .. id
local f = redis.call('HMGET', jk, 'token', 'attempt', 'max_attempts', 'cancel', 'key', 'waiters',
  'task')
if f[1] ~= token or redis.call('ZREM', K_ACTIVE, id) == 0 then
  return {now, 0}
end
redis.call('HINCRBY', K_STATS, 'failed', 1)
if f[4] == '1' then
  redis.call('HSET', jk, 'status', 'canceled', 'finished', now, 'error', err)
  retain(base, jk, f[5], cancel_ttl)
  redis.call('HINCRBY', K_STATS, 'canceled', 1)
  notify_waiters(base, id, f[6])
  publish(channel, 'canceled', id, queue, f[7], now)
  return {now, 3}
end
if delay >= 0 and tonumber(f[2]) < tonumber(f[3]) then
  local due = now + delay
  redis.call('HSET', jk, 'status', 'retrying', 'error', err, 'due', due)
  redis.call('ZADD', K_SCHEDULED, due, id)
  redis.call('ZADD', K_WAKE, 'LT', due, 'd')
  redis.call('HINCRBY', K_STATS, 'retried', 1)
  publish(channel, 'retrying', id, queue, f[7], now)
  return {now, 1}
end
redis.call('HSET', jk, 'status', 'dead', 'finished', now, 'error', err)
retain(base, jk, f[5], dead_ttl)
redis.call('ZADD', K_DEAD, now, id)
redis.call('HINCRBY', K_STATS, 'dead', 1)
notify_waiters(base, id, f[6])
publish(channel, 'dead', id, queue, f[7], now)
return {now, 2}
