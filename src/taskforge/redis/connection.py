"""Making redis-py clients (sync and asyncio) from a TaskForge URL, and running commands that must
share one connection (an enqueue and the WAIT after it).

URL forms (query parameters in the table of ``OPTIONS``; docs/deployment.md has examples):

- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``: handed
  to redis-py's own URL parser, which takes the same TLS query parameters.
- ``redis+cluster://[user:password@]host:port[,host:port...]``: any reachable nodes seed the
  client, which discovers the rest and follows MOVED/ASK redirections.
- ``redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]``: the Sentinels
  name the master; credentials and TLS options apply to the data nodes, ``sentinel_username`` /
  ``sentinel_password`` / ``sentinel_ssl`` to the Sentinels themselves.

Cluster and Sentinel clients keep retrying through a failover for about ``FAILOVER_SECONDS``
(a promotion takes the node timeout plus an election), so producers and workers follow it without
a restart. Retried commands are safe: an enqueue carries its job id and creates nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis import exceptions as rex
from redis.asyncio.cluster import ClusterPubSub as AsyncClusterPubSub
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster as SyncRedisCluster

from ..errors import ConfigError, RedisUnavailable
from .ops import Op

__all__ = [
    "BLOCK_SLICE_SECONDS",
    "FAILOVER_SECONDS",
    "OPTIONS",
    "ParsedURL",
    "SameConnection",
    "connect_async",
    "connect_sync",
    "parse_url",
    "run_same_connection_async",
    "run_same_connection_sync",
]

# Blocking reads are issued in slices no longer than this, on connections whose socket timeout is
# longer, so a blocking pop never trips the client's read timeout.
BLOCK_SLICE_SECONDS = 10.0
FAILOVER_SECONDS = 12.0
"""How long cluster and Sentinel clients retry a command while the topology changes."""
_RETRIES = 6  # standalone: about 5 s of retries (a restart), then RedisUnavailable
_SENTINEL_RETRIES = 14  # with a 1 s cap: about FAILOVER_SECONDS
_STEP_CAP = 1.0

# Query parameters of cluster and Sentinel URLs: name -> parser. (Standalone URLs go through
# redis-py's parser, which accepts these and more.)
_BOOL_TRUE = ("1", "true", "yes", "on")
_BOOL_FALSE = ("0", "false", "no", "off")


def _bool(value: str) -> bool:
    text = value.lower()
    if text in _BOOL_TRUE:
        return True
    if text in _BOOL_FALSE:
        return False
    raise ValueError(value)


OPTIONS: dict[str, Any] = {
    "username": str,
    "password": str,
    "ssl": _bool,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": str,
    "ssl_check_hostname": _bool,
    "sentinel_username": str,
    "sentinel_password": str,
    "sentinel_ssl": _bool,
}
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password", "sentinel_ssl")
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


@dataclass(frozen=True, slots=True)
class ParsedURL:
    kind: str  # "single", "cluster", "sentinel"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def parse_url(url: str) -> ParsedURL:
    """Split a TaskForge URL; raises ConfigError naming what is wrong."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return ParsedURL("single", url)
    for scheme, kind in (("redis+cluster://", "cluster"), ("redis+sentinel://", "sentinel")):
        if url.startswith(scheme):
            return _parse_multi(url, scheme, kind)
    raise ConfigError(
        f"unsupported redis url {_redact(url)!r}: use redis://, rediss://, unix://,"
        " redis+cluster:// or redis+sentinel://"
    )


