"""A thread pool for plain ``def`` tasks in which a timed-out call can be abandoned.

Python cannot stop a thread. When a sync task overruns its timeout, the worker records the failure
and frees the slot; the thread runs on unobserved. Unlike ``ThreadPoolExecutor``, every submission
here gets an idle thread or a new one, so an abandoned thread never blocks the next job, and the
threads are daemons, so a stuck one cannot hold up process exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any

__all__ = ["ThreadRunner"]

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None


class ThreadRunner:
    def __init__(self, name: str = "taskforge-job") -> None:
        self._name = name
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._queue.put((future, fn, args))
            if self._idle > 0:
                self._idle -= 1  # reserve an idle thread for this item
            else:
                thread = threading.Thread(
                    target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            del item, future, fn, args
            with self._lock:
                self._idle += 1

    @property
    def size(self) -> int:
        return len(self._threads)

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy (or abandoned) ones end with their call."""
        for _ in self._threads:
            self._queue.put(None)
