"""The results: a Rich table on the terminal, JSON, a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .metrics import DASH, METRICS, TIMES, Metric, best_peer, fmt, fmt_range, ratio

OURS = "taskforge"
RATIO_NOTE = (
    "ratio = TaskForge ÷ best peer (median of runs). Throughput (jobs/s): higher is better, "
    "so a ratio above 1 means TaskForge is ahead. Latency, lateness, commands, memory and CPU: "
    "lower is better, so a ratio below 1 means TaskForge is ahead. Delayed-job lateness is "
    "ranked by its distance from the due time: a negative value is a job run early."
)


def _labels(results: dict[str, Any]) -> dict[str, str]:
    return {name: s["label"] for name, s in results["systems"].items()}


def _summaries(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    return {name: s["summary"] for name, s in results["systems"].items() if s["summary"]}


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: TaskForge, the best peer, the ratio."""
    summaries = _summaries(results)
    labels = _labels(results)
    rows = []
    for metric in METRICS:
        ours = summaries.get(OURS, {}).get(metric.key)
        best = best_peer(summaries, metric, OURS)
        r = ratio(ours["median"], best[1], metric) if ours and best else None
        rows.append(
            {
                "metric": metric,
                "ours": ours,
                "best_name": labels.get(best[0], best[0]) if best else None,
                "best": summaries[best[0]][metric.key] if best else None,
                "ratio": r,
                "ahead": None if r is None else (r >= 1 if metric.higher_is_better else r <= 1),
            }
        )
    return rows


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, shutil.get_terminal_size((160, 40)).columns))
    summaries = _summaries(results)
    labels = _labels(results)
    names = [n for n in results["systems"] if n in summaries]

    table = Table(title=f"All systems: median (min{DASH}max) of the runs", show_lines=False)
    table.add_column("metric", no_wrap=True)
    table.add_column("unit")
    for name in names:
        table.add_column(labels[name], justify="right")
    for metric in METRICS:
        cells = []
        best = best_peer(summaries, metric, "")
        for name in names:
            text = fmt(summaries[name].get(metric.key, {}).get("median"), metric.digits)
            if best and best[0] == name:
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        table.add_row(metric.label, _direction(metric), *cells)
    console.print(table)

    comp = Table(title="TaskForge against the best peer", caption=RATIO_NOTE)
    for col in ("metric", "better", "TaskForge", "best peer", "", "ratio"):
        comp.add_column(col, justify="left" if col in ("metric", "better", "") else "right")
    for row in comparison_rows(results):
        metric = row["metric"]
        ratio_text = DASH if row["ratio"] is None else f"{row['ratio']:.2f}{TIMES}"
        if row["ahead"] is not None:
            ratio_text = f"[{'green' if row['ahead'] else 'red'}]{ratio_text}[/]"
        comp.add_row(
            metric.label,
            _direction(metric),
            fmt_range(row["ours"], metric.digits),
            fmt_range(row["best"], metric.digits),
            row["best_name"] or "",
            ratio_text,
        )
    console.print(comp)

    ceilings = results.get("ceilings", {}).get("summary", {})
    if ceilings:
        ct = Table(title="Ceilings on this machine (median of runs)")
        ct.add_column("measurement")
        ct.add_column("ops/s (or ms)", justify="right")
        for key, stats in ceilings.items():
            ct.add_row(key, fmt_range(stats, _ceiling_decimals(key)))
        console.print(ct)


def _ceiling_decimals(name: str) -> int:
    return 2 if ", ms" in name else 0


def _load(meta: dict[str, Any], when: str) -> str:
    values = meta.get(f"load_average_{when}") or []
    return "/".join(f"{v:.1f}" for v in values) or "?"


def _direction(metric: Metric) -> str:
    return f"{metric.unit} {'↑' if metric.higher_is_better else '↓'}"


