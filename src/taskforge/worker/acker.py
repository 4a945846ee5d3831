"""Acknowledgements: outcomes of runs, sent to Redis in batches.

Completions that pile up while one batch is in flight go out together in the next script call, so
a busy worker pays about one round trip per batch, not per job. A job stays leased (and its lease
renewed) until its outcome is acknowledged; on Redis errors the batch is retried, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..errors import TaskForgeError
from ..redis import operations as ops
from ..redis.driver import AsyncDriver
from ..serialization import encode_value
from .backoff import Backoff
from .state import Lease, WorkerState

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Acker"]

log = logging.getLogger("taskforge.worker")

_MAX_BATCH = 500


class Acker:
    def __init__(self, state: WorkerState, driver: AsyncDriver, settings: Settings) -> None:
        self.state = state
        self.driver = driver
        self.events = settings.publish_events
        self.completed_ms = round(settings.completed_ttl * 1000)
        self.dead_ms = round(settings.dead_ttl * 1000)
        self._completions: list[tuple[Lease, bytes]] = []
        self._failures: list[tuple[Lease, bytes, int | None]] = []
        self._releases: list[Lease] = []
        self._progress: dict[str, tuple[Lease, bytes]] = {}
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self.releases_done = asyncio.Event()
        """Set while no release waits to reach Redis (the fetcher's strict priority needs it)."""
        self.releases_done.set()
        self.batches = 0
        self.outcomes: dict[str, int] = {}
        self.listeners: list[Any] = []
        """Callables (lease, outcome) told about every acknowledged outcome (metrics, tests)."""
        self.parked: dict[str, int] = {}
        """The fetcher's parkings (queue -> capacity): a completion renews the one of its queue
        with the slots now free, in the same script call."""
        self.park_ms = 0

    # -- called by the executor --------------------------------------------------------------

    def complete(self, lease: Lease, encoded_result: bytes) -> None:
        lease.finished = True
        self._completions.append((lease, encoded_result))
        self._kick()

    def fail(self, lease: Lease, error: bytes, retry_delay_ms: int | None) -> None:
        lease.finished = True
        self._failures.append((lease, error, retry_delay_ms))
        self._kick()

    def release(self, lease: Lease) -> None:
        lease.finished = True
        self._releases.append(lease)
        self.releases_done.clear()
        self._kick()

    def forget(self, lease: Lease) -> None:
        """The lease was lost to another delivery: nothing to report."""
        self.state.leases.pop(lease.job.id, None)
        self._notify(lease, "lease-lost")

    def progress(self, lease: Lease, value: Any) -> None:
        """Thread-safe: a sync task reports from its own thread."""
        encoded = encode_value(value)

        def record() -> None:
            self._progress[lease.job.id] = (lease, encoded)
            self._kick()

        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(record)

    _loop: asyncio.AbstractEventLoop | None = None

    def _kick(self) -> None:
        self._flushed.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return (
            len(self._completions) + len(self._failures) + len(self._releases) + len(self._progress)
        )

    # -- the sending loop --------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(log, "acknowledging jobs")
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                try:
                    await self._send_once()
                    backoff.ok()
                except (TaskForgeError, OSError) as exc:
                    await backoff.failed(exc, asyncio.Event())
            self._flushed.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every outcome reached Redis (True), or give up after ``timeout``."""
        try:
            await asyncio.wait_for(self._flushed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _send_once(self) -> None:
        # Progress first: a job's last report arrives with (or just before) its outcome, and
        # once the outcome is sent the lease is gone and the report would be dropped.
        if self._progress:
            pending, self._progress = self._progress, {}
            for lease, value in pending.values():
                job = lease.job
                if job.id in self.state.leases:
                    await self.driver.run(
                        ops.progress(lease.keys, job.id, job.token, value, self.events)
                    )
        if self._completions:
            await self._send_completions()
        if self._failures:
            lease, error, delay = self._failures[0]
            job = lease.job
            outcome = await self.driver.run(
                ops.fail(
                    lease.keys,
                    job.id,
                    job.token,
                    error,
                    delay,
                    self.dead_ms,
                    self.completed_ms,
                    self.events,
                )
            )
            self._failures.pop(0)
            self._done(lease, _FAIL_NAMES.get(outcome, "stale"))
        if self._releases:
            batch, self._releases = self._releases[:_MAX_BATCH], self._releases[_MAX_BATCH:]
            by_queue: dict[str, list[Lease]] = {}
            for lease in batch:
                by_queue.setdefault(lease.keys.queue, []).append(lease)
            try:
                for leases in by_queue.values():
                    items = [(x.job.id, x.job.token) for x in leases]
                    await self.driver.run(ops.release(leases[0].keys, items, self.events))
                    for lease in leases:
                        self._done(lease, "released")
            except BaseException:
                self._releases[:0] = [x for x in batch if x.job.id in self.state.leases]
                raise
            if not self._releases:
                self.releases_done.set()

    async def _send_completions(self) -> None:
        by_queue: dict[str, list[tuple[Lease, bytes]]] = {}
        for item in self._completions[:_MAX_BATCH]:
            by_queue.setdefault(item[0].keys.queue, []).append(item)
        for items in by_queue.values():
            keys = items[0][0].keys
            payload = [(lease.job.id, lease.job.token, result) for lease, result in items]
            parked = None
            if keys.queue in self.parked:
                free = max(0, self.state.slots.free)
                parked = (self.state.worker_id, free, self.park_ms)
                self.parked[keys.queue] = free
            oks = await self.driver.run(
                ops.complete(keys, payload, self.completed_ms, self.events, parked)
            )
            self.batches += 1
            sent = {id(lease) for lease, _ in items}
            self._completions = [c for c in self._completions if id(c[0]) not in sent]
            for (lease, _), ok in zip(items, oks, strict=True):
                if not ok:
                    log.warning(
                        "job %s finished after its lease was lost; another delivery owns it,"
                        " so this result was dropped",
                        lease.job.id,
                    )
                self._done(lease, "completed" if ok else "stale")

    def _done(self, lease: Lease, outcome: str) -> None:
        self.state.leases.pop(lease.job.id, None)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self._notify(lease, outcome)

    def _notify(self, lease: Lease, outcome: str) -> None:
        for listener in self.listeners:
            try:
                listener(lease, outcome)
            except Exception:
                log.exception("outcome listener failed")


_FAIL_NAMES = {
    ops.FAIL_STALE: "stale",
    ops.FAIL_RETRYING: "retrying",
    ops.FAIL_DEAD: "dead",
    ops.FAIL_CANCELED: "canceled",
}
