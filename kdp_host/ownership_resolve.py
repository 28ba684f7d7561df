"""Resolving claimed paths off the event loop, bounded by a timeout.

A claim is what a host path reaches (`ownership_claims.reach`: lstat, stat, realpath). On
a hung file system (a dead NFS mount that a probe names) each of those blocks, so the host's
ownership index never resolves on the event loop: what one admission needs goes to the
host's offload in one batch (`PathResolver.resolve`). A path that does not answer within
the timeout is reported `HUNG`: its device is not advertised this time, and the next list
asks again. The thread stuck on it is not started a second time while it hangs (its path
stays `HUNG` until the call returns).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final, Literal

from .files import Offload
from .ownership_claims import Reached, Resolver

RESOLVE_TIMEOUT: Final = 2.0
"""Seconds one batch of paths may take before the path it is on counts as hung."""

STUCK_PER_BATCH: Final = 3
"""Hung paths one batch steps over before it gives the rest up until the next list."""

HUNG: Final = "hung"
Resolution = Reached | None | Literal["hung"]
"""What a path reaches, None (nothing there), or HUNG (no answer in time)."""


@dataclass
class PathResolver:
    """Resolves batches of paths through the host's offload (inline without one: unit
    tests and `kdp-host check`, where nothing else waits)."""

    resolver: Callable[[], Resolver]
    """A resolver for one batch (it may cache directories for that batch only)."""
    offload: Offload | None = None
    timeout: float = RESOLVE_TIMEOUT
    _stuck: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    """Paths a worker is still stuck on, with that worker's call."""

    def inline(self, paths: Collection[str]) -> dict[str, Resolution]:
        resolve = self.resolver()
        return {path: resolve(path) for path in paths}

    async def resolve(self, paths: Collection[str]) -> dict[str, Resolution]:
        """Every path's resolution, through the offload: a path the worker is still on when
        the timeout ends is HUNG, and the others go on in a new batch (after
        STUCK_PER_BATCH hung paths, the rest are HUNG too, until the next list)."""
        assert self.offload is not None
        results: dict[str, Resolution] = {path: HUNG for path in paths if path in self._stuck}
        todo = [path for path in paths if path not in results]
        for _ in range(STUCK_PER_BATCH):
            if not todo:
                break
            done: dict[str, Resolution] = {}
            current = [""]
            call = asyncio.ensure_future(self.offload.run(self._batch(todo, done, current)))
            finished, _ = await asyncio.wait({call}, timeout=self.timeout)
            results.update(dict(done))  # (the worker may add to `done` later: not read again)
            if finished:
                call.result()
                return results
            stuck = current[0]
            results[stuck] = HUNG
            self._stuck[stuck] = call
            call.add_done_callback(functools.partial(self._unstuck, stuck))
            todo = [path for path in todo if path not in results]
        results.update(dict.fromkeys(todo, HUNG))
        return results

    def _batch(
        self, todo: list[str], done: dict[str, Resolution], current: list[str]
    ) -> Callable[[], None]:
        resolve = self.resolver()

        def run() -> None:
            for path in todo:
                current[0] = path
                done[path] = resolve(path)

        return run

    def _unstuck(self, path: str, call: asyncio.Future[None]) -> None:
        if self._stuck.get(path) is call:
            del self._stuck[path]
        if not call.cancelled():
            call.exception()  # retrieved: an abandoned call's error is not an unhandled one
