-- watch: read a job's outcome, or register as a waiter to be woken when it reaches a final state.
-- The waiter then blocks on BLPOP of base .. 'done:' .. id (pushed by notify_waiters).
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 id, 3 register (1 = become a waiter if not final).
-- Returns: {-1} no such job; {1, status, result, error} final; {0, status} still running.
local base, id = ARGV[1], ARGV[2]
local jk = base .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'result', 'error')
if not f[1] then
  return {-1}
end
local s = f[1]
if s == 'completed' or s == 'dead' or s == 'canceled' then
  return {1, s, f[2] or '', f[3] or ''}
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', jk, 'waiters', 1)
end
return {0, s}
