"""The worker on a real server: where tasks run, concurrency, queue order, the job context,
middleware, jobs it cannot run, timeouts, delayed jobs and shutdown."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from taskforge import (
    JobDead,
    JobStatus,
    Middleware,
    TaskForgeError,
    ValidationError,
    Worker,
    WorkerConfig,
    current_job,
)
from taskforge.worker import JobContext
from tests.support.workers import (
    AppFactory,
    WorkerPool,
    async_worker,
    wait_for,
    wait_for_status,
)

# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queues": ()}, "at least one queue"),
        ({"queues": ("a", "a")}, "listed twice"),
        ({"queues": ("bad queue",)}, "invalid queue name"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 10001}, "concurrency"),
        ({"grace_seconds": -1}, "grace_seconds"),
        ({"fetch_batch": 0}, "fetch_batch"),
        ({"recover_seconds": 0}, "recover_seconds"),
        ({"registry_seconds": 0}, "registry_seconds"),
        ({"queues": ("a", "b"), "weights": (1,)}, "weight"),
        ({"queues": ("a",), "weights": (0,)}, "weight"),
    ],
)
def test_worker_settings_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkerConfig(**options)


def test_a_worker_serves_the_queues_of_its_tasks_by_default(make_app: AppFactory) -> None:
    forge = make_app()
    assert Worker(forge).config.queues == ("default",)

    @forge.task(queue="mail")
    def send() -> None: ...

    @forge.task(queue="billing")
    def charge() -> None: ...

    assert Worker(forge).config.queues == ("billing", "mail")
    assert Worker(forge, ["mail"], 3).config.concurrency == 3


# -- where and how many -------------------------------------------------------------------------


def test_async_tasks_run_on_the_loop_and_sync_tasks_on_threads(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    seen: dict[str, tuple[str, bool]] = {}

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    @forge.task
    async def coro() -> None:
        seen["async"] = (threading.current_thread().name, on_loop())

    @forge.task
    def plain() -> None:
        seen["sync"] = (threading.current_thread().name, on_loop())

    workers.start(forge)
    coro.enqueue().result(timeout=15)
    plain.enqueue().result(timeout=15)
    assert seen["async"] == ("test-worker", True)  # the worker's own loop thread
    sync_thread, sync_on_loop = seen["sync"]
    assert sync_thread.startswith("taskforge-job") and not sync_on_loop


def test_concurrency_is_reached_and_never_exceeded(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    lock = threading.Lock()
    running = [0]
    peak = [0]
    # Three at a time must be possible (the barrier needs three), and more must never happen.
    barrier = threading.Barrier(3, timeout=10)

    def enter() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])

    def leave() -> None:
        with lock:
            running[0] -= 1

    @forge.task
    def in_threads() -> None:
        enter()
        try:
            barrier.wait()
        finally:
            leave()

    @forge.task
    async def on_loop() -> None:
        enter()
        try:
            await asyncio.sleep(0.01)
        finally:
            leave()

    jobs = in_threads.enqueue_many([()] * 9)
    workers.start(forge, concurrency=3)
    for job in jobs:
        job.result(timeout=20)
    assert peak[0] == 3

    peak[0] = 0
    for job in on_loop.enqueue_many([()] * 30):
        job.result(timeout=20)
    assert 1 <= peak[0] <= 3


def test_fetches_many_jobs_per_round_trip_when_slots_are_free(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    fetches_when_all_ran: list[int] = []
    holder: dict[str, Any] = {}

    def all_running() -> None:
        fetches_when_all_ran.append(holder["fetcher"].fetches)

    barrier = threading.Barrier(8, action=all_running, timeout=10)

    @forge.task
    def together() -> None:
        barrier.wait()

    jobs = together.enqueue_many([()] * 8)
    worker = workers.start(forge, concurrency=8)
    holder["fetcher"] = worker.parts["fetcher"]
    for job in jobs:
        job.result(timeout=15)
    assert fetches_when_all_ran == [1], "eight waiting jobs must be taken in one fetch"


def test_queues_are_served_in_strict_priority_order(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    order: list[str] = []

    @forge.task(queue="low")
    def low(label: str) -> None:
        order.append(label)
        # Work for a higher queue arrives while a lower one is served (and every slot is busy).
        urgent.enqueue(f"high-after-{label}")

    @forge.task(queue="high")
    def urgent(label: str) -> None:
        order.append(label)

    @forge.task(queue="mid")
    def mid(label: str) -> None:
        order.append(label)

    lows = [low.enqueue(f"low-{i}") for i in range(1, 6)]
    mids = [mid.enqueue(f"mid-{i}") for i in range(1, 3)]
    highs = [urgent.enqueue(f"high-{i}") for i in range(1, 3)]
    workers.start(forge, ["high", "mid", "low"], concurrency=1)
    for job in lows + mids + highs:
        job.result(timeout=15)
    wait_for(lambda: len(order) == 14, 15, "the late high jobs")
    assert order == [
        "high-1",
        "high-2",
        "mid-1",
        "mid-2",
        *[label for i in range(1, 6) for label in (f"low-{i}", f"high-after-low-{i}")],
    ]


def test_several_workers_run_each_job_once(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    runs: list[tuple[str, str]] = []

    @forge.task
    async def note(i: int) -> int:
        ctx = current_job()
        runs.append((ctx.job_id, ctx.worker_id))
        await asyncio.sleep(0)
        return i

    pool = [workers.start(forge, concurrency=c) for c in (1, 4, 8)]
    jobs = note.enqueue_many([(i,) for i in range(300)])
    assert [job.result(timeout=30) for job in jobs] == list(range(300))
    assert sorted(job_id for job_id, _ in runs) == sorted(job.id for job in jobs)
    by_worker = {w.worker.worker_id: 0 for w in pool}
    for _, worker_id in runs:
        by_worker[worker_id] += 1
    assert sum(by_worker.values()) == 300
    assert sum(1 for count in by_worker.values() if count) >= 2, by_worker


# -- the job context ----------------------------------------------------------------------------


def test_current_job_context_in_sync_and_async_tasks(
    make_app: AppFactory, workers: WorkerPool, caplog: pytest.LogCaptureFixture
) -> None:
    forge = make_app()
    gate = threading.Event()
    seen: list[JobContext] = []

    @forge.task(queue="ctx", max_attempts=4)
    def sync_job(x: int) -> int:
        ctx = current_job()
        seen.append(ctx)
        ctx.logger.info("working on %d", x)
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        ctx.set_progress({"done": 1, "total": 2})
        gate.wait(10)
        return x

    @forge.task(queue="ctx")
    async def async_job() -> str:
        ctx = current_job()
        ctx.set_progress(0.5)
        seen.append(ctx)
        return ctx.job_id

    caplog.set_level(logging.INFO, logger="taskforge.task")
    worker = workers.start(forge, ["ctx"])
    job = sync_job.enqueue(7)
    try:
        wait_for(lambda: job.info().progress == {"done": 1, "total": 2}, 15, "progress")
        assert job.status() is JobStatus.ACTIVE
    finally:
        gate.set()
    assert job.result(timeout=15) == 7
    assert [c.attempt for c in seen] == [1, 2]
    ctx = seen[-1]
    assert (ctx.job_id, ctx.task, ctx.queue, ctx.max_attempts) == (job.id, "sync_job", "ctx", 4)
    assert ctx.worker_id == worker.worker.worker_id
    records = [r for r in caplog.records if r.name == "taskforge.task.sync_job"]
    working = [r for r in records if r.getMessage() == "working on 7"]
    assert len(working) == 2
    assert {r.job_id for r in working} == {job.id}  # type: ignore[attr-defined]
    assert [r.attempt for r in working] == [1, 2]  # type: ignore[attr-defined]

    other = async_job.enqueue()
    assert other.result(timeout=15) == other.id
    wait_for(lambda: other.info().progress == 0.5, 15, "async progress")

    with pytest.raises(TaskForgeError, match="outside a job"):
        current_job()


def test_middleware_hooks_run_in_order(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    events: list[tuple[str, ...]] = []

    class Recorder(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        def before(self, ctx: JobContext) -> None:
            events.append((self.name, "before", ctx.task))
            if ctx.task == "forbidden":
                raise PermissionError("not allowed here")

        async def after(self, ctx: JobContext, result: Any) -> None:
            events.append((self.name, "after", repr(result)))

        def on_failure(self, ctx: JobContext, error: BaseException) -> None:
            events.append((self.name, "on_failure", type(error).__name__))
            if self.name == "inner":
                raise RuntimeError("a broken hook is logged, nothing more")

    forge.add_middleware(Recorder("outer"))
    forge.add_middleware(Recorder("inner"))

    @forge.task
    def works() -> int:
        events.append(("task", "works"))
        return 42

    @forge.task(max_attempts=1)
    def breaks() -> None:
        events.append(("task", "breaks"))
        raise ValueError("bad")

    @forge.task(max_attempts=1)
    def forbidden() -> None:
        events.append(("task", "forbidden"))

    workers.start(forge, concurrency=1)
    assert works.enqueue().result(timeout=15) == 42
    assert events == [
        ("outer", "before", "works"),
        ("inner", "before", "works"),
        ("task", "works"),
        ("outer", "after", "42"),
        ("inner", "after", "42"),
    ]
    events.clear()
    with pytest.raises(JobDead, match="ValueError: bad"):
        breaks.enqueue().result(timeout=15)
    assert events == [
        ("outer", "before", "breaks"),
        ("inner", "before", "breaks"),
        ("task", "breaks"),
        ("outer", "on_failure", "ValueError"),
        ("inner", "on_failure", "ValueError"),
    ]
    events.clear()
    with pytest.raises(JobDead) as err:
        forbidden.enqueue().result(timeout=15)
    assert err.value.error_type == "PermissionError"
    assert ("task", "forbidden") not in events
    assert events[-2:] == [
        ("outer", "on_failure", "PermissionError"),
        ("inner", "on_failure", "PermissionError"),
    ]


# -- jobs the worker cannot run -----------------------------------------------------------------


def test_unknown_task_goes_dead_and_the_worker_keeps_running(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()

    @forge.task
    def known() -> str:
        return "fine"

    ghost = forge.enqueue_with("ghost.task", max_attempts=5)
    worker = workers.start(forge, concurrency=1)
    with pytest.raises(JobDead) as err:
        ghost.result(timeout=15)
    assert err.value.error_type == "UnknownTask"
    assert "unknown task 'ghost.task'" in err.value.error_message
    assert ghost.info().attempt == 1, "retrying cannot help a worker that lacks the task"
    assert known.enqueue().result(timeout=15) == "fine"
    assert worker.alive


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\xffnot json{", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"args": {}, "kwargs": []}', "'args' must be a list"),
    ],
)
def test_undecodable_stored_payload_goes_dead(
    make_app: AppFactory,
    client: redis.Redis,
    workers: WorkerPool,
    payload: bytes,
    message: str,
) -> None:
    forge = make_app()
    ran: list[Any] = []

    @forge.task
    def victim(*args: Any) -> None:
        ran.append(args)

    job = victim.enqueue(1)
    client.hset(forge.keys("default").job(job.id), "payload", payload)
    workers.start(forge)
    with pytest.raises(JobDead) as err:
        job.result(timeout=15)
    assert err.value.error_type == "SerializationError"
    assert message in err.value.error_message
    assert ran == []
    # The record stays readable for inspection.
    assert job.info().raw_payload == payload


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() is broken")


class Unrepresentable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() is broken")

    def __repr__(self) -> str:
        raise RuntimeError("repr() is broken too")


class Holder(Exception):
    """Carries an object JSON cannot encode (and pickle cannot either)."""

    def __init__(self) -> None:
        super().__init__("holds a lock", threading.Lock())


def test_strange_exceptions_are_recorded(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()

    @forge.task(max_attempts=1)
    def raise_it(kind: str) -> None:
        if kind == "unprintable":
            raise Unprintable("code 7")
        if kind == "unrepresentable":
            raise Unrepresentable()
        raise Holder()

    workers.start(forge)
    with pytest.raises(JobDead) as err:
        raise_it.enqueue("unprintable").result(timeout=15)
    assert err.value.error_type == "Unprintable"
    assert err.value.error_message == "Unprintable('code 7')"

    with pytest.raises(JobDead) as err:
        raise_it.enqueue("unrepresentable").result(timeout=15)
    assert err.value.error_type == "Unrepresentable"
    assert err.value.error_message == "<Unrepresentable object>"

    with pytest.raises(JobDead) as err:
        raise_it.enqueue("holder").result(timeout=15)
    assert err.value.error_type == "Holder"
    assert "holds a lock" in err.value.error_message
    assert "raise Holder()" in err.value.traceback


def test_system_exit_in_a_task_fails_the_job_not_the_worker(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()

    @forge.task(max_attempts=1)
    def quits() -> None:
        sys.exit(3)

    @forge.task(max_attempts=1)
    async def interrupts() -> None:
        raise KeyboardInterrupt

    @forge.task(max_attempts=1, timeout=10)
    async def quits_in_time() -> None:
        raise SystemExit("bye")

    @forge.task
    def fine() -> str:
        return "still here"

    worker = workers.start(forge, concurrency=1)
    with pytest.raises(JobDead) as err:
        quits.enqueue().result(timeout=15)
    assert err.value.error_type == "SystemExit"
    with pytest.raises(JobDead) as err:
        interrupts.enqueue().result(timeout=15)
    assert err.value.error_type == "KeyboardInterrupt"
    with pytest.raises(JobDead) as err:
        quits_in_time.enqueue().result(timeout=15)
    assert (err.value.error_type, err.value.error_message) == ("SystemExit", "bye")
    assert "quits_in_time" in err.value.traceback
    assert fine.enqueue().result(timeout=15) == "still here"
    assert worker.alive


def test_a_result_that_is_not_json_fails_with_a_clear_error(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()

    @forge.task(max_attempts=2)
    def returns_object() -> Any:
        return threading.Event()

    workers.start(forge)
    job = returns_object.enqueue()
    with pytest.raises(JobDead) as err:
        job.result(timeout=15)
    assert err.value.error_type == "SerializationError"
    assert "result is not JSON-serialisable" in err.value.error_message
    assert "Event" in err.value.error_message


# -- timeouts -----------------------------------------------------------------------------------


def test_async_task_over_its_timeout_is_cancelled_and_retried(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    cancelled: list[int] = []

    @forge.task(timeout=0.3, max_attempts=2)
    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(current_job().attempt)
            raise

    workers.start(forge)
    job = hangs.enqueue()
    with pytest.raises(JobDead) as err:
        job.result(timeout=20)
    assert err.value.error_type == "JobTimeout"
    assert "timeout of 0.3 s" in err.value.error_message
    assert cancelled == [1, 2]
    info = job.info()
    assert info.attempt == 2
    assert info.started_at is not None and info.finished_at is not None
    assert (info.finished_at - info.started_at).total_seconds() < 5


def test_a_timeout_given_at_enqueue_applies(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()

    @forge.task(max_attempts=1)
    async def sometimes_slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "in time"

    workers.start(forge)
    assert sometimes_slow.enqueue(0.01).result(timeout=15) == "in time"
    job = sometimes_slow.enqueue_with((30,), timeout=0.2)
    assert job.info().timeout == 0.2
    with pytest.raises(JobDead) as err:
        job.result(timeout=15)
    assert err.value.error_type == "JobTimeout"


def test_sync_task_over_its_timeout_is_abandoned_and_frees_its_slot(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    release = threading.Event()
    told: list[bool] = []

    @forge.task(timeout=0.3, max_attempts=1)
    def stuck() -> None:
        ctx = current_job()
        release.wait(20)
        told.append(ctx.cancel_requested)

    @forge.task
    def quick() -> str:
        return "ran while the stuck thread slept"

    worker = workers.start(forge, concurrency=1)
    try:
        first = stuck.enqueue()
        second = quick.enqueue()
        with pytest.raises(JobDead) as err:
            first.result(timeout=15)
        assert err.value.error_type == "JobTimeout"
        assert "abandoned" in err.value.error_message
        assert second.result(timeout=15) == "ran while the stuck thread slept"
        assert told == [], "the abandoned thread is still sleeping"
        assert worker.parts["threads"].size == 2
    finally:
        release.set()
    wait_for(lambda: told, 10, "the abandoned thread to finish")
    assert told == [True], "the abandoned run is told to stop"


# -- delayed jobs -------------------------------------------------------------------------------


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def test_delayed_jobs_start_on_time_and_never_early(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()

    @forge.task
    def tick() -> None: ...

    workers.start(forge, concurrency=4)
    # Out of order on purpose: the earliest is not the first enqueued.
    jobs = [tick.enqueue_with(delay=d) for d in (1.2, 0.2, 0.8, 0.5)]
    jobs.append(tick.enqueue_with(at=datetime.now(UTC) + timedelta(seconds=0.6)))
    for job in jobs:
        job.result(timeout=15)
    for job in jobs:
        info = job.info()
        assert info.started_at is not None and info.due_at is not None
        early_by = _ms(info.due_at) - _ms(info.started_at)  # both on the Redis clock
        assert early_by <= 0, f"started {early_by} ms before it was due"
        assert -early_by < 1000, f"started {-early_by} ms late"


def test_a_busy_worker_leaves_due_jobs_to_an_idle_one(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    gate = threading.Event()

    @forge.task
    def hog() -> None:
        gate.wait(10)

    @forge.task
    def tick() -> None: ...

    busy = workers.start(forge, concurrency=1)
    try:
        hogging = hog.enqueue()
        wait_for_status(hogging, JobStatus.ACTIVE)
        idle = workers.start(forge, concurrency=1)
        job = tick.enqueue_with(delay=0.5)
        job.result(timeout=15)
        info = job.info()
        assert info.worker == idle.worker.worker_id != busy.worker.worker_id
        assert info.started_at is not None and info.due_at is not None
        assert 0 <= _ms(info.started_at) - _ms(info.due_at) < 1000
    finally:
        gate.set()


# -- shutdown -----------------------------------------------------------------------------------


def test_graceful_stop_lets_running_jobs_finish(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    gate, running = threading.Event(), threading.Event()

    @forge.task
    def slow() -> str:
        running.set()
        gate.wait(10)
        return "finished"

    worker = workers.start(forge, grace_seconds=20)
    job = slow.enqueue()
    # Running, not just leased: a job handed to an idle worker is active before it starts.
    assert running.wait(10)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    wait_for(lambda: worker.worker.state and worker.worker.state.stopping.is_set(), 10, "stop")
    assert worker.alive and job.status() is JobStatus.ACTIVE
    gate.set()
    stopper.join(20)
    assert not worker.alive
    assert job.status() is JobStatus.COMPLETED and job.result(timeout=1) == "finished"
    assert forge.inspector.workers() == []


def test_immediate_stop_hands_running_jobs_back(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    started = threading.Event()

    @forge.task
    async def long() -> None:
        started.set()
        await asyncio.sleep(30)

    worker = workers.start(forge)
    job = long.enqueue()
    assert started.wait(10)
    worker.stop(immediate=True)
    info = job.info()
    assert info.status is JobStatus.QUEUED
    assert info.attempt == 0, "a shutdown is not a failed attempt"
    assert worker.outcomes.outcomes_of(job.id) == ["released"]


async def test_worker_runs_inside_an_existing_event_loop(make_app: AppFactory) -> None:
    async with make_app() as forge:

        @forge.task
        async def square(x: int) -> int:
            return x * x

        async with async_worker(forge, concurrency=2) as (_worker, outcomes):
            jobs = [await square.enqueue_async(i) for i in range(5)]
            results = [await job.result_async(timeout=15) for job in jobs]
        assert results == [0, 1, 4, 9, 16]
        assert sorted(o for _, o in outcomes.entries) == ["completed"] * 5
