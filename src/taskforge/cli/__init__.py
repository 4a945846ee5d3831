"""The ``taskforge`` command line. It uses only the public Python API."""

from __future__ import annotations

import importlib
import importlib.util

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

# The operations surface (admin commands, HTTP API) registers itself when present.
if importlib.util.find_spec(f"{__name__}.admin") is not None:
    importlib.import_module(".admin", __name__).register(app)


def main() -> None:
    app()
