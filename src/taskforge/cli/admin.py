"""Operating TaskForge: ``serve`` (HTTP API, dashboard, metrics) and the admin commands
``queues``, ``workers``, ``dead list|show|requeue|purge``, ``pause``, ``resume``, ``purge`` and
``watch``. Each admin command takes ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.live import Live
from rich.table import Table

from ..client import TaskForge
from ..errors import TaskForgeError
from ..inspector import QueueStats
from ..job import JobRecord
from ._common import console, ensure_redis, err_console, fail, load_app, print_json, settings_from

T = TypeVar("T")

URL = typer.Option(None, "--url", envvar="TASKFORGE_REDIS_URL", help="Redis URL")
PREFIX = typer.Option(None, "--prefix", envvar="TASKFORGE_PREFIX", help="key prefix")
JSON = typer.Option(False, "--json", help="print JSON for scripts")
STATE_COLORS = {"queued": "cyan", "scheduled": "magenta", "active": "blue", "dead": "red",
                "completed": "green"}  # fmt: skip


def _forge(url: str | None, prefix: str | None) -> TaskForge:
    return TaskForge(settings=settings_from(url, prefix))


def _run(action: Callable[[], T]) -> T:
    """Run against Redis; TaskForge errors end the command with their message."""
    try:
        return action()
    except TaskForgeError as exc:
        raise fail(str(exc)) from exc


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return f"{value.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({_age(_ago(value))} ago)"


def _ago(value: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - value).total_seconds())


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal unless --yes; scripts (no terminal) are not asked."""
    if yes or not sys.stdin.isatty():
        return
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)


def _queue_rows(stats: list[QueueStats], last_minute: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "queue": s.queue,
            "queued": s.queued,
            "scheduled": s.scheduled,
            "active": s.active,
            "dead": s.dead,
            "completed": s.completed,
            "paused": s.paused,
            "oldest_waiting_seconds": s.oldest_age_seconds,
            "completed_last_minute": last_minute.get(s.queue, 0),
            "counters": s.counters,
        }
        for s in stats
    ]


