"""The worker runtime: asyncio core, plain ``def`` tasks on threads."""

from .context import JobContext, current_job
from .middleware import Middleware
from .runtime import Worker
from .state import WorkerConfig

__all__ = ["JobContext", "Middleware", "Worker", "WorkerConfig", "current_job"]
