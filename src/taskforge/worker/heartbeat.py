"""Keeping leases and the worker's registration alive, from a task of their own, so a busy event
loop or a long job never lets a lease lapse by accident."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import TaskForgeError
from ..redis import operations as ops
from ..redis.driver import AsyncDriver
from ..redis.keys import GlobalKeys, QueueKeys
from .backoff import Backoff
from .state import Lease, WorkerState

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Heartbeat", "Recoverer", "Registry"]

log = logging.getLogger("taskforge.worker")


async def _sleep_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True if the worker began stopping meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False


class Heartbeat:
    """Renews the leases of running jobs and stops the runs whose lease was lost or canceled."""

    def __init__(self, state: WorkerState, driver: AsyncDriver, settings: Settings) -> None:
        self.state = state
        self.driver = driver
        self.interval = settings.heartbeat_seconds
        self.lease_ms = round(settings.lease_seconds * 1000)
        self.beats = 0
        self.stop_on_shutdown = False

    async def run(self, until: asyncio.Event) -> None:
        backoff = Backoff(log, "renewing leases", cap=self.interval)
        while not until.is_set():
            try:
                await self.beat()
                backoff.ok()
            except (TaskForgeError, OSError) as exc:
                await backoff.failed(exc, until)
                continue
            if await _sleep_or_stop(until, self.interval):
                return

    async def beat(self) -> None:
        by_queue: dict[str, list[Lease]] = {}
        for lease in list(self.state.leases.values()):
            by_queue.setdefault(lease.keys.queue, []).append(lease)
        for leases in by_queue.values():
            items = [(x.job.id, x.job.token) for x in leases]
            outcome = await self.driver.run(ops.extend(leases[0].keys, items, self.lease_ms))
            self.beats += 1
            for job_id in outcome.lost:
                self._stop(job_id, "lease-lost")
            for job_id in outcome.cancel:
                self._stop(job_id, "canceled")

    def _stop(self, job_id: str, reason: str) -> None:
        lease = self.state.leases.get(job_id)
        if lease is None or lease.finished:
            return
        if reason == "lease-lost":
            log.warning("lost the lease of job %s (expired); abandoning this run", job_id)
        if lease.ctx is not None:
            lease.ctx._request_stop(reason)
        if lease.runner is not None:
            lease.runner.cancel()


class Registry:
    """Announces this worker (host, pid, queues, current jobs) for `taskforge workers`."""

    def __init__(
        self, state: WorkerState, driver: AsyncDriver, gkeys: GlobalKeys, interval: float
    ) -> None:
        self.state = state
        self.driver = driver
        self.gkeys = gkeys
        self.interval = interval
        self.ttl_ms = round(interval * 3 * 1000)

    def info(self) -> dict[str, str | int]:
        state = self.state
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": ",".join(state.config.queues),
            "concurrency": state.config.concurrency,
            "started": round(state.started_at * 1000),
            "active": ",".join(list(state.leases)[:200]),
            "processed": state.processed,
            "failed": state.failed,
            "version": __version__,
        }

    async def run(self) -> None:
        backoff = Backoff(log, "registering the worker", cap=self.interval)
        while not self.state.stopping.is_set():
            try:
                sent = self.state.clock.local()
                now = await self.driver.run(
                    ops.worker_beat(self.gkeys, self.state.worker_id, self.ttl_ms, self.info())
                )
                self.state.clock.observe(now, sent, self.state.clock.local())
                backoff.ok()
            except (TaskForgeError, OSError) as exc:
                await backoff.failed(exc, self.state.stopping)
                continue
            if await _sleep_or_stop(self.state.stopping, self.interval):
                return

    async def unregister(self) -> None:
        await self.driver.run(ops.worker_beat(self.gkeys, self.state.worker_id, 0, {}))


class Recoverer:
    """On a schedule, returns expired leases (of any worker) to their queues."""

    def __init__(
        self,
        state: WorkerState,
        driver: AsyncDriver,
        queue_keys: list[QueueKeys],
        settings: Settings,
        interval: float,
    ) -> None:
        self.state = state
        self.driver = driver
        self.queue_keys = queue_keys
        self.settings = settings
        self.interval = interval
        self.recovered = 0
        self.runs = 0

    async def run_once(self) -> int:
        s = self.settings
        total = 0
        for keys in self.queue_keys:
            _now, recovered, buried, _promoted = await self.driver.run(
                ops.recover(
                    keys,
                    s.max_redeliveries,
                    round(s.dead_ttl * 1000),
                    round(s.completed_ttl * 1000),
                    s.publish_events,
                )
            )
            if recovered or buried:
                log.warning(
                    "queue %s: %d job(s) with expired leases returned to the queue, %d"
                    " dead-lettered as poison",
                    keys.queue,
                    recovered,
                    buried,
                )
            total += recovered + buried
        self.runs += 1
        self.recovered += total
        return total

    async def run(self) -> None:
        backoff = Backoff(log, "recovering expired leases", cap=self.interval)
        while not self.state.stopping.is_set():
            try:
                await self.run_once()
                backoff.ok()
            except (TaskForgeError, OSError) as exc:
                await backoff.failed(exc, self.state.stopping)
                continue
            if await _sleep_or_stop(self.state.stopping, self.interval):
                return
