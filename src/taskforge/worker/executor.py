"""Running one job: decode, look up the task, run it (on the loop, or on a thread for plain
``def`` tasks) under its timeout and the middleware, and turn the outcome into an acknowledgement."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import Retry, SerializationError, UnknownTask
from ..serialization import (
    decode_payload,
    encode_error,
    encode_error_fields,
    encode_value,
    repr_or_type,
)
from .context import JobContext, bind, unbind
from .middleware import call_hook
from .state import Lease, RedisClock, WorkerState
from .threads import ThreadRunner

if TYPE_CHECKING:
    from ..client import TaskForge
    from .acker import Acker

__all__ = ["Executor"]

log = logging.getLogger("taskforge.worker")


class JobTimeout(Exception):
    """The run took longer than the task's timeout."""


class _TaskExit(Exception):
    """Carries a task's SystemExit/KeyboardInterrupt out of the task ``wait_for`` runs it in
    (Python 3.11), where asyncio would re-raise it out of the event loop, stopping the worker."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


async def _guarded(coro: Any) -> Any:
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _TaskExit(exc) from None


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ raises must not break the failure path
        return repr_or_type(exc)


async def _until(local_time: float) -> None:
    """Returns at ``local_time`` (``RedisClock.local``), not before and rarely 50 us after.

    Event-loop timers are only as fine as the loop's poll timeout (a millisecond), so the last
    stretch yields to the loop instead of sleeping: other jobs keep running meanwhile."""
    remaining = local_time - RedisClock.local()
    if remaining > _SPIN_SECONDS:
        await asyncio.sleep(remaining - _SPIN_SECONDS)
    while RedisClock.local() < local_time:
        await asyncio.sleep(0)


_SPIN_SECONDS = 0.0015


class Executor:
    def __init__(
        self, forge: TaskForge, state: WorkerState, acker: Acker, threads: ThreadRunner
    ) -> None:
        self.forge = forge
        self.state = state
        self.acker = acker
        self.threads = threads
        self.loop = asyncio.get_running_loop()
        self.running: set[asyncio.Task[None]] = set()

    def start(self, lease: Lease) -> None:
        runner = self.loop.create_task(self._run(lease))
        lease.runner = runner
        self.running.add(runner)
        runner.add_done_callback(self.running.discard)

    async def _run(self, lease: Lease) -> None:
        job = lease.job
        try:
            if lease.not_before:
                await _until(lease.not_before)
            await self._execute(lease)
        except asyncio.CancelledError:
            reason = lease.ctx.stop_reason if lease.ctx else None
            if reason == "canceled":
                self.acker.fail(lease, _canceled_error(), None)
            elif reason == "lease-lost":
                self.acker.forget(lease)
            else:  # shutdown: the job goes back to the queue, untouched
                self.acker.release(lease)
        except Exception:  # a bug in the worker itself: never lose the job over it
            log.exception("internal error while running job %s", job.id)
            self.acker.fail(lease, encode_error_fields("WorkerError", "internal error"), 1000)
        finally:
            self.state.slots.give()

    async def _execute(self, lease: Lease) -> None:
        job = lease.job
        forge = self.forge
        try:
            task = forge.registry.get(job.task)
        except UnknownTask as exc:
            # Retrying cannot help a worker that does not know the task: dead-letter it.
            self.acker.fail(lease, encode_error(exc, with_traceback=False), None)
            return
        try:
            args, kwargs = decode_payload(job.payload)
        except SerializationError as exc:
            self.acker.fail(lease, encode_error(exc, with_traceback=False), None)
            return
        ctx = JobContext(
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            worker_id=self.state.worker_id,
            token=job.token,
            _report=partial(self.acker.progress, lease),
        )
        lease.ctx = ctx
        middleware = forge.middleware
        token = bind(ctx)
        try:
            for mw in middleware:
                await call_hook(mw.before, ctx)
            timeout = job.timeout_ms / 1000.0 if job.timeout_ms else None
            if task.is_async:
                if timeout is None:
                    result = await task.fn(*args, **kwargs)
                else:
                    result = await self._run_async(task.fn, args, kwargs, timeout)
            else:
                result = await self._run_sync(ctx, task.fn, args, kwargs, timeout)
            for mw in middleware:
                await call_hook(mw.after, ctx, result)
            encoded = b"" if result is None else encode_value(result)
        except asyncio.CancelledError:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A task's sys.exit() fails its job; it must not stop the worker's event loop.
            await self._failed(
                lease, ctx, task, exc.original if isinstance(exc, _TaskExit) else exc
            )
            return
        finally:
            unbind(token)
        self.state.processed += 1
        self.acker.complete(lease, encoded)

    async def _run_async(
        self, fn: Any, args: list[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        if timeout is None:
            return await fn(*args, **kwargs)
        try:
            return await asyncio.wait_for(_guarded(fn(*args, **kwargs)), timeout)
        except TimeoutError as exc:
            raise JobTimeout(f"the job ran longer than its timeout of {timeout:g} s") from exc

    async def _run_sync(
        self,
        ctx: JobContext,
        fn: Any,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        def call() -> Any:
            token = bind(ctx)  # contextvars do not follow work onto our threads by themselves
            try:
                return fn(*args, **kwargs)
            finally:
                unbind(token)

        future = asyncio.wrap_future(self.threads.submit(call))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            ctx._request_stop("timeout")  # the thread runs on, unobserved; its slot is freed
            raise JobTimeout(
                f"the job ran longer than its timeout of {timeout:g} s; its thread was abandoned"
            ) from exc
        except asyncio.CancelledError:
            # A sync function cannot be interrupted: tell it, and stop waiting for it.
            ctx._request_stop(ctx.stop_reason or "shutdown")
            raise

    async def _failed(self, lease: Lease, ctx: JobContext, task: Any, exc: BaseException) -> None:
        job = lease.job
        self.state.failed += 1
        for mw in self.forge.middleware:
            try:
                await call_hook(mw.on_failure, ctx, exc)
            except Exception:
                log.exception("on_failure middleware raised for job %s", job.id)
        delay: float | None
        if isinstance(exc, Retry) and exc.delay is not None:
            delay = exc.delay
        elif task.options.no_retry_on and isinstance(exc, task.options.no_retry_on):
            delay = None
        else:
            delay = self.forge.retry_policy(task).delay(job.attempt)
        final = delay is None or job.attempt >= job.max_attempts
        ctx.logger.log(
            logging.ERROR if final else logging.WARNING,
            "job %s %s failed on attempt %d/%d: %s: %s%s",
            job.id,
            job.task,
            job.attempt,
            job.max_attempts,
            type(exc).__name__,
            _describe(exc),
            "" if final else f"; retrying in {delay:.2f} s",
        )
        delay_ms = None if delay is None else round(delay * 1000)
        self.acker.fail(lease, encode_error(exc), delay_ms)


def _canceled_error() -> bytes:
    return encode_error_fields("Canceled", "the job was canceled while it ran")
