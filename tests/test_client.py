"""The producer side on a real server: enqueueing (single, async, by name, in batches, idempotent,
delayed, prioritised), input validation that writes nothing, and waiting for results."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from taskforge import (
    JobCanceled,
    JobDead,
    JobFailed,
    JobNotFound,
    JobStatus,
    PayloadTooLarge,
    SerializationError,
    UnknownTask,
    ValidationError,
)
from taskforge.errors import DuplicateTaskError
from taskforge.errors import TimeoutError as TaskForgeTimeout
from taskforge.redis.direct import DirectLine
from tests.support.redisstate import CommandCounts, snapshot
from tests.support.workers import (
    AppFactory,
    WorkerPool,
    wait_for,
    wait_for_status,
)

# -- enqueue ------------------------------------------------------------------------------------


def test_enqueue_writes_a_queued_job_record(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app()

    @forge.task(queue="emails", max_attempts=5, timeout=30)
    def send(to: str, subject: str = "hi") -> None: ...

    job = send.enqueue("a@example.com", subject="welcome")
    assert job.created is True
    assert job.initial_status == "queued"
    assert job.queue == "emails"
    assert len(job.id) == 26

    info = job.info()
    assert info.task == "send"
    assert info.status is JobStatus.QUEUED
    assert (info.args, info.kwargs) == (["a@example.com"], {"subject": "welcome"})
    assert (info.attempt, info.max_attempts, info.timeout) == (0, 5, 30.0)
    assert info.priority == 10
    assert info.created_at is not None and info.due_at == info.created_at
    assert client.zscore("taskforge:{emails}:ready", job.id) is not None
    assert forge.inspector.queues() == ["emails"]
    assert job.status() is JobStatus.QUEUED


async def test_enqueue_async_twins(make_app: AppFactory) -> None:
    async with make_app() as forge:

        @forge.task
        async def double(x: int) -> int:
            return 2 * x

        job = await double.enqueue_async(21)
        assert job.created and await job.status_async() is JobStatus.QUEUED
        assert (await job.info_async()).args == [21]

        by_name = await forge.enqueue_async("double", 4)
        assert by_name.queue == "default"
        with_options = await double.enqueue_with_async((5,), delay=60, priority="high")
        assert with_options.initial_status == "scheduled"
        many = await double.enqueue_many_async([(1,), (2,), ((3,), {})])
        assert [(await j.info_async()).args for j in many] == [[1], [2], [3]]
        found = await forge.job_async(job.id)
        assert found.queue == "default"
        assert [s.queued for s in await forge.inspector.stats_async()] == [5]


def test_enqueue_by_name_without_the_task_code(make_app: AppFactory, workers: WorkerPool) -> None:
    producer = make_app()  # knows no tasks at all
    job = producer.enqueue_with("reports.build", (7,), {"fmt": "pdf"}, queue="reports")
    assert producer.job(job.id).info().task == "reports.build"

    consumer = make_app()

    @consumer.task(name="reports.build", queue="reports")
    def build(month: int, fmt: str) -> str:
        return f"{month}.{fmt}"

    workers.start(consumer, ["reports"])
    assert job.result(timeout=15) == "7.pdf"
    # A name the producer does not know goes to the default queue unless told otherwise.
    assert producer.enqueue("reports.build", 1, fmt="csv").queue == "default"


def test_enqueue_many_is_one_round_trip(
    make_app: AppFactory, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    forge = make_app()

    @forge.task
    def work(i: int) -> None: ...

    forge.health()  # open the connection first: its handshake is not the enqueue's
    counts = CommandCounts(client)
    counts.reset()
    calls: list[str] = []
    for name in ("send", "read"):
        original = getattr(DirectLine, name)

        def logged(self: DirectLine, *args: Any, _name: str = name, _f: Any = original) -> Any:
            calls.append(_name)
            return _f(self, *args)

        monkeypatch.setattr(DirectLine, name, logged)
    jobs = work.enqueue_many([(i,) for i in range(2500)])
    # One round trip: every request is written before the first reply is waited for.
    assert calls == ["send"] * 11 + ["read"] * 11, calls
    executed = counts.read()
    # Batches of 250 jobs per script call, and the queue registration, in that one trip.
    assert executed.get("evalsha") == 10
    assert executed.get("sadd") == 1
    assert len(jobs) == 2500 and len({j.id for j in jobs}) == 2500
    assert all(j.created for j in jobs)
    assert client.zcard("taskforge:{default}:ready") == 2500
    # FIFO within the batch: the ready set holds them in enqueue order.
    head = [m.decode() for m in client.zrange("taskforge:{default}:ready", 0, 2)]
    assert head == [j.id for j in jobs[:3]]
    assert work.enqueue_many([]) == []


def test_enqueue_many_validates_everything_before_writing(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app()
    before = snapshot(client)
    items: list[Any] = [(i,) for i in range(1500)]
    items[1200] = (object(),)
    with pytest.raises(SerializationError):
        forge.enqueue_many("work", items)
    with pytest.raises(ValidationError, match="key"):
        forge.enqueue_many("work", [(1,)], key="k")
    with pytest.raises(ValidationError):
        forge.enqueue_many("work", ["not a tuple"])  # type: ignore[list-item]
    assert snapshot(client) == before


def test_idempotency_key_returns_the_existing_job(
    make_app: AppFactory, client: redis.Redis, workers: WorkerPool
) -> None:
    forge = make_app()
    gate = threading.Event()

    @forge.task
    def charge(order: int) -> int:
        gate.wait(10)
        return order

    first = charge.enqueue_with((1,), key="order-1")
    assert first.created
    queued_dup = charge.enqueue_with((2,), key="order-1")
    assert (queued_dup.id, queued_dup.created, queued_dup.initial_status) == (
        first.id,
        False,
        "queued",
    )
    assert first.info().args == [1], "a duplicate must not overwrite the job"

    workers.start(forge, concurrency=1)
    try:
        wait_for_status(first, JobStatus.ACTIVE)
        active_dup = charge.enqueue_with((3,), key="order-1")
        assert (active_dup.id, active_dup.created, active_dup.initial_status) == (
            first.id,
            False,
            "active",
        )
    finally:
        gate.set()
    assert first.result(timeout=15) == 1
    retained = charge.enqueue_with((4,), key="order-1")
    assert (retained.id, retained.created, retained.initial_status) == (
        first.id,
        False,
        "completed",
    )
    # The duplicates created nothing; other keys are independent.
    assert client.zcard("taskforge:{default}:completed") == 1
    [stats] = forge.inspector.stats()
    assert (stats.queued, stats.active, stats.completed) == (0, 0, 1)
    assert stats.counters["enqueued"] == 1, "duplicates are not new jobs"
    assert charge.enqueue_with((5,), key="order-2").created


def test_idempotency_key_is_freed_when_retention_ends(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app(completed_ttl=0.3)
    job = forge.enqueue_with("t", key="once")
    assert job.cancel()
    assert forge.enqueue_with("t", key="once").created is False  # retained while canceled
    wait_for(lambda: not client.exists(f"taskforge:{{default}}:job:{job.id}"), 10, "expiry")
    again = forge.enqueue_with("t", key="once")
    assert again.created and again.id != job.id


def test_enqueue_with_explicit_job_id_is_idempotent(make_app: AppFactory) -> None:
    forge = make_app()
    one = forge.enqueue_with("t", (1,), job_id="invoice42")
    two = forge.enqueue_with("t", (2,), job_id="invoice42")
    assert one.id == two.id == "invoice42"
    assert (one.created, two.created) == (True, False)
    assert forge.job("invoice42").info().args == [1]


def test_delay_and_at_schedule_the_job(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app()
    now_ms = int(client.time()[0]) * 1000
    delayed = forge.enqueue_with("t", delay=30)
    at = datetime.now(UTC) + timedelta(minutes=5)
    fixed = forge.enqueue_with("t", at=at)
    past = forge.enqueue_with("t", at=datetime.now(UTC) - timedelta(hours=1))
    zero = forge.enqueue_with("t", delay=0)

    assert delayed.initial_status == fixed.initial_status == "scheduled"
    assert past.initial_status == zero.initial_status == "queued"
    due = client.zscore("taskforge:{default}:scheduled", delayed.id)
    assert due is not None and 29_000 <= due - now_ms <= 32_000
    # to the 10 microseconds Redis keeps of a score this size
    fixed_due = client.zscore("taskforge:{default}:scheduled", fixed.id)
    assert fixed_due == pytest.approx(at.timestamp() * 1000, abs=0.01)
    info = fixed.info()
    assert info.status is JobStatus.SCHEDULED and info.due_at is not None
    assert abs((info.due_at - at).total_seconds()) < 0.002
    assert client.zcard("taskforge:{default}:ready") == 2


def test_priorities_run_in_strict_order_fifo_within_a_level(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    order: list[str] = []

    @forge.task
    def record(label: str) -> None:
        order.append(label)

    plan = [
        ("low-1", "low"),
        ("normal-1", None),
        ("n15-1", 15),
        ("critical-1", "critical"),
        ("high-1", "high"),
        ("low-2", "low"),
        ("n25-1", 25),
        ("normal-2", "normal"),
        ("n5-1", "5"),
        ("critical-2", "CRITICAL"),
        ("high-2", 20),
        ("n-5-1", -5),
        ("n1000-1", 1000),
        ("n25-2", 25),
    ]
    jobs = [record.enqueue_with((label,), priority=priority) for label, priority in plan]
    workers.start(forge, concurrency=1)
    for job in jobs:
        job.result(timeout=15)
    assert order == [
        "n1000-1",
        "critical-1",
        "critical-2",
        "n25-1",
        "n25-2",
        "high-1",
        "high-2",
        "n15-1",
        "normal-1",
        "normal-2",
        "n5-1",
        "low-1",
        "low-2",
        "n-5-1",
    ]


def test_task_priority_is_the_default_and_enqueue_overrides_it(make_app: AppFactory) -> None:
    forge = make_app()

    @forge.task(priority="high")
    def urgent() -> None: ...

    assert urgent.enqueue().info().priority == 20
    assert urgent.enqueue_with(priority="low").info().priority == 0


def test_task_registry(make_app: AppFactory) -> None:
    forge = make_app()

    def plain(x: int) -> int:
        return x + 1

    task = forge.task(plain)
    assert task.name == "plain" and task(1) == 2, "calling a task runs it here"
    assert forge.task(plain) is not None, "registering the same function again is fine"
    with pytest.raises(DuplicateTaskError, match="already registered"):
        forge.task(name="plain")(lambda x: x)
    renamed = forge.task(name="billing.plain", queue="billing")(lambda x: x)
    assert (renamed.name, renamed.options.queue) == ("billing.plain", "billing")
    assert forge.registry.names() == ["billing.plain", "plain"]
    assert forge.registry.queues() == ["billing", "default"]
    with pytest.raises(UnknownTask, match="unknown task 'nope'"):
        forge.registry.get("nope")
    for options, message in (
        ({"name": "bad name"}, "invalid task name"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
    ):
        with pytest.raises(ValidationError, match=message):
            forge.task(**options)(lambda: None)  # type: ignore[arg-type]


# -- bad input ----------------------------------------------------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_bad_input_raises_clear_errors_and_writes_nothing(
    make_app: AppFactory, client: redis.Redis
) -> None:
    forge = make_app(max_payload_bytes=2048)

    @forge.task
    def t(*args: Any, **kwargs: Any) -> None: ...

    t.enqueue(1)  # the queue exists: later failures must leave it exactly as it is
    before = snapshot(client)

    with pytest.raises(SerializationError, match="Point") as err:
        t.enqueue(Point(1))
    assert "JSON" in str(err.value)
    with pytest.raises(SerializationError, match="complex"):
        t.enqueue(x=1j)
    with pytest.raises(SerializationError, match="object"):
        forge.enqueue("t", [object()])
    with pytest.raises(PayloadTooLarge, match="2048"):
        t.enqueue("x" * 3000)
    for queue in ("", "has space", "{braces}", "-starts-with-dash", "x" * 129, "a/b"):
        with pytest.raises(ValidationError, match="queue name"):
            forge.enqueue_with("t", queue=queue)
    for name in ("", "1starts-with-digit", "has space", 'quo"te', "back\\slash", "é"):
        with pytest.raises(ValidationError, match="task name"):
            forge.enqueue(name)
    with pytest.raises(ValidationError, match="either delay= or at="):
        t.enqueue_with(delay=1, at=datetime.now(UTC))
    for priority in ("urgent", 1001, -1001, 1.5, True, ""):
        with pytest.raises(ValidationError, match="priority"):
            t.enqueue_with(priority=priority)  # type: ignore[arg-type]
    for delay in (-1, "5", float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="delay"):
            t.enqueue_with(delay=delay)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at="):
        t.enqueue_with(at="tomorrow")  # type: ignore[arg-type]
    for attempts in (0, -1, 1.5):
        with pytest.raises(ValidationError, match="max_attempts"):
            t.enqueue_with(max_attempts=attempts)  # type: ignore[arg-type]
    for timeout in (0, -1, float("nan")):
        with pytest.raises(ValidationError, match="timeout"):
            t.enqueue_with(timeout=timeout)
    with pytest.raises(ValidationError, match="key"):
        t.enqueue_with(key="")
    with pytest.raises(ValidationError, match="job_id"):
        t.enqueue_with(job_id="has:colon")
    with pytest.raises(ValidationError, match="unknown enqueue option"):
        forge.enqueue_with("t", delya=5)
    with pytest.raises(ValidationError, match="priority"):

        @forge.task(priority="asap")
        def never() -> None: ...

    with pytest.raises(ValidationError, match="queue name"):

        @forge.task(queue="bad queue")
        def never2() -> None: ...

    assert snapshot(client) == before


# -- result() -----------------------------------------------------------------------------------


def test_result_returns_the_value_sync_and_async(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()

    @forge.task
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @forge.task
    def nothing() -> None:
        return None

    workers.start(forge)
    assert add.enqueue(2, 3).result(timeout=15) == {"sum": 5}
    assert nothing.enqueue().result(timeout=15) is None

    async def wait_async() -> Any:
        async with make_app() as producer:
            job = await producer.enqueue_async("add", 4, 5)
            return await job.result_async(timeout=15)

    assert asyncio.run(wait_async()) == {"sum": 9}


def test_result_raises_job_dead_with_the_remote_error(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()

    class CardDeclined(Exception):
        pass

    @forge.task(max_attempts=2)
    def charge(order: int) -> None:
        raise CardDeclined(f"card declined for order {order}")

    workers.start(forge)
    job = charge.enqueue(17)
    with pytest.raises(JobDead) as err:
        job.result(timeout=15)
    failure = err.value
    assert isinstance(failure, JobFailed)
    assert failure.job_id == job.id and failure.status == "dead"
    assert failure.error_type.endswith("CardDeclined")
    assert failure.error_message == "card declined for order 17"
    assert "raise CardDeclined" in failure.traceback and "in charge" in failure.traceback
    assert "card declined for order 17" in str(failure)
    assert job.info().attempt == 2


async def test_result_async_raises_job_canceled(make_app: AppFactory) -> None:
    async with make_app() as forge:
        job = await forge.enqueue_with_async("later", delay=60)
        waiter = asyncio.ensure_future(job.result_async(timeout=15))
        record = forge.keys("default").job(job.id)
        driver = forge.async_driver()
        deadline = time.monotonic() + 10
        while await driver.client.hget(record, "waiters") != b"1":  # registered, now blocking
            assert time.monotonic() < deadline, "result_async() never registered as a waiter"
            await asyncio.sleep(0.01)
        assert await job.cancel_async()
        with pytest.raises(JobCanceled) as err:
            await waiter
        assert isinstance(err.value, JobFailed)
        assert err.value.status == "canceled"
        # A final job answers at once, without blocking.
        with pytest.raises(JobCanceled):
            await job.result_async(timeout=0)


def test_result_times_out_and_does_not_poll(make_app: AppFactory, client: redis.Redis) -> None:
    forge = make_app()
    job = forge.enqueue("nobody.runs.this")
    with pytest.raises(TaskForgeTimeout):
        job.result(timeout=0.05)  # opens both connections: their handshakes are not counted
    counts = CommandCounts(client)
    counts.reset()
    started = time.monotonic()
    with pytest.raises(TaskForgeTimeout, match="still queued") as err:
        job.result(timeout=2.5)
    elapsed = time.monotonic() - started
    assert isinstance(err.value, TimeoutError)
    assert 2.4 <= elapsed < 6
    executed = counts.read()
    # A watch script before and after one blocking pop: no polling while it waits. (The only
    # other commands are the scripts' own, e.g. HINCRBY of the waiter count.)
    assert executed.pop("blpop", 0) == 1
    assert executed.pop("evalsha", 0) == 2
    assert set(executed) <= {"hmget", "hincrby"}, executed
    assert sum(executed.values()) <= 3, executed
    started = time.monotonic()
    with pytest.raises(TaskForgeTimeout):
        job.result(timeout=0)
    assert time.monotonic() - started < 1


def test_result_wakes_up_when_the_job_finishes(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    gate = threading.Event()

    @forge.task
    def slow() -> str:
        gate.wait(10)
        return "done"

    workers.start(forge)
    job = slow.enqueue()
    wait_for_status(job, JobStatus.ACTIVE)
    timer = threading.Timer(0.3, gate.set)
    timer.start()
    started = time.monotonic()
    try:
        assert job.result(timeout=30) == "done"
    finally:
        timer.cancel()
        gate.set()
    # Woken by the completion, long before the 10 s blocking slice would have ended.
    assert time.monotonic() - started < 5


def test_several_waiters_are_all_woken(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    gate = threading.Event()

    @forge.task
    def slow() -> str:
        gate.wait(10)
        return "for everyone"

    job = slow.enqueue()
    results: list[Any] = []

    def wait_sync() -> None:
        with make_app() as other:
            results.append(other.job(job.id).result(timeout=20))

    async def wait_async() -> Any:
        async with make_app() as other:
            return await (await other.job_async(job.id)).result_async(timeout=20)

    threads = [threading.Thread(target=wait_sync) for _ in range(3)]
    threads.append(threading.Thread(target=lambda: results.append(asyncio.run(wait_async()))))
    for thread in threads:
        thread.start()
    key = forge.keys("default").job(job.id)
    client = forge.sync_driver().client
    wait_for(lambda: client.hget(key, "waiters") == b"4", 10, "four registered waiters")
    workers.start(forge)
    gate.set()
    for thread in threads:
        thread.join(20)
    assert results == ["for everyone"] * 4


def test_result_of_an_unknown_job(make_app: AppFactory) -> None:
    forge = make_app()
    with pytest.raises(JobNotFound):
        forge.job("NOSUCHJOB")
    with pytest.raises(JobNotFound):
        forge.job("NOSUCHJOB", queue="default").result(timeout=1)