def markdown(results: dict[str, Any]) -> str:
    summaries = _summaries(results)
    labels = _labels(results)
    names = [n for n in results["systems"] if n in summaries]
    meta = results["meta"]
    lines = [
        f"Run {meta['started']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"Redis {meta['redis_version']}, Python {meta['python']}; {meta['repeats']} interleaved "
        f"runs, up to {meta['settings']['jobs']:,} jobs per phase, "
        f"{meta['settings']['phase_seconds']:g} s per phase at most"
        + (" (smoke run: too small to quote)." if meta["smoke"] else ".")
        + f" Load average (1, 5, 15 min) at the start {_load(meta, 'start')}, at the end "
        + f"{_load(meta, 'end')}: other work shared the machine when these are well above 0.",
        "",
        "### TaskForge against the best peer",
        "",
        "| metric | better | TaskForge | best peer | | ratio |",
        "|---|---|---:|---:|---|---:|",
    ]
    for row in comparison_rows(results):
        metric = row["metric"]
        r = DASH if row["ratio"] is None else f"{row['ratio']:.2f}{TIMES}"
        lines.append(
            f"| {metric.label} | {_direction(metric)} | {fmt_range(row['ours'], metric.digits)} "
            f"| {fmt_range(row['best'], metric.digits)} | {row['best_name'] or ''} | {r} |"
        )
    lines += ["", RATIO_NOTE, "", "### All systems (medians)", ""]
    lines.append("| metric | unit | " + " | ".join(labels[n] for n in names) + " |")
    lines.append("|---|---|" + "---:|" * len(names))
    for metric in METRICS:
        cells = [fmt(summaries[n].get(metric.key, {}).get("median"), metric.digits) for n in names]
        lines.append(f"| {metric.label} | {_direction(metric)} | " + " | ".join(cells) + " |")
    lines += ["", "### Versions", ""]
    for name in names:
        versions = results["systems"][name].get("versions", {})
        text = ", ".join(f"{k} {v}" for k, v in versions.items())
        lines.append(f"- {labels[name]}: {text}")
    ceilings = results.get("ceilings", {}).get("summary", {})
    if ceilings:
        lines += ["", "### Ceilings (ops/s, or ms where named; median of runs)", ""]
        lines += ["| measurement | value |", "|---|---:|"]
        lines += [f"| {k} | {fmt_range(v, _ceiling_decimals(k))} |" for k, v in ceilings.items()]
    errors = [
        f"- {labels[n]}: {e}" for n, s in results["systems"].items() for e in s.get("errors", [])
    ]
    if errors:
        lines += ["", "### Errors", "", *errors]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = _summaries(results)
    labels = _labels(results)
    names = [n for n in results["systems"] if n in summaries]
    cols = 4
    rows = (len(METRICS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.6, rows * 3.4))
    for ax, metric in zip(axes.flat, METRICS, strict=False):
        shown = [n for n in names if metric.key in summaries[n]]
        med = [summaries[n][metric.key]["median"] for n in shown]
        lo = [med[i] - summaries[n][metric.key]["min"] for i, n in enumerate(shown)]
        hi = [summaries[n][metric.key]["max"] - med[i] for i, n in enumerate(shown)]
        colors = ["#d62728" if n == OURS else "#7f7f7f" for n in shown]
        ax.bar(range(len(shown)), med, yerr=[lo, hi], color=colors, capsize=2)
        ax.set_xticks(range(len(shown)), [labels[n] for n in shown], rotation=45, ha="right")
        ax.set_title(
            f"{metric.label}\n({metric.unit}, {'higher' if metric.higher_is_better else 'lower'} is better)",
            fontsize=9,
        )
        ax.tick_params(labelsize=8)
        if med and min(med) > 0 and max(med) / max(min(med), 1e-9) > 50:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(METRICS) :]:
        ax.axis("off")
    meta = results["meta"]
    fig.suptitle(
        f"TaskForge (red) and peers on one private Redis {meta['redis_version']}, "
        f"{meta['machine']['cores']} cores, {meta['started']}"
        + (" — smoke run" if meta["smoke"] else ""),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["started"].replace(":", "").replace("-", "")
    paths = {
        "json": out_dir / f"{stamp}.json",
        "latest_json": out_dir / "latest.json",
        "md": out_dir / "latest.md",
        "png": out_dir / "latest.png",
    }
    text = json.dumps(results, indent=1, default=str)
    paths["json"].write_text(text)
    paths["latest_json"].write_text(text)
    paths["md"].write_text(markdown(results))
    chart(results, paths["png"])
    return paths


DOC_START = "<!-- benchmark-results:start -->"
DOC_END = "<!-- benchmark-results:end -->"


def update_docs(results: dict[str, Any], doc: Path) -> bool:
    """Replaces the results section of docs/benchmarks.md with this run's tables."""
    if not doc.exists():
        return False
    text = doc.read_text()
    if DOC_START not in text or DOC_END not in text:
        return False
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    doc.write_text(f"{head}{DOC_START}\n{markdown(results)}{DOC_END}{tail}")
    return True
