"""Running real workers inside a test: on a background thread (for sync tests) or as a task on the
test's own event loop (for async tests), always stopped at the end, with their crashes surfaced.

A test module declares the fixtures from ``worker_pool()`` and ``app_factory()`` (importing
fixture objects would shadow them in every test's parameters)::

    @pytest.fixture
    def workers() -> Iterator[WorkerPool]:
        yield from worker_pool()

    @pytest.fixture
    def make_app(redis_url: str, workers: WorkerPool) -> Iterator[AppFactory]:
        yield from app_factory(redis_url)

    def test_x(make_app: AppFactory, workers: WorkerPool) -> None:
        forge = make_app()  # short leases and retry delays; closed at the end
        worker = workers.start(forge, queues=["default"], concurrency=2)
        # worker.outcomes: what the worker reported; worker.parts: its internals

Helpers that wait for job states poll Redis with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from taskforge import Job, JobStatus, TaskForge, Worker
from taskforge.worker.acker import Acker

__all__ = [
    "FAST_SETTINGS",
    "AppFactory",
    "OutcomeLog",
    "WorkerPool",
    "WorkerThread",
    "app_factory",
    "async_worker",
    "wait_for",
    "wait_for_status",
    "wait_for_status_async",
    "worker_pool",
]

FINAL = frozenset({JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELED})

FAST_SETTINGS: dict[str, Any] = {
    "lease_seconds": 3,  # heartbeats every 0.5 s: cancellations are seen quickly
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.2,
}
"""Defaults of ``AppFactory``: short leases and retry delays, so tests spend little time."""


class AppFactory:
    """Makes TaskForge apps on the test's server and closes their connections at the end.

    ``make_app(**settings)``; FAST_SETTINGS fill what is not given. Async tests close the
    asyncio connections of their own loop (``async with make_app() as forge``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[TaskForge] = []

    def __call__(self, url: str | None = None, **settings: Any) -> TaskForge:
        forge = TaskForge(url or self.url, **{**FAST_SETTINGS, **settings})
        self.made.append(forge)
        return forge

    def close(self) -> None:
        for forge in self.made:
            forge.close()


def app_factory(url: str) -> Iterator[AppFactory]:
    """Body of a ``make_app`` fixture (depend on ``workers`` too, so they stop first)."""
    factory = AppFactory(url)
    yield factory
    factory.close()


class OutcomeLog:
    """Every outcome the worker's acker reported to Redis, in order: (job id, outcome)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[str, str]] = []
        self._changed = threading.Condition(self._lock)

    def __call__(self, lease: Any, outcome: str) -> None:
        with self._changed:
            self.entries.append((lease.job.id, outcome))
            self._changed.notify_all()

    def outcomes_of(self, job_id: str) -> list[str]:
        with self._lock:
            return [outcome for jid, outcome in self.entries if jid == job_id]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, str]]:
        """Block until at least ``count`` outcomes were reported."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.entries) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"only {len(self.entries)} of {count} outcomes after {timeout} s:"
                        f" {self.entries}"
                    )
                self._changed.wait(remaining)
            return list(self.entries)


def _attach(worker: Worker, log: OutcomeLog) -> None:
    acker = worker.parts.get("acker")
    assert isinstance(acker, Acker), "the worker has no acker part yet"
    acker.listeners.append(log)


class WorkerThread:
    """A ``Worker`` running ``run_async()`` on its own event loop in a daemon thread."""

    def __init__(self, forge: TaskForge, worker: Worker) -> None:
        self.forge = forge
        self.worker = worker
        self.outcomes = OutcomeLog()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-worker", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.worker.run_async())
        except BaseException as exc:
            self.error = exc
        finally:
            self.worker.started.set()  # release a start() that waits on a worker that crashed

    def start(self, timeout: float = 15.0) -> WorkerThread:
        self._thread.start()
        if not self.worker.started.wait(timeout):
            raise TimeoutError(f"worker did not start within {timeout} s")
        if self.error is not None:
            raise RuntimeError("the worker crashed while starting") from self.error
        _attach(self.worker, self.outcomes)
        return self

    @property
    def parts(self) -> dict[str, Any]:
        return self.worker.parts

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0, *, immediate: bool = False) -> None:
        """Stop gracefully (or hand jobs back at once), wait for the thread, re-raise a crash."""
        if self._thread.is_alive():
            self.worker.stop(immediate=immediate)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"worker did not stop within {timeout} s")
        if self.error is not None:
            raise RuntimeError("the worker crashed") from self.error


