"""Fleet-wide job metrics, written by the workers: per-task counters, run and wait time histograms.

Each worker counts in memory what it sees (the jobs it starts and the outcome of every run) and
adds those counts into the queue's metrics hash with HINCRBY, in one pipelined call every few
seconds, and only when it has something to add. So the hot path pays no Redis round trip, an idle
worker sends nothing, and the hash holds the sum over every worker of the fleet: a reader (the HTTP
API's ``/metrics``) sees the whole fleet from one place, without scraping each worker, and counts
survive worker restarts. The enqueue, cancel and recover scripts add the events no worker sees.

Layout of the hash (``QueueKeys.metrics``), integers only:

- ``<event>|<task>``: counters, ``event`` one of ``COUNTERS``;
- ``<hist>_bucket|<task>|<i>``: runs whose duration fell in bucket ``i`` (not cumulative; bucket
  ``i`` holds durations <= ``BUCKETS[i]``, the last index ``len(BUCKETS)`` those above all);
- ``<hist>_sum_us|<task>``: total duration, microseconds. ``hist`` is ``run`` or ``wait``.

Task names cannot contain ``|`` (see ``validate_task_name``), so the fields split unambiguously.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from ..errors import TaskForgeError
from ..redis.driver import AsyncDriver
from ..redis.keys import QueueKeys
from ..redis.ops import Op, command
from .state import Lease, WorkerState

__all__ = ["BUCKETS", "COUNTERS", "HISTOGRAMS", "WorkerMetrics", "parse_field"]

log = logging.getLogger("taskforge.worker")

COUNTERS = ("enqueued", "started", "completed", "failed", "retried", "dead", "canceled")
HISTOGRAMS = ("run", "wait")
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Upper bounds in seconds, shared by both histograms (jobs run from milliseconds to an hour)."""

# Which counters an acknowledged outcome moves. Like the scripts' per-queue ``stats``, every
# acknowledged failure counts as failed, whatever came of it.
_OUTCOMES: dict[str, tuple[str, ...]] = {
    "completed": ("completed",),
    "retrying": ("failed", "retried"),
    "dead": ("failed", "dead"),
    "canceled": ("failed", "canceled"),
}


def parse_field(name: str) -> tuple[str, str, int | None] | None:
    """``(series, task, bucket index or None)`` of a metrics hash field, None if unknown."""
    parts = name.split("|")
    if len(parts) == 2 and parts[0] in COUNTERS:
        return parts[0], parts[1], None
    if len(parts) == 2 and parts[0] in ("run_sum_us", "wait_sum_us"):
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[0] in ("run_bucket", "wait_bucket") and parts[2].isdigit():
        index = int(parts[2])
        return (parts[0], parts[1], index) if index <= len(BUCKETS) else None
    return None


class WorkerMetrics:
    """Counts of one worker process, flushed into Redis by ``run()``; ``close()`` flushes the rest.

    Wiring: the fetcher starts jobs through ``starter(executor.start)``, and ``on_outcome`` is one
    of the acker's listeners. Both only touch dictionaries.
    """

    def __init__(
        self,
        state: WorkerState,
        driver: AsyncDriver,
        queue_keys: list[QueueKeys],
        interval: float = 2.0,
    ) -> None:
        self.state = state
        self.driver = driver
        self.keys = {k.queue: k for k in queue_keys}
        self.interval = interval
        """Seconds between flushes; read at every wait, so it can be changed while running."""
        self.flushes = 0
        self._pending: dict[str, dict[str, int]] = {}
        self._started: dict[str, float] = {}
        self._ran: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    # -- recording (hot path: no I/O) -------------------------------------------------------

    def _add(self, queue: str, name: str, amount: int = 1) -> None:
        counts = self._pending.get(queue)
        if counts is None:
            counts = self._pending[queue] = {}
        counts[name] = counts.get(name, 0) + amount

    def _observe(self, queue: str, hist: str, task: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._add(queue, f"{hist}_bucket|{task}|{bisect_left(BUCKETS, seconds)}")
        self._add(queue, f"{hist}_sum_us|{task}", round(seconds * 1e6))

    def starter(self, start: Callable[[Lease], None]) -> Callable[[Lease], None]:
        """Wrap the executor's ``start``: count the job, time its wait and its run."""

        def start_and_count(lease: Lease) -> None:
            job = lease.job
            self._add(job.queue, f"started|{job.task}")
            if job.attempt == 1 and job.redeliveries == 0 and job.created_ms:
                # Enqueue -> first start, both on the Redis clock.
                wait = (self.state.clock.now_ms() - job.created_ms) / 1000.0
                self._observe(job.queue, "wait", job.task, wait)
            self._started[job.id] = time.perf_counter()
            start(lease)
            runner = lease.runner
            if runner is not None:
                runner.add_done_callback(lambda _: self._run_ended(job.id))

        return start_and_count

    def _run_ended(self, job_id: str) -> None:
        began = self._started.pop(job_id, None)
        if began is not None:
            self._ran[job_id] = time.perf_counter() - began

    def on_outcome(self, lease: Lease, outcome: str) -> None:
        """Acker listener: called once per lease with its acknowledged outcome."""
        job = lease.job
        ran = self._ran.pop(job.id, None)
        began = self._started.pop(job.id, None)
        if ran is None and began is not None:
            ran = time.perf_counter() - began  # acknowledged before the run's task ended
        counters = _OUTCOMES.get(outcome)
        if counters is None:
            return  # released, stale or lost: another delivery will report this job
        for name in counters:
            self._add(job.queue, f"{name}|{job.task}")
        if ran is not None:
            self._observe(job.queue, "run", job.task, ran)

    @property
    def pending(self) -> int:
        return sum(len(counts) for counts in self._pending.values())

    # -- flushing ---------------------------------------------------------------------------

    async def flush(self) -> int:
        """Add the pending counts into Redis (one pipelined call); the number of fields sent.
        On failure the counts are kept for the next flush."""
        async with self._lock:
            return await self._flush()

    async def _flush(self) -> int:
        batch, self._pending = self._pending, {}
        ops: list[Op[Any]] = []
        for queue, counts in batch.items():
            keys = self.keys.get(queue)
            if keys is None:
                continue
            ops += [command("HINCRBY", keys.metrics, name, n) for name, n in counts.items() if n]
        if not ops:
            return 0
        try:
            await self.driver.run_all(ops)
        except BaseException:
            for queue, counts in batch.items():
                for name, n in counts.items():
                    self._add(queue, name, n)
            raise
        self.flushes += 1
        return len(ops)

    async def run(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval)
            if not self._pending:
                continue  # idle: send nothing
            async with self._lock:
                if self._closed:
                    return
                try:
                    await self._flush()
                except (TaskForgeError, OSError) as exc:
                    log.debug("flushing job metrics failed, keeping them for later: %s", exc)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is left (after the acker drained) and stop flushing."""
        async with self._lock:
            self._closed = True
            if self._pending:
                try:
                    await asyncio.wait_for(self._flush(), timeout)
                except (TaskForgeError, OSError, TimeoutError) as exc:
                    log.warning("could not flush the last job metrics: %s", exc)
