"""The sync driver's direct line (taskforge.redis.direct): a producer thread's own connection for
one-reply script calls, read and written without redis-py's per-call layers. It must keep the
socket timeout, survive dropped connections and emptied script caches, and write each job once."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest
import redis
from hiredis import pack_command

from taskforge.errors import RedisUnavailable
from taskforge.redis.direct import _MISSES_BEFORE_PAUSE, _PAUSE_READS
from tests.support.proxy import FaultProxy
from tests.support.workers import AppFactory

QUEUE = "direct"


def _ready(client: redis.Redis, prefix: str) -> int:
    return int(client.zcard(f"{prefix}:{{{QUEUE}}}:ready"))


def _open_line(forge: object) -> object:
    """Two enqueues: the first also registers the queue (a pipeline), the second is one script
    call, which opens the line."""
    for _ in range(2):
        forge.enqueue_with("noop", queue=QUEUE)  # type: ignore[attr-defined]
    return _line(forge)


def _line(forge: object) -> object:
    line = forge.sync_driver()._local.line  # type: ignore[attr-defined]
    assert line is not None, "the enqueue did not go through the direct line"
    return line


def test_the_line_leaves_the_socket_timeout_to_the_kernel(make_app: AppFactory) -> None:
    forge = make_app(socket_timeout=1.5)
    sock = _open_line(forge)._sock  # type: ignore[attr-defined]
    assert type(sock) is socket.socket
    # Blocking mode (no poll() before each call), with the same timeout enforced by the kernel.
    assert sock.gettimeout() is None
    size = struct.calcsize("ll")
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        assert struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, size)) == (1, 500000)


def test_a_silent_server_times_out_and_nothing_hangs(
    make_app: AppFactory, fault_proxy: FaultProxy, client: redis.Redis
) -> None:
    forge = make_app(fault_proxy.url, socket_timeout=0.2)
    prefix = forge.settings.prefix
    _open_line(forge)
    fault_proxy.set_blackhole()
    outcome: list[BaseException | None] = []

    def enqueue() -> None:
        try:
            forge.enqueue_with("noop", queue=QUEUE)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=enqueue)
    caller.start()
    caller.join(60)
    assert not caller.is_alive(), "the enqueue hung on a silent server"
    assert isinstance(outcome[0], RedisUnavailable), outcome
    fault_proxy.set_blackhole(False)
    job = forge.enqueue_with("noop", queue=QUEUE)
    assert client.hget(f"{prefix}:{{{QUEUE}}}:job:{job.id}", "status") == b"queued"
    # The blackholed enqueue never reached the server; the others did, once each.
    assert _ready(client, prefix) == 3


def test_a_dropped_connection_is_reopened_and_each_job_written_once(
    make_app: AppFactory, fault_proxy: FaultProxy, client: redis.Redis
) -> None:
    forge = make_app(fault_proxy.url)
    prefix = forge.settings.prefix
    first = _open_line(forge)
    ids = [forge.enqueue_with("noop", queue=QUEUE).id]
    for _ in range(3):
        fault_proxy.close_connections()
        ids.append(forge.enqueue_with("noop", queue=QUEUE).id)  # falls back to the pool
    ids.append(forge.enqueue_with("noop", queue=QUEUE).id)
    assert _line(forge) is not first
    assert len(set(ids)) == 5
    assert _ready(client, prefix) == 2 + 5


def test_an_emptied_script_cache_is_refilled_on_the_line(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app()
    prefix = forge.settings.prefix
    line = _open_line(forge)
    client.script_flush()  # as a restart or a failover does
    forge.enqueue_with("noop", queue=QUEUE)
    assert _line(forge) is line  # NOSCRIPT is a reply, not a broken connection
    assert _ready(client, prefix) == 3


def test_an_error_reply_is_raised_with_redis_pys_exception_class(
    make_app: AppFactory, client: redis.Redis
) -> None:
    line = _open_line(make_app())
    with pytest.raises(redis.ResponseError, match="unknown command"):
        line.call(b"*1\r\n$8\r\nNOSUCHCM\r\n")  # type: ignore[attr-defined]
    with pytest.raises(redis.exceptions.NoScriptError):
        line.call(b"*3\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"0" * 40 + b"\r\n$1\r\n0\r\n")  # type: ignore[attr-defined]
    assert line.call(b"*1\r\n$4\r\nPING\r\n") == b"PONG"  # type: ignore[attr-defined]


def test_the_line_stops_spinning_when_replies_outlast_the_budget(make_app: AppFactory) -> None:
    """A spin that ends without the reply is CPU spent for nothing: after a few in a row the
    line sleeps in the kernel at once, and tries spinning again only after a while."""
    line: Any = _open_line(make_app(reply_spin_us=100))
    # A script that keeps the server busy for 5 ms: no spin of 100 us can see its reply.
    slow = pack_command(
        (
            "EVAL",
            "local t = redis.call('TIME') repeat local n = redis.call('TIME') until"
            " (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 5000 return 1",
            0,
        )
    )
    calls, missed_before = 0, line._misses
    while line._pause == 0:
        assert line.call(slow) == 1
        calls += 1
        # A thread descheduled past the server's 5 ms sees the reply in its spin: a hit, which
        # starts the count again. Rare, but a loaded machine may see a few.
        assert calls <= 4 * _MISSES_BEFORE_PAUSE
    assert calls >= _MISSES_BEFORE_PAUSE - missed_before
    assert line._pause == _PAUSE_READS
    ping = pack_command(("PING",))
    for left in range(_PAUSE_READS - 1, -1, -1):
        assert line.call(ping) in (b"PONG", "PONG")
        assert line._pause == left and line._misses == 0  # no spin, so no miss either
    assert line.call(ping) in (b"PONG", "PONG")  # spinning again: a miss counts, or a hit
    assert line._pause == 0


def test_no_spin_when_turned_off(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app(reply_spin_us=0)
    line = _open_line(forge)
    assert line._spin_ns == 0  # type: ignore[attr-defined]
    assert forge.enqueue_with("noop", queue=QUEUE).created
    assert _ready(client, forge.settings.prefix) == 3
