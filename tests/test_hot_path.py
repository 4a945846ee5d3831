"""Structural performance targets that do not depend on machine speed: Redis round trips per job
on the hot path, and the load an idle worker puts on Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from taskforge import TaskForge, Worker
from tests.support.servers import wait_until

TOP_LEVEL = (
    "evalsha",
    "eval",
    "bzpopmin",
    "bzmpop",
    "blpop",
    "sadd",
    "info",
    "config|get",
    "hello",
)


def top_level_calls(client: redis.Redis) -> int:
    """Commands a client sent itself (commands run inside scripts are not among these)."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") in TOP_LEVEL)


class RunningWorker:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=lambda: asyncio.run(worker.run_async()), daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        assert self.worker.started.wait(10), "worker did not start"
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        assert self.worker.stopped.wait(15), "worker did not stop"
        self.thread.join(5)


@pytest.fixture
def forge(redis_url: str) -> Iterator[TaskForge]:
    app = TaskForge(redis_url, prefix="hot")
    yield app
    app.close()


@pytest.mark.parametrize("concurrency", [1, 50])
def test_round_trips_per_job_on_the_hot_path(forge: TaskForge, concurrency: int) -> None:
    done: list[int] = []

    @forge.task(queue="hot")
    async def noop(i: int) -> None:
        done.append(i)

    jobs = 300
    noop.enqueue_many([((i,), {}) for i in range(jobs)])
    admin = redis.Redis.from_url(forge.url)
    admin.config_resetstat()
    worker = Worker(forge, ["hot"], concurrency=concurrency, recover_seconds=60)
    with RunningWorker(worker):
        wait_until(lambda: len(done) == jobs, timeout=30, what="all jobs ran")
        acker = worker.parts["acker"]
        wait_until(lambda: acker.pending == 0, timeout=10, what="acknowledgements sent")
        driver = worker.parts["fetcher"].driver
        per_job = driver.round_trips / jobs
        print(f"concurrency {concurrency}: {per_job:.3f} round trips per job")
        redis_side = top_level_calls(admin) / jobs
    admin.close()
    # Target: <= 3 round trips per job. Batching makes a busy worker far cheaper than that.
    assert per_job <= 3, f"{per_job:.2f} round trips per job (client count)"
    assert redis_side <= 3, f"{redis_side:.2f} commands per job seen by Redis"
    if concurrency > 1:
        assert per_job < 0.5, f"batching should bring {per_job:.2f} well below 1"


def test_idle_worker_sends_at_most_one_command_per_second(forge: TaskForge) -> None:
    @forge.task(queue="idle")
    async def never(i: int) -> None: ...

    admin = redis.Redis.from_url(forge.url)
    with RunningWorker(Worker(forge, ["idle"], concurrency=10)):
        time.sleep(0.5)  # let start-up commands (server check, registration) pass
        admin.config_resetstat()
        window = 6.0
        started = time.monotonic()
        # The measurement itself needs wall time: an idle worker is judged over a window.
        while time.monotonic() - started < window:
            time.sleep(0.25)
        calls = top_level_calls(admin)
    admin.close()
    assert calls / window <= 1.0, f"idle worker sent {calls} commands in {window:.0f} s"


def test_idle_worker_wakes_for_new_work_without_polling(forge: TaskForge) -> None:
    seen = threading.Event()

    @forge.task(queue="wake")
    async def ping() -> str:
        seen.set()
        return "pong"

    with RunningWorker(Worker(forge, ["wake"], concurrency=2)) as worker:
        waiter = worker.parts["waiters"][0]
        before = waiter.pops
        job = ping.enqueue()
        assert job.result(timeout=5) == "pong"
        # One blocking pop returned because of the marker the enqueue set; no poll loop ran.
        assert waiter.pops - before <= 2
