"""`python -m benchmarks`: TaskForge and its peers, one private Redis, interleaved runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import ceilings, report
from .metrics import summarize
from .phases import PhaseError, Settings, SystemRun, versions
from .redisctl import Harness, PrivateRedis
from .systems import BENCH_DIR, PEERS, REPO_DIR, SYSTEMS
from .venvs import ensure_venv, taskforge_python

SMOKE_SYSTEMS = ("taskforge", "huey")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure TaskForge side by side with other Python Redis queues.",
    )
    p.add_argument(
        "--systems",
        help=f"comma-separated, from: {','.join(SYSTEMS)} (default: all; with --smoke: "
        f"{','.join(SMOKE_SYSTEMS)})",
    )
    p.add_argument("--repeats", type=int, help="interleaved runs per system (default 3)")
    p.add_argument("--jobs", type=int, help="jobs per enqueue/drain phase (default 20000)")
    p.add_argument(
        "--phase-seconds",
        type=float,
        help="time cap of one enqueue or drain phase; the rate is what was done by then "
        "(default 4)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny run: proves the harness works")
    p.add_argument("--no-ceilings", action="store_true", help="skip redis-benchmark and bare loop")
    p.add_argument(
        "--out",
        type=Path,
        help="results directory (default benchmarks/results; with --smoke "
        "benchmarks/results/tmp/smoke, so a smoke run never replaces a full run's results)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS.json",
        help="measure nothing: re-render the tables, chart and Markdown of a saved run",
    )
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="also write the tables into docs/benchmarks.md (between its markers)",
    )
    return p.parse_args(argv)


def _settings(args: argparse.Namespace, log_dir: Path) -> tuple[Settings, int]:
    if args.smoke:
        s = Settings(
            jobs=args.jobs or 300,
            phase_seconds=args.phase_seconds or 2.0,
            latency_samples=20,
            delayed_jobs=5,
            delay_range=(0.2, 0.6),
            idle_seconds=1.0,
            idle_settle_seconds=1.0,
            processes=os.cpu_count() or 2,
            startup_timeout=30.0,
            log_dir=log_dir,
        )
        return s, args.repeats or 1
    s = Settings(
        jobs=args.jobs or 20_000,
        phase_seconds=args.phase_seconds or 4.0,
        latency_samples=300,
        delayed_jobs=200,
        delay_range=(0.2, 1.2),
        # Ten seconds hold one of TaskForge's 10 s blocking waits and ten of a 1 s poller's.
        idle_seconds=10.0,
        idle_settle_seconds=3.0,
        processes=os.cpu_count() or 2,
        startup_timeout=60.0,
        log_dir=log_dir,
    )
    return s, args.repeats or 3


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.stdout.decode().strip()
    except OSError:
        return ""


def _pythons(names: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Each system's interpreter, building venvs on demand; TaskForge only when importable."""
    found: dict[str, Path] = {}
    skipped: list[str] = []
    for name in names:
        if name == "taskforge":
            python = taskforge_python()
            if python is None:
                print("[skip] TaskForge: src/taskforge is not importable yet", file=sys.stderr)
                skipped.append(name)
                continue
            found[name] = python
        else:
            found[name] = ensure_venv(name, SYSTEMS[name].requirements)
    return found, skipped


def _run_ceilings(
    redis: PrivateRedis, harness: Harness, settings: Settings, smoke: bool, have_rb: bool
) -> dict[str, float]:
    """redis-benchmark (when installed) and the bare redis-py loop, on a flushed server."""
    out: dict[str, float] = {}
    tools_python = Path(sys.executable)
    harness.reset()
    if have_rb:
        for key, rps in ceilings.redis_benchmark(redis.port, 20_000 if smoke else 200_000).items():
            out[f"redis-benchmark {key}"] = rps
        harness.reset()
    count = 2_000 if smoke else settings.jobs * 5
    bare = ceilings.bare_redispy(
        tools_python, redis.url, count, settings.phase_seconds, settings.latency_samples
    )
    names = {
        "push_single": "redis-py LPUSH one at a time",
        "pop_single": "redis-py BRPOP one at a time",
        "push_batched": "redis-py LPUSH pipelined by 100",
        "pop_batched": "redis-py LMPOP 100 at a time",
        "end_to_end": "redis-py end to end (pipelined LPUSH, BLMPOP consumer)",
        "pickup_p50_ms": "pickup floor p50, ms: redis-py LPUSH -> BLPOP in another process",
        "pickup_p99_ms": "pickup floor p99, ms: redis-py LPUSH -> BLPOP in another process",
    }
    for key, value in bare.items():
        out[names.get(key, key)] = value
    harness.reset()
    return out


def _select(args: argparse.Namespace) -> list[str]:
    if args.systems:
        return [n.strip().lower() for n in args.systems.split(",") if n.strip()]
    return list(SMOKE_SYSTEMS if args.smoke else ("taskforge", *PEERS))


