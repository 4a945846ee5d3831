"""Graceful shutdown loses nothing: SIGTERM to worker processes and to the `--processes`
supervisor, and `Worker.stop()` in-process. In-flight jobs finish within the grace period;
those that cannot are handed back (queued again, the attempt not counted) and run later.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from taskforge import TaskForge, Worker
from tests.support.chaos import (
    QUEUE,
    Ledger,
    WorkerProcess,
    child_pids,
    in_process_worker,
    job_records,
    queue_counts,
    run_report,
    wait_all_completed,
)
from tests.support.servers import wait_until


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as c:
        yield c


@pytest.fixture
def forge(redis_url: str) -> Iterator[TaskForge]:
    with TaskForge(redis_url) as app:
        yield app


def _enqueue_work(forge: TaskForge, ms: int, count: int) -> list[str]:
    return [job.id for job in forge.enqueue_many("work", [(ms,)] * count, queue=QUEUE)]


def _wait_started(client: redis.Redis, pids: list[int], count: int, worker: WorkerProcess) -> None:
    wait_until(
        lambda: sum(len(Ledger.read(client).started_by(p)) for p in pids) >= count,
        30,
        f"{count} jobs to start",
        details=worker.log_tail,
    )


def _split_by_start(client: redis.Redis, ids: list[str]) -> tuple[list[str], list[str]]:
    ledger = Ledger.read(client)
    started = [i for i in ids if ledger.start_count(i)]
    return started, [i for i in ids if not ledger.start_count(i)]


def test_sigterm_lets_in_flight_jobs_finish(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    ids = _enqueue_work(forge, 800, 20)
    with (
        WorkerProcess(redis_url, tmp_path, name="first", concurrency=10, grace=15) as first,
        WorkerProcess(redis_url, tmp_path, name="second", concurrency=10) as second,
    ):
        first.start()
        _wait_started(client, [first.pid], 10, first)
        in_flight = queue_counts(client)["active"]
        signalled = time.monotonic()
        first.send(signal.SIGTERM)
        assert first.wait(20) == 0, first.log_tail()
        took = time.monotonic() - signalled

        started, untouched = _split_by_start(client, ids)
        records = job_records(client, ids)
        counts = queue_counts(client)
        unfinished = [i for i in started if records[i]["status"] != "completed"]
        print(
            f"\nSIGTERM, grace 15 s: {in_flight} in flight, {len(started) - len(unfinished)}"
            f" finished, {len(unfinished)} lost, exit after {took:.1f} s"
        )
        assert in_flight == 10, f"expected a full worker at SIGTERM: {in_flight}"
        assert not unfinished, f"{len(unfinished)} in-flight jobs did not complete: {counts}"
        assert all(
            records[i]["status"] == "queued" and records[i]["attempt"] == "0" for i in untouched
        ), f"jobs never started should be waiting untouched: {counts}"
        assert counts["active"] == 0 and counts["ready"] == len(untouched), counts
        assert "stopped" in first.log(), first.log_tail()

        second.start()
        wait_all_completed(client, ids, 30, [second])
        report = run_report(client, ids)
        assert report.ok, report


def test_sigterm_with_short_grace_hands_unfinished_jobs_back(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    ids = _enqueue_work(forge, 2000, 10)
    with (
        WorkerProcess(redis_url, tmp_path, name="first", concurrency=10, grace=0.3) as first,
        WorkerProcess(redis_url, tmp_path, name="second", concurrency=10) as second,
    ):
        first.start()
        _wait_started(client, [first.pid], 10, first)
        first.send(signal.SIGTERM)
        assert first.wait(20) == 0, first.log_tail()
        _assert_handed_back(client, ids, first)

        second.start()
        wait_all_completed(client, ids, 30, [second])
        ledger = Ledger.read(client)
        records = job_records(client, ids)
        expected = dict.fromkeys(ids, 2)  # the cut-short run and the one that finished
        report = run_report(client, ids, expected)
        print(f"\nSIGTERM, grace 0.3 s: 10 handed back, then {report}")
        assert report.ok, report
        assert ledger.finished_by(second.pid) == set(ids), "only the second worker finished them"
        assert {r["attempt"] for r in records.values()} == {"1"}, "the handed-back run counted"


def test_second_sigterm_hands_jobs_back_at_once(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    ids = _enqueue_work(forge, 30_000, 5)
    with WorkerProcess(redis_url, tmp_path, name="first", concurrency=5, grace=60) as first:
        first.start()
        _wait_started(client, [first.pid], 5, first)
        first.send(signal.SIGTERM)
        wait_until(
            lambda: "finishing in-flight jobs" in first.log(), 10, "the first SIGTERM to register"
        )
        first.send(signal.SIGTERM)
        assert first.wait(15) == 0, first.log_tail()
        _assert_handed_back(client, ids, first)


def _assert_handed_back(client: redis.Redis, ids: list[str], worker: WorkerProcess) -> None:
    records = job_records(client, ids)
    counts = queue_counts(client)
    ledger = Ledger.read(client)
    wrong = {
        i: (r.get("status"), r.get("attempt"), r.get("redeliveries", "0"))
        for i, r in records.items()
        if (r.get("status"), r.get("attempt"), r.get("redeliveries", "0")) != ("queued", "0", "0")
    }
    assert not wrong, (
        f"{len(wrong)} jobs not handed back cleanly (status, attempt, redeliveries):"
        f" {dict(list(wrong.items())[:5])}"
    )
    assert counts == {
        "ready": len(ids),
        "scheduled": 0,
        "active": 0,
        "dead": 0,
        "completed": 0,
    }, counts
    assert not ledger.finishes, "a run finished, so the grace was not cut short"
    assert f"handing {len(ids)} unfinished job(s) back" in worker.log(), worker.log_tail()


def test_sigterm_to_supervisor_stops_every_child_gracefully(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    ids = _enqueue_work(forge, 800, 20)
    with WorkerProcess(
        redis_url, tmp_path, name="supervisor", processes=2, concurrency=5, grace=15
    ) as supervisor:
        supervisor.start()
        children = wait_until(
            lambda: kids if len(kids := child_pids(supervisor.pid)) == 2 else None,
            20,
            "two worker processes",
            details=supervisor.log_tail,
        )
        _wait_started(client, children, 10, supervisor)
        in_flight = queue_counts(client)["active"]
        supervisor.send(signal.SIGTERM)
        assert supervisor.wait(25) == 0, supervisor.log_tail()

        gone = [p for p in children if not os.path.exists(f"/proc/{p}")]
        started, untouched = _split_by_start(client, ids)
        records = job_records(client, ids)
        counts = queue_counts(client)
        unfinished = [i for i in started if records[i]["status"] != "completed"]
        print(
            f"\nsupervisor SIGTERM: {in_flight} in flight, {len(unfinished)} lost,"
            f" {len(gone)}/2 children exited"
        )
        assert gone == children, f"children still running: {set(children) - set(gone)}"
        assert in_flight == 10, in_flight
        assert not unfinished, f"{len(unfinished)} in-flight jobs did not complete: {counts}"
        assert counts["active"] == 0 and counts["ready"] == len(untouched), counts
        assert supervisor.log().count("stopped") >= 2, supervisor.log_tail()
        assert "restarting" not in supervisor.log(), "a child stopping on SIGTERM was restarted"


# -- in-process: Worker.stop() ----------------------------------------------------------------


class _Runs:
    """Thread-safe record of the runs of the in-process task."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[str] = []


