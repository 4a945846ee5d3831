-- pause: stop (1) or resume (0) handing out the queue's jobs. Enqueueing continues while paused.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 paused flag (1 or 0).
-- Returns: the flag.
redis.call('HSET', K_META, 'paused', ARGV[1])
if ARGV[1] == '0' then
  rearm()
end
return tonumber(ARGV[1])
