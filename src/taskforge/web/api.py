"""The handlers of the HTTP API. Each receives a ``Call`` whose body, query and path parameters are
already validated against the operation's types, and uses only the public core API (``TaskForge``,
``Job``, ``Inspector``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import metrics as fleet_metrics
from ..errors import RedisUnavailable, ValidationError
from ..inspector import QueueStats, WorkerInfo
from ..job import JobRecord, parse_priority
from ..redis.keys import validate_queue_name, validate_task_name
from ..serialization import encode_payload
from . import models as m

if TYPE_CHECKING:
    from ..client import Job as JobHandle
    from ..client import TaskForge
    from ..inspector import Inspector

__all__ = ["ApiError", "Call", "reply"]

READY_TIMEOUT_SECONDS = 2.0
MAX_BUCKETS = 720
_MAX_SCAN_ROUNDS = 20  # round trips one dead-letter listing may spend looking for matches


class ApiError(Exception):
    """Ends a request with an error status and a JSON body {error, message}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class Call:
    request: Request
    forge: TaskForge
    body: Any
    query: Any
    path: dict[str, str]
    heartbeat_seconds: float = 15.0
    closing: threading.Event = field(default_factory=threading.Event)
    """Set when the server begins to shut down: event streams end, so that it can."""

    @property
    def inspector(self) -> Inspector:
        return self.forge.inspector


def reply(value: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type="application/json")


# -- conversions ------------------------------------------------------------------------------


def job_model(record: JobRecord, created: bool | None = None) -> m.Job:
    error = None
    if record.error is not None:
        e = record.error
        error = m.JobError(
            type=str(e.get("type", "Error")),
            message=str(e.get("message", "")),
            traceback=str(e.get("traceback", "") or ""),
        )
    return m.Job(
        id=record.id,
        queue=record.queue,
        task=record.task,
        status=str(record.status),  # type: ignore[arg-type]
        args=record.args,
        kwargs=record.kwargs,
        priority=record.priority,
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        timeout=record.timeout,
        created_at=record.created_at,
        due_at=record.due_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        result=record.result,
        error=error,
        key=record.key,
        worker=record.worker,
        progress=record.progress,
        redeliveries=record.redeliveries,
        created=created,
    )


def _queue_model(
    stats: QueueStats, completed: int, dead: int, workers: list[WorkerInfo]
) -> m.QueueInfo:
    return m.QueueInfo(
        queue=stats.queue,
        counts=m.StateCounts(
            queued=stats.queued,
            scheduled=stats.scheduled,
            active=stats.active,
            dead=stats.dead,
            completed=stats.completed,
        ),
        paused=stats.paused,
        oldest_waiting_seconds=stats.oldest_age_seconds,
        completed_last_minute=completed,
        dead_last_minute=dead,
        workers=sum(1 for w in workers if stats.queue in w.queues),
        counters=stats.counters,
    )


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


async def _known_queue(call: Call, queue: str) -> None:
    queues = await call.inspector.queues_async()
    if queue not in queues:
        known = ", ".join(queues[:20]) or "none yet"
        raise ApiError(404, "not_found", f"no queue named {queue!r} (known queues: {known})")


async def _job(call: Call, job_id: str, queue: str | None) -> JobHandle[Any]:
    if queue is not None:
        await _known_queue(call, queue)
    return await call.forge.job_async(job_id, queue)


# -- health and metrics -----------------------------------------------------------------------


async def healthz(call: Call) -> Response:
    return reply(m.Health(ok=True))


async def readyz(call: Call) -> Response:
    try:
        # Probes have short timeouts of their own: answer before the client's retries end.
        health = await asyncio.wait_for(call.forge.health_async(), READY_TIMEOUT_SECONDS)
    except RedisUnavailable as exc:
        raise ApiError(503, "unavailable", str(exc)) from exc
    except TimeoutError:
        raise ApiError(
            503, "unavailable", f"Redis did not answer within {READY_TIMEOUT_SECONDS:g} s"
        ) from None
    if not health["ok"]:
        raise ApiError(503, "unavailable", "Redis answered, but a write did not read back")
    return reply(
        m.Ready(
            ok=True,
            server=health["server"],
            version=health["version"],
            latency_ms=health["latency_ms"],
        )
    )


