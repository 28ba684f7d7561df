"""Long work in bounded turns of the event loop.

The event loop serves every resource's gRPC, so work that grows with a list (admitting
12,000 devices, parsing a probe's 12,000 entries) is written as a generator of steps that
yields when its `Pace` says: `in_turns` runs it a turn of the loop at a time (a call that
comes meanwhile waits for one turn at most), `to_the_end` at once where no loop waits.
Work in turns stays on the loop's thread: a worker thread would hold the interpreter lock
for up to its switch interval (5 ms) each time the loop wants it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]
"""Work that yields between two steps, when its pace says; its result is the return value."""


@dataclass
class Pace:
    """How much work goes into a turn of the event loop: every `every` steps (a device, an
    entry each), `due` says yield (a long list never holds the loop for long)."""

    every: int
    steps: int = 0

    def due(self) -> bool:
        self.steps += 1
        return self.steps % self.every == 0


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
