"""Taking work: the fetcher leases jobs while slots are free; the waiters block on Redis until
there is work or a delayed job falls due, so an idle worker sends almost nothing.

Wake-up protocol (see docs/redis.md): each queue has a ``wake`` sorted set. Enqueue adds ``r``
(score 0) for ready work and ``d`` (score = due time) for delayed work. A waiter blocks in
BZPOPMIN on those sets; ``r`` or a due ``d`` sends the fetcher to that queue, a future ``d`` becomes
a local timer. Scripts re-derive the markers from the sets, so a marker lost with a crashed worker
is rebuilt by the next fetch or recovery run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from ..errors import TaskForgeError
from ..redis import operations as ops
from ..redis.driver import AsyncDriver
from ..redis.keys import QueueKeys
from ..redis.ops import Op, command
from .backoff import Backoff
from .state import Lease, WorkerState

__all__ = ["AHEAD_MS", "LEAD_SECONDS", "PARK_SECONDS", "WAIT_SLICE_SECONDS", "Fetcher", "Waiter"]

log = logging.getLogger("taskforge.worker")

LEAD_SECONDS = 0.005
"""A waiter's timer for a delayed job fires this long before the due time, so that the fetch
(which leases jobs due within AHEAD_MS) is back before the job must start."""
AHEAD_MS = 10
"""Free slots may lease scheduled jobs due within this many ms; the worker holds them and starts
each at its due time. Longer would keep slots idle and jobs from other workers for longer."""
WAIT_SLICE_SECONDS = 10.0
"""A waiter's longest block; after an empty one it renews its parkings."""
PARK_SECONDS = 25.0
"""A parking not renewed for this long expires: a dead idle worker is handed new jobs for at most
this long (they go back to ready at the next recovery run). More than two slices, so that one late
renewal does not unpark a live worker."""


