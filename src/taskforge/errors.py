"""The one exception tree of TaskForge. Every message says what went wrong and what to do."""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "ConfigError",
    "DuplicateTaskError",
    "DurabilityError",
    "JobCanceled",
    "JobDead",
    "JobFailed",
    "JobNotFound",
    "LeaseLost",
    "PayloadTooLarge",
    "RedisUnavailable",
    "Retry",
    "SerializationError",
    "ServerNotSupported",
    "TaskForgeError",
    "TimeoutError",
    "UnknownTask",
    "ValidationError",
]


class TaskForgeError(Exception):
    """Base class of every error TaskForge raises."""


class ConfigError(TaskForgeError):
    """A setting is missing or malformed."""


class ValidationError(TaskForgeError, ValueError):
    """An argument (queue name, priority, delay, ...) is not acceptable."""


class SerializationError(ValidationError):
    """A payload or result cannot be encoded as JSON (or decoded from the wire)."""


class PayloadTooLarge(ValidationError):
    """An encoded payload is larger than the configured limit."""


class DuplicateTaskError(TaskForgeError):
    """Two tasks were registered under one name."""


class UnknownTask(TaskForgeError):
    """A task name has no registered function in this process."""


class JobNotFound(TaskForgeError, LookupError):
    """No job with that id exists (never enqueued, or its retention expired)."""


class RedisUnavailable(TaskForgeError, ConnectionError):
    """Redis could not be reached after retrying."""


class DurabilityError(TaskForgeError):
    """An enqueue was written, but not confirmed by as many replicas (WAIT) or AOF fsyncs
    (WAITAOF) as the settings require before the timeout. ``jobs`` are the handles of what was
    written: enqueueing again with the same ``job_id`` is safe and creates nothing twice."""

    def __init__(self, message: str, jobs: list[Any], replicas: int, local_fsynced: bool) -> None:
        super().__init__(message)
        self.jobs = jobs
        self.replicas = replicas
        self.local_fsynced = local_fsynced


class ServerNotSupported(TaskForgeError):
    """The Redis/Valkey server is older than TaskForge supports."""


class LeaseLost(TaskForgeError):
    """This worker no longer holds the job's lease; another delivery owns it now."""


class TimeoutError(TaskForgeError, builtins.TimeoutError):
    """Waiting for a job, or running one, took longer than allowed."""


class Retry(TaskForgeError):
    """Raise from a task to ask for a retry, optionally after `delay` seconds."""

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class JobFailed(TaskForgeError):
    """The job ended without a result. Carries the remote error's type, message and traceback."""

    def __init__(
        self,
        job_id: str,
        status: str,
        error_type: str,
        error_message: str,
        traceback: str = "",
    ) -> None:
        self.job_id = job_id
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        super().__init__(f"job {job_id} is {status}: {error_type}: {error_message}")

    @classmethod
    def from_error(cls, job_id: str, status: str, error: dict[str, Any] | None) -> JobFailed:
        error = error or {}
        return cls(
            job_id,
            status,
            str(error.get("type", "Error")),
            str(error.get("message", "")),
            str(error.get("traceback", "")),
        )


class JobDead(JobFailed):
    """The job used up its attempts (or was dead-lettered for another reason)."""


class JobCanceled(JobFailed):
    """The job was canceled before it could finish."""
