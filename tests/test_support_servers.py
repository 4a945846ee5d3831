"""Tests of the test infrastructure itself: real servers, Sentinel, Cluster, TLS, ACL, proxy."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import ServerFactory
from tests.support.proxy import FaultProxy
from tests.support.servers import (
    CLUSTER_BUS_OFFSET,
    RedisCluster,
    RedisServer,
    SentinelDeployment,
    ServerStartError,
    TLSMaterial,
    free_port,
    server_binary,
    server_kind,
    tls_supported,
    wait_until,
)

NO_RETRY = Retry(NoBackoff(), 0)


# -- binaries and ports ---------------------------------------------------------------------------


def test_server_binary_matches_kind() -> None:
    assert server_kind() in ("redis", "valkey")
    binary = Path(server_binary())
    assert binary.is_file()
    assert server_kind() in binary.name


def test_free_port_hands_out_distinct_ports_with_free_bus_ports() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert port >= 20000 and port + CLUSTER_BUS_OFFSET <= 50000
        assert port != 6379


# -- standalone -----------------------------------------------------------------------------------


def test_redis_url_is_an_empty_shared_server(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "x")  # the next test's redis_url flushes it


def test_aof_data_survives_kill_and_restart(aof_redis: RedisServer) -> None:
    assert aof_redis.info("persistence")["aof_enabled"] == 1
    client = aof_redis.client()
    for i in range(100):
        client.set(f"key:{i}", i)
    old_pid, port = aof_redis.pid, aof_redis.port

    aof_redis.kill()  # SIGKILL: the AOF was written (not yet fsynced), so data survives
    assert not aof_redis.running
    aof_redis.restart()

    assert aof_redis.port == port and aof_redis.pid != old_pid
    with aof_redis.client() as client:
        assert client.dbsize() == 100
        assert client.get("key:42") == b"42"
        client.set("after-restart", "1")
    aof_redis.restart()  # graceful stop + start keeps it as well
    with aof_redis.client() as client:
        assert client.get("after-restart") == b"1"


def test_freeze_and_thaw(redis_factory: ServerFactory) -> None:
    server = redis_factory()
    with server.client(socket_timeout=0.3, retry=NO_RETRY) as client:
        server.freeze()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.thaw()
        assert client.ping()


def test_failed_start_reports_the_log(redis_factory: ServerFactory) -> None:
    with pytest.raises(ServerStartError, match="no-such-directive"):
        redis_factory(config={"no-such-directive": "1"})


def test_version_and_config(redis_factory: ServerFactory) -> None:
    server = redis_factory(config={"maxmemory-policy": "noeviction", "hz": 20})
    assert server.version >= (7, 0)
    with server.client(decode_responses=True) as client:
        assert client.config_get("hz") == {"hz": "20"}
    assert server.logfile.exists() and server.dir.is_dir()


def test_acl_user_is_restricted(redis_factory: ServerFactory) -> None:
    server = redis_factory(
        requirepass="sesame", acl_lines=["alice on >wonderland ~allowed:* +@all -@dangerous"]
    )
    alice = redis.Redis.from_url(server.url_for(username="alice", password="wonderland"))
    anonymous = redis.Redis.from_url(server.url, retry=NO_RETRY)
    with alice, anonymous, server.client() as default_user:
        alice.set("allowed:1", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            alice.set("other:1", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            alice.flushall()
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        assert default_user.get("allowed:1") == b"x"  # connection_kwargs carry requirepass


# -- TLS --------------------------------------------------------------------------------------------


def test_tls_connection_with_ca(tls_redis: RedisServer, tls_material: TLSMaterial) -> None:
    assert tls_redis.url.startswith("rediss://127.0.0.1:")
    with redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_material.ca_cert)) as client:
        assert client.ping()
    with redis.Redis.from_url(tls_redis.url, **tls_material.client_kwargs()) as client:
        assert client.ping()
    plain = tls_redis.url.replace("rediss://", "redis://")
    with (
        redis.Redis.from_url(plain, socket_timeout=1, retry=NO_RETRY) as client,
        pytest.raises(redis.ConnectionError),
    ):
        client.ping()


def test_tls_client_certificate_required(
    redis_factory: ServerFactory, tls_material: TLSMaterial
) -> None:
    if not tls_supported():
        pytest.skip(f"the {server_kind()} server binary was built without TLS")
    server = redis_factory(tls=tls_material, tls_auth_clients="yes")
    with server.client() as client:  # connection_kwargs include the client certificate
        assert client.ping()
    anonymous = redis.Redis.from_url(
        server.url, ssl_ca_certs=str(tls_material.ca_cert), socket_timeout=2, retry=NO_RETRY
    )
    with anonymous, pytest.raises(redis.ConnectionError):
        anonymous.ping()


# -- Sentinel -----------------------------------------------------------------------------------


def test_sentinel_failover(sentinel: SentinelDeployment) -> None:
    ports = [port for _, port in sentinel.sentinel_addresses]
    assert sentinel.url == "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + (
        "/mymaster"
    )
    old_master, replica = sentinel.servers
    assert sentinel.master() is old_master
    with old_master.client() as client:
        client.set("before-failover", "1")
        assert client.wait(1, 5000) == 1  # replicated before the crash

    sentinel.kill_master()
    new_address = sentinel.wait_for_failover(timeout=30)

    assert new_address == replica.address
    assert sentinel.master() is replica
    discovery = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        sentinel.sentinel_addresses, socket_timeout=2
    )
    master = discovery.master_for("mymaster", socket_timeout=2)  # type: ignore[no-untyped-call]
    try:
        assert master.get("before-failover") == b"1"
        master.set("after-failover", "1")
    finally:
        master.close()
        for sentinel_client in discovery.sentinels:
            sentinel_client.close()


# -- Cluster ------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_cluster_forms_and_serves(cluster_url: str, redis_cluster: RedisCluster) -> None:
    masters, replicas = redis_cluster.masters, redis_cluster.replicas
    assert len(masters) == 3 and len(replicas) == 3 and len(redis_cluster.nodes) == 6
    assert cluster_url == "redis+cluster://" + ",".join(f"127.0.0.1:{m.port}" for m in masters)
    assert redis_cluster.node_for_slot(0) is masters[0]
    assert redis_cluster.node_for_slot(16383) is masters[2]
    for node in redis_cluster.nodes:
        info = node.execute("CLUSTER", "INFO")
        assert b"cluster_state:ok" in info
    client = redis_cluster.client()
    for i in range(50):
        client.set(f"k{i}", i)
    assert sum(m.admin().dbsize() for m in masters) == 50
    assert {redis_cluster.node_for_key(f"k{i}").port for i in range(50)} == {
        m.port for m in masters
    }


@pytest.mark.cluster
def test_slot_migration_moves_keys_under_traffic(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    client = redis_cluster.client()
    slot = redis_cluster.key_slot("{moving}")
    source = redis_cluster.node_for_slot(slot)
    target = next(m for m in redis_cluster.masters if m is not source)
    for i in range(300):
        client.set(f"{{moving}}:{i}", i)

    # Writers keep going during the move; ASK/MOVED redirections must keep them working.
    stop = threading.Event()
    errors: list[BaseException] = []
    written: list[int] = []

    def traffic() -> None:
        i = 0
        while not stop.is_set() and i < 100_000:
            try:
                client.set(f"{{moving}}:new:{i}", i)
                written.append(i)
            except redis.RedisError as exc:
                errors.append(exc)
            i += 1

    writer = threading.Thread(target=traffic)
    writer.start()
    try:
        moved = redis_cluster.migrate_slots([slot], source, target, batch=50)
    finally:
        stop.set()
        writer.join(timeout=30)

    assert moved >= 300
    assert redis_cluster.node_for_slot(slot) is target
    count = ("CLUSTER", "COUNTKEYSINSLOT", slot)
    assert source.execute(*count) == 0
    assert target.execute(*count) == 300 + len(written)
    assert not errors
    assert client.get("{moving}:299") == b"299"
    # Move it back so the module's layout stays even.
    assert redis_cluster.migrate_slots([slot], target, source) == 300 + len(written)


@pytest.mark.cluster
def test_cluster_master_kill_promotes_replica(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    victim = redis_cluster.masters[0]
    replica = redis_cluster.replicas_of(victim)[0]
    client = redis_cluster.client()
    client.set("{a}", "1")  # slot 15495 ... whichever master: checked after promotion
    redis_cluster.kill_master(0)
    promoted = redis_cluster.wait_for_promotion(timeout=30)
    assert promoted is replica
    assert redis_cluster.node_for_slot(0) is replica
    assert client.get("{a}") == b"1"

    redis_cluster.heal()  # the old master comes back as a replica
    assert victim.running and victim in redis_cluster.replicas


# -- fault proxy ----------------------------------------------------------------------------------


def _timed_ping(client: redis.Redis) -> float:
    started = time.monotonic()
    assert client.ping()
    return time.monotonic() - started


def test_proxy_pass_through_and_latency(fault_proxy: FaultProxy) -> None:
    with redis.Redis.from_url(fault_proxy.url) as client:
        client.set("through-proxy", "1")
        assert client.get("through-proxy") == b"1"
        assert fault_proxy.active_connections == 1
        fault_proxy.set_latency(100)
        assert _timed_ping(client) >= 0.2  # 100 ms each way
        fault_proxy.pass_through()
        assert _timed_ping(client) < 0.1


def test_proxy_blackhole(fault_proxy: FaultProxy) -> None:
    fault_proxy.set_blackhole()
    with redis.Redis.from_url(fault_proxy.url, socket_timeout=0.3, retry=NO_RETRY) as client:
        with pytest.raises(redis.TimeoutError):
            client.ping()  # connected (accepted), but no reply ever comes
        fault_proxy.set_blackhole(False)
        assert client.ping()


def test_proxy_reset(fault_proxy: FaultProxy, redis_server_session: RedisServer) -> None:
    client = redis.Redis.from_url(fault_proxy.url, socket_timeout=2, retry=NO_RETRY)
    with client:
        assert client.ping()
        fault_proxy.set_reset()
        assert fault_proxy.active_connections == 0
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the old connection was reset ...
        with pytest.raises(redis.ConnectionError):
            client.ping()  # ... and so is each new one
        fault_proxy.set_reset(False)
        assert client.ping()


def test_proxy_drop_replies(fault_proxy: FaultProxy, redis_server_session: RedisServer) -> None:
    with (
        redis.Redis.from_url(fault_proxy.url, socket_timeout=0.3, retry=NO_RETRY) as client,
        redis_server_session.client() as direct,
    ):
        assert client.ping()  # connect first: the handshake (CLIENT SETINFO) needs replies
        fault_proxy.set_drop_replies()
        with pytest.raises(redis.TimeoutError):
            client.set("sent-but-unanswered", "1")
        assert wait_until(lambda: direct.get("sent-but-unanswered"), 5, "the SET") == b"1"


async def test_proxy_from_an_async_test(fault_proxy: FaultProxy) -> None:
    client = redis.asyncio.Redis.from_url(fault_proxy.url, retry=NO_RETRY)
    try:
        assert await client.ping()
        fault_proxy.set_latency(50)
        started = time.monotonic()
        await client.ping()
        assert time.monotonic() - started >= 0.1
        fault_proxy.set_reset()
        with pytest.raises(redis.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
