"""``taskforge demo``: the first thing to run."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._common import console, ensure_redis, settings_from


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        url: str | None = typer.Option(None, "--url", envvar="TASKFORGE_REDIS_URL"),
        embedded: bool = typer.Option(False, "--embedded", help="always use the embedded server"),
    ) -> None:
        """Run a realistic workload through a worker, live, and summarize it (under a minute)."""
        import logging

        from ..demo import run_demo

        # The progress bar and the summary tell the story; retry warnings would drown it.
        logging.getLogger("taskforge").setLevel(logging.CRITICAL)

        redis_url = ensure_redis(settings_from(url, None), embedded=embedded)
        console.print(f"[bold]TaskForge demo[/] on {redis_url}: 242 jobs on 4 queues")
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("jobs finished", total=None)

            def update(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            run = run_demo(redis_url, on_progress=update)
        table = Table(title=f"Demo summary ({run.elapsed:.1f} s)")
        for column in ("task", "jobs", "completed", "retries", "dead", "canceled", "avg wait ms",
                       "avg run ms"):  # fmt: skip
            table.add_column(column, justify="left" if column == "task" else "right")
        for row in run.summary:
            table.add_row(
                row["task"],
                str(row["jobs"]),
                f"[green]{row['completed']}[/]",
                str(row["retries"]),
                f"[red]{row['dead']}[/]" if row["dead"] else "0",
                f"[yellow]{row['canceled']}[/]" if row["canceled"] else "0",
                f"{row['wait_ms']:.1f}" if row["wait_ms"] is not None else "-",
                f"{row['run_ms']:.1f}" if row["run_ms"] is not None else "-",
            )
        console.print(table)
        console.print(
            "Dead jobs stay in the dead-letter queue: the declined payments used up 3 attempts,"
            " and `mystery_task` is a name no worker knows. Look one up with `taskforge job ID`."
        )
