"""Chaos under load: Redis restarts (AOF), network faults between worker and Redis, and a soak
of repeated worker kills. Every test counts lost and repeated executions exactly, from the
ledger the tasks of `tests.support.chaos_app` keep (see tests/support/chaos.py).

The soak runs with small counts by default; TASKFORGE_SLOW=1 adds a long variant.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from taskforge import RedisUnavailable, TaskForge, TaskForgeError
from tests.conftest import ServerFactory
from tests.support.chaos import (
    QUEUE,
    KillSnapshot,
    WorkerProcess,
    expected_runs,
    freeze_and_kill,
    job_records,
    queue_counts,
    run_report,
    wait_all_completed,
)
from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer, wait_until

CLEAN = {"ready": 0, "scheduled": 0, "active": 0, "dead": 0}


def _enqueue_work(forge: TaskForge, durations: list[int]) -> list[str]:
    return [job.id for job in forge.enqueue_many("work", [(ms,) for ms in durations], queue=QUEUE)]


def _settled(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k != "completed"}


# -- Redis restart --------------------------------------------------------------------------


@dataclass
class _Producer:
    """Enqueues one job at a time (ids chosen here, so even a failed call's job is known)
    until stopped, sorting each call's outcome."""

    forge: TaskForge
    ok: list[str] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)
    other: list[tuple[str, BaseException]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            job_id = uuid.uuid4().hex
            try:
                self.forge.enqueue_with("work", [20], queue=QUEUE, job_id=job_id)
                self.ok.append(job_id)
            except RedisUnavailable as exc:
                self.unavailable.append((job_id, str(exc)))
            except Exception as exc:
                self.other.append((job_id, exc))
            self.stop.wait(0.02)  # pacing: about 50 enqueues a second


@pytest.mark.parametrize("outage", [False, True], ids=["restart", "crash-and-outage"])
def test_worker_and_producer_ride_out_a_redis_restart(
    aof_redis: RedisServer, tmp_path: Path, outage: bool
) -> None:
    """`restart`: a graceful restart, down for a moment. `crash-and-outage`: SIGKILL, then down
    until the producer's retries run out (it must see RedisUnavailable), then back."""
    url = aof_redis.url
    with TaskForge(url) as forge, TaskForge(url) as producer_app:
        rng = random.Random(3)
        before = _enqueue_work(forge, [rng.randint(50, 150) for _ in range(150)])
        producer = _Producer(producer_app)
        thread = threading.Thread(target=producer.run, name="producer", daemon=True)
        # The lease outlasts the outage: a long outage is not a lost lease.
        with WorkerProcess(url, tmp_path, name="worker", concurrency=10, lease=15) as worker:
            worker.start()
            client = aof_redis.client()
            wait_until(
                lambda: queue_counts(client)["completed"] >= 30,
                30,
                "30 completions before the restart",
                details=worker.log_tail,
            )
            thread.start()
            try:
                wait_until(lambda: len(producer.ok) >= 5, 10, "the producer to get going")
                began = time.monotonic()
                if outage:
                    aof_redis.kill()
                    wait_until(lambda: producer.unavailable, 30, "an enqueue to give up")
                aof_redis.restart()
                downtime = time.monotonic() - began
                client = aof_redis.client()
                at_restart = len(producer.ok) + len(producer.unavailable)
                wait_until(
                    lambda: len(producer.ok) + len(producer.unavailable) >= at_restart + 20,
                    30,
                    "20 more enqueues after the restart",
                )
            finally:
                producer.stop.set()
                thread.join(10)
            assert not producer.other, f"enqueue failed with unclear errors: {producer.other[:3]}"
            assert all("cannot reach Redis" in msg for _, msg in producer.unavailable)
            # A failed call may still have written its job: those must not be lost either.
            failed_ids = [job_id for job_id, _ in producer.unavailable]
            written = [i for i, r in job_records(client, failed_ids).items() if r]
            ids = before + producer.ok + written
            wait_all_completed(client, ids, 60, [worker])
            # Every start must be one Redis recorded: a delivery (attempt) or a redelivery. A
            # task whose own Redis call failed in the restart window is retried, and that second
            # run is accounted for; a run Redis does not know of is not. A delivery whose reply
            # the restart cut off never ran: it is redelivered, so Redis counts one start more
            # than ran, which is allowed (fewer runs than starts, never more, never none).
            starts = {
                i: int(r.get("attempt", 1)) + int(r.get("redeliveries", 0))
                for i, r in job_records(client, ids).items()
            }
            report = run_report(client, ids, starts)
            noscript = client.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)
            evals = client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
            print(
                f"\nRedis {'crash + outage' if outage else 'restart'} (down {downtime:.2f} s):"
                f" {len(before)} queued before, {len(producer.ok)} enqueues ok,"
                f" {len(producer.unavailable)} RedisUnavailable ({len(written)} written anyway);"
                f" {report}; {_redelivered(client, ids)} redelivered; NOSCRIPT replies"
                f" {noscript}, EVAL fallbacks {evals}"
            )
            assert worker.alive, f"the worker died instead of reconnecting\n{worker.log_tail()}"
            assert not outage or producer.unavailable
            assert not report.lost, report
            assert all(0 < ran < recorded for recorded, ran in report.unexpected.values()), report
            assert _settled(report.counts) == CLEAN, report
            # The script cache was empty after the restart: EVALSHA failed and EVAL took over.
            assert noscript > 0 and evals > 0, (noscript, evals)


