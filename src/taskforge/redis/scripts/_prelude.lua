-- Shared helpers, prepended to every script when it is loaded (scripts.py). Not a script itself.
--
-- Every queue script receives the same KEYS vector, all carrying the queue's hash tag:
--   KEYS[1] ready      ZSET id -> priority/sequence score (lowest runs first)
--   KEYS[2] scheduled  ZSET id -> due time, ms on the Redis clock (delayed jobs and retries)
--   KEYS[3] active     ZSET id -> lease deadline, ms on the Redis clock
--   KEYS[4] dead       ZSET id -> time of death, ms
--   KEYS[5] completed  ZSET id -> finish time, ms (trimmed to the retention window)
--   KEYS[6] wake       ZSET of wake-up markers: 'r' (score 0) = ready work, 'd' = next due time
--   KEYS[7] meta       HASH: seq (FIFO counter), paused
--   KEYS[8] stats      HASH: event counters
--   KEYS[9] migration guard (never written; see keys.py)
--   KEYS[10] parked    HASH worker id -> "capacity lease_ms expires_ms": idle workers blocked on
--                      their inbox for this queue, to which enqueue hands new jobs directly
-- Job records live at ARGV base .. 'job:' .. id, and a parked worker's inbox (ZSET of entries,
-- see inbox_entry) at base .. 'inbox:' .. worker id, in the same hash slot as KEYS.
local K_READY, K_SCHEDULED, K_ACTIVE, K_DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_COMPLETED, K_WAKE, K_META, K_STATS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_PARKED = KEYS[10]

-- 2^40: room for a trillion jobs per priority level; (1000 - priority) keeps scores below 2^53.
local SEQ_SPAN = 1099511627776

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ready_score(priority, seq)
  return (1000 - tonumber(priority)) * SEQ_SPAN + tonumber(seq)
end

-- Names and ids are validated by the client to hold no quotes or backslashes.
local function publish(channel, event, id, queue, task, now)
  if channel ~= '' then
    redis.call('PUBLISH', channel, '{"event":"' .. event .. '","id":"' .. id .. '","queue":"' ..
      queue .. '","task":"' .. (task or '') .. '","ts":' .. now .. '}')
  end
end

-- Re-derive the wake-up markers from the sets, so a marker lost with a crashed worker comes back.
local function rearm()
  if redis.call('ZCARD', K_READY) > 0 and redis.call('HGET', K_META, 'paused') ~= '1' then
    redis.call('ZADD', K_WAKE, 0, 'r')
  end
  local nxt = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
  if nxt[2] then
    redis.call('ZADD', K_WAKE, 'LT', nxt[2], 'd')
  end
end

-- Move due scheduled jobs to ready, keeping their original priority and FIFO position.
local function promote_due(base, now, limit)
  local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now, 'LIMIT', 0, limit)
  for i = 1, #due do
    local id = due[i]
    local jk = base .. 'job:' .. id
    local f = redis.call('HMGET', jk, 'priority', 'seq')
    redis.call('ZREM', K_SCHEDULED, id)
    if f[1] then
      redis.call('ZADD', K_READY, ready_score(f[1], f[2]), id)
      redis.call('HSET', jk, 'status', 'queued')
    end
  end
  return #due
end

-- Wake every result() waiter of a job that reached a final state.
local function notify_waiters(base, id, waiters)
  local w = tonumber(waiters)
  if w and w > 0 then
    local dk = base .. 'done:' .. id
    for _ = 1, math.min(w, 1000) do
      redis.call('RPUSH', dk, '1')
    end
    redis.call('PEXPIRE', dk, 60000)
    redis.call('HDEL', base .. 'job:' .. id, 'waiters')
  end
end

-- A final job keeps its record (and idempotency key) for the retention window only.
local function retain(base, jk, key, ttl_ms)
  redis.call('PEXPIRE', jk, ttl_ms)
  if key and key ~= '' then
    redis.call('PEXPIRE', base .. 'key:' .. key, ttl_ms)
  end
end

-- Parking: an idle worker registers how many jobs it can take at once; enqueue then leases new
-- jobs to it and puts them in its inbox, which it blocks on (one hop instead of a wake-up marker
-- and a fetch). A parking expires unless the worker renews it, so a dead worker stops receiving.
-- Capacity 0 means parked but full: complete tops it up again as the worker's slots free.
local function park(worker, capacity, lease_ms, expires)
  redis.call('HSET', K_PARKED, worker, capacity .. ' ' .. lease_ms .. ' ' .. expires)
end

local function unpark(worker)
  redis.call('HDEL', K_PARKED, worker)
end

-- A parked worker with room for one more job, which it is then charged for; nil, nil if none
-- among a random sample. Expired parkings met on the way are dropped (recover returns their
-- inboxes).
local function take_parked(now)
  local sample = redis.call('HRANDFIELD', K_PARKED, 8, 'WITHVALUES')
  for i = 1, #sample, 2 do
    local worker = sample[i]
    local cap, lease_ms, expires = string.match(sample[i + 1], '^(%d+) (%d+) (%d+)$')
    if not cap or tonumber(expires) <= now then
      unpark(worker)
    elseif tonumber(cap) > 0 then
      park(worker, tonumber(cap) - 1, lease_ms, expires)
      return worker, tonumber(lease_ms)
    end
  end
  return nil, nil
end

-- An inbox entry: the fields a worker needs to run a fresh job, newline-separated, the payload
-- last (ids, task names and numbers hold no newline). attempt and token are 1, redeliveries 0.
local function inbox_entry(id, task, max_attempts, timeout_ms, created, priority, payload)
  return id .. '\n' .. task .. '\n' .. max_attempts .. '\n' .. timeout_ms .. '\n' .. created ..
    '\n' .. priority .. '\n' .. payload
end

-- A job handed to `worker` but never popped from its inbox goes back to ready at its place:
-- it never started, so neither its attempt nor a redelivery counts. Returns 1 if it went back.
local function unhand(base, id, worker)
  local jk = base .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'worker', 'status', 'priority', 'seq')
  if f[1] == worker and f[2] == 'active' and redis.call('ZREM', K_ACTIVE, id) == 1 then
    redis.call('HSET', jk, 'status', 'queued', 'attempt', 0)
    redis.call('HDEL', jk, 'started', 'worker')
    redis.call('ZADD', K_READY, ready_score(f[3], f[4]), id)
    return 1
  end
  return 0
end

-- Everything still in a worker's inbox goes back to ready. Returns how many jobs went back.
local function return_inbox(base, worker)
  local ik = base .. 'inbox:' .. worker
  local entries = redis.call('ZRANGE', ik, 0, -1)
  local n = 0
  for i = 1, #entries do
    n = n + unhand(base, string.match(entries[i], '^[^\n]+'), worker)
  end
  redis.call('DEL', ik)
  return n
end
