"""Chaos-test support: worker subprocesses to kill, freeze and signal, and an exact ledger of
executions (written by the tasks of `tests.support.chaos_app`) to count lost and repeated jobs.

A kill is taken as a `KillSnapshot`: the worker is frozen (SIGSTOP), one round trip makes sure
Redis has applied everything it sent, the jobs it holds and the runs it recorded are read, and
only then is it SIGKILLed. So the jobs that may legitimately run twice are known exactly: those
it held *and* had started. Every other job must run exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis

from tests.support.servers import wait_until

__all__ = [
    "FINISHES_KEY",
    "QUEUE",
    "RECORD_URL_ENV",
    "STARTS_KEY",
    "KillSnapshot",
    "Ledger",
    "WorkerProcess",
    "child_pids",
    "expected_runs",
    "freeze_and_kill",
    "in_process_worker",
    "queue_counts",
    "run_report",
]

QUEUE = "chaos"
STARTS_KEY = "chaos:starts"
FINISHES_KEY = "chaos:finishes"
RECORD_URL_ENV = "CHAOS_RECORD_URL"
APP = "tests.support.chaos_app:forge"
REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "taskforge"


def queue_key(name: str, queue: str = QUEUE) -> str:
    return f"{PREFIX}:{{{queue}}}:{name}"


def job_key(job_id: str, queue: str = QUEUE) -> str:
    return queue_key("job:" + job_id, queue)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- worker subprocesses ----------------------------------------------------------------------


class WorkerProcess:
    """`taskforge worker tests.support.chaos_app:forge` in a subprocess, logging to a file.

    Settings that the CLI has no flag for (lease, redeliveries, socket timeout) go through
    `TASKFORGE_*` variables. `close()` (also on `with` exit) SIGKILLs it if it still runs.
    """

    def __init__(
        self,
        redis_url: str,
        log_dir: Path,
        *,
        name: str = "worker",
        concurrency: int = 20,
        grace: float = 10.0,
        lease: float = 2.0,
        processes: int = 1,
        max_redeliveries: int | None = None,
        socket_timeout: float | None = None,
        record_url: str | None = None,
        queues: str = QUEUE,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.args = [
            sys.executable,
            "-m",
            "taskforge",
            "worker",
            APP,
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--grace",
            str(grace),
            "--processes",
            str(processes),
            "--log-level",
            "info",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFORGE_")}
        env.update(
            TASKFORGE_REDIS_URL=redis_url,
            TASKFORGE_LEASE_SECONDS=str(lease),
            PYTHONUNBUFFERED="1",
        )
        if max_redeliveries is not None:
            env["TASKFORGE_MAX_REDELIVERIES"] = str(max_redeliveries)
        if socket_timeout is not None:
            env["TASKFORGE_SOCKET_TIMEOUT"] = str(socket_timeout)
        if record_url is not None:
            env[RECORD_URL_ENV] = record_url
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return f"--- {self.name} (pid {self.proc and self.proc.pid}) log tail ---\n" + "\n".join(
            self.log().splitlines()[-lines:]
        )

    def send(self, signum: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def freeze(self) -> None:
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; raises TimeoutError (with the log) if it does not."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} did not exit within {timeout:.0f} s\n{self.log_tail()}"
            ) from None

    def wait_ready(self, client: redis.Redis, timeout: float = 20.0) -> None:
        """Until the worker has registered itself in Redis (it is then fetching)."""
        needle = f":{self.pid}:"

        def registered() -> bool:
            if not self.alive:
                raise AssertionError(f"{self.name} exited early\n{self.log_tail()}")
            members = client.zrange(f"{PREFIX}:{{-}}:workers", 0, -1)
            return any(needle in _text(m) for m in members)

        wait_until(registered, timeout, f"{self.name} to register", details=self.log_tail)

    def close(self) -> None:
        """SIGKILL it, and the worker processes it started (with --processes), if still alive."""
        children = child_pids(self.pid) if self.alive else []
        self.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def child_pids(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc), for the supervisor tests."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


# -- reading the state ------------------------------------------------------------------------


def queue_counts(client: redis.Redis, queue: str = QUEUE) -> dict[str, int]:
    """Sizes of the queue's state sets, read in one pipeline."""
    names = ("ready", "scheduled", "active", "dead", "completed")
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zcard(queue_key(name, queue))
    return dict(zip(names, pipe.execute(), strict=True))


def queue_stats(client: redis.Redis, queue: str = QUEUE) -> dict[str, int]:
    raw = client.hgetall(queue_key("stats", queue))
    return {_text(k): int(v) for k, v in raw.items()}


def job_records(
    client: redis.Redis, job_ids: Iterable[str], queue: str = QUEUE
) -> dict[str, dict[str, str]]:
    ids = list(job_ids)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(job_key(job_id, queue))
    return {
        job_id: {_text(k): _text(v) for k, v in raw.items()}
        for job_id, raw in zip(ids, pipe.execute(), strict=True)
    }


@dataclass(frozen=True)
class Run:
    job_id: str
    pid: int
    run_id: str


@dataclass
class Ledger:
    """Every recorded execution: starts and finishes, per job."""

    starts: dict[str, list[Run]] = field(default_factory=dict)
    finishes: dict[str, list[Run]] = field(default_factory=dict)

    @classmethod
    def read(cls, client: redis.Redis) -> Ledger:
        ledger = cls()
        for key, into in ((STARTS_KEY, ledger.starts), (FINISHES_KEY, ledger.finishes)):
            for member in client.smembers(key):
                job_id, pid, run_id = _text(member).split("|")
                into.setdefault(job_id, []).append(Run(job_id, int(pid), run_id))
        return ledger

    def started_by(self, pid: int) -> set[str]:
        return {r.job_id for runs in self.starts.values() for r in runs if r.pid == pid}

    def finished_by(self, pid: int) -> set[str]:
        return {r.job_id for runs in self.finishes.values() for r in runs if r.pid == pid}

    def start_count(self, job_id: str) -> int:
        return len(self.starts.get(job_id, ()))


