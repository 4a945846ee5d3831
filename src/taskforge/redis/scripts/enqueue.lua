-- enqueue: create one job or a batch, each in ready (due now) or scheduled (due later).
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 channel ('' = no events), 3 queue, 4 job count n,
--       then 9 per job: id, task, payload, priority, max_attempts, timeout_ms (0 = none),
--       delay_ms (0 = none), at_ms (absolute due time, 0 = none), idempotency key ('' = none).
-- A job due now goes to a parked worker when there is one (see park in _prelude.lua): leased to
--   it (status active, attempt 1) and put in its inbox, instead of into ready.
-- Returns: {now, id_1, created_1, status_1, ...}; created is 1 for a new job, 0 when the id or the
--   idempotency key already names a live or retained job (then id and status are that job's).
--   An enqueue retried after a lost reply finds its own id and creates nothing twice.
-- Created jobs are also counted per task in the metrics hash (base .. 'metrics', field
--   'enqueued|<task>'); workers add the rest of the per-task metrics (worker/metrics.py).
local base, channel, queue, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local out = {now}
local woke_ready = false
local per_task = {}  -- jobs created per task name, for the per-task metrics hash
local created = 0
local paused = nil  -- read once, when the first job due now needs it
local handing = false
-- One counter step for the whole batch: job i of the call gets seq_base + i + 1.
local seq_base = redis.call('HINCRBY', K_META, 'seq', n) - n
local ready_adds = {}  -- score, id pairs, added to ready in a few variadic ZADDs at the end
for i = 0, n - 1 do
  local o = 5 + i * 9
  local id, task, payload, priority = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local max_attempts, timeout_ms = ARGV[o + 4], ARGV[o + 5]
  local delay_ms, at_ms, key = tonumber(ARGV[o + 6]), tonumber(ARGV[o + 7]), ARGV[o + 8]
  local jk = base .. 'job:' .. id
  local existing = nil
  if key ~= '' then
    local other = redis.call('GET', base .. 'key:' .. key)
    if other and redis.call('EXISTS', base .. 'job:' .. other) == 1 then
      existing = other
    end
  end
  if not existing and redis.call('EXISTS', jk) == 1 then
    existing = id
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
    out[#out + 1] = redis.call('HGET', base .. 'job:' .. existing, 'status')
  else
    local seq = seq_base + i + 1
    local due = 0
    if at_ms > 0 then
      due = at_ms
    elseif delay_ms > 0 then
      due = now + delay_ms
    end
    local status
    local worker = nil  -- the parked worker the job is handed to, if any
    if due > now then
      status = 'scheduled'
      redis.call('ZADD', K_SCHEDULED, due, id)
      redis.call('ZADD', K_WAKE, 'LT', due, 'd')
    else
      due = now
      if paused == nil then
        paused = redis.call('HGET', K_META, 'paused') == '1'
        -- Jobs already waiting come first: hand off only past an empty ready set.
        handing = not paused and redis.call('ZCARD', K_READY) == 0
      end
      local lease_ms = nil
      if handing and not woke_ready then
        worker, lease_ms = take_parked(now)
      end
      if worker then
        status = 'active'
        redis.call('ZADD', K_ACTIVE, now + lease_ms, id)
        -- Scored like ready, so the worker pops a batch in priority and FIFO order.
        redis.call('ZADD', base .. 'inbox:' .. worker, ready_score(priority, seq),
          inbox_entry(id, task, max_attempts, timeout_ms, now, priority, payload))
      else
        status = 'queued'
        ready_adds[#ready_adds + 1] = ready_score(priority, seq)
        ready_adds[#ready_adds + 1] = id
        woke_ready = true
      end
    end
    local attempt, token = 0, 0
    if status == 'active' then
      attempt, token = 1, 1
    end
    redis.call('HSET', jk, 'v', 1, 'task', task, 'payload', payload, 'priority', priority,
      'seq', seq, 'status', status, 'attempt', attempt, 'max_attempts', max_attempts,
      'timeout', timeout_ms, 'created', now, 'due', due, 'token', token)
    if status == 'active' then
      redis.call('HSET', jk, 'started', now, 'worker', worker)
    end
    if key ~= '' then
      redis.call('HSET', jk, 'key', key)
      redis.call('SET', base .. 'key:' .. key, id)
    end
    publish(channel, 'enqueued', id, queue, task, now)
    if status == 'active' then
      publish(channel, 'started', id, queue, task, now)
    end
    per_task[task] = (per_task[task] or 0) + 1
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 1
    out[#out + 1] = status
  end
end
-- unpack() passes at most a few thousand values at once: 500 jobs per ZADD.
for from = 1, #ready_adds, 1000 do
  redis.call('ZADD', K_READY, unpack(ready_adds, from, math.min(from + 999, #ready_adds)))
end
if woke_ready and not paused then
  redis.call('ZADD', K_WAKE, 0, 'r')
end
if created > 0 then
  redis.call('HINCRBY', K_STATS, 'enqueued', created)
end
for task, count in pairs(per_task) do
  redis.call('HINCRBY', base .. 'metrics', 'enqueued|' .. task, count)
end
return out
