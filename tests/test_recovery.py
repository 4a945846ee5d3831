"""Crash recovery on real servers: SIGKILLed workers, poison jobs, fencing of stale workers, and
the `--processes` supervisor restarting a dead child.

Worker processes run `tests.support.chaos_app`, whose tasks record every start and finish in
Redis, so lost and repeated executions are counted exactly (see tests/support/chaos.py).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskforge import JobDead, TaskForge, TaskForgeError, Worker, current_job
from tests.support.chaos import (
    QUEUE,
    Ledger,
    WorkerProcess,
    child_pids,
    expected_runs,
    freeze_and_kill,
    in_process_worker,
    job_records,
    queue_counts,
    queue_stats,
    run_report,
    wait_all_completed,
)
from tests.support.servers import wait_until


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A direct client of the test's server, for reading the ledger and the queue."""
    with redis.Redis.from_url(redis_url) as c:
        yield c


@pytest.fixture
def forge(redis_url: str) -> Iterator[TaskForge]:
    """The producer side (tasks are enqueued by name: their code lives in the workers)."""
    with TaskForge(redis_url) as app:
        yield app


def _enqueue_work(forge: TaskForge, durations: list[int]) -> list[str]:
    return [job.id for job in forge.enqueue_many("work", [(ms,) for ms in durations], queue=QUEUE)]


