"""The metrics reported, their units and which direction is better; medians and ranges."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

DASH = "\u2013"  # en dash, for ranges and missing values
TIMES = "\u00d7"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 0
    # Lateness can be negative (a job run before it was due, e.g. RQ's whole-second due
    # times): the best is then the one closest to zero, not the most negative.
    closest_to_zero: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("enqueue_single", "enqueue, one call at a time", "jobs/s", True),
    Metric("enqueue_bulk", "enqueue, bulk", "jobs/s", True),
    Metric("drain_default", "drain, 1 process, default", "jobs/s", True),
    Metric("drain_tuned", "drain, 1 process, tuned", "jobs/s", True),
    Metric("drain_processes", "drain, 1 process per core, tuned", "jobs/s", True),
    Metric("end_to_end", "end to end (producer + worker)", "jobs/s", True),
    Metric("pickup_p50", "pickup latency p50", "ms", False, 2),
    Metric("pickup_p99", "pickup latency p99", "ms", False, 2),
    Metric("pickup_max", "pickup latency max", "ms", False, 2),
    Metric("delay_p50", "delayed-job lateness p50", "ms", False, 1, closest_to_zero=True),
    Metric("delay_p99", "delayed-job lateness p99", "ms", False, 1, closest_to_zero=True),
    Metric("memory_per_job", "Redis memory per queued job", "bytes", False),
    Metric("enqueue_commands_per_job", "Redis commands per enqueue", "cmds", False, 1),
    Metric("worker_commands_per_job", "worker Redis commands per job", "cmds", False, 1),
    Metric("cpu_per_10k", "worker CPU per 10,000 jobs", "s", False, 2),
    Metric("idle_commands_per_s", "idle worker load on Redis", "cmds/s", False, 1),
    Metric("idle_sent_per_s", "idle worker commands sent", "cmds/s", False, 1),
)
BY_KEY = {m.key: m for m in METRICS}


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """metric -> {median, min, max, n} over the runs that measured it."""
    out: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values = [run[metric.key] for run in runs if metric.key in run]
        if values:
            out[metric.key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    return out


def best_peer(
    summaries: dict[str, dict[str, dict[str, float]]], metric: Metric, exclude: str
) -> tuple[str, float] | None:
    """The peer with the best median for a metric (TaskForge itself excluded)."""
    candidates = [
        (name, s[metric.key]["median"])
        for name, s in summaries.items()
        if name != exclude and metric.key in s
    ]
    if not candidates:
        return None
    if metric.closest_to_zero:
        return min(candidates, key=lambda item: abs(item[1]))
    pick = max if metric.higher_is_better else min
    return pick(candidates, key=lambda item: item[1])


def ratio(ours: float, best: float, metric: Metric) -> float | None:
    """TaskForge ÷ best peer (same direction as the metric itself)."""
    if metric.closest_to_zero:
        ours, best = abs(ours), abs(best)
    if best == 0:
        return None
    return ours / best


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return DASH
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.{min(digits, 1)}f}"
    return f"{value:.{max(digits, 1)}f}"


def fmt_range(stats: dict[str, float] | None, digits: int) -> str:
    if not stats:
        return DASH
    text = fmt(stats["median"], digits)
    if stats["n"] > 1:
        text += f" ({fmt(stats['min'], digits)}{DASH}{fmt(stats['max'], digits)})"
    return text
