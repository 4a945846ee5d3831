"""``taskforge worker``."""

from __future__ import annotations

import os
import sys

import typer

from ..errors import TaskForgeError, ValidationError
from ..logs import configure_logging
from ._common import ensure_redis, fail, load_app


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker_command(
        app_path: str = typer.Argument(..., metavar="APP", help="module:forge to load tasks from"),
        queues: str = typer.Option(
            "",
            "--queues",
            "-q",
            help="comma-separated, highest priority first (default: the"
            " queues of the registered tasks)",
        ),
        concurrency: int = typer.Option(10, "--concurrency", "-c", min=1, max=10000),
        processes: int = typer.Option(1, "--processes", "-p", min=1, max=256),
        grace: float = typer.Option(25.0, help="seconds in-flight jobs may finish on SIGTERM"),
        log_level: str = typer.Option("info", help="debug, info, warning, error"),
        log_format: str = typer.Option("text", help="text or json (one object per line)"),
    ) -> None:
        """Run jobs: block on Redis, run tasks, retry, dead-letter; SIGTERM stops gracefully."""
        configure_logging(log_level, log_format)
        forge = load_app(app_path)
        url = ensure_redis(forge.settings)
        if url != forge.url:
            forge.use_url(url)
        if processes > 1:
            from ..worker.supervisor import Supervisor

            child = ["worker", app_path, "--concurrency", str(concurrency), "--processes", "1"]
            child += ["--grace", str(grace), "--log-level", log_level, "--log-format", log_format]
            if queues:
                child += ["--queues", queues]
            env = dict(os.environ, TASKFORGE_REDIS_URL=url)
            raise typer.Exit(Supervisor(child, processes, env).run())
        from ..worker import Worker, WorkerConfig

        try:
            chosen, weights = _parse_queues(queues)
            config = WorkerConfig(
                queues=tuple(chosen or forge.registry.queues() or ["default"]),
                concurrency=concurrency,
                grace_seconds=grace,
                weights=weights,
            )
            Worker(forge, config=config).run()
        except TaskForgeError as exc:
            raise fail(str(exc)) from exc
        except KeyboardInterrupt:
            sys.exit(130)


def _parse_queues(text: str) -> tuple[list[str], tuple[int, ...] | None]:
    names: list[str] = []
    weights: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        if weight and not weight.isdigit():
            name, weight = item, ""  # a colon inside a queue name, not a weight
        names.append(name)
        weights.append(int(weight) if weight else 0)
    if any(weights):
        if not all(weights):
            raise ValidationError("weight every queue or none, e.g. --queues emails:3,default:1")
        return names, tuple(weights)
    return names, None
