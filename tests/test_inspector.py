"""The Inspector on a real server: dead letters (list, inspect, requeue, purge), stats, job
listings, health, the worker registry, pause/resume and the server check."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from taskforge import JobDead, JobNotFound, JobStatus, Retry, ValidationError
from tests.support.servers import server_binary, server_kind, server_version
from tests.support.workers import AppFactory, WorkerPool, wait_for, wait_for_status
from tests.support.workers import worker_pool as _worker_pool


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    yield from _worker_pool()


def test_dead_letters_list_inspect_requeue_and_purge(
    make_app: AppFactory, workers: WorkerPool, client: redis.Redis
) -> None:
    forge = make_app()
    inspector = forge.inspector

    @forge.task(queue="billing", max_attempts=1)
    def charge(order: int) -> None:
        raise RuntimeError(f"charge {order} failed")

    @forge.task(queue="billing", max_attempts=1)
    def refund(order: int) -> None:
        raise RuntimeError(f"refund {order} failed")

    workers.start(forge, ["billing"])
    charges = [charge.enqueue_with((i,), key=f"charge-{i}") for i in range(3)]
    refunds = [refund.enqueue(i) for i in range(2)]
    for job in charges + refunds:
        with pytest.raises(JobDead):
            job.result(timeout=15)

    dead = inspector.dead_letters("billing")
    assert len(dead) == 5
    finished = [d.finished_at for d in dead]
    assert finished == sorted(finished, reverse=True), "newest first"
    assert {d.id for d in dead} == {j.id for j in charges + refunds}
    page = inspector.dead_letters("billing", offset=1, limit=2)
    assert [d.id for d in page] == [d.id for d in dead[1:3]]
    record = next(d for d in dead if d.id == charges[0].id)
    assert record.status is JobStatus.DEAD and record.args == [0]
    assert record.error is not None and record.error["message"] == "charge 0 failed"
    assert "RuntimeError" in record.error["traceback"]

    # Requeued jobs wait in a paused queue, so their new state can be looked at.
    inspector.pause("billing")
    assert inspector.requeue_dead("billing", ids=[charges[0].id]) == 1
    info = charges[0].info()
    assert (info.status, info.attempt) == (JobStatus.QUEUED, 0)
    assert info.finished_at is None
    # Due again from now: its wait is not counted from its first due time.
    assert info.due_at is not None and record.finished_at is not None
    assert info.due_at >= record.finished_at
    assert client.zscore("taskforge:{billing}:ready", charges[0].id) is not None
    assert client.pttl(f"taskforge:{{billing}}:job:{charges[0].id}") == -1, "no expiry while live"
    assert inspector.requeue_dead("billing", ids=[charges[0].id]) == 0, "not dead any more"
    assert inspector.requeue_dead("billing", task="refund") == 2
    assert {j.status() for j in refunds} == {JobStatus.QUEUED}
    assert inspector.requeue_dead() == 2, "all queues, all tasks"
    [stats] = inspector.stats(["billing"])
    assert (stats.queued, stats.dead, stats.paused) == (5, 0, True)
    assert stats.counters["requeued"] == 5
    # A requeued job keeps its idempotency key.
    again = charge.enqueue_with((0,), key="charge-0")
    assert (again.id, again.created) == (charges[0].id, False)

    inspector.resume("billing")
    wait_for(lambda: inspector.stats(["billing"])[0].dead == 5, 15, "the second deaths")
    assert charges[0].info().attempt == 1, "attempts restart from zero when requeued"

    assert inspector.purge_dead("billing", ids=[refunds[0].id]) == 1
    with pytest.raises(JobNotFound):
        refunds[0].info()
    assert inspector.purge("billing", "dead") == 4
    assert inspector.dead_letters("billing") == []
    assert not client.exists("taskforge:{billing}:key:charge-1"), "keys go with their jobs"
    assert charge.enqueue_with((1,), key="charge-1").created


def test_stats_per_state_per_queue(
    make_app: AppFactory, workers: WorkerPool, client: redis.Redis
) -> None:
    forge = make_app()
    gate = threading.Event()

    @forge.task(queue="work", max_attempts=1)
    def job(kind: str) -> None:
        if kind == "fail":
            raise ValueError("bad")
        if kind == "hold":
            gate.wait(10)

    forge.enqueue_with("other.task", queue="other")
    workers.start(forge, ["work"], concurrency=1)
    try:
        job.enqueue("ok").result(timeout=15)
        with pytest.raises(JobDead):
            job.enqueue("fail").result(timeout=15)
        holder = job.enqueue("hold")
        wait_for_status(holder, JobStatus.ACTIVE)
        enqueued_at = time.monotonic()
        waiting = [job.enqueue("ok"), job.enqueue("ok")]
        job.enqueue_with(("ok",), delay=60)

        stats = {s.queue: s for s in forge.inspector.stats()}
        assert sorted(stats) == ["other", "work"]
        work = stats["work"]
        assert (work.queued, work.scheduled, work.active, work.dead, work.completed) == (
            2,
            1,
            1,
            1,
            1,
        )
        assert work.paused is False
        assert work.counters["enqueued"] == 6
        assert work.counters["completed"] == 1
        assert work.counters["dead"] == 1
        assert work.oldest_age_seconds is not None
        assert 0 <= work.oldest_age_seconds <= time.monotonic() - enqueued_at + 1.0
        # The age is that of the next job to run, from its record's creation time.
        created = int(client.hget(forge.keys("work").job(waiting[0].id), "created") or 0)
        now_s, now_us = client.time()
        head_age = (now_s * 1000 + now_us // 1000 - created) / 1000
        assert work.oldest_age_seconds <= head_age + 0.01
        other = stats["other"]
        assert (other.queued, other.active, other.oldest_age_seconds is not None) == (1, 0, True)
        assert [s.queue for s in forge.inspector.stats(["other"])] == ["other"]
        assert forge.inspector.stats([]) == []
        assert stats["work"].to_dict()["queued"] == 2
    finally:
        gate.set()
    [empty] = forge.inspector.stats(["never-used"])
    assert (empty.queued, empty.oldest_age_seconds, empty.counters) == (0, None, {})


def test_job_listings(make_app: AppFactory) -> None:
    forge = make_app()
    queued = [forge.enqueue("t", i) for i in range(5)]
    urgent = forge.enqueue_with("t", (99,), priority="critical")
    later = [forge.enqueue_with("t", (i,), delay=60 + i) for i in range(3)]
    inspector = forge.inspector

    listed = inspector.jobs("default", "queued")
    assert [j.id for j in listed] == [urgent.id] + [j.id for j in queued], "in running order"
    assert [j.id for j in inspector.jobs("default", "queued", offset=2, limit=2)] == [
        queued[1].id,
        queued[2].id,
    ]
    assert [j.id for j in inspector.jobs("default", "scheduled")] == [j.id for j in later]
    assert inspector.jobs("default", "active") == []
    for state, offset, limit in (("running", 0, 10), ("queued", -1, 10), ("queued", 0, 0)):
        with pytest.raises(ValidationError):
            inspector.jobs("default", state, offset, limit)
    with pytest.raises(ValidationError):
        inspector.jobs("bad queue", "queued")

    assert inspector.purge("default", "scheduled") == 3
    assert inspector.purge("default", "queued", ids=[queued[0].id, "NOSUCH"]) == 1
    assert inspector.stats(["default"])[0].queued == 5
    with pytest.raises(ValidationError, match="canceled, not purged"):
        inspector.purge("default", "active")


def test_retrying_jobs_can_be_listed_apart(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()

    @forge.task(max_attempts=2)
    def fails() -> None:
        raise Retry(delay=60)

    workers.start(forge)
    retrying = fails.enqueue()
    wait_for_status(retrying, JobStatus.RETRYING)
    scheduled = forge.enqueue_with("fails", delay=30)
    inspector = forge.inspector
    # "scheduled" is everything waiting for a due time; "retrying" only the retries.
    listed = {j.id for j in inspector.jobs("default", "scheduled")}
    assert listed == {scheduled.id, retrying.id}
    assert [j.id for j in inspector.jobs("default", "retrying")] == [retrying.id]
    assert inspector.purge("default", "retrying") == 1
    assert [j.id for j in inspector.jobs("default", "scheduled")] == [scheduled.id]


def test_health_is_a_write_and_read_round_trip(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app()
    report = forge.health()
    assert report["ok"] is True
    assert report["latency_ms"] > 0
    assert report["server"] == server_kind()
    assert report["version"] == ".".join(map(str, server_version(server_binary())))
    assert report["url"].startswith("redis://127.0.0.1:")
    assert client.keys("taskforge:{-}:health:*") == [], "the probe key is removed"


async def test_health_async(make_app: AppFactory) -> None:
    async with make_app() as forge:
        report = await forge.health_async()
        assert report["ok"] is True


def test_workers_registry_lists_live_workers(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    gate = threading.Event()

    @forge.task(queue="b")
    def hold() -> None:
        gate.wait(10)

    worker = workers.start(forge, ["a", "b"], concurrency=3, registry_seconds=0.2)
    try:
        job = hold.enqueue()
        wait_for_status(job, JobStatus.ACTIVE)
        [info] = wait_for(
            lambda: [w for w in forge.inspector.workers() if job.id in w.active_jobs],
            10,
            "the registry to show the running job",
        )
        assert info.id == worker.worker.worker_id
        assert (info.queues, info.concurrency, info.pid) == (["a", "b"], 3, os.getpid())
        assert info.active_jobs == [job.id]
        assert info.host and info.version
        assert info.started_at <= info.last_beat
        assert info.to_dict()["queues"] == ["a", "b"]
    finally:
        gate.set()
    job.result(timeout=15)
    wait_for(
        lambda: [w for w in forge.inspector.workers() if w.processed == 1 and not w.active_jobs],
        10,
        "the registry to count the finished job",
    )
    worker.stop()
    assert forge.inspector.workers() == [], "a stopped worker unregisters"


def test_pause_stops_and_resume_starts_handing_out_jobs(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()

    @forge.task(queue="paused")
    def held() -> str:
        return "held"

    @forge.task(queue="open")
    def free() -> str:
        return "free"

    inspector = forge.inspector
    workers.start(forge, ["paused", "open"], concurrency=2)
    inspector.pause("paused")
    assert inspector.stats(["paused"])[0].paused is True
    waiting = held.enqueue()
    assert waiting.initial_status == "queued"
    # The worker is busy handing out other work meanwhile, and skips the paused queue.
    for _ in range(3):
        assert free.enqueue().result(timeout=15) == "free"
    assert waiting.status() is JobStatus.QUEUED
    inspector.resume("paused")
    assert inspector.stats(["paused"])[0].paused is False
    assert waiting.result(timeout=15) == "held"


def test_queues_are_registered_by_enqueue_and_by_workers(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    assert forge.inspector.queues() == []
    forge.enqueue_with("t", queue="z-last")
    workers.start(forge, ["a-first"])
    assert forge.inspector.queues() == ["a-first", "z-last"]


def test_check_server_warns_about_eviction(redis_factory: object, make_app: AppFactory) -> None:
    assert make_app().inspector.check_server() == []
    server = redis_factory(config={"maxmemory-policy": "allkeys-lru"})  # type: ignore[operator]
    warnings = make_app(server.url).inspector.check_server()
    assert len(warnings) == 1 and "noeviction" in warnings[0]