def _parse_multi(url: str, scheme: str, kind: str) -> ParsedURL:
    shown = _redact(url)
    parts = urlsplit("redis://" + url[len(scheme) :])
    netloc = parts.netloc
    userinfo = ""
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
    nodes = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{shown!r}: each node must be host:port, got {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    options: dict[str, Any] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        parser = OPTIONS.get(name)
        if parser is None:
            raise ConfigError(
                f"{shown!r}: unknown option {name!r}; known: {', '.join(sorted(OPTIONS))}"
            )
        try:
            options[name] = parser(values[-1])
        except ValueError:
            raise ConfigError(f"{shown!r}: option {name}={values[-1]!r} is not valid") from None
    if userinfo:
        user, sep, password = userinfo.partition(":")
        if sep:
            if user:
                options.setdefault("username", unquote(user))
            options.setdefault("password", unquote(password))
        else:
            options.setdefault("password", unquote(user))
    path = parts.path.strip("/")
    master, db = "", 0
    if kind == "sentinel":
        master, _, db_text = path.partition("/")
        if not master:
            raise ConfigError(
                f"{shown!r}: name the master, e.g. redis+sentinel://h1:26379,h2:26379/mymaster"
            )
        if db_text and not db_text.isdigit():
            raise ConfigError(f"{shown!r}: the database after the master name must be a number")
        db = int(db_text or 0)
    else:
        if path:
            raise ConfigError(f"{shown!r}: a cluster URL has no path (a cluster has only db 0)")
        bad = [name for name in _SENTINEL_ONLY if name in options]
        if bad:
            raise ConfigError(f"{shown!r}: {', '.join(bad)} only apply to redis+sentinel URLs")
    return ParsedURL(kind, url, tuple(nodes), master, db, options)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _tls_options(options: dict[str, Any]) -> dict[str, Any]:
    """TLS keyword arguments: on with ``ssl=true`` or any ``ssl_*`` file option."""
    wanted = options.get("ssl")
    if wanted is None:
        wanted = any(name in options for name in _TLS_FILES)
    if not wanted:
        return {}
    tls: dict[str, Any] = {"ssl": True}
    for name in _TLS_FILES:
        if name in options:
            tls[name] = options[name]
    return tls


def _credentials(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("username", "password") if k in options}


def _common(socket_timeout: float | None, connect_timeout: float) -> dict[str, Any]:
    return {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}


def _sentinel_kwargs(
    options: dict[str, Any], tls: dict[str, Any], timeout: float
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if "sentinel_username" in options:
        kwargs["username"] = options["sentinel_username"]
    if "sentinel_password" in options:
        kwargs["password"] = options["sentinel_password"]
    if options.get("sentinel_ssl", bool(tls)):
        kwargs.update(tls or {"ssl": True})
    return kwargs


# -- failover-tolerant cluster clients ------------------------------------------------------------

# Raised once redis-py's own immediate retries are used up, while a failover or a resharding is
# still under way. (CROSSSLOT and other client mistakes are not among them.)
_TOPOLOGY_ERRORS = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterDownError,
    rex.SlotNotCoveredError,
    rex.TryAgainError,
    rex.AskError,
    rex.MovedError,
)


class _Patience:
    """Backoff steps within a deadline of FAILOVER_SECONDS from the first failure."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + FAILOVER_SECONDS
        self.step = 0.05

    def next_delay(self) -> float | None:
        """Seconds to wait before the next try, None when the time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        delay = min(self.step, left)
        self.step = min(self.step * 2, _STEP_CAP)
        return delay


class FailoverCluster(SyncRedisCluster):
    """redis-py's cluster client, retrying with backoff through failovers (redis-py itself
    retries at once, which gives up before a replica is promoted)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        patience: _Patience | None = None
        while True:
            try:
                return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except _TOPOLOGY_ERRORS:
                patience = patience or _Patience()
                delay = patience.next_delay()
                if delay is None:
                    raise
                time.sleep(delay)


class AsyncFailoverCluster(AsyncRedisCluster):
    """The asyncio twin of ``FailoverCluster``. It also learns the topology before the first
    command: redis-py races when many coroutines make the first calls of a fresh client at once."""

    _ready_lock: asyncio.Lock | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self._ensure_initialized()
        patience: _Patience | None = None
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except (*_TOPOLOGY_ERRORS, AttributeError) as exc:
                # While it re-learns the topology after a failover, redis-py may close a
                # connection that another coroutine is about to write on; the write then fails
                # on the dropped stream (AttributeError on None) before anything was sent.
                if isinstance(exc, AttributeError) and "'NoneType'" not in str(exc):
                    raise
                patience = patience or _Patience()
                delay = patience.next_delay()
                if delay is None:
                    if isinstance(exc, AttributeError):
                        raise rex.ConnectionError(f"connection lost: {exc}") from exc
                    raise
                await asyncio.sleep(delay)

    async def _ensure_initialized(self) -> None:
        if not getattr(self, "_initialize", False):
            return
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if getattr(self, "_initialize", False):
                await self.initialize()

    def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        return _InitializingPubSub(self, node=node, host=host, port=port, **kwargs)


class _InitializingPubSub(AsyncClusterPubSub):
    """redis-py's cluster pub/sub picks a node from the slot map without loading it first: a
    fresh client fails with KeyError on its first SUBSCRIBE."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        cluster = self.cluster
        if isinstance(cluster, AsyncFailoverCluster):
            await cluster._ensure_initialized()
        return await super().execute_command(*args, **kwargs)


class SentinelManagedRedis(redis.Redis):
    """A master client from Sentinel that also closes its connections to the Sentinels."""

    def close(self) -> None:
        super().close()
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()


class AsyncSentinelManagedRedis(aredis.Redis):
    """The asyncio twin of ``SentinelManagedRedis``."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


# -- clients ------------------------------------------------------------------------------------


def connect_sync(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    """A sync client: ``redis.Redis`` (standalone or Sentinel-managed) or ``FailoverCluster``."""
    parsed = parse_url(url)
    errors = [rex.ConnectionError, rex.TimeoutError]
    common = _common(socket_timeout, connect_timeout)
    if parsed.kind == "single":
        retry = redis.retry.Retry(ExponentialBackoff(cap=2.0, base=0.05), _RETRIES)
        return redis.Redis.from_url(url, retry=retry, retry_on_error=errors, **common)
    creds = _credentials(parsed.options)
    tls = _tls_options(parsed.options)
    if parsed.kind == "cluster":
        from redis.cluster import ClusterNode

        try:
            # The sync cluster client asks the seeds for the slot map right here.
            return FailoverCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],  # type: ignore[no-untyped-call]
                retry=redis.retry.Retry(ExponentialBackoff(cap=_STEP_CAP, base=0.05), 3),
                **creds,
                **tls,
                **common,
            )
        except (rex.RedisClusterException, rex.ConnectionError, rex.TimeoutError) as exc:
            if isinstance(exc, rex.AuthenticationError):
                raise
            raise RedisUnavailable(
                f"cannot reach any seed node of the cluster {_redact(url)}: {exc}. Check the"
                " host:port list in TASKFORGE_REDIS_URL (any reachable nodes will do)"
            ) from exc
    from redis.sentinel import Sentinel

    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.nodes),
        sentinel_kwargs=_sentinel_kwargs(parsed.options, tls, connect_timeout),
        **common,
    )
    return sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.master_name,
        redis_class=SentinelManagedRedis,
        db=parsed.db,
        retry=redis.retry.Retry(ExponentialBackoff(cap=_STEP_CAP, base=0.05), _SENTINEL_RETRIES),
        retry_on_error=errors,
        **creds,
        **tls,
    )


def connect_async(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    """An asyncio client: ``redis.asyncio.Redis`` or ``AsyncFailoverCluster``."""
    parsed = parse_url(url)
    errors = [rex.ConnectionError, rex.TimeoutError]
    common = _common(socket_timeout, connect_timeout)
    if parsed.kind == "single":
        retry = aredis.retry.Retry(ExponentialBackoff(cap=2.0, base=0.05), _RETRIES)
        return aredis.Redis.from_url(url, retry=retry, retry_on_error=errors, **common)
    creds = _credentials(parsed.options)
    tls = _tls_options(parsed.options)
    if parsed.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode

        return AsyncFailoverCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
            retry=aredis.retry.Retry(ExponentialBackoff(cap=_STEP_CAP, base=0.05), 3),
            **creds,
            **tls,
            **common,
        )
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.nodes),
        sentinel_kwargs=_sentinel_kwargs(parsed.options, tls, connect_timeout),
        **common,
    )
    return sentinel.master_for(
        parsed.master_name,
        redis_class=AsyncSentinelManagedRedis,
        db=parsed.db,
        retry=aredis.retry.Retry(ExponentialBackoff(cap=_STEP_CAP, base=0.05), _SENTINEL_RETRIES),
        retry_on_error=errors,
        **creds,
        **tls,
    )


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, SyncRedisCluster | AsyncRedisCluster)


# -- several operations on one connection ---------------------------------------------------------


class SameConnection(list[Op[Any]]):
    """Operations that must run back to back on one connection, on the server that owns
    ``key``'s hash slot: WAIT and WAITAOF only count the writes of their own connection.

    Drivers send them as one pipeline; on a cluster, to that slot's master."""

    def __init__(self, ops: Sequence[Op[Any]], key: str) -> None:
        super().__init__(ops)
        self.key = key


def _commands(ops: Sequence[Op[Any]], full_scripts: bool) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for op in ops:
        if op.script is None:
            out.append(tuple(op.command))
        else:
            head = ("EVAL", op.script.source) if full_scripts else ("EVALSHA", op.script.sha)
            out.append((*head, len(op.keys), *op.keys, *op.args))
    return out


def _first_error(replies: Sequence[Any]) -> BaseException | None:
    return next((r for r in replies if isinstance(r, BaseException)), None)


_RETRY_ON_NODE = (rex.MovedError, rex.AskError, rex.TryAgainError, rex.ClusterDownError)


def run_same_connection_sync(client: Any, ops: SameConnection) -> list[Any]:
    """Raw replies of ``ops`` sent in one pipeline (errors are raised, not returned).

    A script missing from the server's cache (NOSCRIPT after a restart or failover) makes the whole
    pipeline go again with full sources, so that the trailing WAIT follows the write it guards.
    On a cluster, redirections and failovers refresh the slot map and try again within
    FAILOVER_SECONDS; scripts are idempotent for a retry (ids are chosen by the client).
    """
    full = False
    patience: _Patience | None = None
    while True:
        try:
            target = client
            if is_cluster_client(client):
                target = client.get_redis_connection(client.get_node_from_key(ops.key))
            pipe = target.pipeline(transaction=False)
            for cmd in _commands(ops, full):
                pipe.execute_command(*cmd)
            replies = pipe.execute(raise_on_error=False)
            error = _first_error(replies)
            if isinstance(error, rex.NoScriptError) and not full:
                full = True
                continue
            if error is not None:
                raise error
            return list(replies)
        except (*_RETRY_ON_NODE, rex.ConnectionError, rex.TimeoutError):
            if not is_cluster_client(client):
                raise  # standalone/Sentinel clients retried already (their Retry policy)
            patience = patience or _Patience()
            delay = patience.next_delay()
            if delay is None:
                raise
            time.sleep(delay)
            client.nodes_manager.initialize()


async def run_same_connection_async(client: Any, ops: SameConnection) -> list[Any]:
    """The asyncio twin of ``run_same_connection_sync``."""
    full = False
    patience: _Patience | None = None
    while True:
        try:
            if is_cluster_client(client):
                replies = await _cluster_node_pipeline(client, ops.key, _commands(ops, full))
            else:
                pipe = client.pipeline(transaction=False)
                for cmd in _commands(ops, full):
                    pipe.execute_command(*cmd)
                replies = await pipe.execute(raise_on_error=False)
            error = _first_error(replies)
            if isinstance(error, rex.NoScriptError) and not full:
                full = True
                continue
            if error is not None:
                raise error
            return list(replies)
        except (*_RETRY_ON_NODE, rex.ConnectionError, rex.TimeoutError):
            if not is_cluster_client(client):
                raise
            patience = patience or _Patience()
            delay = patience.next_delay()
            if delay is None:
                raise
            await asyncio.sleep(delay)
            await client.nodes_manager.initialize()


async def _cluster_node_pipeline(
    client: Any, key: str, commands: list[tuple[Any, ...]]
) -> list[Any]:
    """One pipeline on one pooled connection of the master that serves ``key``."""
    from redis.asyncio.cluster import PipelineCommand

    if isinstance(client, AsyncFailoverCluster):
        await client._ensure_initialized()
    node = client.get_node_from_key(key)
    batch = [PipelineCommand(i, *cmd) for i, cmd in enumerate(commands)]
    await node.execute_pipeline(batch)
    return [cmd.result for cmd in batch]
