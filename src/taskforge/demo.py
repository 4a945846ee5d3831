"""The demo workload: a realistic mix of jobs run by an in-process worker.

Some jobs are delayed, some fail and then succeed, a few end in the dead-letter queue, one is
canceled while it runs and one names a task no worker knows.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .client import Job, TaskForge
from .errors import JobNotFound
from .worker import Worker, current_job

__all__ = ["DemoRun", "build_demo_app", "run_demo"]


class PaymentDeclined(Exception):
    pass


def build_demo_app(url: str, prefix: str = "taskforge-demo") -> TaskForge:
    forge = TaskForge(url, prefix=prefix, retry_base_seconds=0.2, retry_cap_seconds=1.0)

    @forge.task(queue="media")
    async def resize_image(image_id: int, width: int = 640) -> dict[str, int]:
        await asyncio.sleep(random.uniform(0.02, 0.08))
        return {"image_id": image_id, "width": width}

    @forge.task(queue="emails", max_attempts=4)
    def send_email(to: str, subject: str) -> str:
        job = current_job()
        # A flaky mail server: about a third of the messages fail on their first try.
        if job.attempt == 1 and hash(to) % 3 == 0:
            raise ConnectionError(f"SMTP server dropped the connection while sending to {to}")
        time.sleep(random.uniform(0.005, 0.02))
        return f"sent {subject!r} to {to}"

    @forge.task(queue="default")
    async def sync_inventory(sku: str) -> int:
        await asyncio.sleep(0.01)
        return len(sku)

    @forge.task(queue="payments", max_attempts=3, retry_backoff=0.1)
    async def charge_card(order_id: int, cents: int) -> None:
        raise PaymentDeclined(f"card declined for order {order_id} ({cents} cents)")

    @forge.task(queue="default", timeout=120)
    async def generate_report(month: str) -> str:
        for step in range(600):
            current_job().set_progress({"step": step, "of": 600})
            await asyncio.sleep(0.1)
        return f"report {month}"

    return forge


@dataclass
class DemoRun:
    jobs: dict[str, list[Job[Any]]] = field(default_factory=lambda: defaultdict(list))
    elapsed: float = 0.0
    summary: list[dict[str, Any]] = field(default_factory=list)


def _clear(forge: TaskForge) -> None:
    client = forge.sync_driver().client
    for key in client.scan_iter(match=f"{forge.settings.prefix}:*", count=1000):
        client.delete(key)


def run_demo(
    url: str, on_progress: Callable[[int, int], None] | None = None, timeout: float = 60.0
) -> DemoRun:
    forge = build_demo_app(url)
    _clear(forge)
    worker = Worker(forge, ["payments", "emails", "media", "default"], concurrency=32)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run_async()), daemon=True)
    thread.start()
    if not worker.started.wait(30):
        raise RuntimeError("the demo worker did not start within 30 s")
    run = DemoRun()
    started = time.monotonic()
    try:
        _enqueue_workload(forge, run)
        total = sum(len(v) for v in run.jobs.values())
        report = run.jobs["generate_report"][0]
        canceled = False
        deadline = started + timeout
        while time.monotonic() < deadline:
            done = _finished(forge)
            if on_progress:
                on_progress(done, total)
            if not canceled and report.status() == "active" and time.monotonic() - started > 1:
                report.cancel()
                canceled = True
            if done >= total:
                break
            # A UI refresh rate, not a queue poll: the worker itself blocks on Redis.
            time.sleep(0.1)
        run.elapsed = time.monotonic() - started
        run.summary = _summarize(run)
    finally:
        worker.stop()
        worker.stopped.wait(30)
    return run


def _enqueue_workload(forge: TaskForge, run: DemoRun) -> None:
    rng = random.Random(7)
    run.jobs["resize_image"] = forge.enqueue_many(
        "resize_image", [((i,), {"width": rng.choice([320, 640, 1280])}) for i in range(150)]
    )
    for i in range(60):
        run.jobs["send_email"].append(
            forge.enqueue_with(
                "send_email",
                (f"user{i}@example.com",),
                {"subject": "Welcome"},
                key=f"welcome:{i}",
                priority="high" if i % 10 == 0 else None,
            )
        )
    for i in range(25):
        run.jobs["sync_inventory"].append(
            forge.enqueue_with("sync_inventory", (f"SKU-{i:04d}",), delay=rng.uniform(0.5, 4.0))
        )
    for i in range(5):
        run.jobs["charge_card"].append(forge.enqueue("charge_card", 1000 + i, cents=4999))
    run.jobs["generate_report"].append(forge.enqueue("generate_report", "2026-11"))
    run.jobs["mystery_task"].append(forge.enqueue("mystery_task", 42))


def _finished(forge: TaskForge) -> int:
    done = 0
    for stats in forge.inspector.stats():
        c = stats.counters
        done += c.get("completed", 0) + c.get("dead", 0) + c.get("canceled", 0)
    return done


def _summarize(run: DemoRun) -> list[dict[str, Any]]:
    rows = []
    for task, jobs in run.jobs.items():
        outcomes: Counter[str] = Counter()
        retries = 0
        waits, runs = [], []
        for job in jobs:
            try:
                info = job.info()
            except JobNotFound:
                outcomes["missing"] += 1
                continue
            outcomes[str(info.status)] += 1
            retries += max(0, info.attempt - 1)
            if info.started_at and info.due_at:
                waits.append((info.started_at - info.due_at).total_seconds() * 1000)
            if info.started_at and info.finished_at:
                runs.append((info.finished_at - info.started_at).total_seconds() * 1000)
        rows.append(
            {
                "task": task,
                "jobs": len(jobs),
                "completed": outcomes["completed"],
                "dead": outcomes["dead"],
                "canceled": outcomes["canceled"],
                "other": sum(
                    v for k, v in outcomes.items() if k not in ("completed", "dead", "canceled")
                ),
                "retries": retries,
                "wait_ms": sum(waits) / len(waits) if waits else None,
                "run_ms": sum(runs) / len(runs) if runs else None,
            }
        )
    return rows
