"""Fixtures of the HTTP API tests: an app over the test server, an in-process client, workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskforge import TaskForge, Worker
from taskforge.web import WebSettings, create_app

TOKEN = "test-token-0123456789abcdef"


def make_forge(url: str) -> TaskForge:
    forge = TaskForge(url, prefix="web")

    @forge.task(queue="emails")
    async def send(to: str) -> str:
        return f"sent to {to}"

    @forge.task(queue="emails", max_attempts=1)
    async def bounce(to: str) -> None:
        raise ValueError(f"mailbox {to} is full")

    @forge.task(queue="reports")
    async def slow(seconds: float) -> None:
        await asyncio.sleep(seconds)

    return forge


@pytest.fixture
async def forge(redis_url: str) -> AsyncIterator[TaskForge]:
    app = make_forge(redis_url)
    yield app
    await app.aclose()


def client_for(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers
    )


@pytest.fixture
async def client(forge: TaskForge) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(forge, WebSettings())) as c:
        yield c


@contextlib.asynccontextmanager
async def running_worker(
    forge: TaskForge, queues: list[str], **options: Any
) -> AsyncIterator[Worker]:
    """A worker on the test's own event loop, stopped (gracefully) at the end."""
    worker = Worker(forge, queues, options.pop("concurrency", 4), **options)
    task = asyncio.get_running_loop().create_task(worker.run_async())

    async def started() -> bool:
        if task.done():
            task.result()  # raises what made it stop
        return worker.started.is_set()

    try:
        await poll(started, 10, "the worker to start")
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)


async def poll(predicate: Any, timeout: float, what: str) -> Any:
    """Await ``predicate()`` until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
