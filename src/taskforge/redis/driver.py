"""The two drivers that run ``Op``s and flows: one sync, one asyncio. Both are thin on purpose.

A flow is a generator that yields an ``Op`` (or a list of them, pipelined where the topology
allows) and receives the parsed reply; multi-step operations such as waiting for a result are
written once as a flow and driven by either driver.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from hiredis import pack_command
from redis import exceptions as rex

from ..errors import RedisUnavailable, TaskForgeError
from .acl import explain_denial
from .connection import (
    SameConnection,
    is_cluster_client,
    run_same_connection_async,
    run_same_connection_sync,
)
from .direct import DirectLine
from .ops import LazyOps, Op

__all__ = ["AsyncDriver", "Flow", "PermissionDenied", "SyncDriver", "translate_errors"]

T = TypeVar("T")
_FALLBACK = object()
Flow = Generator["Op[Any] | Sequence[Op[Any]]", Any, T]


class PermissionDenied(TaskForgeError):
    """The Redis user lacks a permission TaskForge needs (ACL), or its credentials are wrong."""


# Refusals by a server that cannot take writes for a while (no good replicas, demoted to a
# replica, a failed background save, a long script, a cluster reconfiguring), and blocking calls
# it ended early (UNBLOCKED: the master became a replica, or CLIENT UNBLOCK ... ERROR): the
# command did not take effect, and the same call succeeds once the server recovers, so Redis is
# unavailable, not broken. Raised as ResponseError, they would end the worker's retry loops for
# good. redis-py strips the code from the errors it has a class for, and leaves it in the text of
# the others.
_REFUSED_FOR_NOW = (rex.ReadOnlyError, rex.TryAgainError, rex.ClusterDownError)
_REFUSED_FOR_NOW_CODES = ("NOREPLICAS", "MISCONF", "BUSY ", "UNBLOCKED ")


@contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn redis-py errors into TaskForge errors whose messages say what to do."""
    try:
        yield
    except rex.AuthenticationError as exc:
        raise PermissionDenied(
            f"Redis at {where} refused the credentials: {exc}. Check the user and password"
            " in the URL (redis://user:password@host:port/0)"
        ) from exc
    except (rex.ConnectionError, rex.TimeoutError) as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {where}: {exc}. Is the server running? Point"
            " TASKFORGE_REDIS_URL at it, or run `taskforge redis` to start a local one"
        ) from exc
    except RuntimeError as exc:
        # uvloop refuses a write on a transport the peer has reset with a RuntimeError rather
        # than an OSError; redis-py has dropped that connection already, so it is a lost
        # connection like any other (and the command was not sent).
        if "handler is closed" not in str(exc):
            raise
        raise RedisUnavailable(f"lost the connection to Redis at {where}: {exc}") from exc
    except rex.NoPermissionError as exc:
        raise PermissionDenied(
            explain_denial(str(exc))
            or f"the Redis user lacks a permission TaskForge needs: {exc}. Grant the ACL from"
            " docs/deployment.md (commands and the prefix's key pattern)"
        ) from exc
    except rex.ResponseError as exc:
        text = str(exc)
        # Refusals inside scripts come without the NOPERM code; explain_denial names the command.
        if (hint := explain_denial(text)) is not None:
            raise PermissionDenied(hint) from exc
        if isinstance(exc, rex.OutOfMemoryError) or text.startswith("OOM"):
            raise TaskForgeError(
                f"Redis is out of memory and refused the write: {text}. Raise maxmemory or"
                " drain queues; nothing was written"
            ) from exc
        if isinstance(exc, _REFUSED_FOR_NOW) or text.startswith(_REFUSED_FOR_NOW_CODES):
            raise RedisUnavailable(
                f"Redis at {where} cannot take writes now: {text}. Nothing was written; the"
                " call succeeds once the server accepts writes again"
            ) from exc
        raise


def _script_args(op: Op[Any]) -> list[Any]:
    return [len(op.keys), *op.keys, *op.args]


def _queue_into(pipe: Any, op: Op[Any]) -> None:
    if op.script is None:
        pipe.execute_command(*op.command)
    else:
        pipe.evalsha(op.script.sha, *_script_args(op))


