"""``taskforge enqueue`` and ``taskforge job``."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from ..client import TaskForge
from ..errors import TaskForgeError
from ._common import console, fail, print_json, settings_from


def _parse_json(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(
            f"--{what} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}"
        ) from exc
    if not isinstance(value, kind):
        raise fail(f"--{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def register(app: typer.Typer) -> None:
    @app.command("enqueue")
    def enqueue_command(
        name: str = typer.Argument(..., help="task name (workers run only names they registered)"),
        args: str = typer.Option("[]", "--args", help="JSON array of positional arguments"),
        kwargs: str = typer.Option("{}", "--kwargs", help="JSON object of keyword arguments"),
        queue: str = typer.Option("default", "--queue"),
        delay: float | None = typer.Option(None, "--delay", help="seconds from now"),
        priority: str | None = typer.Option(None, "--priority", help="low|normal|high|critical|N"),
        key: str | None = typer.Option(None, "--key", help="idempotency key"),
        max_attempts: int | None = typer.Option(None, "--max-attempts", min=1),
        url: str | None = typer.Option(None, "--url", envvar="TASKFORGE_REDIS_URL"),
        prefix: str | None = typer.Option(None, "--prefix", envvar="TASKFORGE_PREFIX"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Enqueue a job by task name."""
        forge = TaskForge(settings=settings_from(url, prefix))
        try:
            job = forge.enqueue_with(
                name,
                _parse_json(args, "args", list),
                _parse_json(kwargs, "kwargs", dict),
                queue=queue,
                delay=delay,
                priority=priority,
                key=key,
                max_attempts=max_attempts,
            )
        except TaskForgeError as exc:
            raise fail(str(exc)) from exc
        out = {
            "id": job.id,
            "queue": job.queue,
            "status": job.initial_status,
            "created": job.created,
        }
        if as_json:
            print_json(out)
        else:
            verb = "enqueued" if job.created else "already exists (same key)"
            console.print(f"[green]{verb}[/] {job.id} on queue {job.queue} ({job.initial_status})")

    @app.command("job")
    def job_command(
        job_id: str = typer.Argument(...),
        queue: str | None = typer.Option(None, "--queue", help="skip the search over queues"),
        url: str | None = typer.Option(None, "--url", envvar="TASKFORGE_REDIS_URL"),
        prefix: str | None = typer.Option(None, "--prefix", envvar="TASKFORGE_PREFIX"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Show a job: status, attempts, timestamps, result or error."""
        forge = TaskForge(settings=settings_from(url, prefix))
        try:
            record = forge.job(job_id, queue).info()
        except TaskForgeError as exc:
            raise fail(str(exc)) from exc
        data = record.to_dict()
        if as_json:
            print_json(data)
            return
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold cyan")
        table.add_column()
        colors = {"completed": "green", "dead": "red", "canceled": "yellow", "active": "blue"}
        for name in ("id", "task", "queue", "status", "priority", "attempt", "max_attempts",
                     "redeliveries", "created_at", "due_at", "started_at", "finished_at",
                     "worker", "key", "progress"):  # fmt: skip
            value = data[name]
            if value is None:
                continue
            text = str(value)
            if name == "status":
                text = f"[{colors.get(text, 'white')}]{text}[/]"
            table.add_row(name, text)
        table.add_row("args", json.dumps(data["args"]))
        table.add_row("kwargs", json.dumps(data["kwargs"]))
        if record.status == "completed":
            table.add_row("result", json.dumps(data["result"]))
        if data["error"]:
            err = data["error"]
            table.add_row("error", f"[red]{err.get('type')}: {err.get('message')}[/]")
        console.print(table)
        if data["error"] and data["error"].get("traceback"):
            console.print(f"[dim]{data['error']['traceback'].rstrip()}[/]")
