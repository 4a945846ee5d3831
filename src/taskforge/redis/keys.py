"""The only place where Redis key names are spelled.

Every key of one queue carries the hash tag ``{queue}``, so each script touches one hash slot and
runs unchanged on Redis Cluster, while different queues spread over the shards. Keys that belong to
no queue (the queue registry, live workers) share the tag ``{-}``, which no queue name can take.
"""

from __future__ import annotations

import re

from ..errors import ValidationError

__all__ = ["GlobalKeys", "QueueKeys", "validate_queue_name", "validate_task_name"]

_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_TASK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")


def validate_queue_name(name: object) -> str:
    if not isinstance(name, str) or not _QUEUE_RE.fullmatch(name):
        raise ValidationError(
            f"invalid queue name {name!r}: use 1-128 characters, letters, digits and '_', '.', ':',"
            " '-', starting with a letter or digit (braces and spaces are not allowed)"
        )
    return name


def validate_task_name(name: object) -> str:
    if not isinstance(name, str) or not _TASK_RE.fullmatch(name):
        raise ValidationError(
            f"invalid task name {name!r}: use 1-200 characters, letters, digits and '_', '.', ':',"
            " '-', starting with a letter or '_'"
        )
    return name


class QueueKeys:
    """Key names of one queue. ``script_keys`` is the KEYS vector every queue script receives."""

    __slots__ = (
        "active",
        "base",
        "channel",
        "completed",
        "dead",
        "meta",
        "metrics",
        "parked",
        "queue",
        "ready",
        "scheduled",
        "script_keys",
        "stats",
        "wake",
    )

    def __init__(self, prefix: str, queue: str) -> None:
        self.queue = validate_queue_name(queue)
        self.base = f"{prefix}:{{{queue}}}:"
        self.ready = self.base + "ready"  # ZSET id -> priority/sequence score
        self.scheduled = self.base + "scheduled"  # ZSET id -> due time (ms, Redis clock)
        self.active = self.base + "active"  # ZSET id -> lease deadline (ms, Redis clock)
        self.dead = self.base + "dead"  # ZSET id -> time of death (ms)
        self.completed = self.base + "completed"  # ZSET id -> finish time (ms), trimmed by TTL
        self.wake = self.base + "wake"  # ZSET of wake-up markers workers block on
        self.meta = self.base + "meta"  # HASH: seq, paused
        self.stats = self.base + "stats"  # HASH: counters per event
        self.metrics = self.base + "metrics"  # HASH: per-task counters, histogram buckets
        self.parked = self.base + "parked"  # HASH worker id -> "capacity lease_ms expires_ms"
        self.channel = f"{prefix}:events:{queue}"  # pub/sub channel of job events
        self.script_keys = (
            self.ready,
            self.scheduled,
            self.active,
            self.dead,
            self.completed,
            self.wake,
            self.meta,
            self.stats,
            # Never written. While the queue's slot migrates between cluster nodes, a declared
            # key that exists nowhere makes Redis answer every script with ASK, then TRYAGAIN,
            # until the slot has moved: a script never runs beside job records already moved
            # away (touching one would abort it midway, after its first writes).
            self.base + "migration-guard",
            self.parked,
        )

    def job(self, job_id: str) -> str:
        return self.base + "job:" + job_id  # HASH: the job record

    def idempotency(self, key: str) -> str:
        return self.base + "key:" + key  # STRING -> job id

    def inbox(self, worker_id: str) -> str:
        return self.base + "inbox:" + worker_id  # ZSET: jobs handed to a parked worker

    def done(self, job_id: str) -> str:
        return self.base + "done:" + job_id  # LIST: wake-ups for result() waiters


class GlobalKeys:
    """Keys that belong to no queue."""

    __slots__ = ("events_pattern", "prefix", "queues", "workers")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queues = f"{prefix}:{{-}}:queues"  # SET of queue names ever used
        self.workers = f"{prefix}:{{-}}:workers"  # ZSET worker id -> last heartbeat (ms)
        self.events_pattern = f"{prefix}:events:*"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:{{-}}:worker:{worker_id}"  # HASH of worker info, with a TTL
