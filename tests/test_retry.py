"""Retries: the backoff policy (pure), and on a real server the gaps between attempts, the
dead-letter after the last attempt, ``Retry(delay=...)`` and ``no_retry_on``."""

from __future__ import annotations

import itertools
import random
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from taskforge import JobDead, JobStatus, Retry, RetryPolicy, current_job
from tests.support.workers import AppFactory, WorkerPool, wait_for_status
from tests.support.workers import worker_pool as _worker_pool


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    yield from _worker_pool()


# -- the policy ---------------------------------------------------------------------------------


def test_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=10)
    assert [policy.ceiling(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert policy.ceiling(0) == 0.5
    assert policy.ceiling(10_000) == 10, "huge attempt counts must not overflow"
    assert RetryPolicy(1, 300, jitter=False).delay(3) == 4


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=300)
    rng = random.Random(1234)
    for attempt in (1, 2, 5, 9, 12):
        ceiling = policy.ceiling(attempt)
        delays = [policy.delay(attempt, rng) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in delays)
        # Uniform on [0, ceiling]: mean near the middle, both ends reached.
        assert statistics.fmean(delays) == pytest.approx(ceiling / 2, rel=0.08)
        assert min(delays) < ceiling * 0.02 and max(delays) > ceiling * 0.98
    # Without an rng, the module's generator is used; still within bounds.
    assert all(0 <= policy.delay(4) <= 8 for _ in range(100))


def test_task_options_build_the_policy(make_app: AppFactory) -> None:
    forge = make_app(retry_base_seconds=2, retry_cap_seconds=30)

    @forge.task(retry_backoff=0.5, retry_max_backoff=4)
    def custom() -> None: ...

    @forge.task
    def default() -> None: ...

    assert forge.retry_policy(custom) == RetryPolicy(0.5, 4)
    assert forge.retry_policy(default) == RetryPolicy(2, 30)
    assert forge.retry_policy(None) == RetryPolicy(2, 30)


# -- end to end ---------------------------------------------------------------------------------


def _ms(value: object) -> int:
    return int(value.timestamp() * 1000)  # type: ignore[attr-defined]


def test_gaps_between_attempts_stay_within_the_backoff_window(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    starts: list[tuple[float, int, int]] = []  # (local time, Redis started ms, Redis due ms)

    @forge.task(max_attempts=4, retry_backoff=0.2, retry_max_backoff=0.5)
    def unreliable() -> None:
        info = forge.job(current_job().job_id, queue="default").info()
        assert info.started_at is not None and info.due_at is not None
        starts.append((time.monotonic(), _ms(info.started_at), _ms(info.due_at)))
        raise ConnectionError("downstream is down")

    workers.start(forge)
    job = unreliable.enqueue()
    with pytest.raises(JobDead) as err:
        job.result(timeout=20)
    assert err.value.error_type == "ConnectionError"
    assert len(starts) == 4
    policy = forge.retry_policy(unreliable)
    tolerance = 1.0  # scheduling slack on a loaded machine: generous on purpose
    for failed, (before, after) in enumerate(itertools.pairwise(starts), start=1):
        gap = after[0] - before[0]
        assert 0 <= gap <= policy.ceiling(failed) + tolerance, (failed, gap)
        # Never early: each retry starts at or after the due time its failure set.
        assert after[1] >= after[2]


def test_dead_letter_after_max_attempts_keeps_the_error(
    make_app: AppFactory, workers: WorkerPool
) -> None:
    forge = make_app()
    attempts: list[int] = []

    @forge.task(max_attempts=3)
    def always_fails(order: int) -> None:
        attempts.append(current_job().attempt)
        raise ValueError(f"order {order} is malformed")

    workers.start(forge)
    job = always_fails.enqueue(99)
    with pytest.raises(JobDead):
        job.result(timeout=20)
    assert attempts == [1, 2, 3]
    info = job.info()
    assert info.status is JobStatus.DEAD
    assert info.attempt == info.max_attempts == 3
    assert info.error is not None
    assert info.error["type"] == "ValueError"
    assert info.error["message"] == "order 99 is malformed"
    assert "Traceback (most recent call last)" in info.error["traceback"]
    assert 'raise ValueError(f"order {order} is malformed")' in info.error["traceback"]
    [dead] = forge.inspector.dead_letters("default")
    assert dead.id == job.id


def test_retry_exception_sets_the_delay(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()
    done = threading.Event()

    # The policy's own delays would be anywhere up to 100 s: only Retry(delay=) explains 0.4 s.
    @forge.task(max_attempts=3, retry_backoff=100, retry_max_backoff=100)
    def later() -> str:
        ctx = current_job()
        if ctx.attempt == 1:
            raise Retry("rate limited", delay=0.4)
        if ctx.attempt == 2:
            raise Retry("and again, at once", delay=0)
        done.set()
        return "third time"

    workers.start(forge)
    job = later.enqueue()
    wait_for_status(job, JobStatus.RETRYING)
    first = job.info()
    assert first.started_at is not None and first.due_at is not None
    wait_ms = _ms(first.due_at) - _ms(first.started_at)
    assert 400 <= wait_ms <= 400 + 1000
    assert job.result(timeout=15) == "third time"
    assert job.info().attempt == 3


def test_no_retry_on_goes_straight_to_dead(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app()

    class InvalidOrder(ValueError):
        pass

    runs: list[int] = []

    @forge.task(max_attempts=5, no_retry_on=(KeyError, InvalidOrder))
    def strict(kind: str) -> None:
        runs.append(current_job().attempt)
        if kind == "invalid":
            raise InvalidOrder("no such product")  # a subclass of a listed type counts too
        if kind == "key":
            raise KeyError("sku")
        raise ValueError("a plain ValueError is retried")

    workers.start(forge)
    for kind in ("invalid", "key"):
        runs.clear()
        job = strict.enqueue(kind)
        with pytest.raises(JobDead):
            job.result(timeout=15)
        assert runs == [1] and job.info().attempt == 1

    runs.clear()
    with pytest.raises(JobDead):
        strict.enqueue("other").result(timeout=20)
    assert runs == [1, 2, 3, 4, 5]


def test_enqueue_max_attempts_overrides_the_task(make_app: AppFactory, workers: WorkerPool) -> None:
    forge = make_app(default_max_attempts=4)
    runs: list[str] = []

    @forge.task(max_attempts=3)
    def fails() -> None:
        runs.append(current_job().job_id)
        raise RuntimeError("no")

    workers.start(forge)
    once = fails.enqueue_with(max_attempts=1)
    with pytest.raises(JobDead):
        once.result(timeout=15)
    assert runs.count(once.id) == 1
    by_name = forge.enqueue("unknown.elsewhere")
    assert by_name.info().max_attempts == 4, "the app default applies to unknown tasks"
