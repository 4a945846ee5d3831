"""TaskForge behind Sentinel (1 master, 1 replica, 3 Sentinels on loopback, started by the
fixture): producers and workers follow a failover, crash or switchover, without a restart."""

from __future__ import annotations

import time

import pytest

from taskforge import TaskForge
from taskforge.errors import ConfigError
from taskforge.redis.connection import connect_sync, parse_url
from tests.support.ha import Ledger, Producer, running_worker
from tests.support.servers import SentinelDeployment

pytestmark = pytest.mark.sentinel

PREFIX = "tfs"
QUEUES = ["default", "mail"]


def _forge(url: str, ledger: Ledger, **settings: object) -> TaskForge:
    forge = TaskForge(url, prefix=PREFIX, **settings)

    @forge.task
    def record(job_id: str) -> str:
        ledger.record(job_id)
        return job_id

    return forge


# A client socket is sometimes garbage-collected unclosed after the master dies under load (owner
# not yet traced); the collector closes it, so it fails nothing.
_FAILOVER_SOCKETS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def _report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


def test_sentinel_urls_are_parsed_and_checked() -> None:
    parsed = parse_url(
        "redis+sentinel://app:pw@s1:26379,s2:26380/orders/2?sentinel_password=spw"
        "&ssl_ca_certs=/ca.pem&sentinel_ssl=no"
    )
    assert parsed.kind == "sentinel"
    assert parsed.nodes == (("s1", 26379), ("s2", 26380))
    assert (parsed.master_name, parsed.db) == ("orders", 2)
    assert parsed.options == {
        "username": "app",
        "password": "pw",
        "sentinel_password": "spw",
        "ssl_ca_certs": "/ca.pem",
        "sentinel_ssl": False,
    }
    assert parse_url("redis+sentinel://:pw@s1:26379/m").options == {"password": "pw"}
    for bad, message in (
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+sentinel://s1:26379/m/x", "must be a number"),
        ("redis+sentinel://s1/m", "host:port"),
        ("redis+sentinel://s1:26379/m?sentinel=1", "unknown option 'sentinel'"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_url(bad)


def test_sentinel_clients_get_credentials_and_tls_for_data_nodes_and_sentinels() -> None:
    client = connect_sync(
        "redis+sentinel://u:p@127.0.0.1:1/m?sentinel_password=sp&ssl_ca_certs=/ca.pem",
        socket_timeout=1,
        connect_timeout=1,
    )
    pool = client.connection_pool
    data = pool.connection_kwargs
    assert (data["username"], data["password"], data["ssl_ca_certs"]) == ("u", "p", "/ca.pem")
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "sp" and sentinel.get("username") is None
    assert sentinel["ssl_ca_certs"] == "/ca.pem"  # sentinel_ssl defaults to the data nodes' TLS
    client.close()


def _follow(
    sentinel: SentinelDeployment,
    capsys: pytest.CaptureFixture[str],
    *,
    event: str,
    **producer_settings: object,
) -> None:
    ledger = Ledger()
    forge = _forge(sentinel.url, ledger, lease_seconds=2)
    producer_forge = _forge(sentinel.url, ledger, **producer_settings)
    with running_worker(forge, QUEUES, concurrency=8, recover_seconds=0.5) as worker:
        producer = Producer(producer_forge, "record", QUEUES, pause=0.002)
        producer.start()
        producer.wait_for(200)
        old = sentinel.master()
        started = time.monotonic()
        if event == "crash":
            sentinel.kill_master()
        else:
            sentinel.failover(coordinated=event == "coordinated switchover")
        new = sentinel.wait_for_failover(30)
        switched = time.monotonic() - started
        at_failover = producer.count()
        producer.wait_for(at_failover + 200, timeout=30)  # producing goes on, no restart
        acknowledged = producer.stop()
        deadline = time.monotonic() + 20
        while ledger.ran(acknowledged) != acknowledged and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = acknowledged - ledger.ran(acknowledged)
        outcomes = dict(worker.parts["acker"].outcomes)
    _report(
        capsys,
        f"sentinel {event}{' with ' if producer_settings else ''}"
        f"{', '.join(f'{k}={v}' for k, v in producer_settings.items())}: master {old.port} ->"
        f" {new[1]} in {switched:.1f} s; {len(acknowledged)} jobs acknowledged, lost {len(lost)},"
        f" ran twice {len(ledger.twice())}; producer retries {producer.failures}; acker {outcomes}",
    )
    assert not lost, f"acknowledged jobs never ran: {sorted(lost)[:10]}"
    forge.close()
    producer_forge.close()


@_FAILOVER_SOCKETS
def test_producers_and_workers_follow_a_crashed_master(
    sentinel: SentinelDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    _follow(sentinel, capsys, event="crash")


@_FAILOVER_SOCKETS
def test_producers_and_workers_follow_a_switchover_with_wait(
    sentinel: SentinelDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain SENTINEL FAILOVER promotes the replica before it demotes the master, and what the
    old master takes in between is discarded when it resyncs as a replica. With WAIT 1 those
    enqueues fail (their replica is gone) and are retried on the new master, so none is lost;
    clients meet READONLY once the old master is demoted and reconnect to the new one."""
    _follow(sentinel, capsys, event="switchover", wait_replicas=1, wait_timeout_ms=200)


@_FAILOVER_SOCKETS
def test_a_coordinated_switchover_loses_nothing_without_wait(
    sentinel: SentinelDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """SENTINEL FAILOVER … COORDINATED pauses the master's writes until the replica has them
    all, then swaps roles: no acknowledged enqueue is lost even without WAIT."""
    if not sentinel.coordinated_failover_supported:
        master = sentinel.master()
        pytest.skip(
            f"{master.kind} {'.'.join(map(str, master.version))} has no coordinated failover"
        )
    _follow(sentinel, capsys, event="coordinated switchover")


@_FAILOVER_SOCKETS
def test_wait_behind_sentinel_survives_the_failover_once_a_replica_is_back(
    sentinel: SentinelDeployment,
) -> None:
    """With WAIT 1, the promoted master has no replica until the old one comes back: enqueues
    fail with DurabilityError meanwhile; retried with the same id, they all land once."""
    ledger = Ledger()
    forge = _forge(sentinel.url, ledger, wait_replicas=1, wait_timeout_ms=200)
    first = [forge.enqueue_with("record", (f"w{n}",), job_id=f"w{n}") for n in range(20)]
    old = sentinel.kill_master()
    sentinel.wait_for_failover(30)
    old.restart()  # Sentinel turns the old master into a replica of the new one
    refused = 0
    for n in range(20, 40):
        while True:
            try:
                forge.enqueue_with("record", (f"w{n}",), job_id=f"w{n}")
                break
            except Exception as exc:  # DurabilityError until the replica syncs, or a reconnect
                assert type(exc).__name__ in ("DurabilityError", "RedisUnavailable"), exc
                refused += 1
                time.sleep(0.05)
    ids = {f"w{n}" for n in range(40)}
    with running_worker(forge, ["default"], concurrency=8):
        deadline = time.monotonic() + 20
        while ledger.ran(ids) != ids and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ledger.ran(ids) == ids
    assert ledger.twice() == set()
    assert all(job.created for job in first)
    forge.close()
