"""``taskforge redis``: the embedded server on its own."""

from __future__ import annotations

import typer

from ..embedded import running_server_url, start_embedded, state_dir, stop_embedded
from ..errors import TaskForgeError
from ._common import console, fail


def register(app: typer.Typer) -> None:
    @app.command("redis")
    def redis_command(
        stop: bool = typer.Option(False, "--stop", help="stop the embedded server"),
        status: bool = typer.Option(False, "--status", help="say whether it runs"),
        port: int | None = typer.Option(None, "--port", help="port to use when starting"),
    ) -> None:
        """Start (or reuse) the embedded Redis/Valkey server with AOF, data in ./.taskforge."""
        if stop:
            stopped = stop_embedded()
            console.print("stopped the embedded server" if stopped else "no embedded server runs")
            return
        if status:
            url = running_server_url()
            console.print(f"running at {url}" if url else "not running")
            raise typer.Exit(0 if url else 1)
        try:
            server = start_embedded(port=port)
        except TaskForgeError as exc:
            raise fail(str(exc)) from exc
        console.print(
            f"embedded server at [bold]{server.url}[/] (pid {server.pid}, {server.binary}); data in"
            f" {state_dir()}. Later commands use it while TASKFORGE_REDIS_URL is unset."
        )