async def metrics(call: Call) -> Response:
    snapshot = await fleet_metrics.collect_async(call.forge)
    return Response(fleet_metrics.render(snapshot), media_type=fleet_metrics.CONTENT_TYPE)


# -- jobs -------------------------------------------------------------------------------------


def _options(req: m.EnqueueRequest) -> dict[str, Any]:
    return {
        "delay": req.delay,
        "at": req.at,
        "priority": req.priority,
        "max_attempts": req.max_attempts,
        "timeout": req.timeout,
    }


async def enqueue(call: Call) -> Response:
    req: m.EnqueueRequest = call.body
    job = await call.forge.enqueue_with_async(
        req.task, req.args, req.kwargs, queue=req.queue, key=req.key, **_options(req)
    )
    record = await job.info_async()
    return reply(job_model(record, created=job.created), 201 if job.created else 200)


def _precheck(req: m.EnqueueRequest, max_bytes: int, index: int) -> None:
    """What enqueue would refuse, checked for every job before any is written."""
    try:
        validate_task_name(req.task)
        if req.queue is not None:
            validate_queue_name(req.queue)
        if req.delay is not None and req.at is not None:
            raise ValidationError("pass either delay or at, not both")
        parse_priority(req.priority)
        encode_payload(req.args, req.kwargs, max_bytes)
    except ValidationError as exc:
        raise type(exc)(f"jobs[{index}]: {exc}") from exc


async def enqueue_batch(call: Call) -> Response:
    req: m.BatchEnqueueRequest = call.body
    limit = call.forge.settings.max_payload_bytes
    for i, item in enumerate(req.jobs):
        _precheck(item, limit, i)
    out: list[m.EnqueuedItem] = []
    i = 0
    # Runs of jobs that share task and options go out as one enqueue_many (one round trip).
    while i < len(req.jobs):
        first = req.jobs[i]
        if first.key is not None:
            job = await call.forge.enqueue_with_async(
                first.task, first.args, first.kwargs, queue=first.queue, key=first.key,
                **_options(first),
            )  # fmt: skip
            out.append(
                m.EnqueuedItem(id=job.id, queue=job.queue, status=_status(job), created=job.created)
            )
            i += 1
            continue
        group_key = (first.task, first.queue, *_options(first).values())
        j = i
        while (
            j < len(req.jobs)
            and req.jobs[j].key is None
            and (req.jobs[j].task, req.jobs[j].queue, *_options(req.jobs[j]).values()) == group_key
        ):
            j += 1
        jobs = await call.forge.enqueue_many_async(
            first.task,
            [(x.args, x.kwargs) for x in req.jobs[i:j]],
            queue=first.queue,
            **_options(first),
        )
        out += [
            m.EnqueuedItem(id=job.id, queue=job.queue, status=_status(job), created=job.created)
            for job in jobs
        ]
        i = j
    return reply(m.BatchEnqueueResponse(jobs=out), 201)


def _status(job: JobHandle[Any]) -> Any:
    return job.initial_status or "queued"


async def get_job(call: Call) -> Response:
    job = await _job(call, call.path["job_id"], call.query.queue)
    return reply(job_model(await job.info_async()))


async def cancel_job(call: Call) -> Response:
    job = await _job(call, call.path["job_id"], call.query.queue)
    if not await job.cancel_async():
        status = await job.status_async()
        raise ApiError(409, "conflict", f"job {job.id} is already {status}: nothing to cancel")
    status = await job.status_async()
    return reply(
        m.CancelResponse(
            id=job.id,
            queue=job.queue,
            status=str(status),  # type: ignore[arg-type]
            cancel_requested=status == "active",
        )
    )


# -- queues -----------------------------------------------------------------------------------


