"""Shared by every adapter script. Runs inside each peer's own venv: stdlib and redis-py only.

An adapter script is called by the runner as

    python peer_<name>.py produce MODE COUNT SECONDS   # prints one JSON line, then exits
    python peer_<name>.py worker CONFIG PROCESSES      # runs a worker until SIGTERM
    python peer_<name>.py versions                     # prints {"dist": "version", ...}

with the private Redis in BENCH_REDIS_URL. Every job is `noop(t_ns)`; its body is `job_body` (or
`job_body_async`): exactly one Redis round trip. With t_ns == 0 it sends INCR (not redis-py's
incr(), which sends INCRBY) to the counter key (the
harness counts completions there); otherwise it RPUSHes (handler start - t_ns) in nanoseconds
to the latency list, where t_ns is the enqueue time (pickup latency) or the due time (delayed
jobs).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

# Set by the runner to its private server. Without it, a placeholder nothing listens on: an
# adapter run by hand must never reach the shared Redis on 6379.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
COUNTER_KEY = os.environ.get("BENCH_COUNTER_KEY", "bench:done")
LATENCY_KEY = os.environ.get("BENCH_LATENCY_KEY", "bench:latency")
QUEUE = "bench"
# Worker settings chosen by the runner: "default" or "tuned", and the number of processes.
CONFIG = os.environ.get("BENCH_CONFIG", "default")
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))
TUNED = CONFIG == "tuned"
BULK_BATCH = int(os.environ.get("BENCH_BULK_BATCH", "1000"))
# Pickup-latency producer: one job at a time, a random gap between them (seconds).
LATENCY_GAP = (
    float(os.environ.get("BENCH_LATENCY_GAP_MIN", "0.005")),
    float(os.environ.get("BENCH_LATENCY_GAP_MAX", "0.020")),
)
# Delayed jobs: each due a random time from now (seconds).
DELAY_RANGE = (
    float(os.environ.get("BENCH_DELAY_MIN", "0.5")),
    float(os.environ.get("BENCH_DELAY_MAX", "1.5")),
)
WAIT_TIMEOUT = float(os.environ.get("BENCH_WAIT_TIMEOUT", "90"))
BIN = Path(sys.executable).parent

# --- the job body -------------------------------------------------------------------------------

_sync_client: tuple[int, redis.Redis] | None = None
_async_clients: dict[int, redis.asyncio.Redis] = {}


def sync_client() -> redis.Redis:
    """One client per process (re-created after a fork)."""
    global _sync_client
    pid = os.getpid()
    if _sync_client is None or _sync_client[0] != pid:
        _sync_client = (pid, redis.Redis.from_url(REDIS_URL))
    return _sync_client[1]


def async_client() -> redis.asyncio.Redis:
    """One client per event loop."""
    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        _async_clients[loop_id] = client
    return client


def job_body(t_ns: int) -> None:
    start = time.time_ns()
    if t_ns == 0:
        sync_client().execute_command("INCR", COUNTER_KEY)
    else:
        sync_client().rpush(LATENCY_KEY, start - t_ns)


async def job_body_async(t_ns: int) -> None:
    start = time.time_ns()
    if t_ns == 0:
        await async_client().execute_command("INCR", COUNTER_KEY)
    else:
        await async_client().rpush(LATENCY_KEY, start - t_ns)


# --- producers ----------------------------------------------------------------------------------

MaybeAwaitable = Awaitable[Any] | Any


@dataclass
class Producer:
    """What an adapter provides to enqueue jobs; each callable may be sync or async.

    enqueue(t_ns): one job, one call.
    enqueue_batch(list_of_t_ns): the peer's bulk API (or its documented way to send many).
    enqueue_at(t_ns, due_epoch_seconds): a delayed job due at that wall-clock time.
    """

    enqueue: Callable[[int], MaybeAwaitable]
    enqueue_batch: Callable[[list[int]], MaybeAwaitable]
    enqueue_at: Callable[[int, float], MaybeAwaitable] | None = None
    setup: Callable[[], MaybeAwaitable] | None = None
    close: Callable[[], MaybeAwaitable] | None = None
    bulk_batch: int = BULK_BATCH


async def _call(fn: Callable[..., MaybeAwaitable], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _wait_for(check: Callable[[], int], target: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    value = check()
    while value < target and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        value = check()
    return value


async def _produce(producer: Producer, mode: str, count: int, seconds: float) -> dict[str, Any]:
    if producer.setup is not None:
        await _call(producer.setup)
    r = redis.Redis.from_url(REDIS_URL)
    out: dict[str, Any] = {"mode": mode}
    sent = 0
    t0 = time.time_ns()
    deadline = time.monotonic() + seconds
    if mode == "single":
        while sent < count and time.monotonic() < deadline:
            await _call(producer.enqueue, 0)
            sent += 1
    elif mode == "bulk":
        while sent < count and time.monotonic() < deadline:
            n = min(producer.bulk_batch, count - sent)
            await _call(producer.enqueue_batch, [0] * n)
            sent += n
    elif mode == "latency":
        # Warm the worker up with one job and wait until it has run, then time fresh jobs.
        base = int(r.get(COUNTER_KEY) or 0)
        await _call(producer.enqueue, 0)
        got = await _wait_for(lambda: int(r.get(COUNTER_KEY) or 0), base + 1, WAIT_TIMEOUT)
        out["warmed_up"] = got > base
        t0 = time.time_ns()
        deadline = time.monotonic() + seconds
        while sent < count and time.monotonic() < deadline:
            await asyncio.sleep(random.uniform(*LATENCY_GAP))
            await _call(producer.enqueue, time.time_ns())
            sent += 1
        out["received"] = await _wait_for(lambda: int(r.llen(LATENCY_KEY)), sent, WAIT_TIMEOUT)
    elif mode == "delayed":
        if producer.enqueue_at is None:
            raise SystemExit("this adapter has no delayed jobs")
        for _ in range(count):
            due = time.time() + random.uniform(*DELAY_RANGE)
            await _call(producer.enqueue_at, int(due * 1e9), due)
            sent += 1
        timeout = DELAY_RANGE[1] + WAIT_TIMEOUT
        out["received"] = await _wait_for(lambda: int(r.llen(LATENCY_KEY)), sent, timeout)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out.update(count=sent, t0_ns=t0, t1_ns=time.time_ns())
    if producer.close is not None:
        await _call(producer.close)
    r.close()
    return out


# --- workers ------------------------------------------------------------------------------------


def exec_cli(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Replaces this process with a peer's own CLI (so SIGTERM reaches it directly)."""
    program = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(program, [program, *argv[1:]], {**os.environ, **(env or {})})


