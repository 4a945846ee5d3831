"""The harness's private redis-server, and a client that keeps count of its own commands.

Redis counts every command in INFO commandstats, the harness's own included. The harness reads
the counter and INFO atomically (MULTI / GET / INFO / EXEC) and knows how many commands it sent
between two readings, so those are subtracted exactly: what is left is the queue's own traffic.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

COUNTER_KEY = "bench:done"
LATENCY_KEY = "bench:latency"
# A MONITOR line: +<time> [<db> <client address, or "lua" inside a script>] "<COMMAND>" ...
_MONITOR_LINE = re.compile(rb'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on a free loopback port, no persistence, stopped by pid."""

    def __init__(self, executable: str = "redis-server") -> None:
        found = shutil.which(executable)
        if found is None:
            raise SystemExit(
                "redis-server is not on PATH (Debian: apt-get install redis-server redis-tools)"
            )
        self.executable = found
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="taskforge-bench-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=1)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"redis-server did not start; see {self.dir}/redis.log"
                    ) from exc
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Snapshot:
    """One atomic reading: the completion counter, commandstats and memory."""

    counter: int
    calls: dict[str, int]
    used_memory: int
    sent: Counter[str] = field(default_factory=Counter)  # harness commands sent before it
    at: float = 0.0


class Harness:
    """The harness's one connection to the private Redis. Every command it sends is counted."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(
            url, single_connection_client=True, lib_name=None, lib_version=None
        )
        self.sent: Counter[str] = Counter()
        self.client.ping()
        self.sent["ping"] += 1
        self._baseline = self._calibrate()

    def _send(self, name: str, *args: str | int) -> object:
        self.sent[name.lower()] += 1
        return self.client.execute_command(name, *args)  # type: ignore[no-untyped-call]

    def counter(self) -> int:
        value = self._send("GET", COUNTER_KEY)
        return int(value) if value is not None else 0  # type: ignore[call-overload]

    def latency_samples(self) -> list[int]:
        values = self._send("LRANGE", LATENCY_KEY, 0, -1)
        return [int(v) for v in values]  # type: ignore[attr-defined]

    def reset(self) -> None:
        """Empties the whole private server (between runs)."""
        self._send("FLUSHALL", "SYNC")

    def reset_keys(self) -> None:
        """Clears only the harness's own keys (while a worker keeps its state)."""
        self._send("DEL", COUNTER_KEY, LATENCY_KEY)

    def info(self, section: str) -> dict[str, object]:
        self.sent["info"] += 1
        return dict(self.client.info(section))

    def snapshot(self) -> Snapshot:
        sent_before = Counter(self.sent)
        pipe = self.client.pipeline(transaction=True)
        pipe.get(COUNTER_KEY)
        pipe.execute_command("INFO", "commandstats", "memory")  # type: ignore[no-untyped-call]
        raw_counter, info = pipe.execute()
        for name in ("multi", "get", "info", "exec"):
            self.sent[name] += 1
        calls = {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        return Snapshot(
            counter=int(raw_counter or 0),
            calls=calls,
            used_memory=int(info["used_memory"]),
            sent=sent_before,
            at=time.monotonic(),
        )

    def _raw_delta(self, a: Snapshot, b: Snapshot) -> Counter[str]:
        delta: Counter[str] = Counter()
        for name, calls in b.calls.items():
            diff = calls - a.calls.get(name, 0)
            if diff:
                delta[name] = diff
        return delta

    def _calibrate(self) -> Counter[str]:
        """What one snapshot pair costs by itself, measured on an idle server."""
        a = self.snapshot()
        b = self.snapshot()
        return self._raw_delta(a, b)

    def delta(self, a: Snapshot, b: Snapshot) -> Counter[str]:
        """Commands others sent between two snapshots (the harness's own taken out)."""
        delta = self._raw_delta(a, b)
        delta.subtract(self._baseline)
        ours = Counter(b.sent)
        ours.subtract(a.sent)
        # The commands a snapshot pair sends by itself are in the baseline already.
        ours.subtract({"multi": 1, "get": 1, "info": 1, "exec": 1})
        for name, n in ours.items():
            if n > 0:
                delta[name] -= n
        return +delta  # drop zero and negative entries

    def monitor(self, seconds: float) -> tuple[Counter[str], float]:
        """The commands clients send over ``seconds`` (MONITOR lines not run by a script), and
        how long was watched. Commandstats cannot tell the two kinds apart."""
        self.sent["monitor"] += 1
        server = self.client.connection_pool.connection_kwargs
        sent: Counter[str] = Counter()
        with socket.create_connection((server["host"], server["port"]), timeout=5) as sock:
            sock.sendall(b"MONITOR\r\n")
            buffer = b""
            while b"\r\n" not in buffer:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("Redis closed the MONITOR connection before +OK")
                buffer += chunk
            started = time.monotonic()
            buffer = buffer.split(b"\r\n", 1)[1]  # past +OK
            deadline = started + seconds
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                *lines, buffer = (buffer + chunk).split(b"\r\n")
                for line in lines:
                    match = _MONITOR_LINE.match(line)
                    if match is not None and match.group(1) != b"lua":
                        sent[match.group(2).decode().lower()] += 1
            return sent, time.monotonic() - started

    def close(self) -> None:
        self.client.close()
