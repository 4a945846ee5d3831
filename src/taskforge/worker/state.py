"""State shared by the parts of one worker process: slots, leases, the Redis clock."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from ..errors import ValidationError
from ..redis.keys import QueueKeys, validate_queue_name
from ..redis.operations import FetchedJob
from .context import JobContext

__all__ = ["Lease", "RedisClock", "Slots", "WorkerConfig", "WorkerState"]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[str, ...] = ("default",)
    """In strict priority order: a queue is served only while those before it are empty."""
    concurrency: int = 10
    grace_seconds: float = 25.0
    """On SIGTERM, how long in-flight jobs may run on before they are handed back."""
    fetch_batch: int = 200
    """Most jobs taken in one fetch (bounded by free slots)."""
    recover_seconds: float = 10.0
    """How often expired leases are looked for (at most half the lease, so a dead worker's jobs
    return within 1.5 leases)."""
    registry_seconds: float = 10.0
    worker_id: str = ""
    weights: tuple[int, ...] | None = None
    """Optional weight per queue: each fetch round then visits the queues in a random order
    drawn by weight (so low-weight queues are never starved), instead of strict priority."""

    def __post_init__(self) -> None:
        if not self.queues:
            raise ValidationError("a worker needs at least one queue")
        for queue in self.queues:
            validate_queue_name(queue)
        if len(set(self.queues)) != len(self.queues):
            raise ValidationError(f"queues listed twice: {', '.join(self.queues)}")
        if not 1 <= self.concurrency <= 10000:
            raise ValidationError(f"concurrency must be 1 to 10000, got {self.concurrency}")
        if self.grace_seconds < 0:
            raise ValidationError("grace_seconds cannot be negative")
        # 0 would spin: a fetch round for no jobs, a recovery or registry beat without pause
        # (and a registry TTL of 0 removes the worker instead of announcing it).
        if self.fetch_batch < 1:
            raise ValidationError(f"fetch_batch must be at least 1, got {self.fetch_batch}")
        for name in ("recover_seconds", "registry_seconds"):
            if not getattr(self, name) > 0:
                raise ValidationError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weights is not None and (
            len(self.weights) != len(self.queues) or any(w < 1 for w in self.weights)
        ):
            raise ValidationError("give one positive whole-number weight per queue")

    def resolved_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Slots:
    """How many more jobs this worker may run now."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._has_free = asyncio.Event()
        self._has_free.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def take(self, count: int) -> None:
        self.used += count
        if self.used >= self.capacity:
            self._has_free.clear()
        if self.used:
            self._idle.clear()

    def give(self) -> None:
        self.used -= 1
        if self.used < self.capacity:
            self._has_free.set()
        if self.used == 0:
            self._idle.set()

    async def wait_free(self) -> None:
        await self._has_free.wait()

    async def wait_idle(self) -> None:
        await self._idle.wait()


_DRIFT_MS_PER_SECOND = 0.5
"""How fast two clocks kept by NTP may drift apart at most (500 ppm): an old bound on the offset
loosens by this much per second."""


class RedisClock:
    """Redis's clock as seen from here: leases and due times are judged on it, never on ours."""

    def __init__(self) -> None:
        self.offset_ms = 0.0
        self._floor_ms: float | None = None
        """The largest offset that every recent reading proves Redis's clock to be ahead of
        ours by at least (see ``observe``), aged for drift to ``_floor_at``."""
        self._floor_at = 0.0

    @staticmethod
    def local() -> float:
        """This machine's clock; every reading that feeds ``observe`` must come from here."""
        return time.time()

    def observe(self, redis_now_ms: float, sent_at: float, received_at: float) -> None:
        # The server read its clock somewhere in the round trip; the midpoint is the best guess.
        self.offset_ms = redis_now_ms - (sent_at + received_at) * 500.0
        # It read it after `sent_at` and before `received_at`, so the true offset lies between
        # these two; the readings whose reply came back fastest bound it best from below.
        floor = redis_now_ms - received_at * 1000.0
        ceiling = redis_now_ms - sent_at * 1000.0
        aged = self._aged_floor(received_at)
        # A floor above this reading's ceiling means a clock was stepped: start over.
        if aged is None or aged > ceiling or floor > aged:
            self._floor_ms, self._floor_at = floor, received_at
        else:
            self._floor_ms, self._floor_at = aged, received_at

    def _aged_floor(self, at: float) -> float | None:
        if self._floor_ms is None:
            return None
        return self._floor_ms - max(0.0, at - self._floor_at) * _DRIFT_MS_PER_SECOND

    def local_not_before(self, redis_ms: float) -> float:
        """The local time at which Redis's clock has surely reached ``redis_ms``: as early as
        the readings allow, never before it. Only valid after an ``observe``."""
        assert self._floor_ms is not None, "observe() first"
        # Solves t = (redis_ms - floor aged to t) / 1000: drift counts until the start too.
        drift = _DRIFT_MS_PER_SECOND
        return (redis_ms - self._floor_ms - self._floor_at * drift) / (1000.0 - drift)

    def now_ms(self) -> float:
        return self.local() * 1000.0 + self.offset_ms

    def seconds_until(self, redis_ms: float) -> float:
        return max(0.0, (redis_ms - self.now_ms()) / 1000.0)


@dataclass(eq=False, slots=True)
class Lease:
    """A job this worker holds, from fetch until its outcome is acknowledged by Redis."""

    job: FetchedJob
    keys: QueueKeys
    ctx: JobContext | None = None
    runner: asyncio.Task[None] | None = None
    finished: bool = False
    """The run is over and its outcome is waiting to be sent; the lease is still renewed."""
    not_before: float = 0.0
    """Local clock (``RedisClock.local``) time before which the job must not start: a job
    leased ahead of its due time (see fetch.lua). 0 = start now."""


@dataclass(slots=True)
class WorkerState:
    worker_id: str
    config: WorkerConfig
    slots: Slots
    clock: RedisClock = field(default_factory=RedisClock)
    leases: dict[str, Lease] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    processed: int = 0
    failed: int = 0
    started_at: float = field(default_factory=time.time)
