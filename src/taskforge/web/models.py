"""The HTTP API's request and response bodies, and its query parameters, as msgspec structs.

They validate requests (types, ranges, unknown fields) and encode responses, and the OpenAPI spec
is generated from them (``openapi.py``), so the spec and the server cannot disagree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import Meta, Struct

__all__ = [
    "QUEUE_PATTERN",
    "BatchEnqueueRequest",
    "BatchEnqueueResponse",
    "CancelResponse",
    "DeadFilter",
    "DeadListQuery",
    "DeleteResponse",
    "EnqueueRequest",
    "EnqueuedItem",
    "ErrorBody",
    "EventsQuery",
    "Health",
    "Job",
    "JobError",
    "JobId",
    "JobLookupQuery",
    "JobPage",
    "JobsQuery",
    "PurgeRequest",
    "PurgeResponse",
    "QueueInfo",
    "QueueList",
    "QueueName",
    "QueueState",
    "Ready",
    "RequeueResponse",
    "StateCounts",
    "ThroughputQuery",
    "ThroughputResponse",
    "ThroughputSeries",
    "Worker",
    "WorkerJob",
    "WorkerList",
    "decode_json",
]

# The same rules as taskforge.redis.keys, stated for the spec.
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
TASK_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9]{1,64}$"

QueueName = Annotated[str, Meta(pattern=QUEUE_PATTERN, description="a queue name")]
TaskName = Annotated[str, Meta(pattern=TASK_PATTERN, description="a registered task name")]
JobId = Annotated[str, Meta(pattern=JOB_ID_PATTERN, description="a job id (letters, digits)")]
Limit = Annotated[int, Meta(ge=1, le=1000, description="page size")]
PriorityName = Literal["low", "normal", "high", "critical"]
Priority = Annotated[int, Meta(ge=-1000, le=1000)] | PriorityName
# "scheduled" holds delayed jobs and failed ones waiting for their retry (status "retrying").
State = Literal["queued", "scheduled", "active", "dead", "completed"]
PurgeableState = Literal["queued", "scheduled", "dead", "completed"]
Status = Literal["scheduled", "queued", "active", "retrying", "completed", "dead", "canceled"]

_TEN_YEARS = 10 * 365 * 24 * 3600.0

T = TypeVar("T")


def decode_json(raw: bytes, model: type[T]) -> T:
    """Decode and validate a JSON body. Like JSON Schema (and unlike msgspec), accepts 3.0 where
    an integer is expected; numbers in free-form fields (job arguments) stay as they were sent.
    Raises msgspec.DecodeError (not JSON) or msgspec.ValidationError."""
    value = msgspec.json.decode(raw)
    return msgspec.convert(_integral(value, mi.type_info(model)), model)


def _integral(value: Any, info: mi.Type) -> Any:
    if isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(value, float):
        ints = isinstance(info, mi.IntType) or (
            isinstance(info, mi.UnionType)
            and any(isinstance(t, mi.IntType) for t in info.types)
            and not any(isinstance(t, mi.FloatType) for t in info.types)
        )
        return int(value) if ints and value.is_integer() else value
    if isinstance(info, mi.UnionType):
        for member in info.types:
            if isinstance(member, mi.Metadata):
                member = member.type
            if isinstance(value, dict) and isinstance(member, mi.StructType):
                return _integral(value, member)
            if isinstance(value, list) and isinstance(member, mi.ListType):
                return _integral(value, member)
        return value
    if isinstance(info, mi.StructType) and isinstance(value, dict):
        for f in info.fields:
            if f.encode_name in value:
                value[f.encode_name] = _integral(value[f.encode_name], f.type)
        return value
    if isinstance(info, mi.ListType) and isinstance(value, list):
        return [_integral(item, info.item_type) for item in value]
    return value


# -- requests ---------------------------------------------------------------------------------


class EnqueueRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """A job to enqueue. Give at most one of ``delay`` and ``at``."""

    __schema_extra__: ClassVar[dict[str, Any]] = {"not": {"required": ["delay", "at"]}}

    task: TaskName
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: QueueName | None = None
    """Default: the task's queue if this server knows the task, else ``default``."""
    delay: Annotated[float, Meta(ge=0, le=_TEN_YEARS, description="seconds from now")] | None = None
    at: Annotated[datetime, Meta(tz=True, description="when to run (RFC 3339)")] | None = None
    priority: Priority | None = None
    key: Annotated[str, Meta(min_length=1, max_length=512)] | None = None
    """Idempotency key: enqueueing again with the same key returns the existing job."""
    max_attempts: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    timeout: Annotated[float, Meta(gt=0, le=_TEN_YEARS, description="seconds per run")] | None = (
        None
    )


class BatchEnqueueRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    jobs: Annotated[list[EnqueueRequest], Meta(min_length=1, max_length=1000)]


class PurgeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    state: PurgeableState


class DeadFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    """Which dead jobs: the given ids, or all of a queue and/or task; empty means all."""

    queue: QueueName | None = None
    task: TaskName | None = None
    ids: Annotated[list[JobId], Meta(max_length=1000)] | None = None


# -- query parameters -------------------------------------------------------------------------


class JobLookupQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    queue: QueueName | None = None
    """Skips the search over queues."""


class JobsQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    state: State = "queued"
    cursor: Annotated[str, Meta(pattern=r"^[0-9]{1,9}$")] | None = None
    """From the previous page's ``next_cursor``."""
    limit: Limit = 50


class DeadListQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    queue: QueueName | None = None
    task: TaskName | None = None
    cursor: (
        Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}~[0-9]{1,9}$")] | None
    ) = None
    """From the previous page's ``next_cursor``."""
    limit: Limit = 50


class ThroughputQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    window: Annotated[int, Meta(ge=10, le=86400, description="seconds of history")] = 600
    step: Annotated[
        int,
        Meta(
            ge=1,
            le=3600,
            description="seconds per bucket; capped at the window, widened to keep at most 720"
            " buckets (the answer gives the step used)",
        ),
    ] = 10
    queue: QueueName | None = None


class EventsQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    queue: list[QueueName] = []
    """Repeat to follow several queues; none: all queues."""
    job: JobId | None = None
    timeout: Annotated[float, Meta(gt=0, le=86400)] | None = None
    """End the stream after this many seconds."""


# -- responses --------------------------------------------------------------------------------


class ErrorBody(Struct, kw_only=True):
    error: str
    """A stable code: bad_request, invalid, unauthorized, forbidden, not_found, conflict, ..."""
    message: str


class JobError(Struct, kw_only=True):
    type: str
    message: str
    traceback: str = ""


class Job(Struct, kw_only=True, omit_defaults=True):
    id: str
    queue: str
    task: str
    status: Status
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
    error: JobError | None
    key: str | None
    worker: str | None
    progress: Any
    redeliveries: int
    created: bool | None = None
    """Only on enqueue: false when the idempotency key named an existing job (this one)."""


class JobPage(Struct, kw_only=True):
    jobs: list[Job]
    total: int
    """Jobs in that state (or, for dead letters across queues, in the queues listed)."""
    next_cursor: str | None


class EnqueuedItem(Struct, kw_only=True):
    id: str
    queue: str
    status: Status
    created: bool


class BatchEnqueueResponse(Struct, kw_only=True):
    jobs: list[EnqueuedItem]


class CancelResponse(Struct, kw_only=True):
    id: str
    queue: str
    status: Status
    """``canceled``, or ``active`` when the job is running: its worker stops it at its next
    heartbeat."""
    cancel_requested: bool


class StateCounts(Struct, kw_only=True):
    queued: int
    scheduled: int
    active: int
    dead: int
    completed: int


class QueueInfo(Struct, kw_only=True):
    queue: str
    counts: StateCounts
    paused: bool
    oldest_waiting_seconds: float | None
    """Age of the next job to run; null when none waits."""
    completed_last_minute: int
    dead_last_minute: int
    workers: int
    """Live workers that serve this queue."""
    counters: dict[str, int]
    """Events since the queue was created (enqueued, completed, failed, retried, dead, ...)."""


class QueueList(Struct, kw_only=True):
    queues: list[QueueInfo]


class QueueState(Struct, kw_only=True):
    queue: str
    paused: bool


class PurgeResponse(Struct, kw_only=True):
    queue: str
    state: str
    deleted: int


class RequeueResponse(Struct, kw_only=True):
    requeued: int


class DeleteResponse(Struct, kw_only=True):
    deleted: int


class WorkerJob(Struct, kw_only=True):
    id: str
    queue: str | None
    task: str | None
    started_at: datetime | None


class Worker(Struct, kw_only=True):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    last_beat: datetime
    processed: int
    failed: int
    version: str
    jobs: list[WorkerJob]


class WorkerList(Struct, kw_only=True):
    workers: list[Worker]


class ThroughputSeries(Struct, kw_only=True):
    queue: str
    completed: list[int]
    dead: list[int]


class ThroughputResponse(Struct, kw_only=True):
    start: datetime
    step_seconds: float
    queues: list[ThroughputSeries]
    total: ThroughputSeries
    """Summed over the queues, under the name ``*``."""


class Health(Struct, kw_only=True):
    ok: bool


class Ready(Struct, kw_only=True):
    ok: bool
    server: str
    version: str
    latency_ms: float
