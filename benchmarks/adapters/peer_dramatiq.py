"""Dramatiq adapter: `dramatiq peer_dramatiq` with the RedisBroker."""

from __future__ import annotations

import time

import _common as c
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=c.REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=c.QUEUE, max_retries=0)
def noop(t_ns: int) -> None:
    c.job_body(t_ns)


def producer() -> c.Producer:
    def enqueue(t_ns: int) -> None:
        noop.send(t_ns)

    def enqueue_batch(values: list[int]) -> None:
        # Dramatiq has no bulk send; a group is its documented way to send many messages.
        dramatiq.group(noop.message(v) for v in values).run()

    def enqueue_at(t_ns: int, due: float) -> None:
        delay_ms = max(0, int((due - time.time()) * 1000))
        noop.send_with_options(args=(t_ns,), delay=delay_ms)

    return c.Producer(enqueue, enqueue_batch, enqueue_at, bulk_batch=100)


def run_worker(config: str, processes: int) -> None:
    # Default: Dramatiq's 8 threads per process; tuned: 32.
    threads = "32" if config == "tuned" else "8"
    argv = ["dramatiq", "peer_dramatiq", "--processes", str(processes), "--threads", threads]
    c.exec_cli([*argv, "--queues", c.QUEUE])


if __name__ == "__main__":
    # Import this file under its module name, so that task names match the worker's.
    import peer_dramatiq as this

    c.main(this.producer, this.run_worker, ("dramatiq", "redis", "hiredis"))
