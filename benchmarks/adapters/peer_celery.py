"""Celery adapter: `celery -A peer_celery worker`, Redis as the broker, no result backend."""

from __future__ import annotations

from datetime import UTC, datetime

import _common as c
from celery import Celery, group

app = Celery("peer_celery", broker=c.REDIS_URL)
app.conf.update(
    task_default_queue=c.QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if c.TUNED:
    # Fetch more messages per round trip; the default is 4 per pool slot.
    app.conf.worker_prefetch_multiplier = 16


@app.task(name="noop")
def noop(t_ns: int) -> None:
    c.job_body(t_ns)


def producer() -> c.Producer:
    def enqueue(t_ns: int) -> None:
        noop.delay(t_ns)

    def enqueue_batch(values: list[int]) -> None:
        # Celery has no bulk send; a group is its documented way to send many at once.
        group(noop.s(v) for v in values).apply_async()

    def enqueue_at(t_ns: int, due: float) -> None:
        noop.apply_async((t_ns,), eta=datetime.fromtimestamp(due, UTC))

    return c.Producer(enqueue, enqueue_batch, enqueue_at, bulk_batch=100)


def run_worker(config: str, processes: int) -> None:
    argv = ["celery", "-A", "peer_celery", "worker", "-Q", c.QUEUE, "-n", "bench@%h"]
    if config == "tuned" and processes == 1:
        # No-op jobs wait on Redis, not the CPU: threads instead of forked pool processes, and
        # none of the cluster chatter a single worker does not need.
        argv += ["--pool", "threads", "--concurrency", "32"]
    else:
        # Default pool (prefork); one pool process, or one per core.
        argv += ["--pool", "prefork", "--concurrency", str(processes)]
    if config == "tuned":
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
    else:
        argv += ["-l", "INFO"]
    c.exec_cli(argv)


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_celery as this

    c.main(this.producer, this.run_worker, ("celery", "kombu", "redis", "hiredis"))
