"""A small app for tests that run real worker and server processes
(``python -m taskforge worker tests.web.sample_app:forge``). Redis URL and prefix come from
TASKFORGE_REDIS_URL and TASKFORGE_PREFIX."""

from __future__ import annotations

import time

from taskforge import TaskForge

forge = TaskForge()


@forge.task(queue="math")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@forge.task(queue="math", max_attempts=2, retry_backoff=0.05, retry_max_backoff=0.1)
def boom(reason: str) -> None:
    raise RuntimeError(f"boom: {reason}")


@forge.task(queue="mail", max_attempts=1)
def deliver(to: str) -> str:
    if to.endswith(".invalid"):
        raise ValueError(f"no mail server for {to}")
    return f"delivered to {to}"
