"""Every TaskForge operation on Redis, as pure functions returning an ``Op``.

Nothing here does I/O: the sync and async drivers (``driver.py``) run what these build. Replies are
parsed into small typed values here, once, for both APIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..job import JobSpec
from .keys import GlobalKeys, QueueKeys
from .ops import Arg, Op, command, script

__all__ = [
    "EnqueueOutcome",
    "ExtendOutcome",
    "FetchedJob",
    "cancel",
    "complete",
    "enqueue",
    "extend",
    "fail",
    "fetch",
    "inbox_jobs",
    "job_fields",
    "park",
    "pause",
    "progress",
    "promote",
    "purge",
    "recover",
    "register_queue",
    "release",
    "requeue_dead",
    "watch",
    "worker_beat",
]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    id: str
    created: bool
    status: str


@dataclass(slots=True)
class FetchedJob:
    id: str
    task: str
    payload: bytes
    attempt: int
    max_attempts: int
    timeout_ms: int
    token: str
    created_ms: int
    redeliveries: int
    priority: int
    queue: str
    isolated: bool = False
    """It crashed workers before: run it alone (see fetch.lua)."""
    due_ms: float = 0.0
    """Leased ahead of its due time (ms, Redis clock): start it then, not before. 0 = now."""


@dataclass(frozen=True, slots=True)
class ExtendOutcome:
    now_ms: int
    lost: list[str]
    cancel: list[str]


def _channel(keys: QueueKeys, events: bool) -> str:
    return keys.channel if events else ""


def enqueue(keys: QueueKeys, specs: Sequence[JobSpec], events: bool) -> Op[list[EnqueueOutcome]]:
    args: list[Arg] = [keys.base, _channel(keys, events), keys.queue, len(specs)]
    for spec in specs:
        args.extend(spec.script_args())

    def parse(reply: list[Any]) -> list[EnqueueOutcome]:
        return [
            EnqueueOutcome(_s(reply[i]), reply[i + 1] == 1, _s(reply[i + 2]))
            for i in range(1, len(reply), 3)
        ]

    return script("enqueue", keys.script_keys, args, parse)


def fetch(
    keys: QueueKeys,
    count: int,
    lease_ms: int,
    worker_id: str,
    events: bool,
    isolate_after: int = 0,
    ahead_ms: int = 0,
    park_free: int = 0,
    park_ms: int = 0,
) -> Op[tuple[float, list[FetchedJob], int]]:
    """Returns (Redis time in ms, to the microsecond; the jobs leased; the capacity the worker is
    parked with, 0 = not parked). ``park_free``: the worker's free slots (0 = never park)."""
    queue = keys.queue

    def parse(reply: list[Any]) -> tuple[float, list[FetchedJob], int]:
        jobs = []
        isolated = reply[2] == 1
        for i in range(5, len(reply), 11):
            jobs.append(
                FetchedJob(
                    _s(reply[i]),
                    _s(reply[i + 1]),
                    reply[i + 2],
                    int(reply[i + 3]),
                    int(reply[i + 4]),
                    int(reply[i + 5] or 0),
                    _s(reply[i + 6]),
                    int(reply[i + 7] or 0),
                    int(reply[i + 8] or 0),
                    int(reply[i + 9] or 10),
                    queue,
                    isolated,
                    float(reply[i + 10]),
                )
            )
        return int(reply[0]) + int(reply[3]) / 1000.0, jobs, int(reply[4])

    args = (
        keys.base,
        _channel(keys, events),
        queue,
        count,
        lease_ms,
        worker_id,
        max(count, 100),
        isolate_after,
        ahead_ms,
        park_free,
        park_ms,
    )
    return script("fetch", keys.script_keys, args, parse)


def complete(
    keys: QueueKeys,
    items: Sequence[tuple[str, str, bytes]],
    retention_ms: int,
    events: bool,
    parked: tuple[str, int, int] | None = None,
) -> Op[list[bool]]:
    """``items``: (job id, token, encoded result or b'' for None). ``parked``: (worker id, free
    slots, park_ms) to renew that worker's parking on this queue, if it has one."""
    args: list[Arg] = [keys.base, _channel(keys, events), keys.queue, retention_ms, len(items)]
    for job_id, token, result in items:
        args.extend((job_id, token, result))
    if parked is not None:
        args.extend(parked)
    return script("complete", keys.script_keys, args, lambda r: [x == 1 for x in r[1:]])


FAIL_STALE, FAIL_RETRYING, FAIL_DEAD, FAIL_CANCELED = 0, 1, 2, 3


def fail(
    keys: QueueKeys,
    job_id: str,
    token: str,
    error: bytes,
    retry_delay_ms: int | None,
    dead_ttl_ms: int,
    canceled_ttl_ms: int,
    events: bool,
) -> Op[int]:
    """``retry_delay_ms`` None means the failure is final (dead-letter now)."""
    delay = -1 if retry_delay_ms is None else max(0, retry_delay_ms)
    args = (
        keys.base,
        _channel(keys, events),
        keys.queue,
        job_id,
        token,
        error,
        delay,
        dead_ttl_ms,
        canceled_ttl_ms,
    )
    return script("fail", keys.script_keys, args, lambda r: int(r[1]))


def extend(keys: QueueKeys, items: Sequence[tuple[str, str]], lease_ms: int) -> Op[ExtendOutcome]:
    args: list[Arg] = [keys.base, lease_ms, len(items)]
    for job_id, token in items:
        args.extend((job_id, token))

    def parse(reply: list[Any]) -> ExtendOutcome:
        return ExtendOutcome(int(reply[0]), [_s(x) for x in reply[1]], [_s(x) for x in reply[2]])

    return script("extend", keys.script_keys, args, parse)