@pytest.mark.parametrize(
    "refusal",
    [
        ("min-replicas-to-write", "1", "0", "NOREPLICAS"),
        ("replicaof", "127.0.0.1 1", "no one", "read only replica"),
        ("maxmemory", "1", "0", "out of memory"),
    ],
    ids=["NOREPLICAS", "READONLY", "OOM"],
)
def test_worker_survives_a_spell_of_refused_writes(
    redis_factory: ServerFactory,
    redis_url: str,
    tmp_path: Path,
    refusal: tuple[str, str, str, str],
) -> None:
    """The server refuses writes for a while (a master that lost its replicas with
    min-replicas-to-write set; a master demoted to a replica of a node that is not there; out of
    memory): producers get a clear error, the worker waits it out and carries on. The ledger is
    kept on another server, whose writes are not refused."""
    server = redis_factory(name="refusing")
    setting, refuse, allow, refused = refusal
    with TaskForge(server.url) as forge, redis.Redis.from_url(redis_url) as ledger:
        client = server.client()
        rng = random.Random(8)
        ids = _enqueue_work(forge, [rng.randint(50, 100) for _ in range(150)])
        with WorkerProcess(
            server.url, tmp_path, name="worker", concurrency=10, lease=10, record_url=redis_url
        ) as worker:
            worker.start()
            wait_until(
                lambda: queue_counts(client)["completed"] >= 30,
                30,
                "30 completions",
                details=worker.log_tail,
            )
            _configure(client, setting, refuse)
            with pytest.raises(TaskForgeError) as refusal_error:
                forge.enqueue_with("work", [1], queue=QUEUE)
            assert refused in str(refusal_error.value), refusal_error.value
            wait_until(
                lambda: refused in worker.log(), 10, "the worker to be refused", interval=0.05
            )
            _configure(client, setting, allow)
            wait_all_completed(client, ids, 60, [worker], ledger_client=ledger)
            report = run_report(client, ids, ledger_client=ledger)
            print(
                f"\n{setting} {refuse} ({refused}): {report}; {_redelivered(client, ids)} redelivered"
            )
            assert report.ok, report
            assert _settled(report.counts) == CLEAN, report
            assert "crashed" not in worker.log(), worker.log_tail()


@pytest.mark.parametrize("how", ["replicaof", "client-unblock"])
def test_an_idle_worker_unblocked_by_the_server_keeps_waiting(
    redis_factory: ServerFactory, redis_url: str, tmp_path: Path, how: str
) -> None:
    """Redis ends a blocking call with an UNBLOCKED error when its master turns into a replica
    (a switchover, a coordinated failover) or an operator runs CLIENT UNBLOCK … ERROR. An idle
    worker blocked in its wait treats that as a refusal for now, waits and carries on."""
    server = redis_factory(name="unblocking")
    with TaskForge(server.url) as forge, redis.Redis.from_url(redis_url) as ledger:
        client = server.client()
        with WorkerProcess(
            server.url, tmp_path, name="worker", concurrency=4, lease=10, record_url=redis_url
        ) as worker:
            worker.start()

            def blocked_waiters() -> list[int]:
                return [
                    int(c["id"]) for c in client.client_list() if c["cmd"] in ("bzmpop", "bzpopmin")
                ]

            waiters = wait_until(
                blocked_waiters, 20, "the worker to block", details=worker.log_tail
            )
            if how == "replicaof":
                client.execute_command("REPLICAOF", "127.0.0.1", "1")
            else:
                for waiter in waiters:
                    client.execute_command("CLIENT", "UNBLOCK", waiter, "ERROR")
            wait_until(lambda: "UNBLOCKED" in worker.log(), 10, "the worker to be unblocked")
            if how == "replicaof":
                client.execute_command("REPLICAOF", "NO", "ONE")
            ids = _enqueue_work(forge, [1] * 20)
            wait_all_completed(client, ids, 30, [worker], ledger_client=ledger)
            report = run_report(client, ids, ledger_client=ledger)
            assert report.ok, report
            assert "crashed" not in worker.log(), worker.log_tail()


