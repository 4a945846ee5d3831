-- promote: move scheduled jobs whose due time has passed to ready, and re-arm wake-up markers.
-- Called by a worker when the due time it waited for arrives.
-- KEYS: the queue's standard vector (see _prelude.lua).
-- ARGV: 1 base, 2 limit.
-- Returns: {now, promoted}.
local now = now_ms()
local promoted = promote_due(ARGV[1], now, tonumber(ARGV[2]))
rearm()
return {now, promoted}
