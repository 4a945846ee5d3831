-- extend: renew the leases of jobs a worker is running (heartbeat), and tell it which of them
-- it lost (lease expired and recovered elsewhere) and which were asked to cancel.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 lease ms, 3 count n, then 2 per job: id, token.
-- Returns: {now, {lost ids}, {ids with a cancel request}}.
local base, lease_ms, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local lost, cancel = {}, {}
for i = 0, n - 1 do
  local id, token = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'token', 'cancel')
  if f[1] ~= token or not redis.call('ZSCORE', K_ACTIVE, id) then
    lost[#lost + 1] = id
  else
    redis.call('ZADD', K_ACTIVE, 'XX', now + lease_ms, id)
    if f[2] == '1' then
      cancel[#cancel + 1] = id
    end
  end
end
return {now, lost, cancel}
