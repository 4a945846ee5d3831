"""The Redis backend: key layout, Lua scripts, connections and the operations on them."""
