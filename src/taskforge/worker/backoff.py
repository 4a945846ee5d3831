"""Reconnect backoff for the worker's loops: exponential with jitter, reset on success."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from ..errors import RedisUnavailable

__all__ = ["Backoff"]


class Backoff:
    def __init__(self, logger: logging.Logger, what: str, base: float = 0.05, cap: float = 5.0):
        self.logger = logger
        self.what = what
        self.base = base
        self.cap = cap
        self.failures = 0

    def ok(self) -> None:
        if self.failures:
            self.logger.info("%s: Redis is reachable again", self.what)
        self.failures = 0

    async def failed(self, exc: BaseException, stopping: asyncio.Event) -> None:
        """Wait before the next try; returns early when the worker is stopping."""
        self.failures += 1
        delay = random.uniform(0, min(self.cap, self.base * 2**self.failures))
        level = logging.WARNING if isinstance(exc, RedisUnavailable) else logging.ERROR
        if self.failures == 1 or self.failures % 20 == 0:
            self.logger.log(level, "%s failed (%s); retrying", self.what, exc, exc_info=level > 30)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=delay)
