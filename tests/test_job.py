"""Jobs: ids, priorities and records (pure), and every status of the life cycle on a real
server: scheduled, queued, active, completed, retrying, dead and canceled (waiting or running)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from taskforge import JobCanceled, JobNotFound, JobStatus, Retry, ValidationError, current_job
from taskforge.job import FINAL_STATES, PRIORITY_LEVELS, JobRecord, new_job_id, parse_priority
from taskforge.redis import operations as ops
from tests.support.workers import AppFactory, WorkerPool, wait_for, wait_for_status
from tests.support.workers import worker_pool as _worker_pool


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    yield from _worker_pool()


# -- pure ---------------------------------------------------------------------------------------


def test_job_ids_are_ulids_sortable_by_time() -> None:
    ids = [new_job_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert all(len(i) == 26 and i.isalnum() and i.isupper() for i in ids)
    assert not set("ILOU") & set("".join(ids))  # Crockford base32
    first = new_job_id()
    start_ms = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == start_ms:  # ids are ordered by the millisecond
        pass
    assert new_job_id() > first


def test_parse_priority() -> None:
    assert PRIORITY_LEVELS == {"low": 0, "normal": 10, "high": 20, "critical": 30}
    assert parse_priority(None) == 10
    assert [parse_priority(p) for p in ("low", "Normal", "HIGH", "critical")] == [0, 10, 20, 30]
    assert [parse_priority(p) for p in (-1000, 0, 15, 1000, "25", "-5")] == [
        -1000,
        0,
        15,
        1000,
        25,
        -5,
    ]
    for bad in ("urgent", "", "1.5", 1001, -1001, 2.0, True, [], "1e3"):
        with pytest.raises(ValidationError):
            parse_priority(bad)  # type: ignore[arg-type]


def test_job_record_from_a_hash_tolerates_damage() -> None:
    fields = {
        b"task": b"t",
        b"status": b"dead",
        b"payload": b"not json",
        b"result": b"\xff\xfe",
        b"error": b"plain text, not JSON",
        b"progress": b"{",
        b"priority": b"20",
        b"attempt": b"2",
        b"max_attempts": b"3",
        b"timeout": b"1500",
        b"created": b"1700000000000",
        b"key": b"k",
    }
    record = JobRecord.from_hash("ID", "q", fields)
    assert (record.args, record.kwargs) == ([], {})
    assert record.raw_payload == b"not json"
    assert record.error == {"type": "Error", "message": "plain text, not JSON", "traceback": ""}
    assert record.progress is None
    assert record.timeout == 1.5
    assert record.created_at is not None and record.created_at.year == 2023
    assert record.started_at is None
    data = record.to_dict()
    json.dumps(data)  # printable by `taskforge job --json`
    assert data["status"] == "dead" and data["key"] == "k"
    assert {JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELED} == FINAL_STATES


# -- the life cycle -----------------------------------------------------------------------------


def _events(pubsub: Any, job_id: str, until: str, timeout: float = 15.0) -> list[str]:
    """The job's events from a subscription, up to and including ``until``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if not message or message["type"] != "message":
            continue
        event = json.loads(message["data"])
        if event["id"] == job_id:
            seen.append(event["event"])
            if event["event"] == until:
                return seen
    raise TimeoutError(f"no {until!r} event for {job_id}; saw {seen}")


