"""Durable enqueues: WAIT (replicas) and WAITAOF (fsync to the AOF), on a primary with a replica
started by the test. Cluster and Sentinel failovers with WAIT are in their own test files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest

from taskforge import TaskForge
from taskforge.errors import ConfigError, DurabilityError, ServerNotSupported
from tests.conftest import ServerFactory
from tests.support.servers import RedisServer, server_kind, wait_until

PREFIX = "dur"


def _in_sync(replica: RedisServer) -> bool:
    return replica.info("replication").get("master_link_status") == "up"


@pytest.fixture
def pair(redis_factory: ServerFactory) -> tuple[RedisServer, RedisServer]:
    """A primary and one replica in sync."""
    primary = redis_factory(name="primary")
    replica = redis_factory(name="replica", replicaof=primary.address)
    wait_until(lambda: _in_sync(replica), 15, "the replica to sync")
    return primary, replica


def _forge(url: str, **settings: object) -> TaskForge:
    forge = TaskForge(url, prefix=PREFIX, **settings)

    @forge.task(queue="orders")
    def ship(order: int) -> int:
        return order

    return forge


def _on_replica(replica: RedisServer, job_id: str) -> bool:
    return bool(replica.execute("EXISTS", f"{PREFIX}:{{orders}}:job:{job_id}"))


def test_every_acknowledged_enqueue_is_already_on_the_replica(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    forge = _forge(primary.url, wait_replicas=1, wait_timeout_ms=5000)
    ship = forge.registry.get("ship")
    for n in range(30):
        job = ship.enqueue(n)
        # WAIT returned 1: the replica acknowledged this write before enqueue returned.
        assert _on_replica(replica, job.id), f"job {n} was acknowledged before it was replicated"
    batch = ship.enqueue_many([(n,) for n in range(500)])
    assert all(_on_replica(replica, job.id) for job in batch)

    async def produce() -> list[str]:
        jobs = await asyncio.gather(*(ship.enqueue_async(n) for n in range(20)))
        await forge.aclose()
        return [job.id for job in jobs]

    assert all(_on_replica(replica, job_id) for job_id in asyncio.run(produce()))
    forge.close()


def test_a_lagging_replica_makes_enqueue_fail_clearly_and_a_retry_is_safe(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    forge = _forge(primary.url, wait_replicas=1, wait_timeout_ms=200)
    replica.freeze()  # a replica that acknowledges nothing: hung, or cut off by the network
    try:
        with pytest.raises(DurabilityError) as caught:
            forge.enqueue_with("ship", (7,), job_id="order7")
        error = caught.value
        assert "0 of 1 replica(s) acknowledged" in str(error)
        assert "within 200 ms" in str(error) and "same job_id" in str(error)
        assert [job.id for job in error.jobs] == ["order7"] and error.replicas == 0
        # The write happened on the primary: only its durability is in doubt.
        assert primary.execute("EXISTS", f"{PREFIX}:{{orders}}:job:order7") == 1
    finally:
        replica.thaw()
    forge.close()
    # The thawed replica has to catch up first: the retry may wait for it longer.
    forge = _forge(primary.url, wait_replicas=1, wait_timeout_ms=5000)
    again = forge.enqueue_with("ship", (7,), job_id="order7")
    assert again.id == "order7" and not again.created  # the retry created nothing twice
    assert _on_replica(replica, "order7")
    assert primary.execute("ZCARD", f"{PREFIX}:{{orders}}:ready") == 1
    forge.close()


def test_wait_still_follows_the_write_after_the_script_cache_is_emptied(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    forge = _forge(primary.url, wait_replicas=1, wait_timeout_ms=5000)
    forge.enqueue_with("ship", (1,))  # scripts are cached now
    primary.execute("SCRIPT", "FLUSH")  # as a restart or failover does
    job = forge.enqueue_with("ship", (2,))
    # NOSCRIPT made the whole pipeline go again with the source: the WAIT followed the write.
    assert _on_replica(replica, job.id)
    forge.close()


def test_wait_without_a_replica_connected_fails_at_once_with_zero_replicas(
    redis_factory: ServerFactory,
) -> None:
    alone = redis_factory(name="alone")
    forge = _forge(alone.url, wait_replicas=2, wait_timeout_ms=50)
    with pytest.raises(DurabilityError, match="0 of 2 replica"):
        forge.enqueue_with("ship", (1,))
    forge.close()


def _waitaof_supported(server: RedisServer) -> bool:
    return server.kind == "valkey" or server.version >= (7, 2)


def test_wait_aof_on_a_server_without_waitaof_is_refused_before_writing(
    aof_redis: RedisServer,
) -> None:
    if _waitaof_supported(aof_redis):
        pytest.skip(f"{aof_redis.kind} {aof_redis.version} has WAITAOF")
    forge = _forge(aof_redis.url, wait_aof=True)
    with pytest.raises(ServerNotSupported, match=r"WAITAOF.*Redis >= 7\.2"):
        forge.enqueue_with("ship", (1,))
    assert aof_redis.execute("DBSIZE") == 0, "nothing may be written before the refusal"
    forge.close()


def test_wait_aof_waits_for_the_fsync(aof_redis: RedisServer) -> None:
    if not _waitaof_supported(aof_redis):
        pytest.skip(f"{aof_redis.kind} {'.'.join(map(str, aof_redis.version))} lacks WAITAOF")
    forge = _forge(aof_redis.url, wait_aof=True, wait_timeout_ms=5000)
    job = forge.enqueue_with("ship", (1,))
    assert job.created
    persistence = aof_redis.info("persistence")
    assert persistence["aof_enabled"] == 1
    forge.close()


def test_wait_aof_without_appendonly_is_a_config_error(redis_factory: ServerFactory) -> None:
    server = redis_factory(name="no-aof")
    if not _waitaof_supported(server):
        pytest.skip("covered by the ServerNotSupported test on this server")
    forge = _forge(server.url, wait_aof=True)
    with pytest.raises(ConfigError, match="appendonly yes"):
        forge.enqueue_with("ship", (1,))
    assert server.execute("DBSIZE") == 0
    forge.close()


def test_durability_settings_come_from_the_environment() -> None:
    from taskforge.config import Settings

    env = {
        "TASKFORGE_WAIT_REPLICAS": "2",
        "TASKFORGE_WAIT_AOF": "yes",
        "TASKFORGE_WAIT_TIMEOUT_MS": "250",
    }
    settings = Settings.from_env(env)
    assert (settings.wait_replicas, settings.wait_aof, settings.wait_timeout_ms) == (2, True, 250)
    with pytest.raises(ConfigError, match="wait_timeout_ms"):
        Settings.from_env({"TASKFORGE_WAIT_TIMEOUT_MS": "0"})


def _rate(enqueue: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        enqueue(n)
    return count / (time.perf_counter() - started)


def _best_rates(forges: dict[str, TaskForge], rounds: int = 3) -> dict[str, float]:
    """Best of interleaved rounds per setting, single enqueues and batches of 100."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for label, forge in forges.items():
            ship = forge.registry.get("ship")

            def batch(n: int, ship: Any = ship) -> object:
                return ship.enqueue_many([(n,)] * 100)

            for shape, rate in (
                ("one job per call", _rate(ship.enqueue, 300)),
                ("100 jobs per call", 100 * _rate(batch, 10)),
            ):
                key = f"{label}, {shape}"
                best[key] = max(best.get(key, 0.0), rate)
    return best