def test_sigkilled_worker_loses_no_job_and_repeats_only_interrupted_runs(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    rng = random.Random(7)
    ids = _enqueue_work(forge, [rng.randint(50, 200) for _ in range(200)])
    began = time.monotonic()
    with (
        WorkerProcess(redis_url, tmp_path, name="victim", concurrency=20, lease=2) as victim,
        WorkerProcess(redis_url, tmp_path, name="rescuer", concurrency=20, lease=2) as rescuer,
    ):
        victim.start()
        wait_until(
            lambda: queue_counts(client)["completed"] >= 50,
            30,
            "the first worker to complete 50 jobs",
            details=victim.log_tail,
        )
        kill = freeze_and_kill(victim, client)
        at_kill = queue_counts(client)
        rescuer.start()
        wait_all_completed(client, ids, 60, [rescuer])
        elapsed = time.monotonic() - began

        report = run_report(client, ids, expected_runs(ids, [kill]))
        records = job_records(client, ids)
        stats = queue_stats(client)
        repeated = set(report.repeated)
        print(
            f"\nSIGKILL: {len(kill.active)} held at the kill ({len(kill.may_repeat)} started),"
            f" {report}; {elapsed:.1f} s"
        )
        context = f"{report}; held at kill: {len(kill.active)}, started: {len(kill.may_repeat)}"
        assert kill.may_repeat, f"the kill interrupted no run, so it proved nothing: {context}"
        assert at_kill["ready"] > 0, f"no work was left for the second worker: {at_kill}"
        assert report.ok, context
        assert repeated == set(kill.may_repeat), (
            f"ran twice but not interrupted: {sorted(repeated - kill.may_repeat)[:5]}; interrupted"
            f" but ran once: {sorted(kill.may_repeat - repeated)[:5]}; {context}"
        )
        assert report.counts == {
            "ready": 0,
            "scheduled": 0,
            "active": 0,
            "dead": 0,
            "completed": 200,
        }, context
        # A crash is a redelivery, never a failed attempt.
        wrong = {
            i: (r.get("attempt"), r.get("redeliveries", "0"))
            for i, r in records.items()
            if (r.get("attempt"), r.get("redeliveries", "0"))
            != ("1", "1" if i in kill.active else "0")
        }
        assert not wrong, f"job id -> (attempt, redeliveries) off: {dict(list(wrong.items())[:5])}"
        assert stats.get("redelivered") == len(kill.active), stats
        assert stats.get("completed") == 200 and "failed" not in stats, stats
        for job_id in sorted(kill.may_repeat)[:5]:
            assert forge.job(job_id, QUEUE).result(timeout=5) == {"pid": rescuer.pid}


def test_poison_job_is_dead_lettered_after_max_redeliveries(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    max_redeliveries = 2
    poison = forge.enqueue_with("crash", queue=QUEUE)
    others = _enqueue_work(forge, [20] * 10)
    workers: list[WorkerProcess] = []
    began = time.monotonic()

    def poison_status() -> str:
        return job_records(client, [poison.id])[poison.id].get("status", "")

    try:
        # Each worker that picks the poison job dies of it; keep one running until it is buried.
        while poison_status() != "dead":
            assert len(workers) <= max_redeliveries + 1, (
                f"{len(workers)} workers died but the poison job is still"
                f" {poison_status()!r}: {job_records(client, [poison.id])}"
            )
            worker = WorkerProcess(
                redis_url,
                tmp_path,
                name=f"worker{len(workers)}",
                concurrency=1,
                lease=1,
                max_redeliveries=max_redeliveries,
            ).start()
            workers.append(worker)
            wait_until(
                lambda w=worker: poison_status() == "dead" or not w.alive,  # type: ignore[misc]
                30,
                "the poison job to kill its worker or be dead-lettered",
                details=worker.log_tail,
            )
        wait_all_completed(client, others, 30, workers)
        elapsed = time.monotonic() - began

        record = job_records(client, [poison.id])[poison.id]
        ledger = Ledger.read(client)
        report = run_report(client, others)
        deaths = sum(1 for w in workers if not w.alive)
        print(
            f"\npoison: {deaths} workers killed, poison ran {ledger.start_count(poison.id)}x,"
            f" others: {report}; {elapsed:.1f} s"
        )
        assert deaths == max_redeliveries + 1, f"{deaths} workers died; {record}"
        assert ledger.start_count(poison.id) == max_redeliveries + 1, record
        assert record["redeliveries"] == str(max_redeliveries + 1), record
        with pytest.raises(JobDead) as failure:
            poison.result(timeout=5)
        assert failure.value.error_type == "WorkerLost", failure.value
        assert report.ok, f"other jobs: {report}"
        assert report.counts["dead"] == 1 and report.counts["active"] == 0, report
        stats = queue_stats(client)
        assert stats.get("dead") == 1 and stats.get("redelivered") == max_redeliveries, stats
    finally:
        for worker in workers:
            worker.close()


def test_jobs_fetched_with_a_poison_job_are_not_buried_with_it(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    poison = forge.enqueue_with("crash", queue=QUEUE)
    others = _enqueue_work(forge, [300] * 12)
    workers: list[WorkerProcess] = []

    def poison_status() -> str:
        return job_records(client, [poison.id])[poison.id].get("status", "")

    try:
        while poison_status() != "dead":
            assert len(workers) <= 3, f"the poison job is still {poison_status()!r}"
            worker = WorkerProcess(
                redis_url,
                tmp_path,
                name=f"worker{len(workers)}",
                concurrency=4,
                lease=1,
                max_redeliveries=2,
            ).start()
            workers.append(worker)
            wait_until(
                lambda w=worker: poison_status() == "dead" or not w.alive,  # type: ignore[misc]
                30,
                "the poison job to kill its worker or be dead-lettered",
                details=worker.log_tail,
            )
        wait_until(
            lambda: queue_counts(client)["ready"] + queue_counts(client)["active"] == 0,
            30,
            "the other jobs to end",
        )
        report = run_report(client, others)
        buried = [i for i, r in job_records(client, others).items() if r["status"] == "dead"]
        print(f"\npoison with batch-mates: {len(buried)} innocent jobs dead-lettered; {report}")
        assert not buried, f"{len(buried)} innocent jobs were dead-lettered as poison; {report}"
    finally:
        for worker in workers:
            worker.close()


def test_frozen_worker_cannot_complete_a_job_after_losing_its_lease(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    lease = 2.0
    # `stubborn` ignores cancellation, so the stale worker really does try to complete it.
    job = forge.enqueue_with("stubborn", [1500], queue=QUEUE)
    with (
        WorkerProcess(redis_url, tmp_path, name="stale", concurrency=1, lease=lease) as stale,
        WorkerProcess(redis_url, tmp_path, name="fresh", concurrency=1, lease=lease) as fresh,
    ):
        stale.start()
        wait_until(
            lambda: job.id in Ledger.read(client).started_by(stale.pid),
            20,
            "the first worker to start the job",
            details=stale.log_tail,
        )
        stale.freeze()
        frozen_at = time.monotonic()
        fresh.start()
        assert job.result(timeout=30) == {"pid": fresh.pid}
        frozen_for = time.monotonic() - frozen_at
        assert frozen_for > lease
        stale.thaw()

        # The stale worker's run ends, and its completion is refused by the token check.
        rejected = f"job {job.id} finished after its lease was lost"
        wait_until(
            lambda: rejected in stale.log(),
            20,
            "the stale worker to report its refused completion",
            details=stale.log_tail,
        )
        ledger = Ledger.read(client)
        record = job_records(client, [job.id])[job.id]
        counts = queue_counts(client)
        stats = queue_stats(client)
        print(
            f"\nfencing: frozen {frozen_for:.1f} s; runs finished by stale/fresh:"
            f" {len(ledger.finished_by(stale.pid))}/{len(ledger.finished_by(fresh.pid))};"
            f" completions stored: {stats.get('completed')}"
        )
        assert job.id in ledger.finished_by(stale.pid), "the stale run never finished"
        assert job.id in ledger.finished_by(fresh.pid)
        assert record["status"] == "completed" and record["token"] == "2", record
        assert job.result(timeout=1) == {"pid": fresh.pid}, record
        assert stats.get("completed") == 1, f"completed twice: {stats}"
        assert counts == {"ready": 0, "scheduled": 0, "active": 0, "dead": 0, "completed": 1}
        assert stale.alive, stale.log_tail()


def test_supervisor_restarts_a_killed_child_and_work_continues(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path
) -> None:
    rng = random.Random(11)
    first = _enqueue_work(forge, [rng.randint(50, 150) for _ in range(120)])
    with WorkerProcess(
        redis_url, tmp_path, name="supervisor", processes=2, concurrency=10, lease=2
    ) as supervisor:
        supervisor.start()
        children = wait_until(
            lambda: kids if len(kids := child_pids(supervisor.pid)) == 2 else None,
            20,
            "two worker processes",
            details=supervisor.log_tail,
        )
        wait_until(
            lambda: queue_counts(client)["completed"] >= 20,
            30,
            "the children to complete 20 jobs",
            details=supervisor.log_tail,
        )
        kill = freeze_and_kill(children[0], client)
        replacement = wait_until(
            lambda: next((p for p in child_pids(supervisor.pid) if p not in children), None),
            20,
            "the supervisor to start a replacement child",
            details=supervisor.log_tail,
        )
        # Work enqueued after the crash is taken as well.
        second = _enqueue_work(forge, [rng.randint(50, 150) for _ in range(60)])
        ids = first + second
        wait_all_completed(client, ids, 60, [supervisor])
        report = run_report(client, ids, expected_runs(ids, [kill]))
        print(f"\nsupervisor: child {kill.pid} killed holding {len(kill.active)}; {report}")
        assert report.ok, report
        assert children[1] in child_pids(supervisor.pid), "the other child should live on"
        assert replacement in child_pids(supervisor.pid)
        assert "restarting" in supervisor.log(), supervisor.log_tail()
        assert report.counts["active"] == 0 and report.counts["ready"] == 0, report
        supervisor.send(signal.SIGTERM)
        assert supervisor.wait(30) == 0, supervisor.log_tail()


def test_a_crashed_worker_part_stops_the_worker_so_its_jobs_move_on(
    redis_url: str, client: redis.Redis
) -> None:
    """A part that dies of an error nobody foresaw (here: the acker) must not leave a worker
    that looks alive and renews the leases of jobs it will never report."""
    runs: list[tuple[str, str]] = []  # (job id, worker id), appended on the workers' loops
    app = TaskForge(redis_url, lease_seconds=2)

    @app.task(queue="inproc")
    async def nap(ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        job = current_job()
        runs.append((job.job_id, job.worker_id))

    async def broken() -> None:
        raise ValueError("an unforeseen bug")

    ids = [j.id for j in app.enqueue_many("nap", [(300,)] * 20, queue="inproc")]
    crashing = Worker(app, queues=["inproc"], concurrency=5, grace_seconds=1)
    try:
        began = time.monotonic()
        with pytest.raises(TaskForgeError, match="acker crashed"), in_process_worker(crashing):
            crashing.parts["acker"]._send_completions = broken
            assert crashing.stopped.wait(20), "the worker went on without its acker"
        stopped_after = time.monotonic() - began
        unreported = {i for i, w in runs if w == crashing.worker_id}
        with in_process_worker(Worker(app, queues=["inproc"], concurrency=10)):
            wait_until(
                lambda: queue_counts(client, "inproc")["completed"] == len(ids),
                30,
                "another worker to complete every job",
            )
        counts = queue_counts(client, "inproc")
        per_job = Counter(i for i, _ in runs)
        twice = {i for i, n in per_job.items() if n > 1}
        print(
            f"\npart crash: stopped after {stopped_after:.1f} s with {len(unreported)} runs"
            f" unreported; then {counts['completed']}/{len(ids)} completed, {len(twice)} ran twice"
        )
        assert counts == {"ready": 0, "scheduled": 0, "active": 0, "dead": 0, "completed": 20}
        assert set(per_job) == set(ids), f"{len(set(ids) - set(per_job))} jobs never ran"
        assert twice <= unreported, f"ran twice without cause: {sorted(twice - unreported)[:5]}"
    finally:
        app.close()
