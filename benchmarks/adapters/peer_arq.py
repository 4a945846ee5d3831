"""arq adapter: `arq peer_arq.WorkerSettings`, jobs sent with ArqRedis.enqueue_job."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, ClassVar

import _common as c
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

SETTINGS = RedisSettings.from_dsn(c.REDIS_URL)


async def noop(ctx: dict[str, Any], t_ns: int) -> None:
    await c.job_body_async(t_ns)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = SETTINGS
    queue_name = c.QUEUE
    # Default: arq's own (max_jobs=10, poll_delay=0.5 s, results kept 1 h, a log line per job).
    # Tuned: 100 jobs at once, a 10 ms poll, no result keys, no per-job log line.
    if c.TUNED:
        max_jobs = 100
        poll_delay = 0.01
        keep_result = 0
        log_results = False


class _Producer:
    pool: ArqRedis

    async def setup(self) -> None:
        self.pool = await create_pool(SETTINGS, default_queue_name=c.QUEUE)

    async def enqueue(self, t_ns: int) -> None:
        await self.pool.enqueue_job("noop", t_ns)

    async def enqueue_batch(self, values: list[int]) -> None:
        # arq has no bulk API: the documented way to send many is to gather enqueue_job calls.
        await asyncio.gather(*(self.pool.enqueue_job("noop", v) for v in values))

    async def enqueue_at(self, t_ns: int, due: float) -> None:
        await self.pool.enqueue_job("noop", t_ns, _defer_until=datetime.fromtimestamp(due, UTC))

    async def close(self) -> None:
        await self.pool.aclose()


def producer() -> c.Producer:
    p = _Producer()
    return c.Producer(p.enqueue, p.enqueue_batch, p.enqueue_at, p.setup, p.close, bulk_batch=100)


def run_worker(config: str, processes: int) -> None:
    argv = ["arq", "peer_arq.WorkerSettings"]
    if processes == 1:
        c.exec_cli(argv)
    else:
        c.run_processes(argv, processes)


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_arq as this

    c.main(this.producer, this.run_worker, ("arq", "redis", "hiredis"))