def test_scheduled_queued_active_completed(
    make_app: AppFactory, workers: WorkerPool, client: redis.Redis
) -> None:
    forge = make_app()
    gates = {"hold": threading.Event(), "job": threading.Event()}

    @forge.task
    def step(gate: str) -> str:
        gates[gate].wait(10)
        return f"{gate} done"

    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("taskforge:events:default")
    try:
        worker = workers.start(forge, concurrency=1)
        job = step.enqueue_with(("job",), delay=0.4)
        info = job.info()
        assert info.status is JobStatus.SCHEDULED
        assert info.due_at is not None and info.created_at is not None
        assert (info.due_at - info.created_at).total_seconds() == pytest.approx(0.4, abs=0.002)
        assert info.started_at is None and info.attempt == 0
        # The worker has seen the due time; now its only slot gets busy before then.
        wait_for(lambda: worker.parts["waiters"][0].timers, 10, "the wake-up timer")
        holder = step.enqueue("hold")
        wait_for_status(holder, JobStatus.ACTIVE)

        # Due while the worker is busy: moved to ready, waiting for a slot.
        wait_for_status(job, JobStatus.QUEUED, timeout=10)
        assert client.zscore("taskforge:{default}:ready", job.id) is not None
        assert client.zscore("taskforge:{default}:scheduled", job.id) is None

        gates["hold"].set()
        wait_for_status(job, JobStatus.ACTIVE)
        info = job.info()
        assert info.attempt == 1 and info.started_at is not None
        assert info.worker == worker.worker.worker_id
        assert client.zscore("taskforge:{default}:active", job.id) is not None

        gates["job"].set()
        assert job.result(timeout=15) == "job done"
        info = job.info()
        assert info.status is JobStatus.COMPLETED and info.result == "job done"
        assert info.finished_at is not None and info.finished_at >= info.started_at
        assert client.zscore("taskforge:{default}:completed", job.id) is not None
        assert client.zscore("taskforge:{default}:active", job.id) is None
        # Retained for completed_ttl, not forever.
        assert 0 < client.pttl(f"taskforge:{{default}}:job:{job.id}") <= 24 * 3600 * 1000
        assert _events(pubsub, job.id, "completed") == ["enqueued", "started", "completed"]
    finally:
        gates["hold"].set()
        gates["job"].set()
        pubsub.close()


def test_a_job_due_soon_is_leased_ahead_and_handed_back_to_scheduled(
    make_app: AppFactory, client: redis.Redis
) -> None:
    """A fetch with ahead_ms leases jobs due that soon straight from `scheduled` (never `ready`,
    where another worker could start them early); released, they go back to `scheduled`."""
    forge = make_app()
    keys = forge.keys("default")
    driver = forge.sync_driver()
    due_at = datetime.now(UTC) + timedelta(seconds=0.25)
    soon = forge.enqueue_with("t", at=due_at)
    later = forge.enqueue_with("t", delay=60)
    now_ms, jobs, _ = driver.run(ops.fetch(keys, 10, 30_000, "w1", False, 0, 1_000))
    assert [j.id for j in jobs] == [soon.id]
    (job,) = jobs
    assert job.due_ms == pytest.approx(due_at.timestamp() * 1000, abs=0.02)
    assert 0 < job.due_ms - now_ms <= 250.1
    assert client.zscore(keys.ready, soon.id) is None
    assert client.zscore(keys.scheduled, soon.id) is None
    assert client.zscore(keys.scheduled, later.id) is not None
    info = soon.info()
    assert info.status is JobStatus.ACTIVE and info.started_at == info.due_at

    assert driver.run(ops.release(keys, [(job.id, job.token)], False)) == 1
    info = soon.info()
    assert info.status is JobStatus.SCHEDULED and info.attempt == 0
    assert client.zscore(keys.scheduled, soon.id) == pytest.approx(job.due_ms)
    assert client.zscore(keys.ready, soon.id) is None


