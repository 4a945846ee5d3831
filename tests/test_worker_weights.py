"""Queue selection: strict priority order by default, weighted order when asked."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from taskforge import TaskForge, Worker
from taskforge.cli.worker import _parse_queues


def run_until(worker: Worker, done: threading.Event) -> None:
    thread = threading.Thread(target=lambda: asyncio.run(worker.run_async()), daemon=True)
    thread.start()
    try:
        assert done.wait(30), "jobs did not finish"
    finally:
        worker.stop()
        assert worker.stopped.wait(15)


def _app(redis_url: str, order: list[str], total: int, done: threading.Event) -> TaskForge:
    forge = TaskForge(redis_url, prefix="weights")

    @forge.task(queue="big", name="job")
    async def job(queue: str) -> None:
        order.append(queue)
        if len(order) == total:
            done.set()

    return forge


def test_strict_priority_serves_a_queue_only_when_earlier_ones_are_empty(redis_url: str) -> None:
    order: list[str] = []
    done = threading.Event()
    forge = _app(redis_url, order, 200, done)
    forge.enqueue_many("job", [("small",)] * 100, queue="small")
    forge.enqueue_many("job", [("big",)] * 100, queue="big")
    run_until(Worker(forge, ["big", "small"], concurrency=1), done)
    assert order == ["big"] * 100 + ["small"] * 100


def test_weights_interleave_queues_in_proportion(redis_url: str) -> None:
    order: list[str] = []
    done = threading.Event()
    forge = _app(redis_url, order, 400, done)
    forge.enqueue_many("job", [("small",)] * 200, queue="small")
    forge.enqueue_many("job", [("big",)] * 200, queue="big")
    run_until(Worker(forge, ["big", "small"], concurrency=1, weights=(3, 1)), done)
    first_half = Counter(order[:200])
    # Weight 3:1 means about 150:50 while both queues have work; strict order would be 200:0.
    assert 110 <= first_half["big"] <= 185, first_half
    assert first_half["small"] >= 15, first_half
    assert Counter(order) == {"big": 200, "small": 200}


def test_queue_weights_parse_from_the_command_line() -> None:
    assert _parse_queues("emails:3,default:1") == (["emails", "default"], (3, 1))
    assert _parse_queues("emails,default") == (["emails", "default"], None)
    assert _parse_queues("ns:emails") == (["ns:emails"], None)
