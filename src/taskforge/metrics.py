"""Prometheus metrics of the whole fleet, in the text exposition format.

Everything is read from Redis at scrape time, so one scrape of any API process describes every
worker, producer and queue, and no worker needs an HTTP port of its own:

- per queue and task, counters of jobs enqueued, started, completed, failed, retried, dead and
  canceled, and histograms of run time and of wait time (enqueue to first start): the queue's
  metrics hash, which the scripts and every worker add into (``taskforge.worker.metrics``);
- per queue, the event counters the scripts keep in its ``stats`` hash (including requeued and
  redelivered), and gauges of depth per state, of the age of the oldest waiting job and of the
  paused flag;
- gauges of live workers and their slots, from the worker registry.

Needs ``prometheus-client`` (the ``web`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .inspector import STATES, QueueStats, WorkerInfo
from .worker.metrics import BUCKETS, COUNTERS, parse_field

if TYPE_CHECKING:
    from .client import TaskForge

__all__ = ["CONTENT_TYPE", "FleetSnapshot", "collect", "collect_async", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_COUNTER_HELP = {
    "enqueued": "Jobs enqueued (idempotent repeats not counted)",
    "started": "Job runs started by workers (each attempt and redelivery)",
    "completed": "Jobs that completed",
    "failed": "Runs that ended with an error (then retried, dead-lettered or canceled)",
    "retried": "Failed runs scheduled for another attempt",
    "dead": "Jobs dead-lettered (attempts used up, final errors, poison jobs)",
    "canceled": "Jobs canceled (waiting, or stopped while running)",
}


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    stats: list[QueueStats]
    tasks: dict[str, dict[str, int]]
    workers: list[WorkerInfo]


def collect(forge: TaskForge) -> FleetSnapshot:
    inspector = forge.inspector
    stats = inspector.stats()
    queues = [s.queue for s in stats]
    return FleetSnapshot(stats, inspector.task_metrics(queues), inspector.workers())


async def collect_async(forge: TaskForge) -> FleetSnapshot:
    inspector = forge.inspector
    stats = await inspector.stats_async()
    queues = [s.queue for s in stats]
    return FleetSnapshot(
        stats, await inspector.task_metrics_async(queues), await inspector.workers_async()
    )


@dataclass(slots=True)
class _Histogram:
    buckets: list[int]
    sum_us: int = 0


def _families(snapshot: FleetSnapshot) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    counters = {
        name: CounterMetricFamily(
            f"taskforge_jobs_{name}", _COUNTER_HELP[name], labels=["queue", "task"]
        )
        for name in COUNTERS
    }
    run = HistogramMetricFamily(
        "taskforge_job_run_seconds",
        "Run time of jobs, from start to the end of the run",
        labels=["queue", "task"],
    )
    wait = HistogramMetricFamily(
        "taskforge_job_wait_seconds",
        "Wait of jobs from enqueue to their first start (includes any requested delay)",
        labels=["queue", "task"],
    )
    histograms = {"run": run, "wait": wait}
    for queue in sorted(snapshot.tasks):
        values: dict[str, dict[str, int]] = {}
        hists: dict[tuple[str, str], _Histogram] = {}
        for name, value in snapshot.tasks[queue].items():
            parsed = parse_field(name)
            if parsed is None:
                continue
            series, task, index = parsed
            if series in COUNTERS:
                values.setdefault(task, {})[series] = value
                continue
            hist_name = series.split("_", 1)[0]
            hist = hists.get((hist_name, task))
            if hist is None:
                hist = hists[(hist_name, task)] = _Histogram([0] * (len(BUCKETS) + 1))
            if index is not None:
                hist.buckets[index] += value
            else:
                hist.sum_us += value
        for task in sorted(values):
            for name, value in values[task].items():
                counters[name].add_metric([queue, task], value)
        for (hist_name, task), hist in sorted(hists.items()):
            cumulative, running = [], 0
            for bound, count in zip((*BUCKETS, float("inf")), hist.buckets, strict=True):
                running += count
                cumulative.append((_le(bound), running))
            histograms[hist_name].add_metric([queue, task], cumulative, sum_value=hist.sum_us / 1e6)
    yield from counters.values()
    yield run
    yield wait

    events = CounterMetricFamily(
        "taskforge_queue_events",
        "Events per queue as counted by the scripts (fleet-wide, exact)",
        labels=["queue", "event"],
    )
    depth = GaugeMetricFamily("taskforge_queue_jobs", "Jobs per state", labels=["queue", "state"])
    oldest = GaugeMetricFamily(
        "taskforge_queue_oldest_waiting_seconds",
        "Age of the next job to run (0 when none waits)",
        labels=["queue"],
    )
    paused = GaugeMetricFamily("taskforge_queue_paused", "1 when paused", labels=["queue"])
    serving = GaugeMetricFamily(
        "taskforge_queue_workers", "Live workers serving the queue", labels=["queue"]
    )
    for stats in snapshot.stats:
        for event, value in sorted(stats.counters.items()):
            events.add_metric([stats.queue, event], value)
        for state in STATES:
            depth.add_metric([stats.queue, state], getattr(stats, state))
        oldest.add_metric([stats.queue], stats.oldest_age_seconds or 0.0)
        paused.add_metric([stats.queue], 1.0 if stats.paused else 0.0)
        serving.add_metric(
            [stats.queue], sum(1 for w in snapshot.workers if stats.queue in w.queues)
        )
    yield from (events, depth, oldest, paused, serving)

    workers = GaugeMetricFamily("taskforge_workers", "Live workers (heartbeat not expired)")
    workers.add_metric([], len(snapshot.workers))
    slots = GaugeMetricFamily(
        "taskforge_worker_slots", "Job slots of live workers", labels=["state"]
    )
    total = sum(w.concurrency for w in snapshot.workers)
    busy = sum(len(w.active_jobs) for w in snapshot.workers)
    slots.add_metric(["busy"], busy)
    slots.add_metric(["total"], total)
    yield from (workers, slots)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Collector:
    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        return _families(self.snapshot)


def render(snapshot: FleetSnapshot) -> bytes:
    """The snapshot in the Prometheus text format (a registry of its own: no global state)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    return generate_latest(registry)
