"""One measurement run of one system: every metric, each phase on a freshly flushed Redis.

The order inside a run:

1. enqueue one call at a time (no worker)  -> enqueue rate, Redis memory and commands per job;
   then a worker with default settings drains those jobs -> drain rate (default);
2. bulk enqueue (no worker) -> bulk rate; then one worker per core drains them;
3. bulk enqueue; one tuned worker drains them -> drain rate (tuned), worker commands per job,
   worker CPU per 10,000 jobs;
4. a fresh tuned worker, idle: pickup latency, idle load on Redis, delayed-job lateness, and
   end-to-end throughput with a producer running beside it.

Drains are timed between the first and the last completion the harness sees, so a worker's
start-up (imports, connecting) is not counted; each drain and enqueue phase stops after
`phase_seconds` even when jobs are left, and the rate is what was done in that time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import ManagedProcess
from .redisctl import COUNTER_KEY, LATENCY_KEY, Harness, Snapshot
from .systems import ADAPTERS_DIR, System

POLL_INTERVAL = 0.003


class PhaseError(RuntimeError):
    """A phase could not be measured (worker died, never started, producer failed)."""


@dataclass(frozen=True)
class Settings:
    jobs: int
    phase_seconds: float
    latency_samples: int
    delayed_jobs: int
    delay_range: tuple[float, float]
    idle_seconds: float
    idle_settle_seconds: float
    """Quiet time before the idle window, so that what a worker flushes after the busy phase
    before it (TaskForge's job metrics, every 2 s) is not counted as idle load."""
    processes: int
    startup_timeout: float
    log_dir: Path


def _rate(count: int, t0_ns: int, t1_ns: int) -> float:
    return count / max((t1_ns - t0_ns) / 1e9, 1e-9)


def _percentiles(samples_ns: list[int], prefix: str) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    if not ms:
        return {}
    if len(ms) == 1:
        return {f"{prefix}_p50": ms[0], f"{prefix}_p99": ms[0], f"{prefix}_max": ms[0]}
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {f"{prefix}_p50": cuts[49], f"{prefix}_p99": cuts[98], f"{prefix}_max": ms[-1]}


class SystemRun:
    """Runs the phases of one system against the private Redis."""

    def __init__(
        self,
        system: System,
        python: Path,
        redis_url: str,
        harness: Harness,
        settings: Settings,
        tag: str,
    ) -> None:
        self.system = system
        self.python = python
        self.redis_url = redis_url
        self.h = harness
        self.s = settings
        self.tag = tag
        self.details: dict[str, Any] = {}

    # --- processes ------------------------------------------------------------------------------

    def env(self, config: str = "default", processes: int = 1) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "BENCH_", "TASKFORGE_"))
        }
        env.update(
            PYTHONPATH=str(ADAPTERS_DIR),
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            PATH=f"{self.python.parent}:{env.get('PATH', '/usr/bin:/bin')}",
            VIRTUAL_ENV=str(self.python.parent.parent),
            BENCH_REDIS_URL=self.redis_url,
            TASKFORGE_REDIS_URL=self.redis_url,
            BENCH_COUNTER_KEY=COUNTER_KEY,
            BENCH_LATENCY_KEY=LATENCY_KEY,
            BENCH_CONFIG=config,
            BENCH_PROCESSES=str(processes),
            BENCH_DELAY_MIN=str(self.s.delay_range[0]),
            BENCH_DELAY_MAX=str(self.s.delay_range[1]),
        )
        return env

    def _producer_argv(self, mode: str, count: int, seconds: float) -> list[str]:
        return [
            str(self.python),
            str(self.system.adapter_path),
            "produce",
            mode,
            str(count),
            str(seconds),
        ]

    def _log(self, what: str) -> Path:
        return self.s.log_dir / f"{self.tag}-{self.system.name}-{what}.log"

    def produce(self, mode: str, count: int, seconds: float) -> dict[str, Any]:
        timeout = seconds + self.s.delay_range[1] + 180
        log = self._log(f"produce-{mode}")
        with log.open("ab") as err:
            done = subprocess.run(
                self._producer_argv(mode, count, seconds),
                env=self.env(),
                cwd=ADAPTERS_DIR,
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=timeout,
                check=False,
            )
        return self._parse_producer(done.returncode, done.stdout, log, mode)

    def _parse_producer(self, code: int, stdout: bytes, log: Path, mode: str) -> dict[str, Any]:
        lines = [line for line in stdout.decode(errors="replace").splitlines() if line.strip()]
        if code != 0 or not lines:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise PhaseError(f"producer {mode} exited {code}; {log}:\n{tail}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def start_worker(self, config: str, processes: int) -> ManagedProcess:
        argv = [str(self.python), str(self.system.adapter_path), "worker", config, str(processes)]
        log = self._log(f"worker-{config}-{processes}p")
        return ManagedProcess(argv, self.env(config, processes), ADAPTERS_DIR, log)

    # --- measurements ---------------------------------------------------------------------------

    def _job_commands(self, a: Snapshot, b: Snapshot) -> tuple[float, dict[str, int]]:
        """Redis commands per job between two snapshots, the job body's own INCRs taken out."""
        jobs = b.counter - a.counter
        delta = self.h.delta(a, b)
        delta["incr"] -= jobs
        delta = +delta
        return sum(delta.values()) / max(jobs, 1), dict(delta.most_common(12))

    def drain(self, worker: ManagedProcess, expected: int, what: str) -> dict[str, Any]:
        """Waits for a worker to finish `expected` queued jobs (or for the phase's time)."""
        started = time.monotonic()
        first: Snapshot | None = None
        cpu_first = 0.0
        while True:
            if not worker.alive():
                raise PhaseError(f"{what}: worker exited; {worker.log_path}:\n{worker.tail()}")
            now = time.monotonic()
            done = self.h.counter()
            if first is None:
                if done > 0:
                    first = self.h.snapshot()
                    cpu_first = worker.cpu_seconds()
                elif now - started > self.s.startup_timeout:
                    raise PhaseError(f"{what}: no job done after {self.s.startup_timeout:.0f} s")
            elif done >= expected or now - first.at > self.s.phase_seconds:
                last = self.h.snapshot()
                cpu_last = worker.cpu_seconds()
                break
            time.sleep(POLL_INTERVAL)
        jobs = last.counter - first.counter
        seconds = last.at - first.at
        per_job, breakdown = self._job_commands(first, last)
        return {
            "rate": jobs / max(seconds, 1e-9),
            "jobs": jobs,
            "seconds": seconds,
            "commands_per_job": per_job,
            "commands": breakdown,
            "cpu_per_10k": (cpu_last - cpu_first) / max(jobs, 1) * 10_000,
        }

    def _stop(self, worker: ManagedProcess, what: str) -> None:
        worker.stop()
        if worker.tracebacks:
            self.details.setdefault("worker_tracebacks", {})[what] = worker.tracebacks

    def _run_drain(self, config: str, processes: int, expected: int) -> dict[str, Any]:
        worker = self.start_worker(config, processes)
        what = f"drain {config} x{processes}"
        try:
            return self.drain(worker, expected, what)
        finally:
            self._stop(worker, what)

    def run(self) -> dict[str, float]:
        """All phases; returns metric -> value (details go to self.details)."""
        m: dict[str, float] = {}
        n, t = self.s.jobs, self.s.phase_seconds

        # 1. one call at a time, then a default worker drains them.
        self.h.reset()
        before = self.h.snapshot()
        single = self.produce("single", n, t)
        after = self.h.snapshot()
        count = int(single["count"])
        m["enqueue_single"] = _rate(count, single["t0_ns"], single["t1_ns"])
        m["memory_per_job"] = (after.used_memory - before.used_memory) / max(count, 1)
        enq = self.h.delta(before, after)
        m["enqueue_commands_per_job"] = sum(enq.values()) / max(count, 1)
        self.details["enqueue_commands"] = dict(enq.most_common(12))
        self.details["enqueue_single_jobs"] = count
        d = self._run_drain("default", 1, count)
        m["drain_default"] = d["rate"]
        self.details["drain_default"] = d

        # 2. bulk enqueue, then one worker per core.
        self.h.reset()
        bulk = self.produce("bulk", n, t)
        m["enqueue_bulk"] = _rate(int(bulk["count"]), bulk["t0_ns"], bulk["t1_ns"])
        self.details["enqueue_bulk_jobs"] = int(bulk["count"])
        d = self._run_drain("tuned", self.s.processes, int(bulk["count"]))
        m["drain_processes"] = d["rate"]
        self.details["drain_processes"] = d

        # 3. bulk enqueue, then one tuned worker: rate, commands and CPU per job.
        self.h.reset()
        bulk = self.produce("bulk", n, t)
        d = self._run_drain("tuned", 1, int(bulk["count"]))
        m["drain_tuned"] = d["rate"]
        m["worker_commands_per_job"] = d["commands_per_job"]
        m["cpu_per_10k"] = d["cpu_per_10k"]
        self.details["drain_tuned"] = d

        # 4. a tuned worker, idle at first.
        self.h.reset()
        worker = self.start_worker("tuned", 1)
        try:
            m.update(self._live_phases(worker))
        finally:
            self._stop(worker, "live tuned x1")
        return m

    def _live_phases(self, worker: ManagedProcess) -> dict[str, float]:
        m: dict[str, float] = {}
        lat = self.produce("latency", self.s.latency_samples, max(self.s.phase_seconds, 3.0))
        if not lat.get("warmed_up"):
            raise PhaseError(f"latency: worker never ran the warm-up job:\n{worker.tail()}")
        samples = self.h.latency_samples()
        self.details["pickup_samples"] = len(samples)
        self.details["pickup_ms"] = sorted(round(v / 1e6, 3) for v in samples)
        m.update(_percentiles(samples, "pickup"))
        self.h.reset_keys()

        time.sleep(self.s.idle_settle_seconds)
        a = self.h.snapshot()
        sent, watched = self.h.monitor(self.s.idle_seconds)
        b = self.h.snapshot()
        idle = self.h.delta(a, b)
        m["idle_commands_per_s"] = sum(idle.values()) / (b.at - a.at)
        m["idle_sent_per_s"] = sum(sent.values()) / watched
        self.details["idle_commands"] = dict(idle.most_common(12))
        self.details["idle_sent"] = dict(sent.most_common(12))

        if self.system.supports_delay:
            delayed = self.produce("delayed", self.s.delayed_jobs, 0)
            samples = self.h.latency_samples()
            self.details["delayed_samples"] = len(samples)
            self.details["delayed_ms"] = sorted(round(v / 1e6, 1) for v in samples)
            self.details["delayed_sent"] = delayed.get("count")
            p = _percentiles(samples, "delay")
            m.update({k: v for k, v in p.items() if not k.endswith("_max")})
            self.h.reset_keys()

        m["end_to_end"] = self._end_to_end(worker)
        return m

    def _end_to_end(self, worker: ManagedProcess) -> float:
        """A bulk producer and the worker at once: jobs done / (last done - first sent)."""
        base = self.h.counter()
        log = self._log("produce-e2e")
        with log.open("ab") as err:
            proc = subprocess.Popen(
                self._producer_argv("bulk", self.s.jobs, self.s.phase_seconds),
                env=self.env(),
                cwd=ADAPTERS_DIR,
                stdout=subprocess.PIPE,
                stderr=err,
            )
            deadline = time.monotonic() + self.s.phase_seconds + 120
            target: int | None = None
            done, last_ns = base, time.time_ns()
            stdout = b""
            while time.monotonic() < deadline:
                if not worker.alive():
                    proc.kill()
                    raise PhaseError(f"end to end: worker exited:\n{worker.tail()}")
                value = self.h.counter()
                if value > done:
                    done, last_ns = value, time.time_ns()
                if target is None and proc.poll() is not None:
                    stdout = proc.stdout.read() if proc.stdout else b""
                    result = self._parse_producer(proc.returncode, stdout, log, "e2e")
                    target = base + int(result["count"])
                    t0_ns = int(result["t0_ns"])
                    # Past the producer's end, wait at most one more phase for the worker.
                    deadline = min(deadline, time.monotonic() + self.s.phase_seconds + 10)
                if target is not None and done >= target:
                    break
                time.sleep(POLL_INTERVAL)
            if target is None:
                proc.kill()
                proc.wait()
                raise PhaseError("end to end: producer did not finish")
        self.details["end_to_end_jobs"] = done - base
        self.details["end_to_end_complete"] = done >= target
        return (done - base) / max((last_ns - t0_ns) / 1e9, 1e-9)


def versions(system: System, python: Path, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [str(python), str(system.adapter_path), "versions"],
        env=env,
        cwd=ADAPTERS_DIR,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.decode(errors="replace")[-500:]}
    result: dict[str, str] = json.loads(done.stdout.decode().splitlines()[-1])
    return result
