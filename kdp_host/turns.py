"""Long work in bounded turns of the event loop.

The event loop serves every resource's gRPC, so work that grows with a list (admitting
12,000 devices, parsing a probe's 12,000 entries) is written as a generator of steps that
yields when its `Pace` says: `in_turns` runs it a turn of the loop at a time (a call that
comes meanwhile waits for one turn at most), `to_the_end` at once where no loop waits.
Work in turns stays on the loop's thread: a worker thread would hold the interpreter lock
for up to its switch interval (5 ms) each time the loop wants it back.

A turn ends after `Pace.every` steps; a later turn also once it has held the loop for
`TURN_BUDGET`. An Allocate takes several turns of the loop (its request, its handler, each
offload call, its answer's write), and each of them waits for a turn of every long work
running then: beside a probe renaming 12,000 devices every 200 ms (parse, admission,
ListAndWatch encoding), turns of 200 devices took several milliseconds on a loaded machine,
and an Allocate's median went from ~2.5 ms to ~55 ms; turns of 0.1 ms brought it to
~6 ms, for no measurable CPU (a loop turn costs a few microseconds). The first turn is
counted only: it runs where the work arrives, and a short list is done there at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Final, TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]
"""Work that yields between two steps, when its pace says; its result is the return value."""


TURN_BUDGET: Final = 0.0001
"""Seconds a later turn holds the event loop at most (checked at each step: a step is a
device or an entry, a few to tens of microseconds)."""


@dataclass
class Pace:
    """How much work goes into a turn of the event loop: every `every` steps (a device, an
    entry each), `due` says yield (a long list never holds the loop for long); with a
    `budget`, a turn after the first also yields once it has run `budget` seconds (by
    `clock`), so a turn holds the loop about as long on a slow or busy machine as on a fast
    one. The first turn is counted only (it runs where the work arrives: a short list is done
    there at once, whatever the machine's speed)."""

    every: int
    budget: float | None = None
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    steps: int = 0
    _in_turn: int = field(default=0, init=False, repr=False)
    _began: float | None = field(default=None, init=False, repr=False)
    """When this turn began (None: the first turn, or a later one's first step not taken)."""
    _later: bool = field(default=False, init=False, repr=False)

    def due(self) -> bool:
        self.steps += 1
        self._in_turn += 1
        if self._in_turn >= self.every:
            return self._yield()
        if self.budget is None or not self._later:
            return False
        now = self.clock()
        if self._began is None:
            self._began = now
        elif now - self._began >= self.budget:
            return self._yield()
        return False

    def _yield(self) -> bool:
        self._in_turn, self._began, self._later = 0, None, True
        return True


def to_the_end(steps: Steps[T]) -> T:
    """Run `steps` to its end at once (no event loop to yield to)."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: T = done.value
        return result


async def in_turns(steps: Steps[T]) -> T:
    """Run `steps`, its first turn now, each later one in a later turn of the event loop;
    closed (at its yield) when cancelled."""
    try:
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
            await asyncio.sleep(0)
    finally:
        steps.close()