def _new_results(
    args: argparse.Namespace, settings: Settings, repeats: int, names: list[str], skipped: list[str]
) -> dict[str, Any]:
    return {
        "meta": {
            "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": _machine(),
            "python": platform.python_version(),
            "commit": _git_commit(),
            "repeats": repeats,
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
            "smoke": args.smoke,
            "skipped": skipped,
            "settings": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()
            },
        },
        "systems": {
            n: {"label": SYSTEMS[n].label, "runs": [], "details": [], "errors": []} for n in names
        },
        "ceilings": {"runs": []},
    }


def _measure(
    args: argparse.Namespace,
    pythons: dict[str, Path],
    settings: Settings,
    repeats: int,
    results: dict[str, Any],
) -> int:
    """Every run of every system (interleaved) and the ceilings; returns the failures."""
    names = list(results["systems"])
    have_rb = (not args.no_ceilings) and ceilings.ensure_redis_benchmark()
    failures = 0
    with PrivateRedis() as redis:
        harness = Harness(redis.url)
        results["meta"]["redis_version"] = harness.info("server")["redis_version"]
        for name in names:
            sysm = SYSTEMS[name]
            env = SystemRun(sysm, pythons[name], redis.url, harness, settings, "v").env()
            results["systems"][name]["versions"] = versions(sysm, pythons[name], env)
        for rep in range(repeats):
            # Interleaved: each run goes through all systems, the order rotated by one.
            order = names[rep % len(names) :] + names[: rep % len(names)] if names else []
            if not args.no_ceilings:
                print(f"[run {rep + 1}/{repeats}] ceilings", file=sys.stderr, flush=True)
                try:
                    runs = results["ceilings"]["runs"]
                    runs.append(_run_ceilings(redis, harness, settings, args.smoke, have_rb))
                except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                    print(f"[error] ceilings: {exc}", file=sys.stderr)
                    failures += 1
            for name in order:
                failures += _run_system(name, pythons[name], redis, harness, settings, rep, results)
        harness.close()
    return failures


def _publish(results: dict[str, Any], out_dir: Path, update_docs: bool) -> None:
    """Summaries, then JSON / Markdown / PNG, the terminal tables and (optionally) the docs."""
    for entry in results["systems"].values():
        entry["summary"] = summarize(entry["runs"])
    results["ceilings"]["summary"] = _summarize_ceilings(results["ceilings"]["runs"])
    paths = report.write_all(results, out_dir)
    report.print_table(results)
    if update_docs and report.update_docs(results, REPO_DIR / "docs" / "benchmarks.md"):
        print("updated docs/benchmarks.md", file=sys.stderr)
    print(
        f"results: {paths['json']} (also latest.json, latest.md, latest.png); "
        f"the run took {results['meta'].get('duration_s', 0):.0f} s",
        file=sys.stderr,
    )


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved: dict[str, Any] = json.loads(args.from_json.read_text())
        _publish(saved, (args.out or args.from_json.parent).resolve(), args.update_docs)
        return 0
    started_at = time.monotonic()
    names = _select(args)
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        print(f"unknown systems: {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
        return 2
    default_out = BENCH_DIR / "results" / ("tmp/smoke" if args.smoke else "")
    out_dir: Path = (args.out or default_out).resolve()
    log_dir = BENCH_DIR / "results" / "tmp" / ("logs-smoke" if args.smoke else "logs")
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    settings, repeats = _settings(args, log_dir)

    pythons, skipped = _pythons(names)
    names = [n for n in names if n in pythons]
    results = _new_results(args, settings, repeats, names, skipped)
    failures = _measure(args, pythons, settings, repeats, results)

    results["meta"]["duration_s"] = round(time.monotonic() - started_at, 1)
    results["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _publish(results, out_dir, args.update_docs)
    if failures:
        print(f"{failures} run(s) failed: see the errors above and {log_dir}", file=sys.stderr)
        return 1
    return 0


def _summarize_ceilings(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = list(dict.fromkeys(k for run in runs for k in run))
    out = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
    return out


def _run_system(
    name: str,
    python: Path,
    redis: PrivateRedis,
    harness: Harness,
    settings: Settings,
    rep: int,
    results: dict[str, Any],
) -> int:
    entry = results["systems"][name]
    tag = f"run{rep + 1}"
    print(f"[{tag}] {entry['label']}", file=sys.stderr, flush=True)
    harness.reset()
    runner = SystemRun(SYSTEMS[name], python, redis.url, harness, settings, tag)
    t0 = time.monotonic()
    failed = 0
    try:
        metrics = runner.run()
        entry["runs"].append(metrics)
    except (PhaseError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        message = f"{tag}: {type(exc).__name__}: {exc}"
        print(f"[error] {entry['label']} {message}", file=sys.stderr)
        if not isinstance(exc, PhaseError):
            traceback.print_exc()
        entry["errors"].append(message.splitlines()[0])
        failed = 1
    runner.details["seconds"] = round(time.monotonic() - t0, 1)
    if runner.details.get("worker_tracebacks"):
        found = runner.details["worker_tracebacks"]
        print(f"[warn] {entry['label']}: worker logged tracebacks {found}", file=sys.stderr)
    entry["details"].append(runner.details)
    harness.reset()
    return failed


def main() -> None:
    sys.exit(run(sys.argv[1:]))
