"""Reading what arrived in mounted trees, off the event loop: each path by identity and
what is below it, bounded (`arrived`), and the reads of many trees in one worker-thread call
(`TreeReads`): a host that claims a thousand mounted directories at start reads their
trees in one hop, not a thousand.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .identity import DIRECTORY, identity_of
from .ownership_claims import ClaimKey
from .rules import below

Found = list[tuple[ClaimKey, str]]
"""What arrived: each entry's identity and its real path."""
Read = Callable[[list[str], int], tuple[Found, bool]]
"""A read of paths and what is below them, up to a limit (`arrived`)."""


def arrived(paths: Iterable[str], limit: int) -> tuple[Found, bool]:
    """Each path's identity (lstat: a link is not followed) and, below a directory, every
    entry's, up to `limit` entries in all (a directory's listing too); True: more were
    there (not read)."""
    found: Found = []
    todo = [os.path.normpath(path) for path in paths]
    left = False  # (entries of a directory not listed: the limit was reached)
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
            return found, bool(todo) or left or key[0] == DIRECTORY
        if key[0] == DIRECTORY and not (left and len(found) + len(todo) >= limit):
            # (past that, a listing adds nothing and `left` is said already: not opened;
            # a big directory's first read costs what its whole listing does)
            try:
                with os.scandir(path) as entries:
                    for entry in entries:  # (no more than the limit: a big directory)
                        if len(found) + len(todo) >= limit:
                            left = True
                            break
                        todo.append(entry.path)
            except OSError:
                continue
    return found, left


def tops(paths: Iterable[str]) -> list[str]:
    """`paths` but those below another of them (read with it)."""
    kept: list[str] = []
    for path in sorted(paths):
        if not kept or (path != kept[-1] and not below(path, kept[-1])):
            kept.append(path)
    return kept


@dataclass(eq=False)
class TreeReads:
    """The reads of one batch, run in one call off the loop (thread-safe): each tree's
    paths up to its limit. `close` stops it between two trees (past its timeout)."""

    jobs: list[tuple[str, list[str], int]]
    """Tree, the paths to read in it, the limit."""
    read: Read
    done: dict[str, tuple[Found, bool]] = field(default_factory=dict)
    running: str | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        for tree, paths, limit in self.jobs:
            with self.lock:
                if self.closed:
                    return
                self.running = tree
            result = self.read(paths, limit)
            with self.lock:
                self.done[tree] = result
                self.running = None

    def close(self) -> tuple[dict[str, tuple[Found, bool]], str | None]:
        """Stop (the trees not started are not read); what was read, and the tree whose
        read is still running."""
        with self.lock:
            self.closed = True
            return dict(self.done), self.running