async def _queue_infos(call: Call, queues: list[str] | None) -> list[m.QueueInfo]:
    inspector = call.inspector
    stats = await inspector.stats_async(queues)
    if not stats:
        return []
    names = [s.queue for s in stats]
    throughput = await inspector.throughput_async(names, 60, 60)
    workers = await inspector.workers_async()
    return [
        _queue_model(s, t.completed[0], t.dead[0], workers)
        for s, t in zip(stats, throughput, strict=True)
    ]


async def list_queues(call: Call) -> Response:
    return reply(m.QueueList(queues=await _queue_infos(call, None)))


async def get_queue(call: Call) -> Response:
    queue = call.path["queue"]
    await _known_queue(call, queue)
    return reply((await _queue_infos(call, [queue]))[0])


async def queue_jobs(call: Call) -> Response:
    queue = call.path["queue"]
    q: m.JobsQuery = call.query
    await _known_queue(call, queue)
    offset = int(q.cursor) if q.cursor else 0
    stats = (await call.inspector.stats_async([queue]))[0]
    total = int(getattr(stats, q.state))
    records = await call.inspector.jobs_async(queue, q.state, offset, q.limit)
    following = offset + q.limit
    return reply(
        m.JobPage(
            jobs=[job_model(r) for r in records],
            total=total,
            next_cursor=str(following) if following < total else None,
        )
    )


async def pause_queue(call: Call) -> Response:
    queue = call.path["queue"]
    await _known_queue(call, queue)
    await call.inspector.pause_async(queue)
    return reply(m.QueueState(queue=queue, paused=True))


async def resume_queue(call: Call) -> Response:
    queue = call.path["queue"]
    await _known_queue(call, queue)
    await call.inspector.resume_async(queue)
    return reply(m.QueueState(queue=queue, paused=False))


async def purge_queue(call: Call) -> Response:
    queue = call.path["queue"]
    req: m.PurgeRequest = call.body
    await _known_queue(call, queue)
    deleted = await call.inspector.purge_async(queue, req.state)
    return reply(m.PurgeResponse(queue=queue, state=req.state, deleted=deleted))


# -- dead letters -----------------------------------------------------------------------------


async def _dead_queues(call: Call, queue: str | None) -> list[QueueStats]:
    if queue is not None:
        await _known_queue(call, queue)
        return await call.inspector.stats_async([queue])
    return await call.inspector.stats_async()


async def list_dead(call: Call) -> Response:
    q: m.DeadListQuery = call.query
    stats = await _dead_queues(call, q.queue)
    start_queue, start_offset = "", 0
    if q.cursor:
        start_queue, _, text = q.cursor.rpartition("~")
        start_offset = int(text)
    jobs: list[m.Job] = []
    next_cursor = None
    rounds = 0
    for s in stats:  # sorted by name; a cursor resumes at its queue, or the next name after it
        if s.queue < start_queue:
            continue
        offset = start_offset if s.queue == start_queue else 0
        while offset < s.dead:
            if len(jobs) >= q.limit or rounds >= _MAX_SCAN_ROUNDS:
                next_cursor = f"{s.queue}~{offset}"
                break
            want = q.limit - len(jobs)
            records = await call.inspector.jobs_async(s.queue, "dead", offset, want)
            rounds += 1
            offset += want
            jobs += [job_model(r) for r in records if q.task is None or r.task == q.task]
        if next_cursor is not None:
            break
    return reply(m.JobPage(jobs=jobs, total=sum(s.dead for s in stats), next_cursor=next_cursor))


async def requeue_dead_job(call: Call) -> Response:
    job = await _job(call, call.path["job_id"], call.query.queue)
    if not await call.inspector.requeue_dead_async(job.queue, [job.id]):
        status = await job.status_async()
        raise ApiError(409, "conflict", f"job {job.id} is {status}, not dead: nothing to requeue")
    return reply(m.RequeueResponse(requeued=1))


async def delete_dead_job(call: Call) -> Response:
    job = await _job(call, call.path["job_id"], call.query.queue)
    if not await call.inspector.purge_async(job.queue, "dead", [job.id]):
        status = await job.status_async()
        raise ApiError(409, "conflict", f"job {job.id} is {status}, not dead: not deleted")
    return reply(m.DeleteResponse(deleted=1))


