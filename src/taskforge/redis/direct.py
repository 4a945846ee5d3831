"""A thread's own line to a standalone Redis, for script calls and pipelines on the sync hot path.

redis-py's connection does the handshake (AUTH, SELECT, TLS, client name); after that a plain TCP
or Unix socket is read and written here directly. That skips redis-py's per-call checks and, more
to the point on virtual machines where a system call is dear, the ``poll()`` that Python makes
before every send and receive on a socket with a timeout: the socket is put in blocking mode and
the kernel enforces the same timeout (``SO_RCVTIMEO``/``SO_SNDTIMEO``). A TLS socket keeps
redis-py's own reading.

A read first busy-waits a little (``spin_us``) before it sleeps in the kernel. On a virtual
machine an idle vCPU halts, and waking it takes tens of microseconds, often more than Redis needs
to answer a script call on the same host: spinning keeps the caller's vCPU awake for the reply.
It is adaptive: once several waits in a row outlast the budget (a remote server, a slow script),
the line stops spinning and only tries again now and then.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import hiredis
from redis import exceptions as rex
from redis._parsers import BaseParser

__all__ = ["DirectLine"]

_NOT_ENOUGH = object()
_READ_SIZE = 65536
_MISSES_BEFORE_PAUSE = 8  # waits in a row that outlast the spin budget before spinning stops
_PAUSE_READS = 256  # reads without spinning before it is tried again


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class DirectLine:
    """One connection, used by one thread: a call, or a pipeline (sends, then as many reads).
    After a connection error the caller closes it, falls back to its pooled client and opens a
    new line on the next call."""

    def __init__(self, connection: Any, spin_us: int = 0) -> None:
        self.connection = connection
        self._spin_ns = spin_us * 1000
        self._misses = 0  # spins in a row that ended without the reply
        self._pause = 0  # reads left before spinning is tried again
        self._sock: socket.socket | None = None
        self._reader: Any = None
        connection.connect()
        sock = getattr(connection, "_sock", None)
        if type(sock) is socket.socket:
            timeout = connection.socket_timeout
            sock.settimeout(None)
            if timeout:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            encoder = connection.encoder
            options: dict[str, Any] = {
                "protocolError": rex.InvalidResponse,
                "replyError": BaseParser.parse_error,
                "notEnoughData": _NOT_ENOUGH,
                "errors": encoder.encoding_errors,
            }
            if encoder.decode_responses:
                options["encoding"] = encoder.encoding
            self._sock = sock
            self._reader = hiredis.Reader(**options)

    def call(self, packed: bytes) -> Any:
        """Send one packed command and return its reply; a reply that is an error is raised."""
        self.send(packed)
        reply = self.read()
        if isinstance(reply, rex.ResponseError):
            raise reply
        return reply

    def send(self, packed: bytes) -> None:
        """Send without waiting: several sends then as many reads make a pipeline, and Redis
        starts on the first command while the next is still being packed."""
        if self._sock is None:
            self.connection.send_packed_command([packed], False)
        else:
            self._sock.sendall(packed)

    def read(self) -> Any:
        """The next reply; an error reply is returned (as redis-py's exception), not raised, so
        that the replies after it in a pipeline are still read."""
        sock = self._sock
        if sock is None:
            try:
                return self.connection.read_response()
            except rex.ResponseError as exc:
                return exc
        reader = self._reader
        reply = reader.gets()
        if reply is _NOT_ENOUGH and self._spin_ns:
            if self._pause:
                self._pause -= 1
            else:
                reply = self._spin(sock, reader)
        while reply is _NOT_ENOUGH:
            data = sock.recv(_READ_SIZE)
            if not data:
                raise rex.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    def _spin(self, sock: socket.socket, reader: Any) -> Any:
        """Poll the socket without sleeping until the reply is in or the budget is spent."""
        deadline = time.perf_counter_ns() + self._spin_ns
        while True:
            try:
                data = sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter_ns() < deadline:
                    continue
                self._misses += 1
                if self._misses >= _MISSES_BEFORE_PAUSE:
                    self._misses, self._pause = 0, _PAUSE_READS
                return _NOT_ENOUGH
            if not data:
                raise rex.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
            if reply is not _NOT_ENOUGH:
                self._misses = 0
                return reply

    def close(self) -> None:
        self._sock = None
        self.connection.disconnect()

    def __del__(self) -> None:
        # A producer thread's line goes away with the thread: close its socket then, before a
        # garbage collection of redis-py's connection objects can get to it unclosed.
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
