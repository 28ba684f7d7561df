"""Where a directory a pod holds mounted is now: each such directory is kept open by its
inode (an `O_PATH` descriptor, which reads nothing and holds no lock), so when its path is
gone the kernel names its place now (`/proc/self/fd/N`), as the pod's bind mount, which
follows the inode, still shows it (issue 17, hostile19 F6: `mv` of the directory out of its
pattern, or of an `allocate.mounts` directory).

Used off the loop by the reads of the followed trees (`ownership_reads.TreeReads`); one
descriptor per directory, at most `PIN_LIMIT` (past it a directory is followed by its path
only, as before)."""

from __future__ import annotations

import os
import threading
from typing import Final

from .identity import DIRECTORY, identity_of
from .ownership_claims import ClaimKey

PIN_LIMIT: Final = 4096
"""Directories kept open at most (a descriptor each, well below the usual limits)."""
_FLAGS: Final = os.O_RDONLY | getattr(os, "O_PATH", 0) | os.O_DIRECTORY | os.O_CLOEXEC


class PinnedDirs:
    """The directories kept open, by the path they were followed at (thread-safe)."""

    def __init__(self, limit: int = PIN_LIMIT) -> None:
        self._pinned: dict[str, tuple[int, ClaimKey]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def pin(self, path: str, key: ClaimKey) -> None:
        """Keep the directory at `path` open, if it is `key` (what a read just found there)."""
        if key[0] != DIRECTORY or path in self._pinned or len(self._pinned) >= self._limit:
            return
        try:
            fd = os.open(path, _FLAGS | os.O_NOFOLLOW)
        except (OSError, ValueError):
            return
        try:
            same = identity_of(os.fstat(fd)) == key
        except OSError:
            same = False
        with self._lock:
            if same and path not in self._pinned:
                self._pinned[path] = (fd, key)
                return
        os.close(fd)

    def where(self, path: str, there: ClaimKey | None) -> tuple[ClaimKey, str] | None:
        """The directory pinned at `path`, and its real path now, when it is not there (a
        read found `there` at `path` instead: None, or another inode); None: it is there,
        it is gone (removed), or it was not pinned."""
        pinned = self._pinned.get(path)
        if pinned is None or there == pinned[1]:
            return None
        fd, key = pinned
        try:
            now = os.readlink(f"/proc/self/fd/{fd}")
            moved = now != path and now.startswith("/") and identity_of(os.lstat(now)) == key
        except (OSError, ValueError):
            return None  # (no /proc, removed: " (deleted)" names nothing, or moved again)
        return (key, now) if moved else None

    def unpin(self, path: str) -> None:
        """No booking holds the directory at `path` mounted now."""
        with self._lock:
            pinned = self._pinned.pop(path, None)
        if pinned is not None:
            os.close(pinned[0])

    def keys(self) -> frozenset[ClaimKey]:
        """The identities of the directories kept open."""
        with self._lock:
            return frozenset(key for _, key in self._pinned.values())

    def __len__(self) -> int:
        return len(self._pinned)
