-- purge: delete jobs in one state (queued, scheduled, retrying, dead, completed), records
-- included. Scheduled and retrying jobs share one set and are told apart by their status.
-- Active jobs are never purged: cancel them instead.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 state, 3 limit, then optional ids (only those; else the oldest `limit`).
-- Returns: {now, deleted}.
local base, state, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sets = {queued = K_READY, scheduled = K_SCHEDULED, retrying = K_SCHEDULED, dead = K_DEAD,
  completed = K_COMPLETED}
local set = sets[state]
if not set then
  return redis.error_reply('ERR unknown state ' .. state)
end
local shared = set == K_SCHEDULED
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
elseif shared then
  ids = redis.call('ZRANGE', set, 0, -1)  -- filtered by status below
else
  ids = redis.call('ZRANGE', set, 0, limit - 1)
end
local deleted = 0
for i = 1, #ids do
  local id = ids[i]
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'key', 'status')
  local wanted = not shared or f[2] == state or not f[2]
  if deleted < limit and wanted and redis.call('ZREM', set, id) == 1 then
    local key = f[1]
    if key then
      redis.call('DEL', base .. 'key:' .. key)
    end
    redis.call('DEL', jk)
    deleted = deleted + 1
  end
end
return {now_ms(), deleted}
