"""The protected places by identity at one moment (`View`, what vouches it is still theirs:
`Followed`), the files in and below a protected directory (`walk`), and whether the
directories listed below it are unchanged (`unchanged`): what `handed.NeverHanded` compares a
file's identity with (a hard link of a protected file)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from stat import S_ISDIR as st_isdir
from typing import Protocol

from ..identity import Identity, identity_of


@dataclass(frozen=True)
class View:
    """The protected places' stats at one moment: who is what by identity."""

    taken: float
    devices: frozenset[int]
    """The file systems of the protected places (a key on another one is none of them)."""
    root: Identity | None
    files: tuple[tuple[str, Identity, bool], ...]
    """(what, identity, refused only handed writable: a command's executable)."""
    dirs: tuple[tuple[str, str, Identity, int], ...]
    """(what, path, identity, mtime) of each protected directory there."""
    stats: Mapping[str, os.stat_result | None]
    """The stat of each path it was made of (`NeverHanded.followed_paths`)."""


class FollowedRule(Protocol):
    """What `Followed` follows the places of (`handed.NeverHanded`)."""

    def followed_paths(self) -> tuple[tuple[str, bool], ...]: ...


class Followed(Protocol):
    """What vouches that the protected places' stats taken last are still theirs
    (`places_followed.FollowedPlaces`: the watcher follows them)."""

    def changed(self, rule: FollowedRule) -> Collection[str] | None:
        """The paths of `rule.followed_paths()` that may have changed since it was last
        asked (None: any may have); what it says is not said again."""
        ...


@dataclass
class Listed:
    """The identities of the files in and below a protected directory (`walk`), as of its
    mtime and those of the directories below it that were listed."""

    mtime: int
    files: frozenset[Identity]
    below: tuple[tuple[str, int], ...] = ()
    """(path, mtime) of each directory listed below it."""
    checked: float = float("-inf")
    """`View.taken` of the last view its `below` was found unchanged in."""


def unchanged(listed: Listed, taken: float) -> bool:
    """Whether no directory listed below a protected one changed (stat'ed now, for the
    view taken at `taken`)."""
    for directory, mtime in listed.below:
        try:
            if os.stat(directory).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    listed.checked = taken
    return True


def walk(top: str, device: int | None, mtime: int, taken: float, limit: int) -> Listed:
    """The identities of the files in and below `top` on its file system `device` (None:
    none below it, /proc: the kernel's, no hard link reaches them), breadth-first, up to
    `limit` entries (`handed.TREE_LIMIT`)."""
    found: set[Identity] = set()
    below: list[tuple[str, int]] = []
    queue, left = deque([top]), limit
    while queue and left > 0:
        try:
            with os.scandir(queue.popleft()) as entries:
                for entry in entries:
                    left -= 1
                    if left < 0:
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not st_isdir(st.st_mode):
                        found.add(identity_of(st))
                    elif st.st_dev == device:
                        queue.append(entry.path)
                        below.append((entry.path, st.st_mtime_ns))
        except OSError:
            continue
    return Listed(mtime, frozenset(found), tuple(below), taken)
