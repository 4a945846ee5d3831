"""TaskForge adapter: the API from the project's README (enqueue, enqueue_many, Worker)."""

from __future__ import annotations

from datetime import UTC, datetime

import _common as c

from taskforge import TaskForge, Worker

forge = TaskForge(url=c.REDIS_URL, prefix="bench")
# Tuned: 100 jobs at once per process; default: the Worker's own default.
TUNED_CONCURRENCY = 100


@forge.task(queue=c.QUEUE)
async def noop(t_ns: int) -> None:
    await c.job_body_async(t_ns)


def producer() -> c.Producer:
    def enqueue(t_ns: int) -> None:
        noop.enqueue(t_ns)

    def enqueue_batch(values: list[int]) -> None:
        noop.enqueue_many([((v,), {}) for v in values])

    def enqueue_at(t_ns: int, due: float) -> None:
        noop.enqueue_with(args=(t_ns,), at=datetime.fromtimestamp(due, UTC))

    return c.Producer(enqueue, enqueue_batch, enqueue_at)


def run_worker(config: str, processes: int) -> None:
    if processes == 1:
        if config == "tuned":
            Worker(forge, queues=[c.QUEUE], concurrency=TUNED_CONCURRENCY).run()
        else:
            Worker(forge, queues=[c.QUEUE]).run()
        return
    argv = ["taskforge", "worker", "peer_taskforge:forge", "--queues", c.QUEUE]
    if config == "tuned":
        argv += ["--concurrency", str(TUNED_CONCURRENCY)]
    c.exec_cli([*argv, "--processes", str(processes)])


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_taskforge as this

    c.main(this.producer, this.run_worker, ("taskforge", "redis", "hiredis", "msgspec", "uvloop"))