def recover(
    keys: QueueKeys,
    max_redeliveries: int,
    dead_ttl_ms: int,
    completed_ttl_ms: int,
    events: bool,
    limit: int = 500,
) -> Op[tuple[int, int, int, int]]:
    args = (
        keys.base,
        _channel(keys, events),
        keys.queue,
        max_redeliveries,
        limit,
        dead_ttl_ms,
        completed_ttl_ms,
    )
    return script(
        "recover", keys.script_keys, args, lambda r: (int(r[0]), int(r[1]), int(r[2]), int(r[3]))
    )


def park(
    keys: QueueKeys, worker_id: str, capacity: int, lease_ms: int, park_ms: int, events: bool
) -> Op[tuple[int, int]]:
    """Renews a parking (capacity > 0) or leaves it, handing back the unpopped inbox jobs.
    Returns (capacity parked with, 0 = not parked; jobs handed back)."""
    args = (keys.base, _channel(keys, events), keys.queue, worker_id, capacity, lease_ms, park_ms)
    return script("park", keys.script_keys, args, lambda r: (int(r[1]), int(r[2])))


def inbox_jobs(queue: str, entries: Sequence[Any]) -> list[FetchedJob]:
    """Jobs from a parked worker's inbox, as popped: [[entry, score], ...] (see inbox_entry in
    _prelude.lua). A handed job is fresh: attempt 1, token 1, never redelivered."""
    jobs = []
    for entry in entries:
        job_id, task, max_attempts, timeout_ms, created, priority, payload = entry[0].split(
            b"\n", 6
        )
        jobs.append(
            FetchedJob(
                job_id.decode(),
                task.decode(),
                payload,
                1,
                int(max_attempts),
                int(timeout_ms),
                "1",
                int(created),
                0,
                int(priority),
                queue,
            )
        )
    return jobs


def promote(keys: QueueKeys, limit: int = 1000) -> Op[tuple[int, int]]:
    return script("promote", keys.script_keys, (keys.base, limit), lambda r: (int(r[0]), int(r[1])))


CANCEL_MISSING, CANCEL_FINAL, CANCEL_DONE, CANCEL_REQUESTED = -1, 0, 1, 2


def cancel(keys: QueueKeys, job_id: str, retention_ms: int, events: bool) -> Op[tuple[int, str]]:
    args = (keys.base, _channel(keys, events), keys.queue, job_id, retention_ms)
    return script("cancel", keys.script_keys, args, lambda r: (int(r[0]), _s(r[1])))


def release(keys: QueueKeys, items: Sequence[tuple[str, str]], events: bool) -> Op[int]:
    args: list[Arg] = [keys.base, _channel(keys, events), keys.queue, len(items)]
    for job_id, token in items:
        args.extend((job_id, token))
    return script("release", keys.script_keys, args, lambda r: int(r[1]))


def requeue_dead(
    keys: QueueKeys, ids: Sequence[str], events: bool, limit: int = 1000, task: str = ""
) -> Op[int]:
    args: list[Arg] = [keys.base, _channel(keys, events), keys.queue, limit, task, *ids]
    return script("requeue_dead", keys.script_keys, args, lambda r: int(r[1]))


def purge(keys: QueueKeys, state: str, ids: Sequence[str] = (), limit: int = 10000) -> Op[int]:
    args: list[Arg] = [keys.base, state, limit, *ids]
    return script("purge", keys.script_keys, args, lambda r: int(r[1]))


WATCH_MISSING, WATCH_PENDING, WATCH_FINAL = -1, 0, 1


def watch(keys: QueueKeys, job_id: str, register: bool) -> Op[tuple[int, str, bytes, bytes]]:
    def parse(reply: list[Any]) -> tuple[int, str, bytes, bytes]:
        code = int(reply[0])
        if code == WATCH_MISSING:
            return code, "", b"", b""
        if code == WATCH_PENDING:
            return code, _s(reply[1]), b"", b""
        return code, _s(reply[1]), reply[2] or b"", reply[3] or b""

    args = (keys.base, job_id, "1" if register else "0")
    return script("watch", keys.script_keys, args, parse)


def pause(keys: QueueKeys, paused: bool) -> Op[int]:
    return script("pause", keys.script_keys, ("1" if paused else "0",), int)


def progress(keys: QueueKeys, job_id: str, token: str, value: bytes, events: bool) -> Op[bool]:
    args = (keys.base, _channel(keys, events), keys.queue, job_id, token, value)
    return script("progress", keys.script_keys, args, lambda r: r == 1)


def worker_beat(
    gkeys: GlobalKeys, worker_id: str, ttl_ms: int, info: dict[str, str | int]
) -> Op[int]:
    args: list[Arg] = [worker_id, ttl_ms]
    for name, value in info.items():
        args.extend((name, value))
    return script("worker_beat", (gkeys.workers, gkeys.worker(worker_id)), args, int)


def job_fields(keys: QueueKeys, job_id: str) -> Op[dict[bytes, bytes]]:
    return command("HGETALL", keys.job(job_id), parse=lambda r: dict(r) if r else {})


def register_queue(gkeys: GlobalKeys, queue: str) -> Op[int]:
    return command("SADD", gkeys.queues, queue, parse=int)
