"""Resolving batches of claimed paths off the event loop, bounded by a timeout.

A claim is what a host path reaches (`ownership_claims.reach`: lstat, stat, realpath). On
a hung file system (a dead NFS mount that a probe names) each of those blocks, so the host's
ownership index never resolves on the event loop: what one admission needs goes to the
host's offload in one batch (`PathResolver.resolve`). A path that does not answer within
the timeout is reported `HUNG`. The thread stuck on it is not started a second time while
it hangs (its path stays `HUNG` until the call returns), and no more workers go to the
directories of stuck paths while `MAX_STUCK` are stuck.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final, Literal

from .files import Offload
from .ownership_canonical import checked_reach
from .ownership_claims import Reached

RESOLVE_TIMEOUT: Final = 2.0
"""Seconds one batch of paths may take before the path it is on counts as hung."""
STUCK_PER_BATCH: Final = 3
"""Hung paths one batch steps over before it gives the rest up until the next list."""
MAX_STUCK: Final = 4
"""Workers stuck on paths at once beyond which a path given up on before is not tried."""

QUEUED_LIMIT: Final = 30.0
"""Seconds a batch may wait for a worker (every one busy) before it is given up."""

HUNG: Final = "hung"
Resolution = Reached | None | Literal["hung", "unresolvable"]
"""What a path reaches, None (nothing there), HUNG (no answer in time) or UNRESOLVABLE (its
real path does not name what it reaches: `ownership_canonical.checked_reach`)."""
PathResolve = Callable[[str], Reached | Literal["unresolvable"] | None]
"""What resolves a path (`ownership_canonical.checked_reach`; a test's `Resolver`)."""


@dataclass
class PathResolver:
    """Resolves batches of paths through the host's offload (inline without one: unit
    tests and `kdp-host check`, where nothing else waits)."""

    resolver: Callable[[], PathResolve]
    """A resolver for one batch (it may cache directories for that batch only)."""
    offload: Offload | None = None
    timeout: float = RESOLVE_TIMEOUT
    _stuck: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    """Paths a worker is still stuck on, with that worker's call."""
    _suspect: set[str] = field(default_factory=set)
    """Directories of paths a worker got stuck on, none of whose paths resolved since: their
    paths are tried last, and not at all while MAX_STUCK workers are stuck (a dead file
    system must not take every worker of the offload)."""

    def inline(self, paths: Collection[str]) -> dict[str, Resolution]:
        resolve = self.resolver()
        return {path: resolve(path) for path in paths}

    async def resolve(self, paths: Collection[str]) -> dict[str, Resolution]:
        """Every path's resolution, through the offload. A path the worker has been on for
        the whole timeout is HUNG, and the others go on in a new batch; after
        STUCK_PER_BATCH such paths the rest are HUNG too, until the next list. (Time a
        batch waits for a worker, or spends on other paths, is no hang.)"""
        assert self.offload is not None
        results: dict[str, Resolution] = {path: HUNG for path in paths if path in self._stuck}
        crowded = len(set(self._stuck.values())) >= MAX_STUCK
        for path in paths:
            if crowded and self._suspected(path):
                results[path] = HUNG  # (no more workers for a file system that hangs)
        todo = sorted((p for p in paths if p not in results), key=self._suspected)
        for _ in range(STUCK_PER_BATCH):
            if not todo:
                break
            done: dict[str, Resolution] = {}
            current = [("", 0.0)]
            call = asyncio.ensure_future(self.offload.run(self._batch(todo, done, current)))
            waited = 0.0
            while not call.done():
                await asyncio.wait({call}, timeout=self.timeout)
                waited += self.timeout
                path, since = current[0]
                if path and time.monotonic() - since >= self.timeout:
                    break
                if not path and waited >= QUEUED_LIMIT:
                    break  # never started: every worker is taken
            results.update(dict(done))  # (the worker may add to `done` later: not read again)
            if self._suspect:
                self._suspect.difference_update(os.path.dirname(path) for path in done)
            if call.done():
                call.result()
                return results
            stuck = current[0][0]
            if stuck:
                results[stuck] = HUNG
                self._suspect.add(os.path.dirname(stuck))
                self._stuck[stuck] = call
                call.add_done_callback(functools.partial(self._unstuck, stuck))
            else:
                call.cancel()
                break
            todo = [path for path in todo if path not in results]
        results.update(dict.fromkeys(todo, HUNG))
        return results

    def _suspected(self, path: str) -> bool:
        return bool(self._suspect) and os.path.dirname(path) in self._suspect

    def _batch(
        self, todo: list[str], done: dict[str, Resolution], current: list[tuple[str, float]]
    ) -> Callable[[], None]:
        resolve = self.resolver()

        def run() -> None:
            for path in todo:
                current[0] = (path, time.monotonic())
                done[path] = resolve(path)

        return run

    def _unstuck(self, path: str, call: asyncio.Future[None]) -> None:
        if self._stuck.get(path) is call:
            del self._stuck[path]
        if not call.cancelled():
            call.exception()  # retrieved: an abandoned call's error is not an unhandled one


def batch_reach() -> PathResolve:
    """`checked_reach` with a cache of directories' real paths for one batch."""
    return functools.partial(checked_reach, real_dirs={})
