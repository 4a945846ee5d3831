"""SAQ adapter: `saq peer_saq.settings` with a Redis queue."""

from __future__ import annotations

import asyncio
from typing import Any

import _common as c
from saq import Queue

queue = Queue.from_url(c.REDIS_URL, name=c.QUEUE)


async def noop(ctx: dict[str, Any], *, t_ns: int) -> None:
    await c.job_body_async(t_ns)


# Default: SAQ's concurrency of 10; tuned: 50. Each idle slot holds a connection in a blocking
# BLMOVE, and redis-py 8's pool stops at 100 connections: at concurrency 100 the worker's own
# scheduler and sweeper get "Too many connections" and delayed jobs are never moved.
settings: dict[str, Any] = {
    "queue": queue,
    "functions": [noop],
    "concurrency": 50 if c.TUNED else 10,
}


def producer() -> c.Producer:
    async def setup() -> None:
        await queue.connect()

    async def enqueue(t_ns: int) -> None:
        await queue.enqueue("noop", t_ns=t_ns)

    async def enqueue_batch(values: list[int]) -> None:
        # SAQ's map/apply wait for results; to only enqueue many, gather enqueue calls.
        await asyncio.gather(*(queue.enqueue("noop", t_ns=v) for v in values))

    async def enqueue_at(t_ns: int, due: float) -> None:
        # SAQ's `scheduled` is epoch seconds.
        await queue.enqueue("noop", t_ns=t_ns, scheduled=due)

    async def close() -> None:
        await queue.disconnect()

    return c.Producer(enqueue, enqueue_batch, enqueue_at, setup, close, bulk_batch=100)


def run_worker(config: str, processes: int) -> None:
    c.exec_cli(["saq", "peer_saq.settings", "--workers", str(processes)])


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_saq as this

    c.main(this.producer, this.run_worker, ("saq", "redis", "hiredis"))
