"""The job record, its states, priorities and ids."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import ValidationError

__all__ = [
    "FINAL_STATES",
    "PRIORITY_LEVELS",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "new_job_id",
    "parse_priority",
]


class JobStatus(StrEnum):
    SCHEDULED = "scheduled"  # waiting for its due time
    QUEUED = "queued"  # ready, waiting for a worker
    ACTIVE = "active"  # leased by a worker, running
    RETRYING = "retrying"  # failed, waiting for its next attempt
    COMPLETED = "completed"
    DEAD = "dead"  # in the dead-letter queue
    CANCELED = "canceled"


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELED})

# Higher runs first. Numbers between the levels are allowed, from -1000 to 1000.
PRIORITY_LEVELS = {"low": 0, "normal": 10, "high": 20, "critical": 30}


def parse_priority(priority: str | int | None) -> int:
    if priority is None:
        return PRIORITY_LEVELS["normal"]
    if isinstance(priority, str):
        try:
            return PRIORITY_LEVELS[priority.lower()]
        except KeyError:
            if priority.lstrip("-").isdigit():
                return parse_priority(int(priority))
            raise ValidationError(
                f"unknown priority {priority!r}: use one of {', '.join(PRIORITY_LEVELS)}"
                " or a number from -1000 to 1000 (higher runs first)"
            ) from None
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        raise ValidationError(
            f"priority {priority!r} is out of range: use an integer from -1000 to 1000"
        )
    return priority


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of characters, indexed by the 10 bits it encodes: 13 lookups make an id.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)


def new_job_id() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 characters, sortable by time.

    The random bits come from ``random`` (seeded from the OS and re-seeded in forked children):
    ids must be unique, not secret, and a system call per id would double the cost of a bulk
    enqueue."""
    v = (time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)
    p = _PAIRS
    return "".join(
        (
            p[v >> 120],
            p[(v >> 110) & 1023],
            p[(v >> 100) & 1023],
            p[(v >> 90) & 1023],
            p[(v >> 80) & 1023],
            p[(v >> 70) & 1023],
            p[(v >> 60) & 1023],
            p[(v >> 50) & 1023],
            p[(v >> 40) & 1023],
            p[(v >> 30) & 1023],
            p[(v >> 20) & 1023],
            p[(v >> 10) & 1023],
            p[v & 1023],
        )
    )


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything the enqueue script needs for one job, already encoded."""

    id: str
    task: str
    payload: bytes
    priority: int
    max_attempts: int
    timeout_ms: int
    delay_ms: int
    at_ms: float
    """Absolute due time, ms on the Redis clock (to the microsecond); 0 = none."""
    key: str

    def script_args(self) -> tuple[str | bytes | int | float, ...]:
        return (
            self.id,
            self.task,
            self.payload,
            self.priority,
            self.max_attempts,
            self.timeout_ms,
            self.delay_ms,
            self.at_ms,
            self.key,
        )


def _ms_to_datetime(value: Any) -> datetime | None:
    if value in (None, b"", b"0", 0):
        return None
    return datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A snapshot of a job as stored in Redis."""

    id: str
    queue: str
    task: str
    status: JobStatus
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    timeout: float | None
    created_at: datetime | None
    due_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    error: dict[str, Any] | None
    key: str | None
    worker: str | None
    progress: Any
    redeliveries: int
    raw_payload: bytes

    @classmethod
    def from_hash(cls, job_id: str, queue: str, fields: dict[bytes, bytes]) -> JobRecord:
        from .errors import SerializationError
        from .serialization import decode_error, decode_payload, decode_value

        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return value.decode() if value is not None else None

        payload = fields.get(b"payload", b"")
        try:
            args, kwargs = decode_payload(payload)
        except SerializationError:
            args, kwargs = [], {}
        try:
            result = decode_value(fields.get(b"result"))
        except SerializationError:
            result = fields.get(b"result", b"").decode("utf-8", "replace")
        try:
            progress = decode_value(fields.get(b"progress"))
        except SerializationError:
            progress = None
        timeout_ms = int(fields.get(b"timeout", b"0") or 0)
        return cls(
            id=job_id,
            queue=queue,
            task=text(b"task") or "",
            status=JobStatus(text(b"status") or "queued"),
            args=args,
            kwargs=kwargs,
            priority=int(fields.get(b"priority", b"10")),
            attempt=int(fields.get(b"attempt", b"0")),
            max_attempts=int(fields.get(b"max_attempts", b"1")),
            timeout=timeout_ms / 1000.0 if timeout_ms else None,
            created_at=_ms_to_datetime(fields.get(b"created")),
            due_at=_ms_to_datetime(fields.get(b"due")),
            started_at=_ms_to_datetime(fields.get(b"started")),
            finished_at=_ms_to_datetime(fields.get(b"finished")),
            result=result,
            error=decode_error(fields.get(b"error")),
            key=text(b"key"),
            worker=text(b"worker"),
            progress=progress,
            redeliveries=int(fields.get(b"redeliveries", b"0")),
            raw_payload=payload,
        )

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "queue": self.queue,
            "task": self.task,
            "status": str(self.status),
            "args": self.args,
            "kwargs": self.kwargs,
            "priority": self.priority,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "created_at": iso(self.created_at),
            "due_at": iso(self.due_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "result": self.result,
            "error": self.error,
            "key": self.key,
            "worker": self.worker,
            "progress": self.progress,
            "redeliveries": self.redeliveries,
        }
