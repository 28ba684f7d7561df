"""A token bucket: the one way a driver bounds how often it does something (a stream
command's lists applied, a watching driver's scans started).

It counts on the driver's clock (`DriverDeps.clock`), so a test's clock decides what was
earned.
"""

from __future__ import annotations

from collections.abc import Callable


class RateLimit:
    """`burst` at once, then `rate` per second."""

    def __init__(self, clock: Callable[[], float], rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = clock()

    def delay(self) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill()
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self._rate

    def take(self) -> None:
        """Take a token, once `delay()` has passed: the bucket is then empty, never in debt
        (a clock that moved less than the wait, a test's, owes nothing more)."""
        self._refill()
        self._tokens = max(0.0, self._tokens - 1.0)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
