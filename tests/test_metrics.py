"""Prometheus metrics: they parse with prometheus_client's parser, and they move as jobs run on a
fleet of two worker processes (each adds its counts into Redis; one scrape sees them all)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskforge import TaskForge, Worker
from taskforge.web import WebSettings, create_app
from taskforge.worker.metrics import BUCKETS
from tests.support.servers import wait_until
from tests.web.conftest import poll

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "metrics"


def scrape(forge: TaskForge) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels); the text must parse."""
    import asyncio

    async def get() -> str:
        app = create_app(forge, WebSettings())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.get("/metrics")
        await forge.close_async_connections()
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return r.text

    text = asyncio.run(get())
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fleet(redis_url: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = dict(os.environ, TASKFORGE_REDIS_URL=redis_url, TASKFORGE_PREFIX=PREFIX)
    cmd = [sys.executable, "-m", "taskforge", "worker", "tests.web.sample_app:forge",
           "--queues", "math", "--concurrency", "4", "--log-level", "critical"]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env) for _ in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_metrics_move_across_two_worker_processes(
    redis_url: str, fleet: list[subprocess.Popen[bytes]]
) -> None:
    forge = TaskForge(redis_url, prefix=PREFIX)
    wait_until(lambda: len(forge.inspector.workers()) == 2, 20, "two live worker processes")
    before = scrape(forge)
    assert value(before, "taskforge_workers") == 2
    assert value(before, "taskforge_worker_slots", state="total") == 8
    assert value(before, "taskforge_jobs_completed_total", queue="math", task="nap") == 0

    naps = forge.enqueue_many("nap", [(0.03,)] * 40, queue="math")
    booms = [forge.enqueue_with("boom", (f"b{i}",), queue="math", max_attempts=2) for i in range(3)]

    def settled() -> Any:
        s = scrape(forge)
        done = value(s, "taskforge_jobs_completed_total", queue="math", task="nap") == 40
        dead = value(s, "taskforge_jobs_dead_total", queue="math", task="boom") == 3
        return s if done and dead else None

    s = wait_until(settled, 30, "the fleet's metrics to show every job")
    counts = {
        name: (value(s, f"taskforge_jobs_{name}_total", queue="math", task="nap"),
               value(s, f"taskforge_jobs_{name}_total", queue="math", task="boom"))
        for name in ("enqueued", "started", "completed", "failed", "retried", "dead", "canceled")
    }  # fmt: skip
    assert counts == {
        "enqueued": (40, 3), "started": (40, 6), "completed": (40, 0), "failed": (0, 6),
        "retried": (0, 3), "dead": (0, 3), "canceled": (0, 0),
    }  # fmt: skip

    # Histograms: cumulative buckets ending in +Inf == count; runs of ~30 ms fall at 0.025+.
    run = [value(s, "taskforge_job_run_seconds_bucket", queue="math", task="nap", le=repr(b))
           for b in BUCKETS]  # fmt: skip
    run_inf = value(s, "taskforge_job_run_seconds_bucket", queue="math", task="nap", le="+Inf")
    assert run == sorted(run) and run_inf == 40 and run[BUCKETS.index(0.025)] == 0
    assert value(s, "taskforge_job_run_seconds_count", queue="math", task="nap") == 40
    assert 40 * 0.03 <= value(s, "taskforge_job_run_seconds_sum", queue="math", task="nap") < 40
    assert value(s, "taskforge_job_run_seconds_count", queue="math", task="boom") == 6
    assert value(s, "taskforge_job_wait_seconds_count", queue="math", task="nap") == 40
    assert (
        value(s, "taskforge_job_wait_seconds_count", queue="math", task="boom") == 3
    )  # first runs

    # Per-queue gauges and the scripts' own counters agree.
    assert value(s, "taskforge_queue_jobs", queue="math", state="dead") == 3
    assert value(s, "taskforge_queue_jobs", queue="math", state="queued") == 0
    assert value(s, "taskforge_queue_events_total", queue="math", event="completed") == 40
    assert value(s, "taskforge_queue_workers", queue="math") == 2

    # Both processes ran jobs: a scrape that saw only one of them could not reach the totals.
    ran_by = {forge.job(j.id, "math").info().worker for j in naps}
    assert len(ran_by) == 2 and len(booms) == 3
    forge.close()


async def test_idle_worker_sends_nothing_and_shutdown_flushes(redis_url: str) -> None:
    import asyncio

    forge = TaskForge(redis_url, prefix=PREFIX)

    @forge.task(queue="q")
    async def hello() -> str:
        return "hi"

    worker = Worker(forge, ["q"], 2)
    task = asyncio.get_running_loop().create_task(worker.run_async())

    async def started() -> bool:
        return worker.started.is_set()

    await poll(started, 10, "the worker to start")
    metrics = worker.parts["metrics"]
    metrics.interval = 3600.0  # only the shutdown flush may write
    assert metrics.pending == 0
    driver = forge.async_driver()
    trips = driver.round_trips
    assert await metrics.flush() == 0 and driver.round_trips == trips  # nothing to add: no call
    await hello.enqueue_async()

    async def counted() -> bool:
        return metrics.pending > 0

    await poll(counted, 10, "the run to be counted in memory")
    worker.stop()
    await asyncio.wait_for(task, 20)
    raw = forge.inspector.task_metrics(["q"])["q"]
    assert raw["started|hello"] == 1 and raw["completed|hello"] == 1 and raw["enqueued|hello"] == 1
    assert sum(v for k, v in raw.items() if k.startswith("run_bucket|hello|")) == 1
    forge.close()
