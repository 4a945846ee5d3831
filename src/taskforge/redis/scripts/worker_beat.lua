-- worker_beat: register or refresh a live worker, or remove it on shutdown. Touches only the
-- global keys (hash tag {-}), never queue keys.
-- KEYS: 1 workers registry ZSET, 2 this worker's info HASH.
-- ARGV: 1 worker id, 2 ttl ms (0 = remove), then field/value pairs of worker info.
-- Returns: now (ms, Redis clock).
local now = now_ms()
local ttl = tonumber(ARGV[2])
if ttl == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return now
end
if #ARGV > 2 then
  local fields = {}
  for i = 3, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[2], 'beat', now, unpack(fields))
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
return now
