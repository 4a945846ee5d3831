"""``--processes N``: one worker process per slot, restarted when it dies unexpectedly.

Children are plain ``taskforge worker`` processes; the supervisor forwards SIGTERM/SIGINT to them
and waits for their graceful shutdown.
"""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["Supervisor"]

log = logging.getLogger("taskforge.supervisor")


class Supervisor:
    def __init__(self, child_args: Sequence[str], processes: int, env: dict[str, str]) -> None:
        self.child_args = list(child_args)
        self.processes = processes
        self.env = env
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts = 0
        self.started_at: dict[int, float] = {}
        self._exits: queue.Queue[tuple[int, int] | None] = queue.Queue()

    def _spawn(self, slot: int) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "taskforge", *self.child_args], env=self.env)
        self.children[slot] = proc
        self.started_at[slot] = time.monotonic()
        # A thread per child turns its exit into an event for the main loop: no polling.
        threading.Thread(target=lambda: self._exits.put((slot, proc.wait())), daemon=True).start()
        log.info("started worker process %d (pid %d)", slot, proc.pid)

    def _forward(self, signum: int, _frame: object) -> None:
        if self.stopping and signum == signal.SIGINT:
            signum = signal.SIGTERM  # a second Ctrl-C: children hand jobs back at once
        self.stopping = True
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signum)
        self._exits.put(None)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for slot in range(self.processes):
            self._spawn(slot)
        delay = dict.fromkeys(range(self.processes), 0.5)
        while not self.stopping:
            try:
                event = self._exits.get(timeout=3600)
            except queue.Empty:
                continue
            if event is None or self.stopping:
                break
            slot, code = event
            if time.monotonic() - self.started_at.get(slot, 0.0) > 60:
                delay[slot] = 0.5  # it ran fine for a while: this is a new crash, not a loop
            log.warning(
                "worker process %d exited with %s; restarting in %.1f s", slot, code, delay[slot]
            )
            if self._stop_wait(delay[slot]):
                break
            delay[slot] = min(delay[slot] * 2, 30.0)
            self.restarts += 1
            self._spawn(slot)
        for proc in self.children.values():
            proc.wait()
        return 0

    def _stop_wait(self, seconds: float) -> bool:
        """Wait before a restart; True if a stop signal came meanwhile."""
        try:
            event = self._exits.get(timeout=seconds)
        except queue.Empty:
            return self.stopping
        if event is not None:
            self._exits.put(event)  # another child exited meanwhile: handle it next
        return event is None or self.stopping
