"""Looking at a test server from the outside: key snapshots, command counts, round trips."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

__all__ = ["CommandCounts", "count_round_trips", "snapshot"]


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


@contextmanager
def count_round_trips(client: redis.Redis) -> Iterator[list[int]]:
    """Count requests a redis-py client writes to its sockets (a pipeline is one write).

    Hooks ``send_packed_command`` of the client's pool connections; connection handshakes
    happen before the hook sees them only if the connection already exists, so warm up first.
    """
    sends: list[int] = []
    pool = client.connection_pool
    base = pool.connection_class

    class Counting(base):  # type: ignore[misc, valid-type]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends.append(1)
            super().send_packed_command(command, check_health)

    # Existing idle connections are swapped to the counting class in place.
    connections = list(getattr(pool, "_available_connections", []))
    pool.connection_class = Counting
    originals = [(conn, conn.__class__) for conn in connections]
    for conn in connections:
        conn.__class__ = Counting
    try:
        yield sends
    finally:
        pool.connection_class = base
        for conn, cls in originals:
            conn.__class__ = cls
