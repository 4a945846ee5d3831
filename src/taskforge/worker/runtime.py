"""The worker: small parts (fetcher, waiters, executor, acker, heartbeat, registry, recoverer)
started together and stopped in order, so that a shutdown loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from ..errors import TaskForgeError
from ..redis import operations as ops
from .acker import Acker
from .backoff import Backoff
from .executor import Executor
from .fetcher import PARK_SECONDS, Fetcher, Waiter, group_by_slot
from .heartbeat import Heartbeat, Recoverer, Registry
from .metrics import WorkerMetrics
from .state import Slots, WorkerConfig, WorkerState
from .threads import ThreadRunner

if TYPE_CHECKING:
    from ..client import TaskForge

__all__ = ["Worker"]

log = logging.getLogger("taskforge.worker")


class Worker:
    """Runs the jobs of some queues. ``run()`` blocks (and handles SIGTERM/SIGINT);
    ``await run_async()`` runs inside an existing event loop; ``stop()`` is thread-safe."""

    def __init__(
        self,
        forge: TaskForge,
        queues: list[str] | tuple[str, ...] | None = None,
        concurrency: int | None = None,
        *,
        config: WorkerConfig | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            chosen = tuple(queues) if queues else tuple(forge.registry.queues() or ["default"])
            config = WorkerConfig(queues=chosen, concurrency=concurrency or 10, **options)
        self.forge = forge
        self.config = config
        self.worker_id = config.resolved_id()
        self.started = threading.Event()
        self.stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self.state: WorkerState | None = None
        self.parts: dict[str, Any] = {}
        self._crashed: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} queues={','.join(self.config.queues)}>"

    # -- control -----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``stop()``), then shut down gracefully."""
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(self.run_async(handle_signals=True))

    def stop(self, *, immediate: bool = False) -> None:
        """Begin a graceful shutdown (``immediate``: hand running jobs back without waiting)."""
        loop = self._loop
        if loop is None:
            return

        def request() -> None:
            if self._stop_requested is not None:
                self._stop_requested.set()
            if immediate and self._hurry is not None:
                self._hurry.set()

        if loop.is_running():
            loop.call_soon_threadsafe(request)

    def _on_signal(self, signum: int) -> None:
        if self._stop_requested is not None and self._stop_requested.is_set():
            log.warning("second %s: handing running jobs back now", signal.Signals(signum).name)
            self.stop(immediate=True)
        else:
            log.info(
                "%s: finishing in-flight jobs (up to %.0f s), then stopping",
                signal.Signals(signum).name,
                self.config.grace_seconds,
            )
            self.stop()

    # -- the run -----------------------------------------------------------------------------

    async def run_async(self, *, handle_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self._run()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self.stopped.set()

    async def _prepare(self) -> None:
        """Check the server and register the queues, waiting for Redis if it is not up yet."""
        forge = self.forge
        driver = forge.async_driver()
        backoff = Backoff(log, f"connecting to {forge.where}", cap=2.0)
        assert self._stop_requested is not None
        while True:
            try:
                for warning in await forge.inspector.check_server_async():
                    log.warning("%s", warning)
                await driver.run_all(
                    [ops.register_queue(forge.global_keys, q) for q in self.config.queues]
                )
                return
            except (TaskForgeError, OSError) as exc:
                if type(exc).__name__ in ("ServerNotSupported", "PermissionDenied"):
                    raise
                await backoff.failed(exc, self._stop_requested)
                if self._stop_requested.is_set():
                    raise

    async def _run(self) -> None:
        forge = self.forge
        settings = forge.settings
        config = self.config
        await self._prepare()
        driver = forge.async_driver()
        state = WorkerState(self.worker_id, config, Slots(config.concurrency))
        self.state = state
        queue_keys = [forge.keys(q) for q in config.queues]
        threads = ThreadRunner()
        acker = Acker(state, driver, settings)
        executor = Executor(forge, state, acker, threads)
        metrics = WorkerMetrics(state, driver, queue_keys)
        acker.listeners.append(metrics.on_outcome)
        fetcher = Fetcher(
            state,
            driver,
            queue_keys,
            round(settings.lease_seconds * 1000),
            settings.publish_events,
            metrics.starter(executor.start),
            acker.release,
            acker.releases_done,
            settings.isolate_after_redeliveries,
        )
        acker.parked = fetcher.parked
        acker.park_ms = round(PARK_SECONDS * 1000)
        waiters = [
            Waiter(state, driver, group, fetcher)
            for group in group_by_slot(queue_keys, driver.is_cluster)
        ]
        heartbeat = Heartbeat(state, driver, settings)
        registry = Registry(state, driver, forge.global_keys, config.registry_seconds)
        recoverer = Recoverer(
            state,
            driver,
            queue_keys,
            settings,
            min(config.recover_seconds, settings.lease_seconds / 2),
        )
        self.parts = {
            "acker": acker,
            "executor": executor,
            "fetcher": fetcher,
            "waiters": waiters,
            "heartbeat": heartbeat,
            "registry": registry,
            "recoverer": recoverer,
            "threads": threads,
            "metrics": metrics,
        }
        leases_done = asyncio.Event()
        intake = [loop_task(fetcher.run(), "fetcher")] + [
            loop_task(w.run(), "waiter") for w in waiters
        ]
        background = [
            loop_task(acker.run(), "acker"),
            loop_task(heartbeat.run(leases_done), "heartbeat"),
            loop_task(registry.run(), "registry"),
            loop_task(recoverer.run(), "recoverer"),
            loop_task(metrics.run(), "metrics"),
        ]
        # Without one of these a worker would stay up doing nothing while its heartbeat renews
        # the leases of jobs it will never finish: a crash of one stops the whole worker instead.
        for part in intake + background:
            if part.get_name() not in ("taskforge-registry", "taskforge-metrics"):
                part.add_done_callback(self._part_ended)
        log.info(
            "worker %s started: queues %s, concurrency %d, %d tasks registered",
            self.worker_id,
            ",".join(config.queues),
            config.concurrency,
            len(forge.registry),
        )
        self.started.set()
        assert self._stop_requested is not None
        try:
            await self._stop_requested.wait()
        finally:
            state.stopping.set()
            await _cancel(intake)
            await fetcher.leave_all()
            await self._finish_in_flight(executor)
            acker_alive = not background[0].done()  # a crashed acker reports nothing more
            if not await acker.drain(timeout=10.0 if acker_alive else 0.0):
                log.error(
                    "could not report %d outcome(s) to Redis; those jobs will run again after"
                    " their lease expires",
                    acker.pending,
                )
            await metrics.close()
            leases_done.set()
            with contextlib.suppress(TaskForgeError, OSError):
                await registry.unregister()
            await _cancel(background)
            threads.shutdown()
            await forge.close_async_connections()
            log.info("worker %s stopped", self.worker_id)
        crashed = self._crashed
        if crashed is not None:
            raise TaskForgeError(
                f"worker part {crashed.get_name()} crashed ({crashed.exception()!r}); the worker"
                " stopped, and jobs it could not report run again after their lease expires"
            ) from crashed.exception()

    def _part_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None or self._crashed is not None:
            return
        self._crashed = task
        log.error("worker part %s crashed: stopping the worker", task.get_name())
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _finish_in_flight(self, executor: Executor) -> None:
        running = set(executor.running)
        if running:
            assert self._hurry is not None
            hurry = asyncio.ensure_future(self._hurry.wait())
            await _wait_all_or(running, hurry, self.config.grace_seconds)
            hurry.cancel()
        state = self.state
        assert state is not None
        leftover = [lease for lease in state.leases.values() if not lease.finished]
        if leftover:
            log.warning("handing %d unfinished job(s) back to their queues", len(leftover))
        for lease in leftover:
            if lease.ctx is not None:
                lease.ctx._request_stop("shutdown")
            if lease.runner is not None:
                lease.runner.cancel()
            else:  # leased but never started (a job waiting to run alone)
                executor.acker.release(lease)
        if executor.running:
            await asyncio.wait(set(executor.running), timeout=5.0)


async def _wait_all_or(
    tasks: set[asyncio.Task[None]], hurry: asyncio.Future[Any], timeout: float
) -> None:
    """Wait until every task is done, ``hurry`` resolves, or ``timeout`` passes."""
    pending: set[asyncio.Future[Any]] = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and not hurry.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        _, pending = await asyncio.wait(
            pending | {hurry}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        pending.discard(hurry)


def loop_task(coro: Any, name: str) -> asyncio.Task[Any]:
    task = asyncio.get_running_loop().create_task(coro, name=f"taskforge-{name}")
    task.add_done_callback(_log_crash)
    return task


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("worker part %s crashed", task.get_name(), exc_info=task.exception())


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        # Ask again while any is left: on Python 3.11, asyncio.wait_for swallows a cancel that
        # lands as its inner future completes, and redis-py awaits its socket drain that way,
        # so one cancel can leave a waiter in its blocking pop for a whole slice (10 s).
        _, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)
