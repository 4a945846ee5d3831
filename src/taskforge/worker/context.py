"""What a running task can know about itself: ``taskforge.current_job()``."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import TaskForgeError

__all__ = ["JobContext", "current_job"]

_current: ContextVar[JobContext | None] = ContextVar("taskforge_job", default=None)


@dataclass(eq=False, slots=True)
class JobContext:
    """Per-run facts and helpers, available to the task through ``current_job()``."""

    job_id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    token: str
    _report: Any = None  # callable(value) -> None, set by the worker
    _stop_requested: bool = False
    _logger: logging.LoggerAdapter[logging.Logger] | None = None
    stop_reason: str | None = None
    """Why the run was asked to stop: 'canceled', 'lease-lost', 'shutdown' or 'timeout'."""

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry job_id, task and attempt (made on first use: most
        jobs never log, and this is the hot path)."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                logging.getLogger(f"taskforge.task.{self.task}"),
                {"job_id": self.job_id, "task": self.task, "attempt": self.attempt},
            )
        return self._logger

    @property
    def cancel_requested(self) -> bool:
        """True once someone canceled the job. Long sync tasks should check it and return."""
        return self._stop_requested

    def set_progress(self, value: Any) -> None:
        """Report progress (any JSON value, e.g. a fraction or {"done": 3, "total": 10})."""
        if self._report is not None:
            self._report(value)

    def _request_stop(self, reason: str) -> None:
        # A plain attribute is enough: threads only read it, and a bool store is atomic.
        self.stop_reason = self.stop_reason or reason
        self._stop_requested = True


def current_job() -> JobContext:
    """The context of the job running in this task or thread."""
    ctx = _current.get()
    if ctx is None:
        raise TaskForgeError("current_job() was called outside a job run by a TaskForge worker")
    return ctx


def bind(ctx: JobContext) -> Any:
    return _current.set(ctx)


def unbind(token: Any) -> None:
    _current.reset(token)
