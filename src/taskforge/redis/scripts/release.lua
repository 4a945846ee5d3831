-- release: a worker shutting down hands back jobs it leased but will not finish
-- (active -> ready, at their old position; or back to scheduled, for a job leased ahead of a due
-- time still to come). Not a failed attempt and not a crash.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 count n, then 2 per job: id, token.
-- Returns: {now, released}.
local base, channel, queue, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local released = 0
for i = 0, n - 1 do
  local id, token = ARGV[5 + i * 2], ARGV[6 + i * 2]
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'token', 'priority', 'seq', 'attempt', 'task', 'due')
  if f[1] == token and redis.call('ZREM', K_ACTIVE, id) == 1 then
    if tonumber(f[4]) > 0 then
      redis.call('HINCRBY', jk, 'attempt', -1)
    end
    local due = tonumber(f[6] or 0)
    if due and due > now then
      redis.call('HSET', jk, 'status', 'scheduled')
      redis.call('ZADD', K_SCHEDULED, due, id)
    else
      redis.call('HSET', jk, 'status', 'queued')
      redis.call('ZADD', K_READY, ready_score(f[2], f[3]), id)
    end
    publish(channel, 'released', id, queue, f[5], now)
    released = released + 1
  end
end
rearm()
return {now, released}
