"""Read and steer queues: counts, listings, dead letters, workers, pause and purge.

The one API that the CLI, the HTTP API, the dashboard and the metrics use; each method has a sync
form and an ``_async`` twin over the same flow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ServerNotSupported, ValidationError
from .job import JobRecord
from .redis import operations as ops
from .redis.driver import Flow
from .redis.keys import validate_queue_name
from .redis.ops import Op, command

if TYPE_CHECKING:
    from .client import TaskForge

__all__ = [
    "STATES",
    "Inspector",
    "QueueStats",
    "Throughput",
    "WorkerInfo",
    "check_server",
    "server_version",
]

STATES = ("queued", "scheduled", "active", "dead", "completed")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def server_version(info: dict[str, Any]) -> tuple[str, tuple[int, ...]]:
    """("redis" | "valkey", version) from INFO server. Valkey also reports a redis_version."""
    if info.get("valkey_version"):
        kind, text = "valkey", str(info["valkey_version"])
    else:
        kind, text = "redis", str(info.get("redis_version", "0"))
    return kind, tuple(int(p) for p in text.split(".") if p.isdigit())


def check_server(info: dict[str, Any], maxmemory_policy: str | None) -> list[str]:
    """Refuse servers that are too old; return warnings about risky settings."""
    kind, version = server_version(info)
    minimum = (7, 2) if kind == "valkey" else (7, 0)
    if version < minimum:
        raise ServerNotSupported(
            f"{kind} {'.'.join(map(str, version))} is too old: TaskForge needs Redis >= 7.0 or"
            " Valkey >= 7.2. Upgrade the server, or unset TASKFORGE_REDIS_URL to use the"
            " embedded one"
        )
    warnings = []
    if maxmemory_policy and maxmemory_policy != "noeviction":
        warnings.append(
            f"maxmemory-policy is {maxmemory_policy!r}: Redis may evict job records under memory"
            " pressure, and an evicted job is a lost job. Set `maxmemory-policy noeviction`"
        )
    return warnings


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    queued: int
    scheduled: int
    active: int
    dead: int
    completed: int
    paused: bool
    oldest_age_seconds: float | None
    """Age of the job at the head of the queue (the next to run), None when empty."""
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_beat: float
    active_jobs: list[str]
    processed: int
    failed: int
    version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Jobs that finished in consecutive time buckets, oldest first, from the completed and dead
    sets (so within their retention windows). ``start`` is the first bucket's start (s, Redis
    clock); the last bucket ends now."""

    queue: str
    start: float
    step_seconds: float
    completed: list[int]
    dead: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Inspector:
    def __init__(self, forge: TaskForge) -> None:
        self.forge = forge

    # -- queues ------------------------------------------------------------------------------

    def _queues_flow(self) -> Flow[list[str]]:
        members = yield command("SMEMBERS", self.forge.global_keys.queues)
        return sorted(_s(m) for m in members)

    def queues(self) -> list[str]:
        return self.forge.run(self._queues_flow())

    async def queues_async(self) -> list[str]:
        return await self.forge.run_async(self._queues_flow())

    def _stats_flow(self, queues: list[str] | None) -> Flow[list[QueueStats]]:
        if queues is None:
            queues = yield from self._queues_flow()
        requests: list[Op[Any]] = []
        for queue in queues:
            k = self.forge.keys(queue)
            requests += [
                command("ZCARD", k.ready),
                command("ZCARD", k.scheduled),
                command("ZCARD", k.active),
                command("ZCARD", k.dead),
                command("ZCARD", k.completed),
                command("HGET", k.meta, "paused"),
                command("HGETALL", k.stats),
                command("ZRANGE", k.ready, 0, 0),
                command("TIME"),
            ]
        replies = (yield requests) if requests else []
        heads: list[Op[Any]] = []
        for i, queue in enumerate(queues):
            head = replies[i * 9 + 7]
            if head:
                heads.append(command("HGET", self.forge.keys(queue).job(_s(head[0])), "created"))
        created = (yield heads) if heads else []
        out = []
        it = iter(created)
        for i, queue in enumerate(queues):
            r = replies[i * 9 : i * 9 + 9]
            now_s, now_us = r[8]
            now_ms = int(now_s) * 1000 + int(now_us) // 1000
            age = None
            if r[7]:
                born = next(it)
                age = max(0.0, (now_ms - int(born)) / 1000) if born else None
            counters = {_s(k): int(v) for k, v in (r[6] or {}).items() if _s(k) != "seq"}
            out.append(
                QueueStats(
                    queue, int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]),
                    r[5] in (b"1", "1"), age, counters,
                )
            )  # fmt: skip
        return out

    def stats(self, queues: list[str] | None = None) -> list[QueueStats]:
        """Counts per state for each queue (all known queues by default)."""
        return self.forge.run(self._stats_flow(queues))

    async def stats_async(self, queues: list[str] | None = None) -> list[QueueStats]:
        return await self.forge.run_async(self._stats_flow(queues))

    # -- job listings ------------------------------------------------------------------------

    def _jobs_flow(self, queue: str, state: str, offset: int, limit: int) -> Flow[list[JobRecord]]:
        validate_queue_name(queue)
        k = self.forge.keys(queue)
        sets = {
            "queued": k.ready,
            "scheduled": k.scheduled,
            "retrying": k.scheduled,
            "active": k.active,
            "dead": k.dead,
            "completed": k.completed,
        }
        if state not in sets:
            raise ValidationError(f"unknown state {state!r}: use one of {', '.join(sets)}")
        if offset < 0 or not 0 < limit <= 1000:
            raise ValidationError("offset must be >= 0 and limit between 1 and 1000")
        newest_first = state in ("dead", "completed")
        verb = "ZREVRANGE" if newest_first else "ZRANGE"
        ids = yield command(verb, sets[state], offset, offset + limit - 1)
        ids = [_s(i) for i in ids]
        if not ids:
            return []
        records = yield [ops.job_fields(k, job_id) for job_id in ids]
        found = [
            JobRecord.from_hash(job_id, queue, fields)
            for job_id, fields in zip(ids, records, strict=True)
            if fields
        ]
        if state == "retrying":
            # "scheduled" lists the whole set (delayed jobs and retries waiting for their due
            # time, as the HTTP API documents); "retrying" only the retries.
            found = [record for record in found if record.status == state]
        return found

    def jobs(self, queue: str, state: str, offset: int = 0, limit: int = 50) -> list[JobRecord]:
        return self.forge.run(self._jobs_flow(queue, state, offset, limit))

    async def jobs_async(
        self, queue: str, state: str, offset: int = 0, limit: int = 50
    ) -> list[JobRecord]:
        return await self.forge.run_async(self._jobs_flow(queue, state, offset, limit))

    def dead_letters(self, queue: str, offset: int = 0, limit: int = 50) -> list[JobRecord]:
        """Dead-lettered jobs, newest first."""
        return self.jobs(queue, "dead", offset, limit)

    async def dead_letters_async(
        self, queue: str, offset: int = 0, limit: int = 50
    ) -> list[JobRecord]:
        return await self.jobs_async(queue, "dead", offset, limit)

    # -- steering ----------------------------------------------------------------------------

    def _requeue_flow(
        self, queue: str | None, ids: list[str] | None, task: str | None
    ) -> Flow[int]:
        queues = [queue] if queue else (yield from self._queues_flow())
        total = 0
        for q in queues:
            op = ops.requeue_dead(
                self.forge.keys(q), ids or [], self.forge.settings.publish_events, task=task or ""
            )
            total += yield op
        return total

    def requeue_dead(
        self, queue: str | None = None, ids: list[str] | None = None, task: str | None = None
    ) -> int:
        """Requeue dead jobs: the given ids, or all (up to 1,000 per queue per call)."""
        return self.forge.run(self._requeue_flow(queue, ids, task))

    async def requeue_dead_async(
        self, queue: str | None = None, ids: list[str] | None = None, task: str | None = None
    ) -> int:
        return await self.forge.run_async(self._requeue_flow(queue, ids, task))

    def _purge_flow(self, queue: str, state: str, ids: list[str] | None) -> Flow[int]:
        if state not in ("queued", "scheduled", "retrying", "dead", "completed"):
            raise ValidationError(
                f"cannot purge state {state!r}: use queued, scheduled, dead or completed"
                " (active jobs are canceled, not purged)"
            )
        total = 0
        while True:
            deleted: int = yield ops.purge(self.forge.keys(queue), state, ids or [])
            total += deleted
            if ids or deleted == 0:
                return total

    def purge(self, queue: str, state: str, ids: list[str] | None = None) -> int:
        return self.forge.run(self._purge_flow(queue, state, ids))

    async def purge_async(self, queue: str, state: str, ids: list[str] | None = None) -> int:
        return await self.forge.run_async(self._purge_flow(queue, state, ids))

    def purge_dead(self, queue: str, ids: list[str] | None = None) -> int:
        return self.purge(queue, "dead", ids)

    async def purge_dead_async(self, queue: str, ids: list[str] | None = None) -> int:
        return await self.purge_async(queue, "dead", ids)

    def _dead_where_flow(
        self, action: str, queue: str | None, task: str | None, ids: list[str] | None
    ) -> Flow[int]:
        """Requeue or purge every dead job that matches: of ``queue`` (default: all queues),
        of ``task``, among ``ids``. Loops until done, 1,000 jobs per script call."""
        queues = [validate_queue_name(queue)] if queue else (yield from self._queues_flow())
        events = self.forge.settings.publish_events
        total = 0
        for q in queues:
            k = self.forge.keys(q)
            chosen = list(ids) if ids is not None else None
            if chosen is None and task:
                members = yield command("ZRANGE", k.dead, 0, -1)
                chosen = [_s(m) for m in members]
            if chosen is not None and task:
                for i in range(0, len(chosen), 1000):
                    batch = chosen[i : i + 1000]
                    tasks = yield [command("HGET", k.job(j), "task") for j in batch]
                    chosen[i : i + 1000] = [
                        j
                        for j, t in zip(batch, tasks, strict=True)
                        if t is not None and _s(t) == task
                    ]
            if chosen is None:  # everything dead in the queue
                while True:
                    op = (
                        ops.requeue_dead(k, [], events)
                        if action == "requeue"
                        else ops.purge(k, "dead")
                    )
                    done = yield op
                    total += done
                    if done == 0:
                        break
                continue
            for i in range(0, len(chosen), 1000):
                batch = chosen[i : i + 1000]
                op = (
                    ops.requeue_dead(k, batch, events)
                    if action == "requeue"
                    else ops.purge(k, "dead", batch)
                )
                total += yield op
        return total

    def requeue_dead_where(
        self, queue: str | None = None, task: str | None = None, ids: list[str] | None = None
    ) -> int:
        """Requeue all dead jobs that match (any queue, any task, any id by default)."""
        return self.forge.run(self._dead_where_flow("requeue", queue, task, ids))

    async def requeue_dead_where_async(
        self, queue: str | None = None, task: str | None = None, ids: list[str] | None = None
    ) -> int:
        return await self.forge.run_async(self._dead_where_flow("requeue", queue, task, ids))

    def purge_dead_where(
        self, queue: str | None = None, task: str | None = None, ids: list[str] | None = None
    ) -> int:
        """Delete all dead jobs that match (any queue, any task, any id by default)."""
        return self.forge.run(self._dead_where_flow("purge", queue, task, ids))

    async def purge_dead_where_async(
        self, queue: str | None = None, task: str | None = None, ids: list[str] | None = None
    ) -> int:
        return await self.forge.run_async(self._dead_where_flow("purge", queue, task, ids))

    def pause(self, queue: str) -> None:
        self.forge.run(_single(ops.pause(self.forge.keys(queue), True)))

    def resume(self, queue: str) -> None:
        self.forge.run(_single(ops.pause(self.forge.keys(queue), False)))

    async def pause_async(self, queue: str) -> None:
        await self.forge.run_async(_single(ops.pause(self.forge.keys(queue), True)))

    async def resume_async(self, queue: str) -> None:
        await self.forge.run_async(_single(ops.pause(self.forge.keys(queue), False)))

    # -- metrics and throughput --------------------------------------------------------------

    def _task_metrics_flow(self, queues: list[str] | None) -> Flow[dict[str, dict[str, int]]]:
        if queues is None:
            queues = yield from self._queues_flow()
        if not queues:
            return {}
        replies = yield [command("HGETALL", self.forge.keys(q).metrics) for q in queues]
        return {
            queue: {_s(k): int(v) for k, v in (raw or {}).items()}
            for queue, raw in zip(queues, replies, strict=True)
        }

    def task_metrics(self, queues: list[str] | None = None) -> dict[str, dict[str, int]]:
        """The raw per-task metrics hash of each queue, summed over every worker of the fleet
        (layout in ``taskforge.worker.metrics``)."""
        return self.forge.run(self._task_metrics_flow(queues))

    async def task_metrics_async(
        self, queues: list[str] | None = None
    ) -> dict[str, dict[str, int]]:
        return await self.forge.run_async(self._task_metrics_flow(queues))

    def _throughput_flow(
        self, queues: list[str] | None, window_seconds: float, step_seconds: float
    ) -> Flow[list[Throughput]]:
        if not (0 < step_seconds <= window_seconds <= 7 * 24 * 3600):
            raise ValidationError("throughput needs 0 < step <= window <= 7 days")
        buckets = -(-round(window_seconds * 1000) // round(step_seconds * 1000))
        if buckets > 1000:
            raise ValidationError(f"{buckets} buckets is too many: use at most 1000 (a wider step)")
        if queues is None:
            queues = yield from self._queues_flow()
        if not queues:
            return []
        now_s, now_us = yield command("TIME")
        end = int(now_s) * 1000 + int(now_us) // 1000 + 1  # exclusive: includes this millisecond
        step = round(step_seconds * 1000)
        start = end - buckets * step
        requests = []
        for queue in queues:
            k = self.forge.keys(queue)
            for zset in (k.completed, k.dead):
                requests += [
                    command(
                        "ZCOUNT", zset, start + i * step, f"({start + (i + 1) * step}", parse=int
                    )
                    for i in range(buckets)
                ]
        counts = yield requests
        out = []
        for n, queue in enumerate(queues):
            row = counts[n * 2 * buckets : (n + 1) * 2 * buckets]
            out.append(Throughput(queue, start / 1000, step / 1000, row[:buckets], row[buckets:]))
        return out

    def throughput(
        self, queues: list[str] | None = None, window_seconds: float = 60, step_seconds: float = 60
    ) -> list[Throughput]:
        """Completed and dead-lettered jobs per time bucket over the last ``window_seconds``
        (the default: one bucket, the last minute)."""
        return self.forge.run(self._throughput_flow(queues, window_seconds, step_seconds))

    async def throughput_async(
        self, queues: list[str] | None = None, window_seconds: float = 60, step_seconds: float = 60
    ) -> list[Throughput]:
        return await self.forge.run_async(
            self._throughput_flow(queues, window_seconds, step_seconds)
        )

    async def events_async(
        self, queues: list[str] | None = None, job_id: str | None = None, idle_seconds: float = 15
    ) -> AsyncGenerator[dict[str, Any] | None, None]:
        """Job events as they are published ({"event", "id", "queue", "task", "ts"}), of the
        given queues (default: all) and optionally one job. Pub/sub keeps nothing: only events
        published while subscribed arrive. Yields None once subscribed, then after every
        ``idle_seconds`` without an event, so that a caller can send keep-alives, keep time or
        notice that its own client left. Uses a connection of its own, closed at the end."""
        from .redis.connection import connect_async
        from .redis.driver import translate_errors

        for queue in queues or ():
            validate_queue_name(queue)
        s = self.forge.settings
        client = connect_async(self.forge.url, s.socket_timeout, s.connect_timeout)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            with translate_errors(self.forge.where):
                if queues:
                    await pubsub.subscribe(*(self.forge.keys(q).channel for q in queues))
                else:
                    await pubsub.psubscribe(self.forge.global_keys.events_pattern)
            yield None
            while True:
                with translate_errors(self.forge.where):
                    message = await pubsub.get_message(timeout=idle_seconds)
                if message is None:
                    yield None
                    continue
                if message.get("type") not in ("message", "pmessage"):
                    continue
                try:
                    event = json.loads(message["data"])
                except (TypeError, ValueError):
                    continue  # not ours
                if job_id is None or event.get("id") == job_id:
                    yield event
        finally:
            await asyncio.shield(_close_pubsub(pubsub, client))

    # -- workers and server ------------------------------------------------------------------

    def _workers_flow(self) -> Flow[list[WorkerInfo]]:
        g = self.forge.global_keys
        ids = yield command("ZRANGE", g.workers, 0, -1)
        ids = [_s(i) for i in ids]
        if not ids:
            return []
        infos = yield [command("HGETALL", g.worker(i)) for i in ids]
        out = []
        for worker_id, raw in zip(ids, infos, strict=True):
            if not raw:
                continue  # expired between the two reads: the worker is gone
            info = {_s(k): _s(v) for k, v in raw.items()}
            out.append(
                WorkerInfo(
                    id=worker_id,
                    host=info.get("host", ""),
                    pid=int(info.get("pid", 0)),
                    queues=[q for q in info.get("queues", "").split(",") if q],
                    concurrency=int(info.get("concurrency", 0)),
                    started_at=int(info.get("started", 0)) / 1000,
                    last_beat=int(info.get("beat", 0)) / 1000,
                    active_jobs=[j for j in info.get("active", "").split(",") if j],
                    processed=int(info.get("processed", 0)),
                    failed=int(info.get("failed", 0)),
                    version=info.get("version", ""),
                )
            )
        return out

    def workers(self) -> list[WorkerInfo]:
        """Live workers: those whose heartbeat has not expired."""
        return self.forge.run(self._workers_flow())

    async def workers_async(self) -> list[WorkerInfo]:
        return await self.forge.run_async(self._workers_flow())

    def _server_check_flow(self) -> Flow[list[str]]:
        info = yield command("INFO", "server")
        try:
            policy_reply = yield command("CONFIG", "GET", "maxmemory-policy")
        except Exception:
            policy_reply = None  # CONFIG may be denied by ACL; the version check still runs
        policy = None
        if isinstance(policy_reply, dict):
            policy = next((_s(v) for v in policy_reply.values()), None)
        elif isinstance(policy_reply, list | tuple) and len(policy_reply) == 2:
            policy = _s(policy_reply[1])
        return check_server(info, policy)

    def check_server(self) -> list[str]:
        return self.forge.run(self._server_check_flow())

    async def check_server_async(self) -> list[str]:
        return await self.forge.run_async(self._server_check_flow())


async def _close_pubsub(pubsub: Any, client: Any) -> None:
    try:
        await pubsub.aclose()
    finally:
        await client.aclose()


def _single(op: Any) -> Flow[Any]:
    return (yield op)