class Fetcher:
    """Leases jobs, highest-priority queue first, as long as this worker has free slots."""

    def __init__(
        self,
        state: WorkerState,
        driver: AsyncDriver,
        queue_keys: list[QueueKeys],
        lease_ms: int,
        events: bool,
        start: Callable[[Lease], None],
        release: Callable[[Lease], None],
        releases_done: asyncio.Event,
        isolate_after: int = 0,
    ) -> None:
        self.state = state
        self.driver = driver
        self.queue_keys = queue_keys
        self.lease_ms = lease_ms
        self.events = events
        self.start = start
        self.release = release
        self.isolate_after = isolate_after
        self.releases_done = releases_done
        """Set while none of the jobs this worker handed back is still on its way to ready."""
        self.parked: dict[str, int] = {}
        """Queue -> the capacity this worker is parked with there, 0 = parked but full (as far as
        it knows: enqueues charge it in Redis, inbox pops here; completions top it up)."""
        self.handed = 0
        """Jobs received through the inbox (handed over by enqueue, no fetch)."""
        self._leaving: set[asyncio.Task[Any]] = set()
        self.isolating = False
        self.maybe_ready: set[str] = {k.queue for k in queue_keys}
        self.hints: dict[str, int] = dict.fromkeys(self.maybe_ready, 0)
        """Hints per queue so far: a fetch that comes back short drops its queue from
        maybe_ready only if no hint arrived while it was in flight (no lost wake-up)."""
        self.work_hint = asyncio.Event()
        self.work_hint.set()
        self.drained = asyncio.Event()
        """Set when a queue drops out of maybe_ready: waiters may need to listen again."""
        self.rank = {k.queue: i for i, k in enumerate(queue_keys)}
        self.fetches = 0
        self.unwatched = True
        """A waiter stopped listening since the last look: wake-ups may be sitting unpopped."""

    def wants_wakeups(self, queues: list[str]) -> bool:
        """Whether a wake-up for one of ``queues`` could change what this worker does next.

        While the highest-priority queue is known to have work, markers tell us nothing new;
        leaving them unpopped lets an idle worker elsewhere take them (and saves a round trip
        per fetch). With weights every queue may come first, so all are wanted."""
        if self.isolating:
            return False  # nothing else may start here until the isolated job is done
        if self.state.config.weights is not None:
            return True
        best = min((self.rank[q] for q in self.maybe_ready), default=len(self.rank))
        return any(self.rank[q] < best for q in queues)

    def hint(self, queue: str) -> None:
        self.maybe_ready.add(queue)
        self.hints[queue] = self.hints.get(queue, 0) + 1
        self.work_hint.set()

    async def run(self) -> None:
        state = self.state
        backoff = Backoff(log, "fetching jobs")
        while not state.stopping.is_set():
            await state.slots.wait_free()
            if state.stopping.is_set():
                return
            if not self.maybe_ready:
                await self.work_hint.wait()
            self.work_hint.clear()
            if not self.maybe_ready:
                continue
            try:
                await self._fetch_round()
                backoff.ok()
            except (TaskForgeError, OSError) as exc:
                await backoff.failed(exc, state.stopping)

    def _order(self) -> list[QueueKeys]:
        weights = self.state.config.weights
        if weights is None:
            return self.queue_keys
        # Weighted sampling without replacement: a queue's chance to come first is its weight.
        keyed = [
            (random.random() ** (1.0 / w), k) for w, k in zip(weights, self.queue_keys, strict=True)
        ]
        return [k for _, k in sorted(keyed, key=lambda item: item[0], reverse=True)]

    async def _fetch_round(self) -> None:
        """One pass in priority (or weighted) order; stops at the first queue with jobs."""
        state = self.state
        for keys in self._order():
            if keys.queue not in self.maybe_ready:
                continue
            want = min(state.slots.free, state.config.fetch_batch)
            if want <= 0:
                return
            if self.rank[keys.queue] > 0 and not self.releases_done.is_set():
                await self._await_releases()
            if await self._higher_queue_has_work(keys):
                return  # the next round starts with it
            hints_before = self.hints.get(keys.queue, 0)
            sent = state.clock.local()
            now_ms, jobs, parked = await self.driver.run(
                ops.fetch(
                    keys,
                    want,
                    self.lease_ms,
                    state.worker_id,
                    self.events,
                    self.isolate_after,
                    AHEAD_MS,
                    state.slots.free,
                    round(PARK_SECONDS * 1000),
                )
            )
            received = state.clock.local()
            state.clock.observe(now_ms, sent, received)
            self.fetches += 1
            if parked:
                self.parked[keys.queue] = parked
            else:
                self.parked.pop(keys.queue, None)
            if len(jobs) < want and self.hints.get(keys.queue, 0) == hints_before:
                self.maybe_ready.discard(keys.queue)
                self.drained.set()
            if jobs and jobs[0].isolated:
                await self._run_alone(Lease(jobs[0], keys))
                return
            if jobs:
                for job in jobs:
                    lease = Lease(job, keys)
                    if job.due_ms:
                        lease.not_before = state.clock.local_not_before(job.due_ms)
                    # Jobs handed over while this fetch was in flight may have taken slots.
                    self._start_or_release(lease)
                self._leave_if_full()
                return

    async def _await_releases(self) -> None:
        """A job handed over while no slot was free is on its way back to ready (perhaps to a
        higher queue): until it is there, the probe of higher queues would miss it."""
        self.unwatched = True
        # Bounded: if Redis is slow or away, the fetch that follows says so.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.releases_done.wait(), 1.0)

    def take_handed(self, keys: QueueKeys, jobs: list[ops.FetchedJob]) -> None:
        """Jobs an enqueue handed to this worker through its inbox: already leased to it."""
        queue = keys.queue
        if queue in self.parked:
            self.parked[queue] = max(0, self.parked[queue] - len(jobs))
        self.handed += len(jobs)
        for job in jobs:
            # Parked for more than is free now (other queues took slots meanwhile), the surplus
            # goes back to ready for another worker.
            self._start_or_release(Lease(job, keys))
        self._leave_if_full()

    def _start_or_release(self, lease: Lease) -> None:
        """Start a job this worker holds if a slot is free, else hand it back (not an attempt)."""
        state = self.state
        state.leases[lease.job.id] = lease
        if state.slots.free > 0 and not self.isolating:
            state.slots.take(1)
            self.start(lease)
        else:
            self.release(lease)

    def _leave_if_full(self) -> None:
        """Parked for more jobs than slots are free (several queues, or slots taken elsewhere):
        leave the parkings, so that what would be handed over does not wait here.
        With one queue the two stay equal: every handed job is charged on both sides."""
        if not self.parked or sum(self.parked.values()) <= max(self.state.slots.free, 0):
            return
        for queue in list(self.parked):
            self._leave_soon(queue)

    def _leave_soon(self, queue: str) -> None:
        self.parked.pop(queue, None)
        keys = next(k for k in self.queue_keys if k.queue == queue)
        task = asyncio.get_running_loop().create_task(self._leave(keys))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _leave(self, keys: QueueKeys) -> None:
        try:
            await self.driver.run(
                ops.park(keys, self.state.worker_id, 0, self.lease_ms, 0, self.events)
            )
        except (TaskForgeError, OSError) as exc:
            # The parking expires by itself; recovery hands its inbox back to ready.
            log.warning("leaving the parking on %s failed: %s", keys.queue, exc)

    async def renew(self, keys: QueueKeys) -> None:
        """After an empty wait: stay parked on a queue this worker is parked on."""
        free = self.state.slots.free
        if keys.queue not in self.parked or free <= 0 or self.isolating:
            return
        capacity, _ = await self.driver.run(
            ops.park(
                keys,
                self.state.worker_id,
                free,
                self.lease_ms,
                round(PARK_SECONDS * 1000),
                self.events,
            )
        )
        if capacity:
            self.parked[keys.queue] = capacity
        else:
            self.parked.pop(keys.queue, None)
            self.hint(keys.queue)  # not parked because jobs are waiting (or it is paused)

    async def leave_all(self) -> None:
        """On shutdown: unpark everywhere, handing unpopped inbox jobs back to ready."""
        for queue in list(self.parked):
            self._leave_soon(queue)
        if self._leaving:
            await asyncio.wait(set(self._leaving), timeout=5.0)

    async def _run_alone(self, lease: Lease) -> None:
        """A job that crashed workers before runs with nothing beside it: if it kills this
        worker too, no innocent job dies with it (and is redelivered towards poison)."""
        state = self.state
        state.leases[lease.job.id] = lease  # renewed by the heartbeat while it waits
        log.warning(
            "job %s (%s) was redelivered %d times after worker crashes; running it alone",
            lease.job.id,
            lease.job.task,
            lease.job.redeliveries,
        )
        self.isolating = True
        try:
            await state.slots.wait_idle()
            state.slots.take(1)
            self.start(lease)
            await state.slots.wait_idle()
        finally:
            self.isolating = False
            self.drained.set()  # waiters stood down meanwhile: let them listen again

    async def _higher_queue_has_work(self, keys: QueueKeys) -> bool:
        """Strict priority: before serving a lower queue, look at the queues before it if
        their wake-ups may have gone unseen (a waiter listens only while a slot is free, so a
        job that arrived while all were busy is not hinted yet when a slot frees)."""
        rank = self.rank[keys.queue]
        if rank == 0 or self.state.config.weights is not None or not self.unwatched:
            return False
        self.unwatched = False
        higher = self.queue_keys[:rank]
        probes: list[Op[Any]] = []
        for k in higher:
            probes += [command("ZCARD", k.ready), command("HGET", k.meta, "paused")]
        replies = await self.driver.run_all(probes)
        found = False
        for i, k in enumerate(higher):
            if int(replies[2 * i]) and replies[2 * i + 1] not in (b"1", "1"):
                self.hint(k.queue)
                found = True
        return found