@dataclass(frozen=True)
class KillSnapshot:
    """What a worker held at the moment it was killed."""

    pid: int
    active: frozenset[str]
    """Jobs leased to this worker (in the active set, its worker id on the record)."""
    started: frozenset[str]
    """Jobs of which this worker had recorded a start."""

    @property
    def may_repeat(self) -> frozenset[str]:
        """Jobs whose run was cut short: the only ones allowed a second execution."""
        return self.active & self.started


def freeze_and_kill(
    worker: WorkerProcess | int, client: redis.Redis, queue: str = QUEUE
) -> KillSnapshot:
    """SIGSTOP the worker (a `WorkerProcess`, or the pid of one that another process started and
    reaps), read what it holds, SIGKILL it (see the module docstring)."""
    pid = worker.pid if isinstance(worker, WorkerProcess) else worker
    os.kill(pid, signal.SIGSTOP)
    # Whatever the worker wrote before it stopped is in Redis's socket buffers; round trips on
    # our connection let Redis's event loop apply it before we read.
    client.ping()
    client.ping()
    needle = f":{pid}:"
    active_ids = [_text(m) for m in client.zrange(queue_key("active", queue), 0, -1)]
    owners = job_records(client, active_ids, queue)
    held = frozenset(i for i in active_ids if needle in owners[i].get("worker", ""))
    started = frozenset(Ledger.read(client).started_by(pid))
    if isinstance(worker, WorkerProcess):
        worker.kill()
    else:
        os.kill(pid, signal.SIGKILL)
    return KillSnapshot(pid, held, started)


def expected_runs(job_ids: Iterable[str], kills: Sequence[KillSnapshot]) -> dict[str, int]:
    """Executions each job must have: one, plus one per kill that cut its run short."""
    extra = Counter(job_id for kill in kills for job_id in kill.may_repeat)
    return {job_id: 1 + extra[job_id] for job_id in job_ids}


@dataclass
class RunReport:
    total: int
    completed: int
    lost: list[str]
    """Jobs that did not end completed."""
    repeated: list[str]
    """Jobs that ran more than once."""
    unexpected: dict[str, tuple[int, int]]
    """job id -> (expected runs, recorded runs), where they differ."""
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected

    def __str__(self) -> str:
        sample = dict(list(self.unexpected.items())[:5])
        return (
            f"{self.total} jobs: {self.completed} completed, {len(self.lost)} lost,"
            f" {len(self.repeated)} ran twice or more, {len(self.unexpected)} ran an unexpected"
            f" number of times {sample or ''}; queue counts {self.counts}"
        )


def run_report(
    client: redis.Redis,
    job_ids: Sequence[str],
    expected: Mapping[str, int] | None = None,
    queue: str = QUEUE,
    *,
    ledger_client: redis.Redis | None = None,
) -> RunReport:
    """Compare what happened to what must have happened; `expected` defaults to once each.
    The ledger is read from `ledger_client` when the tasks record on another server."""
    ledger = Ledger.read(ledger_client or client)
    records = job_records(client, job_ids, queue)
    lost = [i for i in job_ids if records[i].get("status") != "completed"]
    want = expected if expected is not None else dict.fromkeys(job_ids, 1)
    unexpected = {
        i: (want[i], ledger.start_count(i)) for i in job_ids if ledger.start_count(i) != want[i]
    }
    repeated = [i for i in job_ids if ledger.start_count(i) > 1]
    return RunReport(
        len(job_ids), len(job_ids) - len(lost), lost, repeated, unexpected, queue_counts(client)
    )


def wait_all_completed(
    client: redis.Redis,
    job_ids: Sequence[str],
    timeout: float,
    workers: Sequence[WorkerProcess] = (),
    queue: str = QUEUE,
    *,
    ledger_client: redis.Redis | None = None,
) -> None:
    """Until every one of `job_ids` is completed (polled on the completed set's size first)."""
    target = set(job_ids)

    def done() -> bool:
        if client.zcard(queue_key("completed", queue)) < len(target):
            return False
        records = job_records(client, target, queue)
        return all(r.get("status") == "completed" for r in records.values())

    def details() -> str:
        report = run_report(client, job_ids, queue=queue, ledger_client=ledger_client)
        return f"{report}\n" + "\n".join(w.log_tail() for w in workers)

    wait_until(done, timeout, f"{len(target)} jobs to complete", interval=0.05, details=details)


# -- in-process workers -----------------------------------------------------------------------


@contextlib.contextmanager
def in_process_worker(worker: Any, timeout: float = 20.0) -> Iterator[Any]:
    """Run a `taskforge.Worker` on an event loop of its own thread; stopped at exit."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(worker.run_async())
        except BaseException as exc:  # surfaced in the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="taskforge-test-worker", daemon=True)
    thread.start()
    try:
        if not worker.started.wait(timeout):
            raise TimeoutError(f"the worker did not start within {timeout} s: {errors}")
        yield worker
    finally:
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            worker.stop(immediate=True)  # no-op once it is stopping already
            thread.join(0.2)
        if thread.is_alive():
            raise TimeoutError(f"the worker thread did not stop within {timeout} s")
    if errors:
        raise errors[0]
