"""The ``taskforge`` command line. It uses only the public Python API."""

from __future__ import annotations

import typer

from . import demo, jobs, server, worker

app = typer.Typer(
    name="taskforge",
    help="TaskForge: a distributed task queue on Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
worker.register(app)
jobs.register(app)
server.register(app)
demo.register(app)

try:  # the operations surface (admin commands, HTTP API) registers itself when present
    from . import admin

    admin.register(app)
except ImportError:
    pass


def main() -> None:
    app()
