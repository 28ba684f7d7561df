"""A version number bumped on every change of the simulated kubelet, and waiting on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ChangeFeed:
    """``notify()`` after every change; waiters re-check their condition each time."""

    def __init__(self, describe: Callable[[], str]) -> None:
        self._describe = describe  # what the kubelet sees, for timeout messages
        self._condition = asyncio.Condition()
        self.version = 0

    async def notify(self) -> None:
        self.version += 1
        async with self._condition:
            self._condition.notify_all()

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float, description: str | None
    ) -> None:
        """Wait until ``predicate()`` is true. A predicate raising LookupError (e.g. a
        resource that has not registered yet) counts as false. Raises TimeoutError saying
        what it waited for and what the kubelet sees."""

        def check() -> bool:
            try:
                return bool(predicate())
            except LookupError:
                return False

        try:
            async with asyncio.timeout(timeout):
                async with self._condition:
                    await self._condition.wait_for(check)
        except TimeoutError:
            what = description or getattr(predicate, "__qualname__", repr(predicate))
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {what}; kubelet sees: {self._describe()}"
            ) from None

    async def wait_changed(self, since: int, timeout: float | None) -> int:
        async with asyncio.timeout(timeout):
            async with self._condition:
                await self._condition.wait_for(lambda: self.version != since)
        return self.version
