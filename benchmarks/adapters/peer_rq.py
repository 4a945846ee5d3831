"""RQ adapter: `rq worker` (forks a work horse per job) or SimpleWorker (tuned)."""

from __future__ import annotations

from datetime import UTC, datetime

import _common as c
from redis import Redis
from rq import Queue


def noop(t_ns: int) -> None:
    c.job_body(t_ns)


class _Producer:
    queue: Queue

    def setup(self) -> None:
        self.queue = Queue(c.QUEUE, connection=Redis.from_url(c.REDIS_URL))

    def enqueue(self, t_ns: int) -> None:
        self.queue.enqueue(noop, t_ns)

    def enqueue_batch(self, values: list[int]) -> None:
        self.queue.enqueue_many([Queue.prepare_data(noop, (v,)) for v in values])

    def enqueue_at(self, t_ns: int, due: float) -> None:
        self.queue.enqueue_at(datetime.fromtimestamp(due, UTC), noop, t_ns)


def producer() -> c.Producer:
    p = _Producer()
    return c.Producer(p.enqueue, p.enqueue_batch, p.enqueue_at, p.setup)


def run_worker(config: str, processes: int) -> None:
    # --with-scheduler: RQ moves due delayed jobs to the queue only when a scheduler runs.
    argv = ["rq", "worker", "--url", c.REDIS_URL, "--with-scheduler", "--path", "."]
    if config == "tuned":
        # SimpleWorker runs jobs in the worker process itself instead of forking per job.
        argv += ["--worker-class", "rq.worker.SimpleWorker", "--quiet"]
    argv.append(c.QUEUE)
    if processes == 1:
        c.exec_cli(argv)
    else:
        c.run_processes(argv, processes)


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_rq as this

    c.main(this.producer, this.run_worker, ("rq", "redis", "hiredis"))
