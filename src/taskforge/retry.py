"""Retry policy: exponential backoff with full jitter. Pure functions, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before attempt ``n + 1`` is uniform in ``[0, min(cap, base * 2 ** (n - 1))]``.

    Full jitter spreads a burst of failures (a downstream outage) over the whole window instead of
    making every job retry in lockstep.
    """

    base_seconds: float = 1.0
    cap_seconds: float = 300.0
    jitter: bool = True

    def ceiling(self, failed_attempts: int) -> float:
        exponent = max(0, failed_attempts - 1)
        # Cap the exponent first so a large attempt count cannot overflow a float.
        return min(self.cap_seconds, self.base_seconds * 2.0 ** min(exponent, 64))

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(failed_attempts)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)
