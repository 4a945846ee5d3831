-- fetch: promote due jobs, then take up to `count` ready jobs and lease them to a worker.
-- Taking a job and writing its lease are one atomic step: no crash can fall between them.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 count, 5 lease_ms, 6 worker id, 7 promote limit,
--       8 isolate after (a job redelivered this many times is leased alone; 0 = never),
--       9 ahead_ms: slots left over may also lease scheduled jobs due within this many ms (0 =
--         none). The worker holds such a job and starts it at its due time on its own clock, so
--         a delayed job starts on time instead of one timer, a promotion and a fetch late.
--       10 park_free: the worker's free slots before this fetch (0 = do not park). A fetch that
--         leaves ready empty and slots free parks the worker with the slots left (see park in
--         _prelude.lua); any other fetch unparks it.
--       11 park_ms: how long a parking lasts unless renewed.
-- Returns: {now, n, isolated, now_us (microseconds past now), parked (the capacity parked with,
--   0 = not parked), then 11 fields per job: id, task,
--   payload, attempt, max_attempts, timeout_ms, token, created, redeliveries, priority, due
--   ('0' for a ready job, else its due time in ms as Redis wrote the score)}. A paused queue
--   returns {now, 0, 0, now_us, 0}.
--   The token grows with every delivery; extend/complete/fail must present it (fencing).
--   isolated = 1: the one job returned crashed its workers before and must run by itself, so
--   that a poison job cannot take innocent batch-mates down with it again and again.
local base, channel, queue = ARGV[1], ARGV[2], ARGV[3]
local count, lease_ms, worker = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local isolate_after = tonumber(ARGV[8] or 0)
local ahead_ms = tonumber(ARGV[9] or 0)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_us = tonumber(clock[2]) % 1000
if redis.call('HGET', K_META, 'paused') == '1' then
  return {now, 0, 0, now_us, 0}
end
promote_due(base, now, tonumber(ARGV[7]))
local popped = redis.call('ZPOPMIN', K_READY, count)
local out = {now, 0, 0, now_us, 0}
local taken = 0
local deadline = now + lease_ms
local put_back_from = nil

-- due: '0' for a ready job, else the due time it is leased ahead of (and will start at).
local function lease(id, jk, f, due)
  local attempt = tonumber(f[8] or 0) + 1
  local token = tonumber(f[9] or 0) + 1
  local started = now
  if due ~= '0' then
    started = due
  end
  redis.call('HSET', jk, 'status', 'active', 'started', started, 'worker', worker,
    'attempt', attempt, 'token', token)
  redis.call('ZADD', K_ACTIVE, deadline, id)
  publish(channel, 'started', id, queue, f[1], now)
  taken = taken + 1
  local o = #out
  out[o + 1] = id
  out[o + 2] = f[1]
  out[o + 3] = f[2]
  out[o + 4] = attempt
  out[o + 5] = f[3]
  out[o + 6] = f[4]
  out[o + 7] = token
  out[o + 8] = f[5]
  out[o + 9] = f[6] or 0
  out[o + 10] = f[7]
  out[o + 11] = due
end
for i = 1, #popped, 2 do
  local id = popped[i]
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'task', 'payload', 'max_attempts', 'timeout', 'created',
    'redeliveries', 'priority', 'attempt', 'token')
  local suspect = f[1] and isolate_after > 0 and tonumber(f[6] or 0) >= isolate_after
  if suspect and taken > 0 then
    put_back_from = i  -- it will come first in a fetch of its own
    break
  end
  if f[1] then
    lease(id, jk, f, '0')
    if suspect then
      out[3] = 1
      put_back_from = i + 2
      break
    end
  end
end
if put_back_from then
  for j = put_back_from, #popped, 2 do
    redis.call('ZADD', K_READY, popped[j + 1], popped[j])
  end
end
-- Scheduled jobs due within ahead_ms, earliest first, while slots are left. A job that crashed
-- workers before is left to be promoted and fetched on its own terms (isolation above).
if ahead_ms > 0 and taken < count and out[3] == 0 and not put_back_from then
  local soon = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now + ahead_ms, 'WITHSCORES',
    'LIMIT', 0, count - taken)
  for i = 1, #soon, 2 do
    local id = soon[i]
    local jk = base .. 'job:' .. id
    local f = redis.call('HMGET', jk, 'task', 'payload', 'max_attempts', 'timeout', 'created',
      'redeliveries', 'priority', 'attempt', 'token')
    if f[1] and isolate_after > 0 and tonumber(f[6] or 0) >= isolate_after then
      break
    end
    redis.call('ZREM', K_SCHEDULED, id)
    if f[1] then
      lease(id, jk, f, soon[i + 1])
    end
  end
end
out[2] = taken
local park_free = tonumber(ARGV[10] or 0)
if park_free > 0 then
  local room = park_free - taken
  if taken < count and out[3] == 0 and not put_back_from and room > 0
      and redis.call('ZCARD', K_READY) == 0 then
    park(worker, room, lease_ms, now + tonumber(ARGV[11]))
    out[5] = room
  else
    unpark(worker)
  end
end
rearm()
return out
