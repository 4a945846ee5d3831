"""Helpers for the deployment tests (cluster, Sentinel, durability, security): a worker on a
background thread, a ledger of task runs, and a producer that keeps enqueueing through failovers.

A producer counts a job as *acknowledged* only when its enqueue call returned normally; a failed
call is retried with the same job id, which the enqueue script turns into a no-op if the first
attempt did land, so retries never duplicate a job.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from taskforge import TaskForge, TaskForgeError, Worker

__all__ = ["Ledger", "Producer", "enqueue_until_acknowledged", "running_worker"]


class Ledger:
    """Which jobs ran, how often (thread-safe: sync tasks run on worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: Counter[str] = Counter()

    def record(self, job_id: str) -> None:
        with self._lock:
            self.runs[job_id] += 1

    def ran(self, job_ids: set[str]) -> set[str]:
        with self._lock:
            return {j for j in job_ids if self.runs[j] > 0}

    def twice(self) -> set[str]:
        with self._lock:
            return {j for j, n in self.runs.items() if n > 1}


@contextmanager
def running_worker(forge: TaskForge, queues: list[str], **options: Any) -> Iterator[Worker]:
    """A worker on its own thread and event loop; stopped (and its crash re-raised) at exit."""
    worker = Worker(forge, queues=queues, **options)
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(worker.run_async())
        except BaseException as exc:
            failure.append(exc)
            worker.started.set()

    thread = threading.Thread(target=main, name="test-worker", daemon=True)
    thread.start()
    if not worker.started.wait(30):
        raise TimeoutError("the worker did not start within 30 s")
    if failure:
        raise failure[0]
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        if thread.is_alive():
            worker.stop(immediate=True)
            thread.join(10)
        if failure:
            raise failure[0]


def enqueue_until_acknowledged(
    forge: TaskForge, task: str, job_id: str, queue: str, timeout: float = 30.0
) -> int:
    """Enqueue with a fixed id, retrying failed calls until one returns; returns the number of
    failed attempts. Raises the last error after ``timeout``."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            forge.enqueue_with(task, (job_id,), queue=queue, job_id=job_id)
            return failures
        except TaskForgeError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Producer(threading.Thread):
    """Enqueues ``task(job_id)`` jobs round-robin over ``queues`` until stopped. ``acknowledged``
    holds the ids whose enqueue returned; ``failures`` counts calls that raised (each retried
    with the same id)."""

    def __init__(
        self,
        forge: TaskForge,
        task: str,
        queues: list[str],
        *,
        prefix: str = "j",
        limit: int = 100_000,
        pause: float = 0.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(name="test-producer", daemon=True)
        self.forge = forge
        self.task = task
        self.queues = queues
        self.prefix = prefix
        self.limit = limit
        self.pause = pause
        self.on_error = on_error
        self.acknowledged: list[str] = []
        self.failures = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            for n in range(self.limit):
                if self.stopping.is_set():
                    return
                job_id = f"{self.prefix}{n}"
                queue = self.queues[n % len(self.queues)]
                while not self.stopping.is_set():
                    try:
                        self.forge.enqueue_with(self.task, (job_id,), queue=queue, job_id=job_id)
                    except TaskForgeError as exc:
                        self.failures += 1
                        if self.on_error is not None:
                            self.on_error(exc)
                        time.sleep(0.05)
                        continue
                    with self._lock:
                        self.acknowledged.append(job_id)
                    break
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"the producer acknowledged only {self.count()} of {count}")
            time.sleep(0.01)

    def stop(self) -> set[str]:
        self.stopping.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        with self._lock:
            return set(self.acknowledged)
