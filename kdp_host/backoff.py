"""Exponential backoff, the one kind used everywhere (registration, serving, restarts)."""

from __future__ import annotations

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
