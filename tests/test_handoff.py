"""Parking and hand-off: an idle worker parks on its queue, and an enqueue leases a new job to it
and puts it in the worker's inbox, so that the job starts after one hop instead of a wake-up and
a fetch. Every way out of an inbox is checked: the worker pops it, leaves (stop, full), or dies
(its parking expires, or the job's lease does) and recovery hands the job back uncounted."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from taskforge import JobStatus, TaskForge
from taskforge.redis import operations as ops
from taskforge.redis.keys import QueueKeys
from tests.support.workers import AppFactory, WorkerPool, wait_for, wait_for_status
from tests.support.workers import worker_pool as _worker_pool


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    yield from _worker_pool()


def _park(
    forge: TaskForge,
    keys: QueueKeys,
    worker_id: str,
    free: int,
    park_ms: int,
    lease_ms: int = 30_000,
) -> int:
    """Parks `worker_id` the way a worker does: a fetch that finds the queue empty."""
    _, jobs, parked = forge.sync_driver().run(
        ops.fetch(keys, free, lease_ms, worker_id, False, 0, 0, free, park_ms)
    )
    assert jobs == []
    return parked


def _recover(forge: TaskForge, keys: QueueKeys) -> tuple[int, int, int, int]:
    return forge.sync_driver().run(ops.recover(keys, 5, 60_000, 60_000, False))


def test_an_idle_worker_gets_each_new_job_in_one_hop(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    ran = threading.Event()

    @forge.task
    async def ping(n: int) -> int:
        ran.set()
        return n

    worker = workers.start(forge, concurrency=4)
    fetcher, waiter = worker.parts["fetcher"], worker.parts["waiters"][0]
    wait_for(lambda: fetcher.parked.get("default") == 4, 10, "the worker to park")
    fetches, pops = fetcher.fetches, waiter.pops
    for n in range(20):
        job = ping.enqueue(n)
        assert job.initial_status == "active", (
            n,
            forge.sync_driver().run(ops.command("HGETALL", forge.keys("default").parked)),
            fetcher.parked,
            forge.sync_driver().run(ops.command("ZRANGE", forge.keys("default").ready, 0, -1)),
            forge.sync_driver().run(ops.command("HGETALL", forge.keys("default").meta)),
            fetcher.fetches - fetches,
            job.id,
        )
        assert job.result(timeout=10) == n
        assert job.info().worker == worker.worker.worker_id
    assert fetcher.handed == 20
    assert fetcher.fetches == fetches, "a handed job needs no fetch"
    assert waiter.pops - pops <= 21  # one pop per job (and at most one empty slice)


def test_a_burst_fills_the_parked_capacity_and_the_rest_waits_in_ready(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app()
    keys = forge.keys("default")
    assert _park(forge, keys, "ghost", 3, 60_000) == 3
    jobs = forge.enqueue_many("t", [((n,), {}) for n in range(5)])
    assert [j.initial_status for j in jobs] == ["active"] * 3 + ["queued"] * 2
    assert client.zcard(keys.inbox("ghost")) == 3
    assert client.zcard(keys.ready) == 2
    assert client.hget(keys.parked, "ghost").startswith(b"0 ")  # parked, capacity used up
    assert all(j.info().worker == "ghost" and j.info().attempt == 1 for j in jobs[:3])
    # Jobs already waiting come first: with ready non-empty, nothing is handed over.
    assert forge.enqueue("t", 5).initial_status == "queued"
    # A worker that fetches the three waiting jobs parks with its two slots left...
    _, fetched, parked = forge.sync_driver().run(
        ops.fetch(keys, 5, 30_000, "other", False, 0, 0, 5, 60_000)
    )
    assert len(fetched) == 3 and parked == 2
    # ...and the next job goes to it, not to the full one.
    job = forge.enqueue("t", 6)
    assert job.initial_status == "active" and job.info().worker == "other"


def test_a_dead_parked_worker_s_jobs_go_back_uncounted_when_its_parking_expires(
    make_app: AppFactory, workers: WorkerPool, client: redis.Redis
) -> None:
    forge = make_app()
    keys = forge.keys("default")
    _park(forge, keys, "ghost", 2, 200)
    handed = [forge.enqueue("t", n) for n in range(2)]
    assert all(j.initial_status == "active" for j in handed)
    wait_for(
        lambda: _recover(forge, keys)[1:] == (0, 0, 0) and client.zcard(keys.ready) == 2,
        10,
        "recovery to hand the jobs back once the parking expired",
    )
    assert client.exists(keys.inbox("ghost"), keys.parked) == 0
    for job in handed:
        info = job.info()
        assert info.status is JobStatus.QUEUED and info.attempt == 0
        assert info.redeliveries == 0 and info.worker is None
    # After expiry, nothing more is handed to the dead worker.
    assert forge.enqueue("t", 9).initial_status == "queued"

    @forge.task(name="t")
    async def t(n: int) -> int:
        return n

    workers.start(forge, concurrency=4)
    assert [j.result(timeout=10) for j in handed] == [0, 1]
    assert all(j.info().attempt == 1 and j.info().redeliveries == 0 for j in handed)


def test_a_handed_job_whose_lease_expires_unpopped_goes_back_uncounted(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app()
    keys = forge.keys("default")
    # A parking that outlives the lease: the lease expiry is what recovery sees.
    parked = _park(forge, keys, "ghost", 1, 60_000, lease_ms=100)
    assert parked == 1
    job = forge.enqueue("t", 1)
    assert job.initial_status == "active"
    wait_for(
        lambda: _recover(forge, keys)[1:3] == (0, 0) and job.status() is JobStatus.QUEUED,
        10,
        "recovery to hand the job back",
    )
    info = job.info()
    assert info.attempt == 0 and info.redeliveries == 0
    assert client.zcard(keys.inbox("ghost")) == 0


def test_leaving_a_parking_hands_unpopped_jobs_back(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app()
    keys = forge.keys("default")
    driver = forge.sync_driver()
    _park(forge, keys, "w1", 4, 60_000)
    jobs = [forge.enqueue("t", n) for n in range(2)]
    assert driver.run(ops.park(keys, "w1", 0, 30_000, 0, False)) == (0, 2)
    assert client.exists(keys.inbox("w1")) == 0 and client.hget(keys.parked, "w1") is None
    assert [j.status() for j in jobs] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert client.zscore(keys.wake, "r") == 0  # a waiting worker is woken for them
    # Renewing is refused while jobs wait in ready: the worker must fetch them instead.
    assert driver.run(ops.park(keys, "w1", 4, 30_000, 60_000, False)) == (0, 0)


def test_a_paused_queue_hands_nothing_over(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app()
    keys = forge.keys("default")
    _park(forge, keys, "w1", 4, 60_000)
    forge.inspector.pause("default")
    assert forge.enqueue("t", 1).initial_status == "queued"
    assert client.zcard(keys.inbox("w1")) == 0


def test_a_stopping_worker_leaves_its_parking(
    make_app: AppFactory, workers: WorkerPool, client: redis.Redis
) -> None:
    forge = make_app()
    keys = forge.keys("default")
    worker = workers.start(forge, concurrency=2)
    fetcher = worker.parts["fetcher"]
    wait_for(lambda: fetcher.parked.get("default") == 2, 10, "the worker to park")
    assert client.hget(keys.parked, worker.worker.worker_id) is not None
    worker.stop()
    assert client.hget(keys.parked, worker.worker.worker_id) is None
    # With the worker gone, new work waits in ready for the next one.
    assert forge.enqueue("t").initial_status == "queued"


def test_jobs_handed_beyond_the_free_slots_are_handed_back(
    make_app: AppFactory, workers: WorkerPool, client: redis.Redis
) -> None:
    """Parked for more than it has free (possible with several queues), the worker runs what
    fits and releases the rest to ready, where it waits at its place, attempt not counted."""
    forge = make_app()
    keys = forge.keys("default")
    gate = threading.Event()

    @forge.task
    def hold(n: int) -> int:
        gate.wait(10)
        return n

    worker = workers.start(forge, concurrency=1)
    fetcher = worker.parts["fetcher"]
    wait_for(lambda: fetcher.parked.get("default") == 1, 10, "the worker to park")
    # Overstate its capacity, as a parking on another queue would.
    driver = forge.sync_driver()
    assert driver.run(ops.park(keys, worker.worker.worker_id, 2, 30_000, 60_000, False))[0] == 2
    first, second = hold.enqueue_many([((1,), {}), ((2,), {})])
    assert first.initial_status == second.initial_status == "active"
    wait_for_status(second, JobStatus.QUEUED)
    info = second.info()
    assert info.attempt == 0 and info.redeliveries == 0
    assert client.zcard(keys.inbox(worker.worker.worker_id)) == 0
    gate.set()
    assert (first.result(timeout=10), second.result(timeout=10)) == (1, 2)


def test_slots_over_capacity_do_not_read_as_free() -> None:
    """Held over capacity for a moment (jobs handed over during a fetch), a worker's slots must
    not report free space until it is really there: the fetcher would spin on it."""
    import asyncio

    from taskforge.worker.state import Slots

    async def check() -> None:
        slots = Slots(2)
        slots.take(3)
        slots.give()
        assert slots.free == 0
        waiter = asyncio.ensure_future(slots.wait_free())
        await asyncio.sleep(0)
        assert not waiter.done()
        slots.give()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(check())
