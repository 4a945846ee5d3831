"""Ceilings on the same machine and server: redis-benchmark, and a bare redis-py loop."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .systems import ADAPTERS_DIR

REDIS_BENCHMARK_CLIENTS = 50
PIPELINE = 32


def redis_benchmark_available() -> bool:
    return shutil.which("redis-benchmark") is not None


def _redis_benchmark(port: int, requests: int, extra: list[str]) -> dict[str, float]:
    argv = [
        "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
        "-c", str(REDIS_BENCHMARK_CLIENTS), "-n", str(requests), "--csv", *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, timeout=300, check=True)
    rows = list(csv.reader(io.StringIO(done.stdout.decode())))
    out: dict[str, float] = {}
    for row in rows[1:]:  # header: "test","rps",...
        if len(row) >= 2:
            out[row[0].split()[0].upper()] = float(row[1])
    return out


def redis_benchmark(port: int, requests: int) -> dict[str, float]:
    """LPUSH/RPOP (and XADD) requests per second, unpipelined and with -P 32."""
    out: dict[str, float] = {}
    for label, extra in (("", []), (f" -P {PIPELINE}", ["-P", str(PIPELINE)])):
        for test, rps in _redis_benchmark(port, requests, [*extra, "-t", "lpush,rpop"]).items():
            out[f"{test}{label}"] = rps
        xadd = _redis_benchmark(port, requests, [*extra, "XADD", "ceiling:stream", "*", "f", "v"])
        for rps in xadd.values():
            out[f"XADD{label}"] = rps
    return out


def bare_redispy(
    python: Path, url: str, count: int, seconds: float, latency_samples: int
) -> dict[str, Any]:
    script = str(ADAPTERS_DIR / "ceiling_redispy.py")
    done = subprocess.run(
        [str(python), script, url, str(count), str(seconds), str(latency_samples)],
        capture_output=True,
        timeout=seconds * 6 + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace")[-2000:])
    result: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


def ensure_redis_benchmark() -> bool:
    """redis-benchmark comes with Debian's redis-tools; install it when root, else skip."""
    if redis_benchmark_available():
        return True
    import os

    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("[ceiling] installing redis-tools for redis-benchmark", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-tools"], env=env, check=False, timeout=600
        )
    if not redis_benchmark_available():
        print("[ceiling] redis-benchmark not found: skipping that ceiling", file=sys.stderr)
        return False
    return True
