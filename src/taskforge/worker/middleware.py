"""Hooks around each job run. Subclass ``Middleware`` and override what you need; hooks may be
plain or ``async`` methods. Register with ``forge.add_middleware(...)``."""

from __future__ import annotations

import inspect
from typing import Any

from .context import JobContext

__all__ = ["Middleware", "call_hook"]


class Middleware:
    def before(self, ctx: JobContext) -> Any:
        """Before the task function runs. Raising here fails the attempt."""

    def after(self, ctx: JobContext, result: Any) -> Any:
        """After the task returned, before its result is recorded."""

    def on_failure(self, ctx: JobContext, error: BaseException) -> Any:
        """After the task raised (including timeouts). Exceptions raised here are logged only."""


async def call_hook(hook: Any, *args: Any) -> None:
    outcome = hook(*args)
    if inspect.isawaitable(outcome):
        await outcome