def test_delayed_jobs_start_at_their_due_time_never_before(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    started: dict[str, float] = {}

    @forge.task
    async def stamp(name: str) -> None:
        started[name] = time.time()

    workers.start(forge, concurrency=4)
    base = datetime.now(UTC)
    due = {f"j{i}": base + timedelta(seconds=0.3 + 0.037 * i) for i in range(8)}
    for name, at in due.items():
        stamp.enqueue_with((name,), at=at)
    wait_for(lambda: len(started) == len(due), 10, "the delayed jobs")
    for name, at in due.items():
        # Redis and this test read the same clock; `at=` keeps microseconds.
        early = at.timestamp() - started[name]
        assert early <= 0.0001, f"{name} started {early * 1000:.2f} ms before it was due"
        assert -early < 1.0, f"{name} started {-early:.3f} s late"


def test_retrying_then_dead(make_app: AppFactory, workers: WorkerPool, client: redis.Redis) -> None:
    forge = make_app()
    proceed = threading.Event()

    @forge.task(max_attempts=2)
    def flaky() -> None:
        if current_job().attempt == 1:
            raise Retry("try again later", delay=0.3)
        proceed.wait(10)
        raise LookupError("still broken")

    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("taskforge:events:default")
    try:
        workers.start(forge)
        job = flaky.enqueue()
        wait_for_status(job, JobStatus.RETRYING)
        info = job.info()
        assert info.attempt == 1
        assert info.error is not None and info.error["type"] == "Retry"
        assert info.error["message"] == "try again later"
        assert client.zscore("taskforge:{default}:scheduled", job.id) is not None

        wait_for_status(job, JobStatus.ACTIVE)
        proceed.set()
        wait_for_status(job, JobStatus.DEAD)
        info = job.info()
        assert info.attempt == 2 and info.finished_at is not None
        assert info.error is not None and info.error["type"] == "LookupError"
        assert client.zscore("taskforge:{default}:dead", job.id) is not None
        assert _events(pubsub, job.id, "dead") == [
            "enqueued",
            "started",
            "retrying",
            "started",
            "dead",
        ]
    finally:
        proceed.set()
        pubsub.close()


def test_cancel_waiting_jobs(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app()
    queued = forge.enqueue("t")
    scheduled = forge.enqueue_with("t", delay=60)
    keyed = forge.enqueue_with("t", key="only-once")

    for job in (queued, scheduled, keyed):
        assert job.cancel() is True
        assert job.status() is JobStatus.CANCELED
        info = job.info()
        assert info.finished_at is not None
        with pytest.raises(JobCanceled):
            job.result(timeout=1)
    assert client.zcard("taskforge:{default}:ready") == 0
    assert client.zcard("taskforge:{default}:scheduled") == 0
    # Already final: nothing to cancel.
    assert queued.cancel() is False
    # The canceled job is retained, and its key still answers for it.
    again = forge.enqueue_with("t", key="only-once")
    assert (again.id, again.created, again.initial_status) == (keyed.id, False, "canceled")
    [stats] = forge.inspector.stats()
    assert stats.counters["canceled"] == 3
    with pytest.raises(JobNotFound):
        forge.job("NOSUCHJOB", queue="default").cancel()


def test_cancel_a_retrying_job(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()

    @forge.task(max_attempts=3)
    def fails() -> None:
        raise Retry(delay=60)

    workers.start(forge)
    job = fails.enqueue()
    wait_for_status(job, JobStatus.RETRYING)
    assert job.cancel()
    with pytest.raises(JobCanceled):
        job.result(timeout=5)


def test_cancel_a_running_async_task(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    stopped: list[str] = []

    @forge.task
    async def endless() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(current_job().stop_reason or "")
            raise

    @forge.task
    def after() -> str:
        return "the slot is free again"

    workers.start(forge, concurrency=1)
    job = endless.enqueue()
    wait_for_status(job, JobStatus.ACTIVE)
    assert job.cancel() is True
    with pytest.raises(JobCanceled) as err:
        job.result(timeout=15)
    assert err.value.error_type == "Canceled"
    assert stopped == ["canceled"]
    assert job.info().status is JobStatus.CANCELED
    assert after.enqueue().result(timeout=15) == "the slot is free again"


def test_cancel_a_running_sync_task(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    started = threading.Event()
    saw_cancel = threading.Event()

    @forge.task
    def cooperative() -> str:
        ctx = current_job()
        started.set()
        deadline = time.monotonic() + 15
        while not ctx.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancel_requested:
            saw_cancel.set()
        return "returned after the cancel"

    workers.start(forge)
    job = cooperative.enqueue()
    assert started.wait(10)
    assert job.cancel() is True
    with pytest.raises(JobCanceled):
        job.result(timeout=15)
    assert saw_cancel.wait(10), "a sync task sees ctx.cancel_requested"
    info = job.info()
    assert info.status is JobStatus.CANCELED
    assert info.result is None, "a canceled run's return value is not recorded"