def run_processes(argv: Sequence[str], n: int, env: dict[str, str] | None = None) -> None:
    """Runs n copies of a worker command (for peers whose CLI has no processes option)."""
    run_commands([argv] * n, env)


def run_commands(commands: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> None:
    """Runs several commands side by side (workers, a scheduler) as one supervised unit.

    Forwards SIGTERM/SIGINT to all of them and returns when all have exited.
    """
    children = []
    for argv in commands:
        program = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
        children.append(subprocess.Popen([program, *argv[1:]], env={**os.environ, **(env or {})}))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.wait()


def versions(distributions: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    found["python"] = sys.version.split()[0]
    return found


def main(
    producer_factory: Callable[[], Producer],
    run_worker: Callable[[str, int], None],
    distributions: Sequence[str],
) -> None:
    """The command line every adapter script shares."""
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    command = args[0]
    if command in ("produce", "worker") and "BENCH_REDIS_URL" not in os.environ:
        raise SystemExit("BENCH_REDIS_URL is not set: the runner passes its private Redis here")
    if command == "produce":
        mode, count, seconds = args[1], int(args[2]), float(args[3])
        result = asyncio.run(_produce(producer_factory(), mode, count, seconds))
        print(json.dumps(result), flush=True)
    elif command == "worker":
        # The worker module is imported again by the peer's CLI: it reads these variables.
        os.environ["BENCH_CONFIG"], os.environ["BENCH_PROCESSES"] = args[1], args[2]
        run_worker(args[1], int(args[2]))
    elif command == "versions":
        print(json.dumps(versions(distributions)), flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")
