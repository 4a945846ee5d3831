"""A TCP proxy that injects network faults between a client under test and a real server.

`FaultProxy` runs an asyncio server on its own event loop in a background thread, so sync tests
and async tests (whose own loop is untouched) drive it the same way through thread-safe
setters. Faults apply to live connections at once:

- latency: every chunk is held `ms` milliseconds in each direction (a round trip grows by at
  least 2 x ms); order is kept and throughput is not serialised behind the delay;
- blackhole: connections are accepted, but nothing is forwarded either way (bytes are dropped,
  like a partition whose packets vanish);
- reset: every current connection is closed abruptly (TCP RST), and so is each new one, until
  reset is switched off;
- drop_replies: client→server bytes are forwarded, server→client bytes are dropped (the
  command runs, the client never hears back).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar
from urllib.parse import quote

from tests.support.servers import HOST, RedisServer, register_cleanup

__all__ = ["FaultProxy"]

T = TypeVar("T")
_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a crashed peer or a middlebox reset would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:`listen_port` to `target`, with faults switchable at runtime."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._requested_port = listen_port
        self._listen_port: int | None = None
        self._lock = threading.Lock()
        self._latency_s = 0.0
        self._blackhole = False
        self._reset = False
        self._drop_replies = False
        self._accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @classmethod
    def for_server(cls, server: RedisServer) -> FaultProxy:
        return cls(server.host, server.port)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 5) -> Self:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"FaultProxy->{self.target}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the proxy's event loop did not start")
        self._server = self._call(self._listen(), timeout)
        register_cleanup(self.stop)
        return self

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(self._handle, HOST, self._requested_port)
        self._listen_port = server.sockets[0].getsockname()[1]
        return server

    def stop(self, timeout: float = 5) -> None:
        """Close the listener and every connection, then end the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all(abort=True)
        if self._server is not None:
            await self._server.wait_closed()
        # Cancelled tasks must run to their end before the loop closes, or asyncio complains.
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 5) -> T:
        """Run `coro` on the proxy's loop and wait for it (safe from any thread but the
        proxy's own, including from inside another running event loop)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("proxy is not running")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # -- addresses --------------------------------------------------------------------------

    @property
    def listen_host(self) -> str:
        return HOST

    @property
    def listen_port(self) -> int:
        if self._listen_port is None:
            raise RuntimeError("proxy not started")
        return self._listen_port

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.listen_port)

    @property
    def url(self) -> str:
        return self.url_for()

    def url_for(
        self,
        *,
        db: int | None = None,
        scheme: str = "redis",
        username: str | None = None,
        password: str | None = None,
    ) -> str:
        """URL of the proxy's side, e.g. `redis://127.0.0.1:PORT/0` (use scheme="rediss" for a
        TLS server: TLS passes through untouched)."""
        auth = ""
        if username is not None or password is not None:
            auth = quote(username or "", safe="")
            if password is not None:
                auth += ":" + quote(password, safe="")
            auth += "@"
        path = f"/{db}" if db is not None else ""
        return f"{scheme}://{auth}{HOST}:{self.listen_port}{path}"

    # -- faults (thread-safe) ---------------------------------------------------------------

    @property
    def latency_ms(self) -> float:
        return self._latency_s * 1000

    @property
    def blackhole(self) -> bool:
        return self._blackhole

    @property
    def reset(self) -> bool:
        return self._reset

    @property
    def drop_replies(self) -> bool:
        return self._drop_replies

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    @property
    def accepted_connections(self) -> int:
        """Connections accepted since start (including those reset at once)."""
        return self._accepted

    def set_latency(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency_s = ms / 1000

    def set_blackhole(self, on: bool = True) -> None:
        with self._lock:
            self._blackhole = on

    def set_drop_replies(self, on: bool = True) -> None:
        with self._lock:
            self._drop_replies = on

    def set_reset(self, on: bool = True) -> None:
        """With on=True, returns once every current connection has been reset."""
        with self._lock:
            self._reset = on
        if on:
            self._call(self._close_all(abort=True))

    def pass_through(self) -> None:
        """Clear every fault."""
        with self._lock:
            self._latency_s = 0.0
            self._blackhole = self._reset = self._drop_replies = False

    def close_connections(self) -> None:
        """One-off: reset every current connection, but accept new ones normally."""
        self._call(self._close_all(abort=True))

    # -- forwarding (proxy thread only) -----------------------------------------------------

    async def _close_all(self, *, abort: bool) -> None:
        connections = list(self._connections)
        for conn in connections:
            self._close(conn, abort=abort)
        tasks = [t for conn in connections for t in conn.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _close(self, conn: _Connection, *, abort: bool) -> None:
        self._connections.discard(conn)
        for writer in (conn.client, conn.server):
            if writer is None:
                continue
            if abort:
                _abort(writer)
            else:
                writer.close()
        for task in conn.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        if self._reset:
            _abort(writer)
            return
        conn = _Connection(client=writer)
        self._connections.add(conn)
        try:
            try:
                server_reader, conn.server = await asyncio.open_connection(*self.target)
            except OSError:
                _abort(writer)  # the target is down: the client sees a reset, as it would
                return
            up = asyncio.create_task(self._pump(reader, conn.server, upstream=True))
            down = asyncio.create_task(self._pump(server_reader, writer, upstream=False))
            conn.tasks.update((up, down))
            # When either direction ends (EOF, error, reset), the whole connection goes.
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            self._close(conn, abort=False)
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._connections.discard(conn)
            for w in (conn.client, conn.server):
                if w is not None and not w.transport.is_closing():
                    w.close()

    def _dropping(self, upstream: bool) -> bool:
        return self._blackhole or (self._drop_replies and not upstream)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Copy one direction. A reader task stamps each chunk with its release time and a
        writer task sends it then, so latency delays bytes without throttling them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def read_side() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    if not self._dropping(upstream):
                        queue.put_nowait((loop.time() + self._latency_s, data))
            except OSError:
                pass
            queue.put_nowait(None)

        async def write_side() -> None:
            while (item := await queue.get()) is not None:
                release, data = item
                if (delay := release - loop.time()) > 0:
                    await asyncio.sleep(delay)  # the injected latency itself
                writer.write(data)
                await writer.drain()

        reading = asyncio.create_task(read_side())
        try:
            await write_side()
        except OSError:
            pass
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    def __repr__(self) -> str:
        port = self._listen_port if self._listen_port is not None else "?"
        return f"<FaultProxy {HOST}:{port} -> {self.target[0]}:{self.target[1]}>"
