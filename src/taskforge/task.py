"""Tasks: the registry of names to functions, and typed task handles for enqueueing."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .errors import DuplicateTaskError, UnknownTask, ValidationError
from .redis.keys import validate_queue_name, validate_task_name
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .client import Job, TaskForge

__all__ = ["EnqueueItem", "Task", "TaskOptions", "TaskRegistry"]

P = ParamSpec("P")
R = TypeVar("R")

EnqueueItem = tuple[Sequence[Any], Mapping[str, Any]] | Sequence[Any]
"""One job of a batch: ``(args, kwargs)``, or just an args tuple."""


@dataclass(frozen=True, slots=True)
class TaskOptions:
    queue: str = "default"
    max_attempts: int | None = None
    timeout: float | None = None
    priority: str | int | None = None
    retry: RetryPolicy | None = None
    no_retry_on: tuple[type[BaseException], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        validate_queue_name(self.queue)
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValidationError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValidationError(f"timeout must be positive seconds, got {self.timeout}")


class Task(Generic[P, R]):
    """A registered function. Call it to run it here; ``enqueue`` it to run it on a worker."""

    def __init__(
        self, forge: TaskForge, name: str, fn: Callable[..., Any], options: TaskOptions
    ) -> None:
        self.forge = forge
        self.name = validate_task_name(name)
        self.fn = fn
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        return self.forge.enqueue_with(self.name, args, kwargs, task=self)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        return await self.forge.enqueue_with_async(self.name, args, kwargs, task=self)

    def enqueue_with(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        priority: str | int | None = None,
        key: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
    ) -> Job[R]:
        return self.forge.enqueue_with(
            self.name,
            args,
            kwargs,
            delay=delay,
            at=at,
            priority=priority,
            key=key,
            queue=queue,
            max_attempts=max_attempts,
            timeout=timeout,
            job_id=job_id,
            task=self,
        )

    async def enqueue_with_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        priority: str | int | None = None,
        key: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
    ) -> Job[R]:
        return await self.forge.enqueue_with_async(
            self.name,
            args,
            kwargs,
            delay=delay,
            at=at,
            priority=priority,
            key=key,
            queue=queue,
            max_attempts=max_attempts,
            timeout=timeout,
            job_id=job_id,
            task=self,
        )

    def enqueue_many(self, items: Iterable[EnqueueItem], **options: Any) -> list[Job[R]]:
        return self.forge.enqueue_many(self.name, items, task=self, **options)

    async def enqueue_many_async(
        self, items: Iterable[EnqueueItem], **options: Any
    ) -> list[Job[R]]:
        return await self.forge.enqueue_many_async(self.name, items, task=self, **options)


class TaskRegistry:
    """Names to tasks. A worker runs only names registered here."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def add(self, task: Task[Any, Any]) -> None:
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise DuplicateTaskError(
                f"a task named {task.name!r} is already registered ({existing.fn!r}); pass"
                " name=... to register another function under a different name"
            )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(
                f"unknown task {name!r}: no function is registered under that name in this"
                " worker. Import the module that defines it, or check the name"
            ) from None

    def find(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def queues(self) -> list[str]:
        return sorted({t.options.queue for t in self._tasks.values()})

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks


def split_item(item: EnqueueItem) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """Accept ``(args, kwargs)`` pairs or bare args tuples in ``enqueue_many``."""
    if (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], tuple | list)
        and isinstance(item[1], Mapping)
    ):
        return item[0], item[1]
    if isinstance(item, tuple | list):
        return item, {}
    raise ValidationError(
        f"enqueue_many items must be (args, kwargs) pairs or args tuples, got {type(item).__name__}"
    )


AnyCallable = Callable[..., Any] | Callable[..., Awaitable[Any]]