def test_the_cost_of_waiting_is_measured(
    pair: tuple[RedisServer, RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """Figures for docs/deployment.md; printed, never judged (timings do not decide tests)."""
    primary, _replica = pair
    forges = {
        "no wait": _forge(primary.url),
        "WAIT 1": _forge(primary.url, wait_replicas=1, wait_timeout_ms=5000),
    }
    for forge in forges.values():
        forge.enqueue_with("ship", (0,))  # connect and cache the scripts first
    figures = _best_rates(forges)
    for forge in forges.values():
        forge.close()
    fsyncs: tuple[Literal["everysec", "always"], ...] = ("everysec", "always")
    for fsync in fsyncs:
        aof = RedisServer(name=f"aof-{fsync}", appendonly=True, appendfsync=fsync).start()
        try:
            if _waitaof_supported(aof):
                forge = _forge(aof.url, wait_aof=True, wait_timeout_ms=5000)
                ship = forge.registry.get("ship")
                ship.enqueue(0)
                figures[f"WAITAOF 1 0 (appendfsync {fsync}), one job per call"] = _rate(
                    ship.enqueue, 20
                )
                forge.close()
        finally:
            aof.destroy()
    with capsys.disabled():
        print(f"\nenqueue rates on {server_kind()} over loopback (jobs/s, best of 3):")
        for label, rate in figures.items():
            print(f"  {label:50s} {rate:9.0f}")
    assert all(rate > 0 for rate in figures.values())
