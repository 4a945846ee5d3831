"""TaskForge: a distributed task queue for Python on Redis."""

__version__ = "0.1.0"

from .client import Job, TaskForge
from .config import Settings
from .errors import (
    ConfigError,
    DurabilityError,
    JobCanceled,
    JobDead,
    JobFailed,
    JobNotFound,
    PayloadTooLarge,
    RedisUnavailable,
    Retry,
    SerializationError,
    TaskForgeError,
    UnknownTask,
    ValidationError,
)
from .inspector import Inspector, QueueStats, WorkerInfo
from .job import JobRecord, JobStatus
from .retry import RetryPolicy
from .task import Task
from .worker import JobContext, Middleware, Worker, WorkerConfig, current_job

__all__ = [
    "ConfigError",
    "DurabilityError",
    "Inspector",
    "Job",
    "JobCanceled",
    "JobContext",
    "JobDead",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "Middleware",
    "PayloadTooLarge",
    "QueueStats",
    "RedisUnavailable",
    "Retry",
    "RetryPolicy",
    "SerializationError",
    "Settings",
    "Task",
    "TaskForge",
    "TaskForgeError",
    "UnknownTask",
    "ValidationError",
    "Worker",
    "WorkerConfig",
    "WorkerInfo",
    "__version__",
    "current_job",
]
