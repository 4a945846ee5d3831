-- park: an idle worker renews its parking on a queue, or leaves it (see park in _prelude.lua).
-- Leaving hands back every job still in its inbox (to ready, at its place; never started).
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 worker id, 5 capacity (0 = leave), 6 lease_ms,
--       7 park_ms (how long the parking lasts unless renewed).
-- Returns: {now, parked capacity (0 = not parked), jobs handed back}.
--   Renewing while the queue has ready jobs does not park: the worker's waiter will see `r`.
local base, worker = ARGV[1], ARGV[4]
local capacity = tonumber(ARGV[5])
local now = now_ms()
if capacity > 0 and redis.call('ZCARD', K_READY) == 0
    and redis.call('HGET', K_META, 'paused') ~= '1' then
  park(worker, capacity, tonumber(ARGV[6]), now + tonumber(ARGV[7]))
  return {now, capacity, 0}
end
unpark(worker)
local returned = return_inbox(base, worker)
if returned > 0 then
  rearm()
end
return {now, 0, returned}
