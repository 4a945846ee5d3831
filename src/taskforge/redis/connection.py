"""Making redis-py clients (sync and asyncio) from a TaskForge URL.

Schemes: ``redis://``, ``rediss://`` (TLS), ``unix://``, ``redis+cluster://host:port[,host:port]``
and ``redis+sentinel://host:port[,host:port]/master-name``. Query parameters carry credentials
and TLS options (``username``, ``password``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``, ``sentinel_username``, ``sentinel_password``, ``ssl`` for cluster/sentinel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError

__all__ = ["BLOCK_SLICE_SECONDS", "ParsedURL", "connect_async", "connect_sync", "parse_url"]

# Blocking reads are issued in slices no longer than this, on connections whose socket timeout is
# longer, so a blocking pop never trips the client's read timeout.
BLOCK_SLICE_SECONDS = 10.0
_RETRIES = 6


@dataclass(frozen=True, slots=True)
class ParsedURL:
    kind: str  # "single", "cluster", "sentinel"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)


def parse_url(url: str) -> ParsedURL:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return ParsedURL("single", url)
    for scheme, kind in (("redis+cluster://", "cluster"), ("redis+sentinel://", "sentinel")):
        if url.startswith(scheme):
            parts = urlsplit("redis://" + url[len(scheme) :])
            netloc = parts.netloc
            userinfo = ""
            if "@" in netloc:
                userinfo, netloc = netloc.rsplit("@", 1)
            nodes = []
            for item in netloc.split(","):
                host, _, port = item.rpartition(":")
                if not host or not port.isdigit():
                    raise ConfigError(f"{url!r}: each node must be host:port, got {item!r}")
                nodes.append((host.strip("[]"), int(port)))
            options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if userinfo:
                user, _, password = userinfo.partition(":")
                if password:
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
                        f"{url!r}: name the master, e.g. redis+sentinel://h1:26379,h2:26379/mymaster"
                    )
                db = int(db_text) if db_text.isdigit() else 0
            return ParsedURL(kind, url, tuple(nodes), master, db, options)
    raise ConfigError(f"unsupported redis url {url!r}")


def _tls_options(options: dict[str, str]) -> dict[str, Any]:
    tls: dict[str, Any] = {}
    if options.get("ssl", "").lower() in ("1", "true", "yes") or any(
        k.startswith("ssl_") for k in options
    ):
        tls["ssl"] = True
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if name in options:
                tls[name] = options[name]
    return tls


def _common(socket_timeout: float | None, connect_timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 0,
    }


def connect_sync(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    """A sync client (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""
    parsed = parse_url(url)
    retry = redis.retry.Retry(ExponentialBackoff(cap=2.0, base=0.05), _RETRIES)
    errors = [RedisConnectionError, RedisTimeoutError]
    common = _common(socket_timeout, connect_timeout)
    if parsed.kind == "single":
        return redis.Redis.from_url(url, retry=retry, retry_on_error=errors, **common)
    creds = {k: parsed.options[k] for k in ("username", "password") if k in parsed.options}
    tls = _tls_options(parsed.options)
    if parsed.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
            retry=retry,
            **creds,
            **tls,
            **common,
        )
    from redis.sentinel import Sentinel

    sentinel = Sentinel(
        list(parsed.nodes),
        sentinel_kwargs=_sentinel_kwargs(parsed.options, tls, connect_timeout),
        **common,
    )
    return sentinel.master_for(
        parsed.master_name,
        db=parsed.db,
        retry=retry,
        retry_on_error=errors,
        **creds,
        **tls,
    )


def connect_async(url: str, socket_timeout: float, connect_timeout: float) -> Any:
    """An asyncio client (``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``)."""
    parsed = parse_url(url)
    retry = aredis.retry.Retry(ExponentialBackoff(cap=2.0, base=0.05), _RETRIES)
    errors = [RedisConnectionError, RedisTimeoutError]
    common = _common(socket_timeout, connect_timeout)
    if parsed.kind == "single":
        return aredis.Redis.from_url(url, retry=retry, retry_on_error=errors, **common)
    creds = {k: parsed.options[k] for k in ("username", "password") if k in parsed.options}
    tls = _tls_options(parsed.options)
    if parsed.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        common.pop("health_check_interval")
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
            retry=retry,
            **creds,
            **tls,
            **common,
        )
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(
        list(parsed.nodes),
        sentinel_kwargs=_sentinel_kwargs(parsed.options, tls, connect_timeout),
        **common,
    )
    return sentinel.master_for(
        parsed.master_name,
        db=parsed.db,
        retry=retry,
        retry_on_error=errors,
        **creds,
        **tls,
    )


def _sentinel_kwargs(
    options: dict[str, str], tls: dict[str, Any], connect_timeout: float
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"socket_connect_timeout": connect_timeout, "socket_timeout": 5.0}
    if "sentinel_username" in options:
        kwargs["username"] = options["sentinel_username"]
    if "sentinel_password" in options:
        kwargs["password"] = options["sentinel_password"]
    kwargs.update(tls)
    return kwargs
