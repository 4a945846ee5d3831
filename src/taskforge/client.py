"""The producer side: the ``TaskForge`` app object and ``Job`` handles.

Every public operation is written once as a flow (a generator of Redis operations) and exposed
twice: a sync method and an ``_async`` twin that drive the same flow.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .config import DEFAULT_REDIS_URL, Settings
from .errors import (
    DurabilityError,
    JobNotFound,
    ValidationError,
)
from .handle import Job
from .job import JobSpec, new_job_id, parse_priority
from .redis import operations as ops
from .redis.connection import BLOCK_SLICE_SECONDS, SameConnection, connect_async, connect_sync
from .redis.driver import AsyncDriver, Flow, SyncDriver
from .redis.keys import GlobalKeys, QueueKeys, validate_task_name
from .redis.ops import LazyOps, Op, command
from .retry import RetryPolicy
from .serialization import encode_payload
from .task import EnqueueItem, Task, TaskOptions, TaskRegistry, split_item

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .inspector import Inspector
    from .worker.middleware import Middleware

__all__ = ["Job", "TaskForge"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_BATCH = 250  # jobs per enqueue script call: small calls keep ARGV small and let Redis run one
# while the next is packed


def resolve_url(settings: Settings) -> str:
    """Explicit URL, else TASKFORGE_REDIS_URL (already in settings), else a running embedded
    server recorded in ./.taskforge, else localhost:6379."""
    if settings.redis_url:
        return settings.redis_url
    from .embedded import running_server_url

    return running_server_url() or DEFAULT_REDIS_URL


class TaskForge:
    """The app: task registry, settings and connections. Safe to share between threads."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(redis_url=url, prefix=prefix, **overrides)
        elif url or prefix or overrides:
            changes = dict(overrides)
            if url:
                changes["redis_url"] = url
            if prefix:
                changes["prefix"] = prefix
            settings = settings.with_changes(**changes)
        self.settings = settings
        self.url = resolve_url(settings)
        self.registry = TaskRegistry()
        self.global_keys = GlobalKeys(settings.prefix)
        self.middleware: list[Middleware] = []
        self._queue_keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._aof_checked = False
        self._lock = threading.Lock()
        self._sync: SyncDriver | None = None
        # One driver per event loop: a worker thread and an async producer share the app.
        self._async: dict[asyncio.AbstractEventLoop, AsyncDriver] = {}

    def __repr__(self) -> str:
        return f"<TaskForge prefix={self.settings.prefix!r} url={self.where!r}>"

    # -- connections -------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The server address, without credentials, for messages."""
        url = self.url
        if "@" in url:
            scheme, _, rest = url.partition("://")
            url = f"{scheme}://***@{rest.rpartition('@')[2]}"
        return url

    def sync_driver(self) -> SyncDriver:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    s = self.settings
                    client = connect_sync(self.url, s.socket_timeout, s.connect_timeout)
                    blocking = connect_sync(
                        self.url, s.socket_timeout + BLOCK_SLICE_SECONDS, s.connect_timeout
                    )
                    self._sync = SyncDriver(client, blocking, self.where, s.reply_spin_us)
        return self._sync

    def async_driver(self) -> AsyncDriver:
        """The asyncio driver of the running loop (clients cannot cross event loops)."""
        loop = asyncio.get_running_loop()
        driver = self._async.get(loop)
        if driver is None:
            s = self.settings
            client = connect_async(self.url, s.socket_timeout, s.connect_timeout)
            blocking = connect_async(
                self.url, s.socket_timeout + BLOCK_SLICE_SECONDS, s.connect_timeout
            )
            driver = AsyncDriver(client, blocking, self.where)
            with self._lock:  # other threads' loops may add theirs meanwhile
                for gone in [other for other in self._async if other.is_closed()]:
                    del self._async[gone]
                self._async[loop] = driver
        return driver

    def run(self, flow: Flow[T]) -> T:
        return self.sync_driver().run_flow(flow)

    async def run_async(self, flow: Flow[T]) -> T:
        return await self.async_driver().run_flow(flow)

    def use_url(self, url: str) -> None:
        """Point the app at another server; current connections are closed."""
        self.close()
        self._async = {}
        self.url = url

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        await self.close_async_connections()
        self.close()

    async def close_async_connections(self) -> None:
        """Close the asyncio clients of the running loop (a worker does so when it stops)."""
        driver = self._async.pop(asyncio.get_running_loop(), None)
        if driver is not None:
            await driver.close()

    def __enter__(self) -> TaskForge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> TaskForge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def keys(self, queue: str) -> QueueKeys:
        keys = self._queue_keys.get(queue)
        if keys is None:
            keys = self._queue_keys[queue] = QueueKeys(self.settings.prefix, queue)
        return keys

    # -- tasks -------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: str | int | None = None,
        retry_backoff: float | None = None,
        retry_max_backoff: float | None = None,
        no_retry_on: tuple[type[BaseException], ...] = (),
    ) -> Callable[[Callable[P, Any]], Task[P, Any]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: str | int | None = None,
        retry_backoff: float | None = None,
        retry_max_backoff: float | None = None,
        no_retry_on: tuple[type[BaseException], ...] = (),
    ) -> Any:
        """Register a function as a task. ``@forge.task`` or ``@forge.task(queue=..., ...)``."""
        if priority is not None:
            parse_priority(priority)
        retry = None
        if retry_backoff is not None or retry_max_backoff is not None:
            retry = RetryPolicy(
                retry_backoff or self.settings.retry_base_seconds,
                retry_max_backoff or self.settings.retry_cap_seconds,
            )
        options = TaskOptions(queue, max_attempts, timeout, priority, retry, tuple(no_retry_on))

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self, name or func.__name__, func, options)
            self.registry.add(task)
            return task

        return register(fn) if fn is not None else register

    def retry_policy(self, task: Task[Any, Any] | None) -> RetryPolicy:
        if task is not None and task.options.retry is not None:
            return task.options.retry
        return RetryPolicy(self.settings.retry_base_seconds, self.settings.retry_cap_seconds)

    def add_middleware(self, middleware: Middleware) -> None:
        self.middleware.append(middleware)

    # -- enqueue -----------------------------------------------------------------------------

    def _spec(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        task: Task[Any, Any] | None,
        delay: float | None,
        at: datetime | None,
        priority: str | int | None,
        key: str | None,
        max_attempts: int | None,
        timeout: float | None,
        job_id: str | None,
    ) -> JobSpec:
        opts = task.options if task is not None else None
        if delay is not None and at is not None:
            raise ValidationError("pass either delay= or at=, not both")
        delay_ms = 0
        at_ms = 0.0
        if delay is not None:
            if not _is_seconds(delay) or delay < 0:
                raise ValidationError(f"delay must be non-negative seconds, got {delay!r}")
            delay_ms = round(delay * 1000)
        if at is not None:
            if not isinstance(at, datetime):
                raise ValidationError(f"at= must be a datetime, got {type(at).__name__}")
            # To the microsecond: a worker starts the job at this time, not at the next ms.
            at_ms = max(1.0, round(at.timestamp() * 1000.0, 3))
        attempts = max_attempts if max_attempts is not None else (opts and opts.max_attempts)
        if attempts is None:
            attempts = self.settings.default_max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValidationError(f"max_attempts must be a whole number >= 1, got {attempts!r}")
        run_timeout = timeout if timeout is not None else (opts.timeout if opts else None)
        if run_timeout is not None and (not _is_seconds(run_timeout) or run_timeout <= 0):
            raise ValidationError(f"timeout must be positive seconds, got {run_timeout!r}")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 512):
            raise ValidationError("key must be a non-empty string of at most 512 characters")
        if job_id is not None and not (isinstance(job_id, str) and job_id.isalnum()):
            raise ValidationError("job_id must be letters and digits only")
        payload = encode_payload(args, kwargs or {}, self.settings.max_payload_bytes)
        return JobSpec(
            id=job_id or new_job_id(),
            task=name,
            payload=payload,
            priority=parse_priority(
                priority if priority is not None else (opts.priority if opts else None)
            ),
            max_attempts=attempts,
            timeout_ms=round(run_timeout * 1000) if run_timeout else 0,
            delay_ms=delay_ms,
            at_ms=at_ms,
            key=key or "",
        )

    def _queue_for(self, name: str, queue: str | None, task: Task[Any, Any] | None) -> QueueKeys:
        validate_task_name(name)
        if queue is None:
            known = task or self.registry.find(name)
            queue = known.options.queue if known is not None else "default"
        return self.keys(queue)

    def _enqueue_flow(
        self, keys: QueueKeys, specs: Sequence[JobSpec] | _ManySpecs
    ) -> Flow[list[Job[Any]]]:
        events = self.settings.publish_events
        calls = -(-len(specs) // _BATCH)

        def build(i: int) -> Op[Any]:
            return ops.enqueue(keys, specs[i * _BATCH : (i + 1) * _BATCH], events)

        if self.settings.wait_replicas or self.settings.wait_aof:
            return (yield from self._durable_enqueue_flow(keys, [build(i) for i in range(calls)]))
        register = keys.queue not in self._known_queues
        head = [ops.register_queue(self.global_keys, keys.queue)] if register else []
        if calls == 1 and not head:
            replies = [(yield build(0))]
        else:
            replies = yield LazyOps(calls, build, head)
        if register:
            self._known_queues.add(keys.queue)
            replies = replies[1:]
        return self._jobs_from(keys, replies)

    def _jobs_from(self, keys: QueueKeys, replies: list[Any]) -> list[Job[Any]]:
        jobs: list[Job[Any]] = []
        for reply in replies:
            jobs.extend(
                Job(self, out.id, keys.queue, created=out.created, initial_status=out.status)
                for out in reply
            )
        return jobs

    def _durable_enqueue_flow(self, keys: QueueKeys, requests: list[Any]) -> Flow[list[Job[Any]]]:
        """Enqueue, then WAIT/WAITAOF on the same connection (on a cluster: a connection to the
        master of the queue's slot), so the wait covers exactly these writes."""
        s = self.settings
        if s.wait_aof and not self._aof_checked:
            yield from self._check_waitaof_flow()
            self._aof_checked = True
        if keys.queue not in self._known_queues:
            # The registry lives in another slot; it is rebuilt by workers, so it is not waited on.
            yield ops.register_queue(self.global_keys, keys.queue)
            self._known_queues.add(keys.queue)
        if s.wait_aof:
            wait = command("WAITAOF", 1, s.wait_replicas, s.wait_timeout_ms, parse=_waitaof_reply)
        else:
            wait = command("WAIT", s.wait_replicas, s.wait_timeout_ms, parse=lambda r: (0, int(r)))
        *replies, (fsynced, replicas) = yield SameConnection([*requests, wait], keys.ready)
        jobs = self._jobs_from(keys, replies)
        short = replicas < s.wait_replicas or (s.wait_aof and fsynced < 1)
        if short:
            what = f"{replicas} of {s.wait_replicas} replica(s) acknowledged"
            if s.wait_aof:
                what = (
                    f"the master {'fsynced' if fsynced else 'did not fsync'} its AOF and"
                    f" {replicas} of {s.wait_replicas} replica(s) fsynced theirs"
                )
            raise DurabilityError(
                f"{len(jobs)} job(s) were written to queue {keys.queue!r}, but {what} within"
                f" {s.wait_timeout_ms} ms: a failover now could lose them. Enqueueing again with"
                " the same job_id (exc.jobs) is safe; check the replicas"
                " (INFO replication) if this persists",
                jobs,
                replicas,
                bool(fsynced),
            )
        return jobs

    def _check_waitaof_flow(self) -> Flow[None]:
        """WAITAOF needs Redis >= 7.2 (or Valkey) with appendonly on: refuse before writing."""
        from .errors import ConfigError, ServerNotSupported
        from .inspector import server_version

        server, persistence = yield [command("INFO", "server"), command("INFO", "persistence")]
        kind, version = server_version(server if isinstance(server, dict) else {})
        if kind == "redis" and version < (7, 2):
            raise ServerNotSupported(
                f"wait_aof needs WAITAOF, which Redis {'.'.join(map(str, version))} lacks"
                " (Redis >= 7.2 or Valkey >= 7.2 has it). Upgrade the server, or unset"
                " TASKFORGE_WAIT_AOF and rely on wait_replicas and appendfsync"
            )
        if isinstance(persistence, dict) and not int(persistence.get("aof_enabled", 1)):
            raise ConfigError(
                "wait_aof needs the server to run with `appendonly yes` (WAITAOF waits for an"
                " AOF fsync); enable it, or unset TASKFORGE_WAIT_AOF"
            )

    def enqueue(self, name: str, /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue a task by name; producers need not import the task's code."""
        return self.enqueue_with(name, args, kwargs)

    async def enqueue_async(self, name: str, /, *args: Any, **kwargs: Any) -> Job[Any]:
        return await self.enqueue_with_async(name, args, kwargs)

    def enqueue_with(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> Job[Any]:
        task = task or self.registry.find(name)
        keys = self._queue_for(name, queue, task)
        spec = self._spec(name, args, kwargs, task, **_enqueue_options(options))
        return self.run(self._enqueue_flow(keys, [spec]))[0]

    async def enqueue_with_async(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> Job[Any]:
        task = task or self.registry.find(name)
        keys = self._queue_for(name, queue, task)
        spec = self._spec(name, args, kwargs, task, **_enqueue_options(options))
        return (await self.run_async(self._enqueue_flow(keys, [spec])))[0]

    def _many(
        self,
        name: str,
        items: Iterable[EnqueueItem],
        queue: str | None,
        task: Task[Any, Any] | None,
        options: dict[str, Any],
    ) -> tuple[QueueKeys, Sequence[JobSpec] | _ManySpecs]:
        task = task or self.registry.find(name)
        keys = self._queue_for(name, queue, task)
        opts = _enqueue_options(options)
        if opts["key"] is not None or opts["job_id"] is not None:
            raise ValidationError("enqueue_many takes no key= or job_id=: they name one job")
        limit = self.settings.max_payload_bytes
        first: JobSpec | None = None
        payloads: list[bytes] = []
        for item in items:
            args, kwargs = split_item(item)
            if first is None:
                first = self._spec(name, args, kwargs, task, **opts)  # checks the options
            else:
                payloads.append(encode_payload(args, kwargs or {}, limit))
        return keys, ([] if first is None else _ManySpecs(first, payloads))

    def enqueue_many(
        self,
        name: str,
        items: Iterable[EnqueueItem],
        *,
        queue: str | None = None,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> list[Job[Any]]:
        """Enqueue many jobs of one task: every payload is checked before anything is written,
        then one round trip carries them all (script calls of 250 jobs, pipelined)."""
        keys, specs = self._many(name, items, queue, task, options)
        return self.run(self._enqueue_flow(keys, specs)) if specs else []

    async def enqueue_many_async(
        self,
        name: str,
        items: Iterable[EnqueueItem],
        *,
        queue: str | None = None,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> list[Job[Any]]:
        keys, specs = self._many(name, items, queue, task, options)
        return await self.run_async(self._enqueue_flow(keys, specs)) if specs else []

    # -- jobs --------------------------------------------------------------------------------

    def _find_queue_flow(self, job_id: str) -> Flow[str]:
        members = yield command("SMEMBERS", self.global_keys.queues)
        queues = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if queues:
            found = yield [command("EXISTS", self.keys(q).job(job_id), parse=int) for q in queues]
            for queue, exists in zip(queues, found, strict=True):
                if exists:
                    return queue
        raise JobNotFound(
            f"no job with id {job_id!r} in any queue of prefix {self.settings.prefix!r}: it was"
            " never enqueued here, or its retention period ended"
        )

    def job(self, job_id: str, queue: str | None = None) -> Job[Any]:
        """A handle for an existing job. Without ``queue``, the queues are searched."""
        if queue is None:
            queue = self.run(self._find_queue_flow(job_id))
        return Job(self, job_id, queue)

    async def job_async(self, job_id: str, queue: str | None = None) -> Job[Any]:
        if queue is None:
            queue = await self.run_async(self._find_queue_flow(job_id))
        return Job(self, job_id, queue)

    # -- health and inspection ---------------------------------------------------------------

    def _health_flow(self) -> Flow[dict[str, Any]]:
        probe = f"{self.settings.prefix}:{{-}}:health:{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        started = time.perf_counter()
        replies = yield [
            command("SET", probe, token, "PX", 10000),
            command("GET", probe),
            command("DEL", probe),
            command("INFO", "server"),
        ]
        elapsed = time.perf_counter() - started
        read_back = replies[1].decode() if isinstance(replies[1], bytes) else replies[1]
        info = replies[3] if isinstance(replies[3], dict) else {}
        from .inspector import server_version

        kind, version = server_version(info)
        return {
            "ok": read_back == token,
            "latency_ms": round(elapsed * 1000, 3),
            "server": kind,
            "version": ".".join(map(str, version)),
            "url": self.where,
        }

    def health(self) -> dict[str, Any]:
        """Checks connectivity with a write and a read back. Raises RedisUnavailable if down."""
        return self.run(self._health_flow())

    async def health_async(self) -> dict[str, Any]:
        return await self.run_async(self._health_flow())

    @property
    def inspector(self) -> Inspector:
        from .inspector import Inspector

        return Inspector(self)


def _waitaof_reply(reply: Any) -> tuple[int, int]:
    """WAITAOF answers [local fsyncs (0 or 1), replicas that fsynced]."""
    return int(reply[0]), int(reply[1])


def _is_seconds(value: object) -> bool:
    """A finite real number (NaN and infinity cannot become milliseconds)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _ManySpecs:
    """The jobs of one ``enqueue_many`` call. Every payload is checked and encoded up front, so
    a bad item raises before anything is written; ids and specs are made per script call, as
    the call is built, so that this work overlaps with Redis running the call before it. Each
    range is asked for once (``LazyOps`` builds each call once): asking again makes new ids."""

    def __init__(self, first: JobSpec, payloads: list[bytes]) -> None:
        self.first = first  # the options are the same for every job of the batch
        self.payloads = payloads

    def __len__(self) -> int:
        return 1 + len(self.payloads)

    def __getitem__(self, part: slice) -> list[JobSpec]:
        first = self.first
        start, stop, _ = part.indices(len(self))
        specs = [first] if start == 0 else []
        for payload in self.payloads[max(start - 1, 0) : stop - 1]:
            specs.append(
                JobSpec(
                    new_job_id(),
                    first.task,
                    payload,
                    first.priority,
                    first.max_attempts,
                    first.timeout_ms,
                    first.delay_ms,
                    first.at_ms,
                    "",
                )
            )
        return specs


def _enqueue_options(options: dict[str, Any]) -> dict[str, Any]:
    allowed = ("delay", "at", "priority", "key", "max_attempts", "timeout", "job_id")
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValidationError(
            f"unknown enqueue option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}"
        )
    return {name: options.get(name) for name in allowed}