class WorkerPool:
    """Starts workers for one test and stops all of them at its end."""

    def __init__(self) -> None:
        self.started: list[WorkerThread] = []

    def start(
        self,
        forge: TaskForge,
        queues: Iterable[str] | None = None,
        concurrency: int = 4,
        **options: Any,
    ) -> WorkerThread:
        worker = Worker(forge, list(queues) if queues is not None else None, concurrency, **options)
        thread = WorkerThread(forge, worker)
        self.started.append(thread)
        return thread.start()

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for thread in reversed(self.started):
            try:
                thread.stop(immediate=True)
            except BaseException as exc:
                errors.append(exc)
        self.started.clear()
        if errors:
            raise errors[0]


def worker_pool() -> Iterator[WorkerPool]:
    """Body of a ``workers`` fixture: ``workers.start(forge, queues, concurrency, **WorkerConfig
    options)``; all stopped at the end of the test (immediately: running jobs are handed back)."""
    pool = WorkerPool()
    yield pool
    pool.stop_all()


@contextlib.asynccontextmanager
async def async_worker(
    forge: TaskForge,
    queues: Iterable[str] | None = None,
    concurrency: int = 4,
    **options: Any,
) -> AsyncIterator[tuple[Worker, OutcomeLog]]:
    """A worker running as a task on the current event loop, stopped on exit."""
    worker = Worker(forge, list(queues) if queues is not None else None, concurrency, **options)
    runner = asyncio.get_running_loop().create_task(worker.run_async())
    started = asyncio.get_running_loop().run_in_executor(None, worker.started.wait, 15.0)
    done, _ = await asyncio.wait({runner, started}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        runner.result()  # raises what the worker crashed with
        raise RuntimeError("the worker ended before it started")
    await started
    log = OutcomeLog()
    _attach(worker, log)
    try:
        yield worker, log
    finally:
        worker.stop(immediate=True)
        await asyncio.wait_for(runner, 30)


def wait_for_status(
    job: Job[Any],
    wanted: JobStatus | str | Iterable[JobStatus | str],
    timeout: float = 15.0,
) -> JobStatus:
    """Poll the job's status until it is one of ``wanted``; fail on reaching another final state."""
    targets = {JobStatus(wanted)} if isinstance(wanted, str) else {JobStatus(w) for w in wanted}
    deadline = time.monotonic() + timeout
    while True:
        status = job.status()
        if status in targets:
            return status
        if status in FINAL:
            raise AssertionError(
                f"job {job.id} ended {status} while waiting for {sorted(targets)}: {job.info()}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"job {job.id} still {status} after {timeout} s (wanted {sorted(targets)})"
            )
        time.sleep(0.01)


async def wait_for_status_async(
    job: Job[Any],
    wanted: JobStatus | str | Iterable[JobStatus | str],
    timeout: float = 15.0,
) -> JobStatus:
    targets = {JobStatus(wanted)} if isinstance(wanted, str) else {JobStatus(w) for w in wanted}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await job.status_async()
        if status in targets:
            return status
        if status in FINAL:
            info = await job.info_async()
            raise AssertionError(f"job {job.id} ended {status} waiting for {targets}: {info}")
        if loop.time() >= deadline:
            raise TimeoutError(f"job {job.id} still {status} after {timeout} s")
        await asyncio.sleep(0.01)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Like ``tests.support.servers.wait_until`` but without swallowing connection errors."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