def _is_cluster(client: Any) -> bool:
    return is_cluster_client(client)


class SyncDriver:
    """Runs operations on sync redis-py clients (standalone, Sentinel or Cluster)."""

    def __init__(
        self, client: Any, blocking_client: Any, where: str, reply_spin_us: int = 0
    ) -> None:
        self.client = client
        self.blocking_client = blocking_client
        self.where = where
        self.reply_spin_us = reply_spin_us
        """How long a direct line busy-waits for a reply before it sleeps (see DirectLine)."""
        self.is_cluster = _is_cluster(client)
        self.round_trips = 0
        """Round trips sent (a pipeline counts once): the figure the hot-path tests pin."""
        pool = getattr(client, "connection_pool", None)
        # Only a plain pool: Sentinel and Cluster clients must route every call themselves.
        self._direct_pool = pool if type(pool) is redis.ConnectionPool else None
        self._local = threading.local()
        # Weak: a producer thread's connection goes away with the thread, not only at close().
        self._direct_lines: weakref.WeakSet[DirectLine] = weakref.WeakSet()

    def run(self, op: Op[T]) -> T:
        self.round_trips += 1
        with translate_errors(self.where):
            return op.parse(self._raw(op))

    def _raw(self, op: Op[Any]) -> Any:
        client = self.blocking_client if op.blocking else self.client
        if op.script is None:
            return client.execute_command(*op.command)
        args = _script_args(op)
        if self._direct_pool is not None and not op.blocking:
            reply = self._direct_script(op, args)
            if reply is not _FALLBACK:
                return reply
        try:
            return client.evalsha(op.script.sha, *args)
        except rex.NoScriptError:
            # A restart or failover emptied the script cache: EVAL runs and re-caches it.
            return client.eval(op.script.source, *args)

    def _direct_line(self) -> DirectLine:
        line: DirectLine | None = getattr(self._local, "line", None)
        if line is None:
            assert self._direct_pool is not None
            connection = self._direct_pool.make_connection()
            line = self._local.line = DirectLine(connection, self.reply_spin_us)
            self._direct_lines.add(line)
        return line

    def _drop_direct_line(self) -> None:
        line = getattr(self._local, "line", None)
        if line is not None:
            line.close()
        self._local.line = None

    def _direct_script(self, op: Op[Any], args: list[Any]) -> Any:
        """EVALSHA on this thread's own line (see ``DirectLine``): skips the pool's checkout and
        bookkeeping, which cost more than the round trip itself for a one-job enqueue. Any
        connection trouble falls back to the pooled client and its retries (scripts are safe to
        resend: an enqueue carries its job id)."""
        assert op.script is not None
        try:
            line = self._direct_line()
            # Packed in one C call (hiredis is a dependency): redis-py's own packing checks every
            # argument in Python first, which costs about a fifth of a one-job enqueue.
            try:
                return line.call(pack_command(("EVALSHA", op.script.sha, *args)))
            except rex.NoScriptError:
                return line.call(pack_command(("EVAL", op.script.source, *args)))
        except (rex.ConnectionError, rex.TimeoutError, OSError):
            self._drop_direct_line()
            return _FALLBACK

    def _direct_fits(self, op: Op[Any]) -> bool:
        """The line returns replies as Redis sent them: fine for scripts and for commands whose
        reply redis-py does not reshape (INFO, say, it turns into a dict)."""
        if op.script is not None:
            return True
        return not op.blocking and str(op.command[0]) not in self.client.response_callbacks

    def _direct_pipeline(self, ops: Sequence[Op[Any]]) -> list[Any] | object:
        """Several operations pipelined on this thread's line, each sent as soon as it is packed
        (Redis runs the first while the rest are packed); falls back like ``_direct_script``."""
        try:
            line = self._direct_line()
            for op in ops:
                if op.script is None:
                    line.send(pack_command(op.command))  # type: ignore[arg-type]
                else:
                    line.send(pack_command(("EVALSHA", op.script.sha, *_script_args(op))))
            replies = [line.read() for _ in ops]
        except (rex.ConnectionError, rex.TimeoutError, OSError):
            self._drop_direct_line()
            return _FALLBACK
        return replies

    def run_all(self, ops: Sequence[Op[Any]]) -> list[Any]:
        """Run several operations, pipelined in one round trip where the topology allows."""
        if isinstance(ops, SameConnection):
            self.round_trips += 1
            with translate_errors(self.where):
                replies = run_same_connection_sync(self.client, ops)
                return [op.parse(reply) for op, reply in zip(ops, replies, strict=True)]
        if self.is_cluster or len(ops) < 2:
            return [self.run(op) for op in ops]
        self.round_trips += 1
        with translate_errors(self.where):
            fits = self._direct_fits
            direct = self._direct_pool is not None and (
                ops.all_fit(fits) if isinstance(ops, LazyOps) else all(map(fits, ops))
            )
            answers = self._direct_pipeline(ops) if direct else _FALLBACK
            if not isinstance(answers, list):
                pipe = self.client.pipeline(transaction=False)
                for op in ops:
                    _queue_into(pipe, op)
                answers = pipe.execute(raise_on_error=False)
            out = []
            for op, reply in zip(ops, answers, strict=True):
                if isinstance(reply, rex.NoScriptError):
                    reply = self._raw(op)
                elif isinstance(reply, Exception):
                    raise reply
                out.append(op.parse(reply))
            return out

    def run_flow(self, flow: Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                try:
                    reply = self.run(request) if isinstance(request, Op) else self.run_all(request)
                except Exception as exc:
                    request = flow.throw(exc)  # the flow may handle it (e.g. an ACL denial)
                    continue
                request = flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            flow.close()

    def close(self) -> None:
        for line in list(self._direct_lines):
            line.close()
        self._direct_lines.clear()
        self._local = threading.local()
        self.client.close()
        if self.blocking_client is not self.client:
            self.blocking_client.close()


class AsyncDriver:
    """Runs operations on asyncio redis-py clients (standalone, Sentinel or Cluster)."""

    def __init__(self, client: Any, blocking_client: Any, where: str) -> None:
        self.client = client
        self.blocking_client = blocking_client
        self.where = where
        self.is_cluster = _is_cluster(client)
        self.round_trips = 0

    async def run(self, op: Op[T]) -> T:
        self.round_trips += 1
        with translate_errors(self.where):
            return op.parse(await self._raw(op))

    async def _raw(self, op: Op[Any]) -> Any:
        client = self.blocking_client if op.blocking else self.client
        if op.script is None:
            return await client.execute_command(*op.command)
        args = _script_args(op)
        try:
            return await client.evalsha(op.script.sha, *args)
        except rex.NoScriptError:
            return await client.eval(op.script.source, *args)

    async def run_all(self, ops: Sequence[Op[Any]]) -> list[Any]:
        if isinstance(ops, SameConnection):
            self.round_trips += 1
            with translate_errors(self.where):
                replies = await run_same_connection_async(self.client, ops)
                return [op.parse(reply) for op, reply in zip(ops, replies, strict=True)]
        if self.is_cluster or len(ops) < 2:
            return [await self.run(op) for op in ops]
        self.round_trips += 1
        with translate_errors(self.where):
            pipe = self.client.pipeline(transaction=False)
            for op in ops:
                _queue_into(pipe, op)
            replies = await pipe.execute(raise_on_error=False)
            out = []
            for op, reply in zip(ops, replies, strict=True):
                if isinstance(reply, rex.NoScriptError):
                    reply = await self._raw(op)
                elif isinstance(reply, Exception):
                    raise reply
                out.append(op.parse(reply))
            return out

    async def run_flow(self, flow: Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                try:
                    if not isinstance(request, Op):
                        reply = await self.run_all(request)
                    else:
                        reply = await self.run(request)
                except Exception as exc:
                    request = flow.throw(exc)
                    continue
                request = flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            flow.close()

    async def close(self) -> None:
        await self.client.aclose()
        if self.blocking_client is not self.client:
            await self.blocking_client.aclose()
