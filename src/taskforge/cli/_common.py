"""What the commands share: loading the app, finding (or starting) Redis, printing."""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from ..client import TaskForge
from ..config import DEFAULT_REDIS_URL, Settings
from ..errors import ConfigError, TaskForgeError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def load_app(path: str) -> TaskForge:
    """Import ``module:attribute`` (or ``module``, taking its ``forge``) from the current dir."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(
            f"cannot import {module_name!r}: {exc}. Run from the directory that contains it,"
            " or give the full dotted path (package.module:forge)"
        ) from exc
    obj = getattr(module, attribute or "forge", None)
    if not isinstance(obj, TaskForge):
        raise fail(f"{path!r} is not a TaskForge app: name the object, e.g. {module_name}:forge")
    return obj


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 6379), 0.5):
            return True
    except OSError:
        return False


def ensure_redis(settings: Settings, *, embedded: bool = False, quiet: bool = False) -> str:
    """The URL to use: configured, else a running embedded server, else localhost:6379 if it
    answers, else a freshly started embedded server (and say so)."""
    from ..embedded import running_server_url, start_embedded

    if settings.redis_url and not embedded:
        return settings.redis_url
    running = running_server_url()
    if running:
        return running
    if not embedded and _answers(DEFAULT_REDIS_URL):
        return DEFAULT_REDIS_URL
    try:
        server = start_embedded()
    except TaskForgeError as exc:
        raise fail(str(exc)) from exc
    if not quiet:
        err_console.print(
            f"[cyan]No Redis configured: started an embedded server at {server.url}[/]"
            f" ({os.path.basename(server.binary)}, AOF on, data in {server.data_dir})."
            " Stop it with `taskforge redis --stop`."
        )
    os.environ["TASKFORGE_REDIS_URL"] = server.url
    return server.url


def settings_from(url: str | None, prefix: str | None) -> Settings:
    try:
        return Settings.from_env(redis_url=url, prefix=prefix)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
