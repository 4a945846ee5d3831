"""Looking at a test server from the outside: key snapshots and command counts."""

from __future__ import annotations

from typing import Any

import redis

__all__ = ["CommandCounts", "snapshot"]


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and value: compare two snapshots to prove nothing was written."""
    out: dict[bytes, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        if kind == b"string":
            value: Any = client.get(key)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = sorted(client.smembers(key))
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        else:
            value = kind
        out[key] = (kind, value)
    return out


class CommandCounts:
    """Commands the server executed since ``reset()``, from INFO commandstats (whole server:
    use it only while nothing else talks to the test's server)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def reset(self) -> None:
        self.client.config_resetstat()

    def read(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        counts = {}
        for name, values in stats.items():
            command = name.removeprefix("cmdstat_")
            if command in ("info", "config|resetstat", "config"):
                continue  # our own probes
            counts[command] = int(values["calls"])
        return counts