def _queues_table(rows: list[dict[str, Any]], title: str, rates: dict[str, float] | None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("queue", style="bold")
    for state in ("queued", "scheduled", "active", "dead", "completed"):
        table.add_column(state, justify="right", style=STATE_COLORS[state])
    table.add_column("oldest", justify="right")
    table.add_column("/min", justify="right")
    if rates is not None:
        table.add_column("/s", justify="right")
    table.add_column("paused")
    for row in rows:
        cells = [row["queue"], *(str(row[s]) for s in STATE_COLORS)]
        cells += [_age(row["oldest_waiting_seconds"]), str(row["completed_last_minute"])]
        if rates is not None:
            rate = rates.get(row["queue"])
            cells.append("-" if rate is None else f"{rate:.1f}")
        cells.append("[yellow]paused[/]" if row["paused"] else "")
        table.add_row(*cells)
    if not rows:
        table.caption = "no queues yet: enqueue a job or start a worker"
    return table


def _dead_rows(records: list[JobRecord]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in records]


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "-"
    message = str(error.get("message", "")).splitlines()[0] if error.get("message") else ""
    return f"{error.get('type', 'Error')}: {message}"[:120]


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        app_path: str | None = typer.Argument(
            None, metavar="[APP]", help="module:forge, so that enqueue knows the tasks' queues"
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind"),
        port: int = typer.Option(8080, "--port", min=0, max=65535),
        token: str | None = typer.Option(
            None, "--token", envvar="TASKFORGE_API_TOKEN", help="bearer token API calls need"
        ),
        max_body_bytes: int = typer.Option(
            1024 * 1024, "--max-body-bytes", envvar="TASKFORGE_API_MAX_BODY_BYTES", min=1024
        ),
        allowed_host: Annotated[
            list[str] | None,
            typer.Option(
                "--allowed-host", help="accepted Host names (default on loopback: loopback names)"
            ),
        ] = None,
        url: str | None = URL,
        prefix: str | None = PREFIX,
        log_level: str = typer.Option("info", help="debug, info, warning, error"),
        access_log: bool = typer.Option(False, "--access-log", help="log every request"),
    ) -> None:
        """Serve the HTTP API (/v1, spec at /openapi.json), the dashboard (/) and /metrics."""
        from ..logs import configure_logging

        try:
            import uvicorn

            from ..web import WebSettings, create_app
            from ..web.app import is_loopback
        except ImportError as exc:
            raise fail(f"serve needs the web extra: pip install 'taskforge[web]' ({exc})") from exc
        if not is_loopback(host) and not token:
            raise fail(
                f"refusing to serve on {host}, which is not a loopback address, without a token:"
                " set TASKFORGE_API_TOKEN (or --token) to a long random secret, or bind"
                " 127.0.0.1",
                code=2,
            )
        configure_logging(log_level, "text")
        forge = load_app(app_path) if app_path else _forge(url, prefix)
        redis_url = ensure_redis(forge.settings)
        if redis_url != forge.url:
            forge.use_url(redis_url)
        hosts = tuple(allowed_host or ())
        if not hosts and is_loopback(host):
            hosts = ("127.0.0.1", "localhost", "::1", host)
        try:
            web = WebSettings(
                token=token or None, max_body_bytes=max_body_bytes, allowed_hosts=hosts
            )
        except TaskForgeError as exc:
            raise fail(str(exc), code=2) from exc
        shown = f"[{host}]" if ":" in host else host
        err_console.print(
            f"TaskForge on {forge.where}: dashboard http://{shown}:{port}/, API /v1 (spec"
            f" /openapi.json), metrics /metrics{'' if token else ' (no token: loopback only)'}"
        )
        asgi = create_app(forge, web)
        config = uvicorn.Config(
            asgi,
            host=host,
            port=port,
            log_level=log_level.lower(),
            access_log=access_log,
            timeout_graceful_shutdown=5,
        )

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # Event streams never end by themselves: tell them first, so shutdown can finish.
                asgi.state.closing.set()
                super().handle_exit(sig, frame)

        Server(config).run()

    @app.command("queues")
    def queues_command(
        url: str | None = URL, prefix: str | None = PREFIX, as_json: bool = JSON
    ) -> None:
        """Counts per state for every queue, oldest waiting job, throughput of the last minute."""
        forge = _forge(url, prefix)
        rows = _run(lambda: _queue_snapshot(forge))
        if as_json:
            print_json({"queues": rows})
            return
        console.print(_queues_table(rows, f"Queues on {forge.where}", None))

    @app.command("workers")
    def workers_command(
        url: str | None = URL, prefix: str | None = PREFIX, as_json: bool = JSON
    ) -> None:
        """Live workers: where they run, what they serve, what they are running now."""
        forge = _forge(url, prefix)
        workers = _run(forge.inspector.workers)
        if as_json:
            print_json({"workers": [w.to_dict() for w in workers]})
            return
        table = Table(title=f"Workers on {forge.where}", title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("worker", style="bold", overflow="fold")
        table.add_column("queues", overflow="fold")
        table.add_column("busy", justify="right")
        table.add_column("done", justify="right")
        table.add_column("failed", justify="right")
        table.add_column("up", justify="right")
        table.add_column("beat", justify="right")
        table.add_column("running now", overflow="fold")
        now = time.time()
        for w in workers:
            jobs = " ".join(w.active_jobs[:3])
            if len(w.active_jobs) > 3:
                jobs += f" (+{len(w.active_jobs) - 3})"
            table.add_row(
                w.id, ",".join(w.queues), f"{len(w.active_jobs)}/{w.concurrency}",
                str(w.processed), f"[red]{w.failed}[/]" if w.failed else "0",
                _age(now - w.started_at), f"{_age(now - w.last_beat)} ago", jobs or "-",
            )  # fmt: skip
        if not workers:
            table.caption = "no live workers (start one: taskforge worker myapp.tasks:forge)"
        console.print(table)

    dead = typer.Typer(
        help="The dead-letter queue: list, show, requeue, purge.", no_args_is_help=True
    )
    app.add_typer(dead, name="dead")

    @dead.command("list")
    def dead_list(
        queue: str | None = typer.Argument(None, help="one queue (default: all)"),
        task: str | None = typer.Option(None, "--task", help="only jobs of this task"),
        limit: int = typer.Option(20, "--limit", min=1, max=1000, help="per queue"),
        url: str | None = URL,
        prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:
        """Dead jobs, newest first, with the error that killed them."""
        forge = _forge(url, prefix)
        inspector = forge.inspector

        def load() -> list[JobRecord]:
            queues = [queue] if queue else inspector.queues()
            out: list[JobRecord] = []
            for q in queues:
                out += [
                    r for r in inspector.dead_letters(q, 0, limit) if task is None or r.task == task
                ]
            return out

        records = _run(load)
        if as_json:
            print_json({"jobs": _dead_rows(records)})
            return
        table = Table(
            title=f"Dead letters on {forge.where}", title_justify="left", box=box.SIMPLE_HEAD
        )
        for column in ("id", "queue", "task", "attempts", "died", "error"):
            table.add_column(column)
        for r in records:
            table.add_row(
                r.id, r.queue, r.task, f"{r.attempt}/{r.max_attempts}",
                f"{_age(_ago(r.finished_at))} ago" if r.finished_at else "-",
                f"[red]{_error_text(r.error)}[/]",
            )  # fmt: skip
        if not records:
            table.caption = "the dead-letter queue is empty"
        console.print(table)

    @dead.command("show")
    def dead_show(
        job_id: str = typer.Argument(...),
        queue: str | None = typer.Option(None, "--queue", help="skip the search over queues"),
        url: str | None = URL,
        prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:
        """One dead job in full: payload, attempts, timeline, error with traceback."""
        forge = _forge(url, prefix)
        record = _run(lambda: forge.job(job_id, queue).info())
        if as_json:
            print_json(record.to_dict())
            return
        if record.status != "dead":
            err_console.print(f"[yellow]note:[/] job {record.id} is {record.status}, not dead")
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold cyan")
        table.add_column()
        rows = [
            ("id", record.id), ("queue", record.queue), ("task", record.task),
            ("status", f"[red]{record.status}[/]" if record.status == "dead" else str(record.status)),
            ("attempts", f"{record.attempt}/{record.max_attempts}"),
            ("redeliveries", str(record.redeliveries)), ("created", _when(record.created_at)),
            ("last started", _when(record.started_at)), ("died", _when(record.finished_at)),
            ("worker", record.worker or "-"), ("args", json.dumps(record.args)),
            ("kwargs", json.dumps(record.kwargs)), ("error", f"[red]{_error_text(record.error)}[/]"),
        ]  # fmt: skip
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        trace = (record.error or {}).get("traceback")
        if trace:
            console.print(f"[dim]{str(trace).rstrip()}[/]")

    @dead.command("requeue")
    def dead_requeue(
        job_ids: Annotated[list[str] | None, typer.Argument(help="ids to requeue")] = None,
        queue: str | None = typer.Option(None, "--queue"),
        task: str | None = typer.Option(None, "--task"),
        all_: bool = typer.Option(False, "--all", help="every dead job (of --queue/--task)"),
        url: str | None = URL,
        prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:
        """Give dead jobs a fresh start (attempts reset): the given ids, or --all."""
        if not job_ids and not all_:
            raise fail("name the job ids to requeue, or pass --all (with --queue/--task to narrow)")
        forge = _forge(url, prefix)
        moved = _run(lambda: forge.inspector.requeue_dead_where(queue, task, job_ids or None))
        if as_json:
            print_json({"requeued": moved})
        else:
            console.print(f"[green]requeued {moved} job(s)[/]")

    @dead.command("purge")
    def dead_purge(
        job_ids: Annotated[list[str] | None, typer.Argument(help="ids to delete")] = None,
        queue: str | None = typer.Option(None, "--queue"),
        task: str | None = typer.Option(None, "--task"),
        all_: bool = typer.Option(False, "--all", help="every dead job (of --queue/--task)"),
        yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
        url: str | None = URL,
        prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:
        """Delete dead jobs for good: the given ids, or --all."""
        if not job_ids and not all_:
            raise fail("name the job ids to delete, or pass --all (with --queue/--task to narrow)")
        if not job_ids:
            scope = " ".join(
                x for x in (queue and f"of queue {queue}", task and f"of task {task}") if x
            )
            _confirm(f"delete every dead job{' ' + scope if scope else ''}?", yes)
        forge = _forge(url, prefix)
        deleted = _run(lambda: forge.inspector.purge_dead_where(queue, task, job_ids or None))
        if as_json:
            print_json({"deleted": deleted})
        else:
            console.print(f"deleted {deleted} dead job(s)")

    def _steer(
        queue: str, paused: bool, url: str | None, prefix: str | None, as_json: bool
    ) -> None:
        forge = _forge(url, prefix)

        def act() -> bool:
            known = queue in forge.inspector.queues()
            (forge.inspector.pause if paused else forge.inspector.resume)(queue)
            return known

        known = _run(act)
        if as_json:
            print_json({"queue": queue, "paused": paused})
            return
        console.print(f"queue {queue} {'[yellow]paused[/]' if paused else '[green]resumed[/]'}")
        if not known:
            err_console.print(f"[yellow]note:[/] no job or worker has used queue {queue!r} yet")

    @app.command("pause")
    def pause_command(
        queue: str = typer.Argument(...), url: str | None = URL, prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:  # fmt: skip
        """Stop handing out the queue's jobs; enqueueing goes on, running jobs finish."""
        _steer(queue, True, url, prefix, as_json)

    @app.command("resume")
    def resume_command(
        queue: str = typer.Argument(...), url: str | None = URL, prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:  # fmt: skip
        """Resume a paused queue."""
        _steer(queue, False, url, prefix, as_json)

    @app.command("purge")
    def purge_command(
        queue: str = typer.Argument(...),
        state: str = typer.Option(..., "--state", help="queued, scheduled, dead or completed"),
        yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
        url: str | None = URL,
        prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:
        """Delete a queue's jobs in one state, records included (active jobs: cancel them)."""
        _confirm(f"delete every {state} job of queue {queue}?", yes)
        forge = _forge(url, prefix)
        deleted = _run(lambda: forge.inspector.purge(queue, state))
        if as_json:
            print_json({"queue": queue, "state": state, "deleted": deleted})
        else:
            console.print(f"deleted {deleted} {state} job(s) of queue {queue}")

    @app.command("watch")
    def watch_command(
        interval: float = typer.Option(2.0, "--interval", "-n", min=0.1, help="seconds"),
        count: int = typer.Option(0, "--count", min=0, help="stop after N refreshes (0: never)"),
        url: str | None = URL,
        prefix: str | None = PREFIX,
        as_json: bool = JSON,
    ) -> None:
        """A live table of depths and throughput; --json prints one line per refresh."""
        forge = _forge(url, prefix)
        previous: dict[str, tuple[float, int]] = {}

        def sample() -> tuple[list[dict[str, Any]], dict[str, float]]:
            rows = _run(lambda: _queue_snapshot(forge))
            now = time.monotonic()
            rates: dict[str, float] = {}
            for row in rows:
                done = int(row["counters"].get("completed", 0))
                before = previous.get(row["queue"])
                if before is not None and now > before[0]:
                    rates[row["queue"]] = max(0, done - before[1]) / (now - before[0])
                previous[row["queue"]] = (now, done)
                row["completed_per_second"] = rates.get(row["queue"])
            return rows, rates

        def title() -> str:
            return f"TaskForge on {forge.where}, every {interval:g} s ({datetime.now():%H:%M:%S})"

        refreshes = 0
        try:
            if as_json:
                while True:
                    rows, _ = sample()
                    sys.stdout.write(json.dumps({"time": time.time(), "queues": rows}) + "\n")
                    sys.stdout.flush()
                    refreshes += 1
                    if count and refreshes >= count:
                        return
                    time.sleep(interval)
            rows, rates = sample()
            with Live(
                _queues_table(rows, title(), rates), console=console, auto_refresh=False
            ) as live:
                while True:
                    refreshes += 1
                    if count and refreshes >= count:
                        return
                    time.sleep(interval)
                    rows, rates = sample()
                    live.update(_queues_table(rows, title(), rates), refresh=True)
        except KeyboardInterrupt:
            return


def _queue_snapshot(forge: TaskForge) -> list[dict[str, Any]]:
    inspector = forge.inspector
    stats = inspector.stats()
    names = [s.queue for s in stats]
    last_minute = {t.queue: t.completed[0] for t in inspector.throughput(names)} if names else {}
    return _queue_rows(stats, last_minute)
