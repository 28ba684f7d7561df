"""Exponential backoff, the one kind used everywhere (registration, serving, restarts), and
the one rule of retrying something that keeps failing (`Retry`, `Retries`): a crashed
resource, an exited stream command, a stream the kubelet keeps ending."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays from `initial` multiplied by `factor` up to `maximum`; `reset()` starts over.

    The defaults are the registration retry: 100 ms doubling to 5 s.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    _next: float = 0.0

    def next_delay(self) -> float:
        delay = self._next or self.initial
        self._next = min(delay * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = 0.0


@dataclass(frozen=True)
class Retry:
    """How something run again after each failure is retried: after delays from `first`
    doubling to `maximum`; a run that lasted `stable` seconds before it failed starts a new
    run of failures (the delays over). With `at_once`, the first failure of a run is retried
    at once (the delays start at the second)."""

    first: float
    maximum: float
    stable: float = 60.0
    at_once: bool = False


class Retries:
    """The failures in a row of something run again and again, by its `Retry`: call
    `started` as a run starts and `failed` as it ends in failure (the delay before the
    next run)."""

    def __init__(self, retry: Retry, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry = retry
        self._clock = clock
        self._backoff = Backoff(retry.first, retry.maximum)
        self.in_a_row = 0
        """Failures of the current run of failures."""
        self._since: float | None = None
        """When the run now going started (None: none is)."""

    def started(self) -> None:
        self._since = self._clock()

    def failed(self) -> float:
        """The run failed: counted (a new run of failures if it was stable); returns the
        seconds to wait before the next run."""
        self.check_stable()
        self._since = None
        self.in_a_row += 1
        if self._retry.at_once and self.in_a_row == 1:
            return 0.0
        return self._backoff.next_delay()

    def start_over(self) -> None:
        """A new run of failures: none in a row, the next delay the first one."""
        self.in_a_row = 0
        self._backoff.reset()

    def until_stable(self) -> float | None:
        """Seconds until the run going ends the run of failures (None: no failures, or no
        run going)."""
        if self._since is None or not self.in_a_row:
            return None
        return max(0.0, self._since + self._retry.stable - self._clock())

    def check_stable(self) -> bool:
        """End the run of failures if the run going has lasted `stable` seconds (True)."""
        if self.until_stable() != 0.0:
            return False
        self.start_over()
        return True
