-- progress: a running job reports progress (any JSON), fenced by its lease token.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 id, 5 token, 6 progress JSON.
-- Returns: 1 stored, 0 stale token.
local base, channel, queue, id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = base .. 'job:' .. id
local f = redis.call('HMGET', jk, 'token', 'task')
if f[1] ~= token then
  return 0
end
redis.call('HSET', jk, 'progress', ARGV[6])
publish(channel, 'progress', id, queue, f[2], now_ms())
return 1
