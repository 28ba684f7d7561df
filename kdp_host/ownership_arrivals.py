"""What arrives in a mounted directory: a claimed node, file or directory renamed (or hard
linked) into a directory another device mounts is the same identity at a new real path, and
a pod given that mount would reach it.

The watcher follows each claimed directory itself (its entries, not the tree below: no walk
of a mounted tree on any event). An entry that appears there is resolved off the loop by
identity (not following links: a link in a mounted directory is resolved inside the
container), and, when it is a directory (renamed in with what it holds), what is below it
too, up to `ARRIVAL_LIMIT` entries: the cost is what changed. The index then counts each
claim found at its new place (`Containment.move`) and rechecks the devices that mount a
directory above it (`OwnershipIndex._arrived`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

from .files import Offload
from .identity import DIRECTORY, identity_of
from .logs import EventLogger
from .ownership_claims import ClaimKey

if TYPE_CHECKING:
    from .watch import Watcher

ARRIVAL_LIMIT: Final = 4096
"""Entries read below one directory renamed into a mounted directory (the rest is logged,
`arrival_unread`)."""
ARRIVAL_TIMEOUT: Final = 2.0
"""Seconds the read of what arrived may take (a hung file system is left, logged)."""

Found = list[tuple[ClaimKey, str]]
"""What arrived: each entry's identity and its real path."""


def arrived(paths: Iterable[str], limit: int = ARRIVAL_LIMIT) -> tuple[Found, bool]:
    """Each path's identity (lstat: a link is not followed) and, below a directory, every
    entry's, up to `limit` entries in all; True: more were there (not read)."""
    found: Found = []
    todo = [os.path.normpath(path) for path in paths]
    while todo:
        path = todo.pop()
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            continue  # (gone again, or no path)
        if stat.S_ISLNK(st.st_mode):
            continue
        key = identity_of(st)
        found.append((key, path))  # (its directory's real path, and its name)
        if len(found) >= limit:
            return found, bool(todo) or key[0] == DIRECTORY
        if key[0] == DIRECTORY:
            try:
                with os.scandir(path) as entries:
                    todo += [entry.path for entry in entries]
            except OSError:
                continue
    return found, False


class Arrivals:
    """Follows claimed directories for entries that appear in them; hands what they are to
    `found` (on the loop), once per burst of events."""

    def __init__(
        self,
        found: Callable[[Found], None],
        offload: Offload | None,
        read: Callable[[list[str]], tuple[Found, bool]] = arrived,
    ) -> None:
        self._found = found
        self._offload = offload
        self._read = read
        self._followed: dict[str, EventLogger | None] = {}
        """Directory followed -> the log of the resource that claimed it first."""
        self._pending: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def follow(self, watcher: Watcher, directory: str, log: EventLogger | None) -> None:
        """Follow what appears in `directory` (a claimed directory's real path), for as long
        as the host runs."""
        if directory in self._followed:
            return
        self._followed[directory] = log
        watcher.subscribe(directory, functools.partial(self._changed, directory))

    async def quiet(self) -> None:
        """Return once what arrived so far was read and handed on."""
        while self._task is not None:
            await asyncio.wait({self._task})

    def _changed(self, directory: str, name: str | None) -> None:
        if name is None:
            return  # (the directory itself: its claim is followed where it is named)
        self._pending.setdefault(directory, set()).add(os.path.join(directory, name))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read_pending())

    async def _read_pending(self) -> None:
        try:
            while self._pending:
                directory, paths = self._pending.popitem()
                log = self._followed.get(directory)
                try:
                    found, more = await self._run(functools.partial(self._read, sorted(paths)))
                except TimeoutError:
                    found, more = [], True
                if more and log is not None:
                    log.warning(
                        "arrival_unread",
                        dir=directory,
                        limit=ARRIVAL_LIMIT,
                        timeout=ARRIVAL_TIMEOUT,
                        consequence="claims deeper in what arrived there are not seen there",
                    )
                self._found(found)
        finally:
            self._task = None

    def _run(self, call: Callable[[], tuple[Found, bool]]) -> Awaitable[tuple[Found, bool]]:
        if self._offload is None:
            done: asyncio.Future[tuple[Found, bool]] = asyncio.Future()
            done.set_result(call())
            return done
        return asyncio.wait_for(self._offload.run(call), ARRIVAL_TIMEOUT)
