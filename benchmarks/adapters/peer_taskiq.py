"""taskiq adapter: `taskiq worker` with taskiq-redis's RedisStreamBroker (the one its README
recommends), plus `taskiq scheduler` with a ListRedisScheduleSource for delayed jobs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import _common as c
from taskiq import TaskiqScheduler
from taskiq_redis import ListRedisScheduleSource, RedisStreamBroker

broker = RedisStreamBroker(url=c.REDIS_URL, queue_name=c.QUEUE)
source = ListRedisScheduleSource(c.REDIS_URL, prefix="bench-schedule")
scheduler = TaskiqScheduler(broker, sources=[source])


@broker.task(task_name="noop")
async def noop(t_ns: int) -> None:
    await c.job_body_async(t_ns)


def producer() -> c.Producer:
    async def setup() -> None:
        await broker.startup()
        await source.startup()

    async def enqueue(t_ns: int) -> None:
        await noop.kiq(t_ns)

    async def enqueue_batch(values: list[int]) -> None:
        # taskiq has no bulk API: gather kiq calls.
        await asyncio.gather(*(noop.kiq(v) for v in values))

    async def enqueue_at(t_ns: int, due: float) -> None:
        await noop.schedule_by_time(source, datetime.fromtimestamp(due, UTC), t_ns)

    async def close() -> None:
        await source.shutdown()
        await broker.shutdown()

    return c.Producer(enqueue, enqueue_batch, enqueue_at, setup, close, bulk_batch=100)


def run_worker(config: str, processes: int) -> None:
    worker = ["taskiq", "worker", "peer_taskiq:broker", "--workers", str(processes)]
    sched = ["taskiq", "scheduler", "peer_taskiq:scheduler", "--skip-first-run"]
    if config == "tuned":
        # Default: 100 tasks at once per process and a scheduler that re-reads the schedule
        # source once a minute. Tuned: 500 at once, schedules re-read every second.
        worker += ["--max-async-tasks", "500", "--log-level", "WARNING"]
        sched += ["--update-interval", "1"]
    c.run_commands([worker, sched])


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_taskiq as this

    c.main(this.producer, this.run_worker, ("taskiq", "taskiq-redis", "redis", "hiredis"))
