"""streaq adapter: `streaq run peer_streaq:worker`."""

from __future__ import annotations

from datetime import UTC, datetime

import _common as c
from streaq import Worker

# Default: streaq's concurrency of 16; tuned: 100.
worker = Worker(redis_url=c.REDIS_URL, queue_name=c.QUEUE, concurrency=100 if c.TUNED else 16)


@worker.task()
async def noop(t_ns: int) -> None:
    await c.job_body_async(t_ns)


class _Producer:
    async def setup(self) -> None:
        await worker.__aenter__()

    async def enqueue(self, t_ns: int) -> None:
        await noop.enqueue(t_ns)

    async def enqueue_batch(self, values: list[int]) -> None:
        # streaq's bulk API: one pipeline for the whole batch.
        await worker.enqueue_many([noop.enqueue(v) for v in values])

    async def enqueue_at(self, t_ns: int, due: float) -> None:
        await noop.enqueue(t_ns).start(schedule=datetime.fromtimestamp(due, UTC))

    async def close(self) -> None:
        await worker.__aexit__(None, None, None)


def producer() -> c.Producer:
    p = _Producer()
    return c.Producer(p.enqueue, p.enqueue_batch, p.enqueue_at, p.setup, p.close)


def run_worker(config: str, processes: int) -> None:
    c.exec_cli(["streaq", "run", "peer_streaq:worker", "--workers", str(processes)])


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_streaq as this

    c.main(this.producer, this.run_worker, ("streaq", "coredis", "redis", "hiredis"))
