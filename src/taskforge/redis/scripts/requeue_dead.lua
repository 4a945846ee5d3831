-- requeue_dead: give dead-lettered jobs a fresh start (dead -> ready, attempts reset).
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel, 3 queue, 4 limit, 5 task filter ('' = any),
--       then the ids to requeue; no ids = the oldest `limit` dead jobs.
-- Returns: {now, requeued}.
local base, channel, queue = ARGV[1], ARGV[2], ARGV[3]
local limit, task_filter = tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local ids = {}
if #ARGV > 5 then
  for i = 6, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
else
  ids = redis.call('ZRANGE', K_DEAD, 0, limit - 1)
end
local requeued = 0
for i = 1, #ids do
  local id = ids[i]
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'priority', 'seq', 'key', 'task', 'status')
  if f[1] and f[5] == 'dead' and (task_filter == '' or task_filter == f[4]) then
    redis.call('ZREM', K_DEAD, id)
    redis.call('PERSIST', jk)
    redis.call('HDEL', jk, 'finished', 'started', 'worker', 'cancel', 'result')
    redis.call('HSET', jk, 'status', 'queued', 'attempt', 0, 'redeliveries', 0, 'due', now)
    if f[3] then
      redis.call('SET', base .. 'key:' .. f[3], id)
    end
    redis.call('ZADD', K_READY, ready_score(f[1], f[2]), id)
    publish(channel, 'requeued', id, queue, f[4], now)
    requeued = requeued + 1
  end
end
if requeued > 0 then
  redis.call('HINCRBY', K_STATS, 'requeued', requeued)
end
rearm()
return {now, requeued}
