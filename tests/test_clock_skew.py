"""Leases and due times are judged on Redis's clock: a worker whose own clock is far off neither
runs delayed jobs early nor takes over jobs whose leases are still being renewed."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Iterator

import pytest

from taskforge import TaskForge, Worker
from taskforge.worker import state as worker_state
from tests.support.servers import wait_until

SKEW_SECONDS = 3600.0


@pytest.fixture
def skewed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker in this process believes it is an hour later than it is."""
    fake = types.SimpleNamespace(time=lambda: time.time() + SKEW_SECONDS)
    monkeypatch.setattr(worker_state, "time", fake)


class Background:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=lambda: asyncio.run(worker.run_async()), daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        assert self.worker.started.wait(10)
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        assert self.worker.stopped.wait(15)


@pytest.fixture
def forge(redis_url: str) -> Iterator[TaskForge]:
    app = TaskForge(redis_url, prefix="skew", lease_seconds=2)
    yield app
    app.close()


@pytest.mark.usefixtures("skewed_clock")
def test_delayed_jobs_neither_early_nor_late_with_a_skewed_worker_clock(forge: TaskForge) -> None:
    started: dict[str, float] = {}

    @forge.task(queue="skew")
    async def stamp(name: str) -> None:
        started[name] = time.time()

    with Background(Worker(forge, ["skew"], concurrency=4)):
        jobs = {f"j{i}": stamp.enqueue_with(args=(f"j{i}",), delay=0.3 + 0.1 * i) for i in range(5)}
        wait_until(lambda: len(started) == 5, timeout=10, what="delayed jobs ran")
    for name, job in jobs.items():
        info = job.info()
        assert info.due_at is not None
        # The handler's own reading of the true clock, which is also the Redis server's.
        early = info.due_at.timestamp() - started[name]
        assert early <= 0.0005, f"{name} started {early * 1000:.2f} ms before it was due"
        assert -early < 1.0, f"{name} started {-early:.3f} s late"


def test_skewed_worker_does_not_steal_a_renewed_lease(
    forge: TaskForge, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []

    @forge.task(queue="lease")
    def long_job() -> str:
        runs.append(threading.current_thread().name)
        time.sleep(3.0)  # longer than the 2 s lease: only heartbeats keep it
        return "done"

    honest = Worker(forge, ["lease"], concurrency=1, recover_seconds=0.5)
    with Background(honest):
        job = long_job.enqueue()
        wait_until(lambda: job.status() == "active", timeout=5, what="job started")
        # A second worker, an hour ahead and recovering often, joins while the job runs.
        skewed_forge = TaskForge(forge.url, prefix="skew", lease_seconds=2)
        fake = types.SimpleNamespace(time=lambda: time.time() + SKEW_SECONDS)
        monkeypatch.setattr(worker_state, "time", fake)
        with Background(Worker(skewed_forge, ["lease"], concurrency=1, recover_seconds=0.2)):
            assert job.result(timeout=10) == "done"
        skewed_forge.close()
    info = job.info()
    assert len(runs) == 1, f"the job ran {len(runs)} times"
    assert info.redeliveries == 0


def test_the_clock_bounds_a_due_time_by_the_fastest_reply_and_never_starts_early() -> None:
    """Redis reads its clock between a request's send and its reply: a delayed job is started
    at the earliest local time that every recent reading proves past its due time."""
    from taskforge.worker.state import RedisClock

    offset_ms = 250.0  # Redis's clock runs this far ahead of ours
    clock = RedisClock()
    local = 1000.0
    legs = [(0.0001, 0.0008), (0.0004, 0.00005), (0.0002, 0.0003)]  # (request, reply) seconds
    for request, reply in legs * 10:
        read_at = local + request
        clock.observe(read_at * 1000.0 + offset_ms, local, read_at + reply)
        local = read_at + reply + 0.003
        due_ms = (local + 0.004) * 1000.0 + offset_ms
        start = clock.local_not_before(due_ms)
        true_due = local + 0.004
        assert start >= true_due, f"would start {(true_due - start) * 1e6:.1f} us early"
    # After one fast reply, starts are late by about that reply's leg, not by the last one's.
    assert start - true_due < 0.0001

    # Redis's clock stepped back 20 ms: the next reading contradicts the old bound and replaces it.
    read_at = local + 0.0001
    clock.observe(read_at * 1000.0 + offset_ms - 20.0, local, read_at + 0.0003)
    due_ms = (read_at + 0.01) * 1000.0 + offset_ms - 20.0
    assert clock.local_not_before(due_ms) >= read_at + 0.01
