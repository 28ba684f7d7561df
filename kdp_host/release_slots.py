"""The release commands of a resource that run at once (`release.parallelism`): `Slots`.

At most `size` holders at once; a slot that frees goes to the first waiter a container start
waits for (`hurry`: a start that comes after its release queued still moves it up), else to
the first waiter. So the releases a PreStartContainer waits for
inside the kubelet's deadline run before those no start waits for yet (hostile13 M13).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class Slots:
    """`size` slots, handed to the waiters `hurry` named first, then in arrival order."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._urgent: set[str] = set()
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []

    def hurry(self, keys: Iterable[str]) -> None:
        """A container start waits for these keys' next holds: they go first (until such a
        hold ends, or its wait is cancelled; a key whose release needed no slot keeps it
        for its next one: one release early, harmless)."""
        self._urgent.update(keys)

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        """A slot while the block runs (`key`: whose, for `urgent`)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            entry = (key, asyncio.get_running_loop().create_future())
            self._waiting.append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                self._urgent.discard(key)
                if entry in self._waiting:
                    self._waiting.remove(entry)
                elif not entry[1].cancelled():
                    self._hand_on()  # (handed the slot, then cancelled: the next one's)
                raise
        try:
            yield
        finally:
            self._urgent.discard(key)
            self._hand_on()

    def _hand_on(self) -> None:
        """A slot freed: to the first urgent waiter, else the first one, else free (a waiter
        cancelled meanwhile, not yet woken to leave the queue, is skipped)."""
        while self._waiting:
            entry = next((e for e in self._waiting if e[0] in self._urgent), self._waiting[0])
            self._waiting.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)
                return
        self._free += 1

    def waiting(self) -> int:
        """How many wait for a slot."""
        return len(self._waiting)