def _inproc_app(redis_url: str, runs: _Runs) -> TaskForge:
    forge = TaskForge(redis_url, lease_seconds=5)

    @forge.task(queue="inproc")
    async def nap(ms: int) -> int:
        from taskforge import current_job

        job_id = current_job().job_id
        with runs.lock:
            runs.started.append(job_id)
        await asyncio.sleep(ms / 1000)
        with runs.lock:
            runs.finished.append(job_id)
        return ms

    return forge


@pytest.mark.parametrize("immediate", [False, True], ids=["graceful", "immediate"])
def test_worker_stop_mid_run_loses_nothing(
    redis_url: str, client: redis.Redis, immediate: bool
) -> None:
    runs = _Runs()
    forge = _inproc_app(redis_url, runs)
    ids = [j.id for j in forge.enqueue_many("nap", [(600,)] * 8, queue="inproc")]
    outcomes: list[tuple[str, str]] = []
    worker = Worker(forge, queues=["inproc"], concurrency=4, grace_seconds=10)
    try:
        with in_process_worker(worker):
            wait_until(lambda: len(runs.started) == 4, 10, "four runs to start")
            worker.parts["acker"].listeners.append(
                lambda lease, outcome: outcomes.append((lease.job.id, outcome))
            )
            worker.stop(immediate=immediate)
            assert worker.stopped.wait(15), "the worker did not stop"
        records = job_records(client, ids, "inproc")
        counts = queue_counts(client, "inproc")
        in_flight = set(runs.started)
        summary: dict[str, Any] = {}
        for _, outcome in outcomes:
            summary[outcome] = summary.get(outcome, 0) + 1
        print(f"\nWorker.stop(immediate={immediate}): 4 in flight -> {summary}")
        if immediate:
            assert summary == {"released": 4}, outcomes
            assert not runs.finished
            queued = ids
        else:
            assert summary == {"completed": 4}, outcomes
            assert sorted(runs.finished) == sorted(in_flight)
            assert all(records[i]["status"] == "completed" for i in in_flight), records
            queued = [i for i in ids if i not in in_flight]
        assert all(
            records[i]["status"] == "queued" and records[i]["attempt"] == "0" for i in queued
        ), {i: records[i]["status"] for i in queued}
        assert counts["active"] == 0 and counts["ready"] == len(queued), counts

        # A later worker runs what is left, and nothing runs twice to completion.
        later = Worker(forge, queues=["inproc"], concurrency=8)
        with in_process_worker(later):
            wait_until(
                lambda: queue_counts(client, "inproc")["completed"] == 8,
                15,
                "the later worker to finish every job",
            )
        assert sorted(runs.finished) == sorted(ids), "a job finished twice or not at all"
    finally:
        forge.close()
