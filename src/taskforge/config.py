"""Settings: one frozen object, built from arguments and ``TASKFORGE_*`` environment variables."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError

__all__ = ["DEFAULT_REDIS_URL", "Settings"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "redis+sentinel://")


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a number; set it to seconds, e.g. {name}=30"
        ) from None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number, e.g. {name}=5") from None


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    raw = env[name].strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a yes/no value; use 1 or 0")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything TaskForge can be configured with. Validated when built."""

    redis_url: str | None = None
    """None means: TASKFORGE_REDIS_URL, else a running embedded server (./.taskforge), else
    localhost:6379."""
    prefix: str = "taskforge"
    lease_seconds: float = 30.0
    """How long a fetched job stays leased without a heartbeat before another worker may take it."""
    completed_ttl: float = 24 * 3600.0
    dead_ttl: float = 7 * 24 * 3600.0
    max_payload_bytes: int = 1024 * 1024
    max_redeliveries: int = 5
    """Crash redeliveries (expired leases) before a job is dead-lettered as poison."""
    isolate_after_redeliveries: int = 2
    """A job redelivered this many times runs alone on its worker (0 = never), so a poison job
    stops taking the jobs running beside it down with it."""
    default_max_attempts: int = 3
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 300.0
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0
    reply_spin_us: int = 500
    """A sync call busy-waits this long for a short reply before it sleeps in the kernel (0 =
    never): on virtual machines, waking a halted vCPU costs more than Redis takes to answer."""
    publish_events: bool = True
    wait_replicas: int = 0
    """Enqueue waits until this many replicas acknowledged the write (WAIT)."""
    wait_aof: bool = False
    """Enqueue waits until the write reached the AOF on disk (WAITAOF, Redis >= 7.2)."""
    wait_timeout_ms: int = 1000
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith(_SCHEMES):
            raise ConfigError(
                f"redis url {self.redis_url!r} has an unknown scheme; use one of "
                + ", ".join(s.rstrip("/") for s in _SCHEMES)
            )
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(
                f"prefix {self.prefix!r} is not valid: use 1-64 letters, digits, '_', '.', '-'"
            )
        if not 1 <= self.lease_seconds <= 24 * 3600:
            raise ConfigError(
                f"lease_seconds={self.lease_seconds} is out of range; use 1 to 86400 seconds"
            )
        for name in ("completed_ttl", "dead_ttl", "retry_base_seconds", "socket_timeout",
                     "connect_timeout"):  # fmt: skip
            value = getattr(self, name)
            # NaN and infinity pass a "> 0" test but cannot become milliseconds later on.
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
        if not self.retry_cap_seconds > 0:  # infinity is fine: no cap
            raise ConfigError(f"retry_cap_seconds must be positive, got {self.retry_cap_seconds}")
        if self.max_payload_bytes < 1024:
            raise ConfigError("max_payload_bytes must be at least 1024")
        if self.max_redeliveries < 1:
            raise ConfigError("max_redeliveries must be at least 1")
        if self.isolate_after_redeliveries < 0:
            raise ConfigError("isolate_after_redeliveries cannot be negative (0 turns it off)")
        if self.default_max_attempts < 1:
            raise ConfigError("default_max_attempts must be at least 1")
        if not 0 <= self.reply_spin_us <= 10_000:
            raise ConfigError(
                f"reply_spin_us={self.reply_spin_us} is out of range; use 0 (off) to 10000"
            )
        if self.wait_replicas < 0:
            raise ConfigError("wait_replicas cannot be negative")
        if self.wait_timeout_ms < 1:
            raise ConfigError(
                "wait_timeout_ms must be at least 1 (0 would make WAIT block forever)"
            )

    @property
    def heartbeat_seconds(self) -> float:
        """Leases are renewed several times per lease period so one slow beat never loses one."""
        return max(0.2, min(self.lease_seconds / 6, 2.0))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``TASKFORGE_*`` variables; explicit ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("TASKFORGE_REDIS_URL"):
            values["redis_url"] = env["TASKFORGE_REDIS_URL"]
        if env.get("TASKFORGE_PREFIX"):
            values["prefix"] = env["TASKFORGE_PREFIX"]
        floats = {
            "TASKFORGE_LEASE_SECONDS": "lease_seconds",
            "TASKFORGE_COMPLETED_TTL": "completed_ttl",
            "TASKFORGE_DEAD_TTL": "dead_ttl",
            "TASKFORGE_RETRY_BASE_SECONDS": "retry_base_seconds",
            "TASKFORGE_RETRY_CAP_SECONDS": "retry_cap_seconds",
            "TASKFORGE_SOCKET_TIMEOUT": "socket_timeout",
        }
        for var, name in floats.items():
            value = _env_float(env, var)
            if value is not None:
                values[name] = value
        ints = {
            "TASKFORGE_MAX_PAYLOAD_BYTES": "max_payload_bytes",
            "TASKFORGE_MAX_REDELIVERIES": "max_redeliveries",
            "TASKFORGE_ISOLATE_AFTER_REDELIVERIES": "isolate_after_redeliveries",
            "TASKFORGE_MAX_ATTEMPTS": "default_max_attempts",
            "TASKFORGE_WAIT_REPLICAS": "wait_replicas",
            "TASKFORGE_WAIT_TIMEOUT_MS": "wait_timeout_ms",
            "TASKFORGE_REPLY_SPIN_US": "reply_spin_us",
        }
        for var, name in ints.items():
            ivalue = _env_int(env, var)
            if ivalue is not None:
                values[name] = ivalue
        if env.get("TASKFORGE_WAIT_AOF"):
            values["wait_aof"] = _env_bool(env, "TASKFORGE_WAIT_AOF")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)
