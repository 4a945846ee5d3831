"""Huey adapter: `huey_consumer peer_huey.huey` with RedisHuey."""

from __future__ import annotations

import time

import _common as c
from huey import RedisHuey

huey = RedisHuey(c.QUEUE, url=c.REDIS_URL, utc=True)


@huey.task()
def noop(t_ns: int) -> None:
    c.job_body(t_ns)


def producer() -> c.Producer:
    def enqueue(t_ns: int) -> None:
        noop(t_ns)

    def enqueue_batch(values: list[int]) -> None:
        # Huey's way to enqueue many calls of one task (one enqueue per item underneath).
        noop.map(values)

    def enqueue_at(t_ns: int, due: float) -> None:
        noop.schedule(args=(t_ns,), delay=max(0.0, due - time.time()))

    return c.Producer(enqueue, enqueue_batch, enqueue_at)


def run_worker(config: str, processes: int) -> None:
    # Default: one worker thread, Huey's blocking pop and its 1 s scheduler.
    argv = ["huey_consumer", "peer_huey.huey"]
    if processes > 1:
        argv += ["--workers", str(processes), "--worker-type", "process"]
    elif config == "tuned":
        argv += ["--workers", "8", "--worker-type", "thread"]
    if config == "tuned":
        argv.append("--quiet")
    c.exec_cli(argv)


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_huey as this

    c.main(this.producer, this.run_worker, ("huey", "redis", "hiredis"))
