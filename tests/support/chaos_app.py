"""The app that chaos tests run in worker subprocesses (`taskforge worker tests.support.chaos_app`).

Each execution of a task adds `<job id>|<pid>|<run id>` to the set `STARTS_KEY` when it starts,
and the same member to `FINISHES_KEY` when its work is done, so a test counts executions per job
exactly. The run id is fresh per execution, so a SADD that the client repeats after a connection
fault cannot count twice. Records go to `CHAOS_RECORD_URL` (default: the worker's own Redis), so
that tests which break the worker's connection can keep the ledger on a direct one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskforge import TaskForge, current_job
from tests.support.chaos import FINISHES_KEY, QUEUE, RECORD_URL_ENV, STARTS_KEY

forge = TaskForge()


async def _record(key: str, member: str) -> None:
    # A client per record: no state outlives the call, and it rides out a Redis restart.
    client = aredis.Redis.from_url(
        os.environ.get(RECORD_URL_ENV) or forge.url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 60),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    try:
        await client.sadd(key, member)
    finally:
        await client.aclose()


def _run_id() -> str:
    return f"{current_job().job_id}|{os.getpid()}|{uuid.uuid4().hex[:12]}"


@forge.task(queue=QUEUE)
async def work(ms: int) -> dict[str, int]:
    """Sleep `ms` milliseconds between the start and finish records."""
    run = _run_id()
    await _record(STARTS_KEY, run)
    await asyncio.sleep(ms / 1000)
    await _record(FINISHES_KEY, run)
    return {"pid": os.getpid()}


@forge.task(queue=QUEUE)
async def stubborn(ms: int) -> dict[str, int]:
    """Like `work`, but ignores cancellation (as code that swallows CancelledError does), so it
    returns a result even after its worker has abandoned the run."""
    body = asyncio.ensure_future(work(ms))
    while True:
        try:
            return await asyncio.shield(body)
        except asyncio.CancelledError:
            continue


@forge.task(queue=QUEUE)
async def crash() -> None:
    """A poison job: kills the worker process that runs it."""
    await _record(STARTS_KEY, _run_id())
    os.kill(os.getpid(), signal.SIGKILL)
