"""The reads an Allocate made below the directories its answer mounts, kept (`KeptReads`):
a read repeated for the same trees is answered from the last one while every directory it
listed is as it was (`KnownRead`, `read_or_recall`): their lstat, or, where the host's
inotify watcher follows each of them and every directory on the way (`places_followed`),
no change reported since an lstat found them so (issue 19: 15 lstats of a library mount's
directories at every Allocate).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .ownership_claims import ClaimKey
from .ownership_reads import Found, Listed, arrived, indexed_of
from .places_followed import FollowedPaths, Vouching

STEADY_FOR: Final = 3.0
"""Seconds since a listed directory last changed (its mtime and ctime) before a read of it
is kept: a file system stamps times from a coarse clock (a jiffy; FAT 2 s), so a change in
the same tick as the read may leave its directory's times as the read saw them."""
KEPT_FOR: Final = 30.0
"""Seconds a read is answered from at most: what no directory time shows (a file system
that keeps no directory times) is read again within the safety net's interval. A mount over
an entry changes no time either: reads are kept only while the mount table is followed,
whose change forgets them at once (`KeptReads.following_mounts`)."""


@dataclass(frozen=True)
class KnownRead:
    """A read's answer and the directories it listed, as they were: entries are made,
    removed, renamed or linked in a directory only with a new mtime, and what an entry is
    (its inode, its device number) does not change under its name, so while each listed
    directory is the same inode with the same times, a read again finds the same."""

    answer: tuple[Found, bool]
    listed: tuple[tuple[str, tuple[int, int, int, int]], ...]
    """Each listed directory's (st_dev, st_ino, st_mtime_ns, st_ctime_ns)."""
    at: float
    """When it was read (monotonic)."""
    local: bool = False
    """Every listed directory is on a local file system (`MountMap.local`): `holds` may
    run on the loop."""
    keys: frozenset[ClaimKey] = frozenset()
    """What the answer found, once (made off the loop with the read): an Allocate asks
    which of them another device owns by a look-up per claim held, not per entry."""
    indexed: frozenset[ClaimKey] = frozenset()
    """What it found as `NodesFound` keeps it, made with the read too (`ownership_shared`)."""

    def holds(self, now: float) -> bool:
        """Whether a read again now would find the same (its directories' lstat: off the
        loop, or on it where `local`)."""
        if now - self.at >= KEPT_FOR:
            return False
        for path, signature in self.listed:
            try:
                if _signature(os.lstat(path)) != signature:
                    return False
            except (OSError, ValueError):
                return False
        return True


def held_among(keys: frozenset[ClaimKey], held: Mapping[ClaimKey, object]) -> frozenset[ClaimKey]:
    """The keys of `keys` (`KnownRead.keys`) that `held` has (the claims owned, booked),
    walking the smaller of the two: the host's claims may be many, a read's entries too."""
    if len(held) <= len(keys):
        return keys.intersection(held)
    return frozenset(key for key in keys if key in held)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def read_or_recall(
    paths: Sequence[str], limit: int, known: KnownRead | None
) -> tuple[tuple[Found, bool], KnownRead | None]:
    """`arrived(paths, limit)`, answered from `known` while it holds (off the loop: one
    lstat a listed directory, not one an entry); with what to keep of this read (None: a
    path or a listing failed, or a directory changed within `STEADY_FOR`)."""
    now = time.monotonic()
    if known is not None and known.holds(now):
        return known.answer, known
    listed: Listed = []
    answer = arrived(paths, limit, listed)
    steady = time.time_ns() - int(STEADY_FOR * 1e9)
    names = {path for path, _ in listed}
    if any(os.path.normpath(p) not in names for p in paths) or any(
        st is None or max(st.st_mtime_ns, st.st_ctime_ns) > steady for _, st in listed
    ):
        return answer, None
    signatures = tuple((path, _signature(st)) for path, st in listed if st is not None)
    keys = frozenset(key for key, _ in answer[0])
    indexed = indexed_of(answer[0])
    return answer, KnownRead(answer, signatures, now, keys=keys, indexed=indexed)


FOLLOWED_READS: Final = 16
"""Kept reads the watcher follows at once (each of their listed directories a watch); the
others are vouched for by their lstats."""


@dataclass
class _Followed:
    """A kept read whose listed directories the watcher follows (`KeptReads.holds`)."""

    read: KnownRead
    paths: FollowedPaths | None = None
    quiet: bool = False
    """No change told since an lstat of its directories found them as the read saw them."""

    def heard(self, _paths: object) -> None:
        self.quiet = False


class KeptReads:
    """The reads an Allocate made below the directories its answer mounts, kept by the
    paths read (`KnownRead`): an Allocate repeated makes one lstat a listed directory, not
    one an entry (kept on the loop; checked on it where `KnownRead.local`, else off it), or
    none where the watcher follows them (`holds`)."""

    def __init__(self, limit: int = 256) -> None:
        self._reads: dict[tuple[str, ...], KnownRead] = {}
        self._limit = limit
        self.following_mounts = False
        """Whether the mount table's changes are followed (`clear`): nothing is kept before."""
        self.generation = 0
        """`clear`s so far: a read begun before one is not kept."""
        self._watcher: Vouching | None = None
        self._followed: dict[tuple[str, ...], _Followed] = {}

    def follow(self, following_mounts: bool, watcher: object) -> None:
        """The host's watcher follows the mount table (`following_mounts`) and, where it can
        vouch (`Vouching`: inotify), the kept reads' directories."""
        self.following_mounts = following_mounts
        self._watcher = watcher if following_mounts and isinstance(watcher, Vouching) else None

    def get(self, paths: tuple[str, ...]) -> KnownRead | None:
        return self._reads.get(paths)

    def holds(self, paths: tuple[str, ...], read: KnownRead, now: float) -> bool:
        """Whether `read`, kept for `paths`, would find the same now (`KnownRead.holds`, on
        the loop): with no lstat where the watcher follows every directory it listed and
        every one on the way, and told no change since their lstats found them as the read
        saw them, nor can have left one untold (`FollowedPaths.vouched`)."""
        if now - read.at >= KEPT_FOR:
            return False
        followed = self._followed.get(paths)
        if followed is not None and followed.read is not read:
            self._unfollow(paths)
            followed = None
        if followed is None and self._watcher is not None and len(self._followed) < FOLLOWED_READS:
            followed = self._followed[paths] = _Followed(read)  # (before the lstats: a change
            listed = [(path, True) for path, _ in read.listed]  # after them is told)
            followed.paths = FollowedPaths(self._watcher, listed, followed.heard)
        elif followed is not None and followed.quiet:
            assert followed.paths is not None
            if followed.paths.vouched():
                return True
        held = read.holds(now)
        if followed is not None:
            followed.quiet = held
        return held

    def keep(self, paths: tuple[str, ...], read: KnownRead | None, since: int) -> None:
        """Keep `read` of `paths`, begun at `generation` `since` (None: forget it)."""
        self._unfollow(paths)
        if read is None or not self.following_mounts or since != self.generation:
            self._reads.pop(paths, None)
            return
        if len(self._reads) >= self._limit and paths not in self._reads:
            self._forget()
        self._reads[paths] = read

    def clear(self) -> None:
        self._forget()
        self.generation += 1

    def _forget(self) -> None:
        self._reads.clear()
        for paths in list(self._followed):
            self._unfollow(paths)

    def _unfollow(self, paths: tuple[str, ...]) -> None:
        followed = self._followed.pop(paths, None)
        if followed is not None and followed.paths is not None:
            followed.paths.cancel()