async def requeue_dead(call: Call) -> Response:
    req: m.DeadFilter = call.body
    if req.queue is not None:
        await _known_queue(call, req.queue)
    moved = await call.inspector.requeue_dead_where_async(req.queue, req.task, req.ids)
    return reply(m.RequeueResponse(requeued=moved))


async def purge_dead(call: Call) -> Response:
    req: m.DeadFilter = call.body
    if req.queue is not None:
        await _known_queue(call, req.queue)
    deleted = await call.inspector.purge_dead_where_async(req.queue, req.task, req.ids)
    return reply(m.DeleteResponse(deleted=deleted))


# -- workers, throughput, events --------------------------------------------------------------


async def list_workers(call: Call) -> Response:
    inspector = call.inspector
    workers = await inspector.workers_async()
    known = set(await inspector.queues_async())
    running: dict[str, JobRecord] = {}
    for queue in sorted({q for w in workers for q in w.queues} & known):
        for record in await inspector.jobs_async(queue, "active", 0, 1000):
            running[record.id] = record
    out = []
    for w in workers:
        jobs = []
        for job_id in w.active_jobs:
            r = running.get(job_id)
            jobs.append(
                m.WorkerJob(
                    id=job_id,
                    queue=r.queue if r else None,
                    task=r.task if r else None,
                    started_at=r.started_at if r else None,
                )
            )
        out.append(
            m.Worker(
                id=w.id,
                host=w.host,
                pid=w.pid,
                queues=w.queues,
                concurrency=w.concurrency,
                started_at=_ts(w.started_at),
                last_beat=_ts(w.last_beat),
                processed=w.processed,
                failed=w.failed,
                version=w.version,
                jobs=jobs,
            )
        )
    return reply(m.WorkerList(workers=out))


async def throughput(call: Call) -> Response:
    q: m.ThroughputQuery = call.query
    # A step longer than the window gives one bucket; a short one is widened to keep at most
    # MAX_BUCKETS (the answer says which step it used).
    step = max(min(q.step, q.window), -(-q.window // MAX_BUCKETS))
    if q.queue is not None:
        await _known_queue(call, q.queue)
    series = await call.inspector.throughput_async([q.queue] if q.queue else None, q.window, step)
    buckets = -(-q.window // step)
    completed = [sum(s.completed[i] for s in series) for i in range(buckets)]
    dead = [sum(s.dead[i] for s in series) for i in range(buckets)]
    start = series[0].start if series else datetime.now(UTC).timestamp() - buckets * step
    return reply(
        m.ThroughputResponse(
            start=_ts(start),
            step_seconds=float(step),
            queues=[
                m.ThroughputSeries(queue=s.queue, completed=s.completed, dead=s.dead)
                for s in series
            ],
            total=m.ThroughputSeries(queue="*", completed=completed, dead=dead),
        )
    )


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


async def events(call: Call) -> Response:
    q: m.EventsQuery = call.query
    for queue in q.queue:
        validate_queue_name(queue)
    # Ticks every second (no Redis command: a local wait), to keep time and send keep-alives.
    stream = call.inspector.events_async(q.queue or None, q.job, idle_seconds=1.0)
    loop = asyncio.get_running_loop()
    deadline = None if q.timeout is None else loop.time() + q.timeout
    # Subscribe before answering, so that a client that got the headers misses nothing.
    try:
        await anext(stream)
    except BaseException:
        await stream.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        last_write = loop.time()
        try:
            yield b"retry: 2000\n\n"
            yield _sse("ready", {"queues": q.queue, "job": q.job})
            async for event in stream:
                now = loop.time()
                if event is not None:
                    last_write = now
                    yield _sse("job", event)
                elif now - last_write >= call.heartbeat_seconds:
                    last_write = now
                    yield b": keep-alive\n\n"
                if deadline is not None and now >= deadline:
                    yield _sse("end", {"reason": "timeout"})
                    return
                if call.closing.is_set():
                    yield _sse("end", {"reason": "shutdown"})
                    return
        except RedisUnavailable as exc:
            yield _sse("error", {"error": "unavailable", "message": str(exc)})
        finally:
            await stream.aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
