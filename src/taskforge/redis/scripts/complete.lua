-- complete: record the results of a batch of jobs that ran to the end (active -> completed).
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 retention ms, 5 count n,
--       then 3 per job: id, token, result JSON ('' = None, nothing stored),
--       then optionally: worker id, its free slots, park_ms: if that worker is parked on this
--       queue, its parking is renewed with that capacity (slots freed by these jobs), so an idle
--       worker keeps receiving jobs directly without fetching to park again.
-- Returns: {now, ok_1, ..., ok_n}; ok is 1 (also for a resend of a completion that already
--   landed), or 0 when the token no longer matches or the job is
--   not active (the lease expired and the job went to another worker): that result is dropped.
local base, channel, queue = ARGV[1], ARGV[2], ARGV[3]
local ttl, n = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local out = {now}
local done = 0
for i = 0, n - 1 do
  local o = 6 + i * 3
  local id, token, result = ARGV[o], ARGV[o + 1], ARGV[o + 2]
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'token', 'key', 'waiters', 'task', 'status')
  -- ZREM doubles as the "is it still active" check.
  if f[1] == token and f[5] == 'completed' then
    out[#out + 1] = 1  -- this very completion, resent after its reply was lost
  elseif f[1] ~= token or redis.call('ZREM', K_ACTIVE, id) == 0 then
    out[#out + 1] = 0
  else
    if result ~= '' then
      redis.call('HSET', jk, 'status', 'completed', 'finished', now, 'result', result)
    else
      redis.call('HSET', jk, 'status', 'completed', 'finished', now)
    end
    retain(base, jk, f[2], ttl)
    redis.call('ZADD', K_COMPLETED, now, id)
    notify_waiters(base, id, f[3])
    publish(channel, 'completed', id, queue, f[4], now)
    done = done + 1
    out[#out + 1] = 1
  end
end
if done > 0 then
  redis.call('HINCRBY', K_STATS, 'completed', done)
  redis.call('ZREMRANGEBYSCORE', K_COMPLETED, '-inf', now - ttl)
end
local worker = ARGV[6 + n * 3]
local parking = worker and redis.call('HGET', K_PARKED, worker)
if parking then
  local lease_ms = string.match(parking, '^%d+ (%d+) ')
  park(worker, tonumber(ARGV[7 + n * 3]), lease_ms, now + tonumber(ARGV[8 + n * 3]))
end
return out
