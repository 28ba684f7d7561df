"""The lock a write of a shared state file takes (`<name>.lock`, `state_file`), and what a
write that waits for it says (issue 17, hostile26 N6).

A shared file is written under an exclusive `fcntl.flock` of its lock file. Something that is
no regular file there (a directory, a FIFO, a symlink) is set aside as a bad file is and the
lock file made again (`atomic_files.open_lock`), so it never turns the writes off. A process
that keeps the lock (an operator's `flock`, a wedged earlier instance that is no host of the
directory any more) holds every write: the write waits for it off the loop, and the lock's
holder, told by `/proc/locks` (`lock_holders`), is what a stalled answer names (not a state
directory that does not answer, which it is when no lock is waited for). The file's owner
may follow such a hold (`LockWatch`: `ownership.json`'s is every resource's need `lock`,
`fence_stuck`), and decides meanwhile how long an answer waits for a write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Protocol

from .atomic_files import Aside, open_lock
from .lock_holders import lock_holder


class LockWatch(Protocol):
    """What a file's lock kept by another process means beyond the file."""

    def limit(self, full: float) -> float:
        """Seconds an answer waits for the file's write now (`full`: when nothing is kept)."""
        ...

    def held(self, holder: str, waited: float) -> None:
        """An answer's write waited `waited` s for the lock, held by `holder`."""
        ...


class FileLock:
    """`<name>.lock` of a shared state file, as its writes take it."""

    def __init__(self, path: str, aside: Aside) -> None:
        self.path, self._aside = path, aside
        self.holder: str | None = None
        """Who holds the lock while a write waits for it (`lock_holders`); None: none waits."""
        self.watch: LockWatch | None = None

    @contextlib.contextmanager
    def taken(self, held: int | None) -> Iterator[None]:
        """(Blocking) The lock held while the block runs: `held`, a descriptor this host holds
        it by already (`StateFile.held_lock`), or taken now, waiting for another process's
        hold (its holder named meanwhile: `holder`)."""
        if held is not None:
            yield
            return
        fd = open_lock(self.path, self._aside)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.holder = lock_holder(self.path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                finally:
                    self.holder = None
            yield
        finally:
            os.close(fd)

    def limit(self, full: float) -> float:
        """Seconds an answer waits for a write now (`LockWatch.limit`)."""
        return full if self.watch is None else self.watch.limit(full)

    def late(self, limit: float) -> str:
        """Why a write has not ended within `limit` s: the lock it waits for, and its holder;
        else a state directory that does not answer."""
        holder = self.holder
        if holder is None:
            return f"not written within {limit:g} s: stateDir does not answer"
        return f"not written within {limit:g} s: {os.path.basename(self.path)} held by {holder}"

    def stalled(self, limit: float) -> str:
        """`late`, for an answer that went out without its write: the watch is told."""
        holder, why = self.holder, self.late(limit)
        if holder is not None and self.watch is not None:
            self.watch.held(holder, limit)
        return why
