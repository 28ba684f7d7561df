"""What the probes answer: `HealthState`, written by the event loop and read by the HTTP
threads. The loop is asked when a probe or a scrape comes (`HealthState.ask_loop`), not by
a timer: nothing here wakes up while nobody asks, and a stalled loop turns into a 503 on
`/healthz`, not a timeout nobody can explain.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOOP_ANSWER_TIMEOUT = 2.0
"""A loop that does not run a probe's callback within this is stalled (/healthz: 503)."""


LoopAnswer = Callable[[float], None]
"""Run on the event loop when it answers a probe, with the seconds the answer took."""


STARTING = "host"
"""The entry of `HealthState.not_ready` until the host reports its resources."""


@dataclass
class HealthState:
    """Written by the event loop, read by the HTTP thread (plain attribute swaps only)."""

    clock: Callable[[], float] = time.monotonic
    dead: tuple[str, ...] = ()
    not_ready: dict[str, str] = field(default_factory=lambda: {STARTING: "starting"})
    """Written through `report_not_ready`."""
    answer_timeout: float = LOOP_ANSWER_TIMEOUT
    unlisted: frozenset[str] = frozenset()
    """Running resources whose first ListAndWatch list has not gone out yet."""
    started: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set (on the loop) the first time nothing is not ready and every resource has sent
    the kubelet its first list: the host's start is over (`heap.settle_started`)."""
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _on_answer: LoopAnswer | None = field(default=None, repr=False)

    def resource_readiness(self, name: str, reason: str | None, listed: bool) -> None:
        """One resource is ready (None) or not (why), and has sent its first list or not:
        its entry alone changes, and the host's "starting" goes with its first report. A
        new dict: the HTTP thread may be reading the old one."""
        if listed == (name in self.unlisted):
            self.unlisted = self.unlisted ^ {name}
        before = self.not_ready
        if before.get(name) != reason or STARTING in before:
            after = dict(before)  # (a copy in C: a comprehension cost ~O(resources) per change)
            after.pop(STARTING, None)
            if reason is None:
                after.pop(name, None)
            else:
                after[name] = reason
            self.report_not_ready(after)
        elif not before and not self.unlisted:
            self.started.set()

    def report_not_ready(self, not_ready: dict[str, str]) -> None:
        """What is not ready now (a new dict: the HTTP thread may be reading the old one)."""
        self.not_ready = not_ready
        if not not_ready and not self.unlisted:
            self.started.set()

    def attach(self, loop: asyncio.AbstractEventLoop, on_answer: LoopAnswer) -> None:
        """The host's loop answers probes from now on (`on_answer` runs on it each time)."""
        self._on_answer = on_answer
        self._loop = loop

    def detach(self) -> None:
        self._loop = None

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def ask_loop(self) -> float | None:
        """From another thread: the seconds the loop took to run a callback, or None when
        it did not within `answer_timeout` (or no loop is attached). A late answer still
        runs `on_answer` with its delay when the loop gets to it."""
        loop, on_answer = self._loop, self._on_answer
        if loop is None or on_answer is None:
            return None
        asked = self.clock()
        answered = threading.Event()
        delay: list[float] = []

        def answer() -> None:
            delay.append(self.clock() - asked)
            on_answer(delay[0])
            answered.set()

        try:
            loop.call_soon_threadsafe(answer)
        except RuntimeError:  # the loop is closed
            return None
        return delay[0] if answered.wait(self.answer_timeout) else None

    def liveness_problem(self) -> str | None:
        if self._loop is None:
            return "event loop stalled: not running"
        if self.ask_loop() is None:
            return f"event loop stalled: no answer within {self.answer_timeout:g}s"
        if self.dead:
            return "resources failed for good: " + ", ".join(self.dead)
        return None