class Waiter:
    """Blocks on the inboxes and wake markers of a group of queues that share a hash slot (on a
    standalone server, all queues form one group; on a cluster, each queue is its own).

    One ``BZMPOP`` serves both: the inboxes come first, so jobs handed over start at once; then the
    markers. A future ``d`` marker becomes a local timer rather than a shorter block: Redis checks
    blocking timeouts only every 1/hz seconds (100 ms by default), far too coarse for delayed jobs.
    """

    def __init__(
        self, state: WorkerState, driver: AsyncDriver, group: list[QueueKeys], fetcher: Fetcher
    ) -> None:
        self.state = state
        self.driver = driver
        self.group = group
        self.fetcher = fetcher
        self.by_wake_key = {k.wake.encode(): k for k in group}
        self.by_inbox_key = {k.inbox(state.worker_id).encode(): k for k in group}
        self.timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self.pops = 0
        self.promotions: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        state = self.state
        backoff = Backoff(log, "waiting for work")
        keys = [*self.by_inbox_key, *self.by_wake_key]
        queues = [k.queue for k in self.group]
        fetcher = self.fetcher
        if self.driver.is_cluster:
            # redis-py's cluster client routes BZMPOP (movable keys) by asking a fixed node for
            # its keys, which fails once that node is down; BZPOPMIN names its keys in place.
            # One entry per reply then: a burst of handed jobs takes one pop each.
            block: Op[Any] = command(
                "BZPOPMIN",
                *keys,
                WAIT_SLICE_SECONDS,
                blocking=True,
                parse=lambda r: r and (r[0], [(r[1], r[2])]),
            )
        else:
            # Up to every slot's worth of handed jobs in one reply (markers: at most 2 a queue).
            block = command(
                "BZMPOP",
                WAIT_SLICE_SECONDS,
                len(keys),
                *keys,
                "MIN",
                "COUNT",
                max(state.config.concurrency, 2),
                blocking=True,
            )
        try:
            while not state.stopping.is_set():
                # Without a free slot, leave the markers to workers that can take the work.
                if state.slots.free <= 0:
                    fetcher.unwatched = True
                    await state.slots.wait_free()
                if not fetcher.wants_wakeups(queues):
                    fetcher.unwatched = True
                    fetcher.drained.clear()
                    if not fetcher.wants_wakeups(queues):
                        await fetcher.drained.wait()
                    continue
                try:
                    reply: Any = await self.driver.run(block)
                    self.pops += 1
                    if not reply:
                        for k in self.group:
                            await fetcher.renew(k)
                    backoff.ok()
                except (TaskForgeError, OSError) as exc:
                    await backoff.failed(exc, state.stopping)
                    continue
                if reply:
                    self._on_reply(reply[0], reply[1])
        finally:
            for _, handle in self.timers.values():
                handle.cancel()

    def _on_reply(self, key: bytes, entries: list[Any]) -> None:
        inbox = self.by_inbox_key.get(key)
        if inbox is not None:
            self.fetcher.take_handed(inbox, ops.inbox_jobs(inbox.queue, entries))
            return
        for member, score in entries:
            self._on_marker(key, member, float(score))

    def _on_marker(self, wake_key: bytes, member: bytes, score: float) -> None:
        keys = self.by_wake_key.get(wake_key)
        if keys is None:
            return
        lead_ms = LEAD_SECONDS * 1000.0
        if member == b"r" or score - lead_ms <= self.state.clock.now_ms():
            self.fetcher.hint(keys.queue)
            return
        current = self.timers.get(keys.queue)
        if current is not None and current[0] <= score:
            return
        if current is not None:
            current[1].cancel()
        delay = self.state.clock.seconds_until(score - lead_ms)
        handle = asyncio.get_running_loop().call_later(delay, self._due, keys, score)
        self.timers[keys.queue] = (score, handle)

    def _due(self, keys: QueueKeys, score: float) -> None:
        self.timers.pop(keys.queue, None)
        if self.state.stopping.is_set():
            return
        if self.state.slots.free > 0:
            # The fetch leases the jobs due within AHEAD_MS; they start at their due times.
            self.fetcher.hint(keys.queue)
            return
        # Busy here: once they are due, move the jobs to ready, so that idle workers wake up and
        # take them. A millisecond late rather than early: a promotion before Redis agrees finds
        # nothing.
        loop = asyncio.get_running_loop()
        delay = self.state.clock.seconds_until(score) + 0.001
        loop.call_later(delay, self._promote_soon, keys)

    def _promote_soon(self, keys: QueueKeys) -> None:
        if self.state.stopping.is_set():
            return
        task = asyncio.get_running_loop().create_task(self._promote(keys))
        self.promotions.add(task)
        task.add_done_callback(self.promotions.discard)

    async def _promote(self, keys: QueueKeys) -> None:
        try:
            await self.driver.run(ops.promote(keys))
        except (TaskForgeError, OSError) as exc:
            # The next fetch or recovery run promotes them instead.
            log.warning("promoting due jobs of %s failed: %s", keys.queue, exc)


def group_by_slot(queue_keys: list[QueueKeys], cluster: bool) -> list[list[QueueKeys]]:
    """Queues whose keys may be named in one blocking command (one hash slot on a cluster)."""
    if not cluster:
        return [queue_keys]
    from redis.crc import key_slot

    groups: dict[int, list[QueueKeys]] = {}
    for keys in queue_keys:
        groups.setdefault(key_slot(keys.wake.encode()), []).append(keys)
    return list(groups.values())
