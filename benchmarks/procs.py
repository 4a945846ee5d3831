"""Worker processes: started in their own session, CPU read from /proc, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its reaped children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process and all its descendants, living or reaped.

    A living process counts its own time plus its reaped children's (cutime/cstime); a child
    that is still alive is counted by itself, so nothing is counted twice.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None:
            parents[int(entry)], cpu[int(entry)] = stat
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p > 1:
            if p == root:
                total += seconds
                break
            p = parents.get(p, 0)
    return total


class ManagedProcess:
    """A child in its own process group, so the whole group can be stopped by that pid."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self._log = log.open("ab")
        self._log_start = self._log.tell()
        # Tracebacks the process logged before it was asked to stop (set by stop()).
        self.tracebacks = 0
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM to the group, then SIGKILL to whatever of the group is left."""
        self.tracebacks = self._count_tracebacks()
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Children of the group may outlive the leader: make sure none is left.
        self._signal_group(signal.SIGKILL)
        if self.alive():
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._log.close()

    def _count_tracebacks(self) -> int:
        """Tracebacks in this process's part of the log, up to now (not its shutdown's)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start)
                return f.read().count(b"Traceback (most recent call last)")
        except OSError:
            return 0

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