def _configure(client: redis.Redis, setting: str, value: str) -> None:
    if setting == "replicaof":
        client.execute_command("REPLICAOF", *value.split())
    else:
        client.config_set(setting, value)


# -- network faults -------------------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as c:
        yield c


@pytest.fixture
def forge(redis_url: str) -> Iterator[TaskForge]:
    with TaskForge(redis_url) as app:
        yield app


def _proxied_worker(
    fault_proxy: FaultProxy, redis_url: str, tmp_path: Path, lease: float, socket_timeout: float
) -> WorkerProcess:
    """A worker that reaches Redis through the proxy; its tasks record on a direct connection,
    so the ledger is not subject to the faults."""
    return WorkerProcess(
        fault_proxy.url,
        tmp_path,
        name="proxied",
        concurrency=10,
        lease=lease,
        socket_timeout=socket_timeout,
        record_url=redis_url,
    )


def _redelivered(client: redis.Redis, ids: list[str]) -> int:
    return sum(1 for r in job_records(client, ids).values() if r.get("redeliveries", "0") != "0")


def test_connection_resets_mid_run(
    redis_url: str,
    client: redis.Redis,
    forge: TaskForge,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    ids = _enqueue_work(forge, [rng.randint(50, 100) for _ in range(200)])
    with _proxied_worker(fault_proxy, redis_url, tmp_path, lease=3, socket_timeout=2) as worker:
        worker.start()

        def completed() -> int:
            return queue_counts(client)["completed"]

        wait_until(lambda: completed() >= 40, 30, "40 completions", details=worker.log_tail)
        fault_proxy.close_connections()
        wait_until(lambda: completed() >= 80, 30, "progress after a reset", details=worker.log_tail)
        # A reset storm: every connection, old or new, is torn down until the worker has
        # tried to reconnect a few times.
        accepted = fault_proxy.accepted_connections
        fault_proxy.set_reset(True)
        wait_until(
            lambda: fault_proxy.accepted_connections >= accepted + 5, 10, "reconnect attempts"
        )
        fault_proxy.set_reset(False)
        wait_until(lambda: completed() >= 120, 30, "progress after the storm")
        fault_proxy.close_connections()
        wait_all_completed(client, ids, 60, [worker])

        report = run_report(client, ids)
        print(
            f"\nconnection resets: {report}; {_redelivered(client, ids)} redelivered"
            f" (fetch replies lost to a reset)"
        )
        assert report.ok, report
        assert _settled(report.counts) == CLEAN, report
        assert worker.alive, worker.log_tail()


def test_blackhole_shorter_than_the_lease_loses_no_lease(
    redis_url: str,
    client: redis.Redis,
    forge: TaskForge,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    rng = random.Random(6)
    ids = _enqueue_work(forge, [rng.randint(50, 100) for _ in range(200)])
    with _proxied_worker(fault_proxy, redis_url, tmp_path, lease=6, socket_timeout=1) as worker:
        worker.start()
        wait_until(
            lambda: queue_counts(client)["completed"] >= 50,
            30,
            "50 completions",
            details=worker.log_tail,
        )
        at_fault = queue_counts(client)
        fault_proxy.set_blackhole(True)
        time.sleep(2.0)  # the length of the fault itself, not a wait for anything
        fault_proxy.set_blackhole(False)
        wait_all_completed(client, ids, 60, [worker])

        report = run_report(client, ids)
        print(
            f"\nblackhole 2 s (lease 6 s), {at_fault['active']} in flight: {report};"
            f" {_redelivered(client, ids)} redelivered"
        )
        assert at_fault["active"] > 0 and at_fault["ready"] > 0, at_fault
        assert report.ok, report
        assert _settled(report.counts) == CLEAN, report
        assert "lost the lease" not in worker.log(), worker.log_tail()
        assert worker.alive, worker.log_tail()


def test_lost_replies_repeat_no_run(
    redis_url: str,
    client: redis.Redis,
    forge: TaskForge,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """Commands reach Redis and run, but their replies are lost for a while: a fetch whose reply
    was lost leaves jobs leased to nobody (they come back when the lease expires), and a
    completion sent again finds its job done. No job may run twice."""
    rng = random.Random(9)
    ids = _enqueue_work(forge, [rng.randint(50, 100) for _ in range(200)])
    with _proxied_worker(fault_proxy, redis_url, tmp_path, lease=3, socket_timeout=1) as worker:
        worker.start()
        wait_until(
            lambda: queue_counts(client)["completed"] >= 50,
            30,
            "50 completions",
            details=worker.log_tail,
        )
        fault_proxy.set_drop_replies(True)
        time.sleep(1.0)  # the length of the fault itself, not a wait for anything
        fault_proxy.set_drop_replies(False)
        wait_all_completed(client, ids, 60, [worker])
        report = run_report(client, ids)
        print(f"\nreplies dropped 1 s: {report}; {_redelivered(client, ids)} redelivered")
        assert report.ok, report
        assert _settled(report.counts) == CLEAN, report
        assert worker.alive, worker.log_tail()


def test_added_latency_breaks_nothing(
    redis_url: str,
    client: redis.Redis,
    forge: TaskForge,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    fault_proxy.set_latency(25)  # 50 ms or more per round trip
    ids = _enqueue_work(forge, [50] * 100)
    with _proxied_worker(fault_proxy, redis_url, tmp_path, lease=2, socket_timeout=2) as worker:
        worker.start()
        wait_all_completed(client, ids, 60, [worker])
        report = run_report(client, ids)
        redelivered = _redelivered(client, ids)
        print(f"\nlatency 25 ms each way: {report}; {redelivered} redelivered")
        assert report.ok, report
        assert redelivered == 0, report
        assert _settled(report.counts) == CLEAN, report
        assert "lost the lease" not in worker.log(), worker.log_tail()


# -- soak -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Soak:
    jobs: int
    kills: int
    workers: int


def _soak_sizes() -> list[object]:
    sizes: list[object] = [pytest.param(Soak(jobs=300, kills=3, workers=3), id="short")]
    if os.environ.get("TASKFORGE_SLOW"):
        sizes.append(
            pytest.param(
                Soak(jobs=5000, kills=25, workers=3),
                id="long",
                marks=[pytest.mark.slow, pytest.mark.timeout(900)],
            )
        )
    return sizes


@pytest.mark.parametrize("soak", _soak_sizes())
def test_soak_repeated_kills_under_load_lose_nothing(
    redis_url: str, client: redis.Redis, forge: TaskForge, tmp_path: Path, soak: Soak
) -> None:
    rng = random.Random(soak.jobs)
    chunk = soak.jobs // (soak.kills + 1)
    workers: list[WorkerProcess] = []
    kills: list[KillSnapshot] = []
    ids: list[str] = []
    began = time.monotonic()

    def spawn() -> None:
        workers.append(
            WorkerProcess(
                redis_url, tmp_path, name=f"w{len(workers)}", concurrency=10, lease=2
            ).start()
        )

    try:
        for _ in range(soak.workers):
            spawn()
        for _ in range(soak.kills):
            ids += _enqueue_work(forge, [rng.randint(10, 60) for _ in range(chunk)])
            # Kill in the middle of the chunk's processing, so the victim is busy.
            target = len(ids) - chunk // 2
            wait_until(
                lambda t=target: queue_counts(client)["completed"] >= t,  # type: ignore[misc]
                60,
                f"{target} completions",
                details=lambda: "\n".join(w.log_tail(10) for w in workers if w.alive),
            )
            victim = rng.choice([w for w in workers if w.alive])
            kills.append(freeze_and_kill(victim, client))
            spawn()
        ids += _enqueue_work(forge, [rng.randint(10, 60) for _ in range(soak.jobs - len(ids))])
        wait_all_completed(client, ids, 60 + soak.jobs / 50, [w for w in workers if w.alive])
        elapsed = time.monotonic() - began

        report = run_report(client, ids, expected_runs(ids, kills))
        cut_short = sum(len(k.may_repeat) for k in kills)
        print(
            f"\nsoak {soak}: {len(kills)} kills cut {cut_short} runs short"
            f" (held {sum(len(k.active) for k in kills)}); {report}; {elapsed:.1f} s"
        )
        assert cut_short > 0, "no kill interrupted a run"
        assert report.ok, report
        assert _settled(report.counts) == CLEAN, report
        survivors = [w for w in workers if w.pid not in {k.pid for k in kills}]
        assert all(w.alive for w in survivors), "\n".join(w.log_tail() for w in survivors)
    finally:
        for worker in workers:
            worker.close()
