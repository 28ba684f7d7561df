"""The protected places by identity at one moment (`View`, what vouches it is still theirs:
`Followed`), the files in and below a protected directory (`walk`, brought up to date from
the names the watcher reported changed in it: `relisted`), and whether the directories
listed below it are unchanged (`unchanged`): what `handed.NeverHanded` compares a file's
identity with (a hard link of a protected file)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
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

    def named(self, directory: str) -> Collection[str] | None:
        """The names made, removed or renamed in the protected directory `directory` since
        it was last asked (None: any may have been, unheard: not followed throughout, the
        directory or one on the way to it replaced); what it says is not said again."""
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
    of: Identity | None = None
    """The directory's identity (a listing is of it, not of its path)."""
    top: Mapping[str, Identity | None] | None = None
    """Each name directly in it -> its identity (None: a directory); None: the listing
    was cut at its limit or an entry could not be read (not brought up to date:
    `relisted`)."""
    rest: frozenset[Identity] = frozenset()
    """The identities found below it (in the directories of `below`)."""
    room: int = 0
    """Entries left of the limit."""


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


def walk(
    top: str, device: int | None, mtime: int, taken: float, limit: int, of: Identity | None = None
) -> Listed:
    """The identities of the files in and below `top` on its file system `device` (None:
    none below it, /proc: the kernel's, no hard link reaches them), breadth-first, up to
    `limit` entries (`handed.TREE_LIMIT`)."""
    found: set[Identity] = set()
    rest: set[Identity] = set()
    named: dict[str, Identity | None] = {}
    below: list[tuple[str, int]] = []
    queue, left, whole = deque([top]), limit, True
    while queue and left > 0:
        directory = queue.popleft()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    left -= 1
                    if left < 0:
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        whole = False  # (not up to date from names: `relisted`)
                        continue
                    identity = None if st_isdir(st.st_mode) else identity_of(st)
                    if directory == top:
                        named[entry.name] = identity
                    elif identity is not None:
                        rest.add(identity)
                    if identity is not None:
                        found.add(identity)
                    elif st.st_dev == device:
                        queue.append(entry.path)
                        below.append((entry.path, st.st_mtime_ns))
        except OSError:
            whole = False
            continue
    whole = whole and not queue and left >= 0
    return Listed(
        mtime, frozenset(found), tuple(below), taken, of, named if whole else None,
        frozenset(rest), left,
    )  # fmt: skip


def relisted(
    listed: Listed, top: str, of: Identity, names: Iterable[str], mtime: int, taken: float
) -> Listed | None:
    """`listed` brought up to date with the names `names` in `top` (`of`) lstat'ed again
    (issue 19: the kubelet rewrites its checkpoint in its socket dir at every Allocate),
    or None where it cannot be (walked again): a listing cut at its limit or of another
    directory, a directory made, removed or renamed in it, one listed below it changed
    (`unchanged`), an entry that cannot be stat'ed."""
    if listed.top is None or listed.of != of or not unchanged(listed, taken):
        return None
    named, room = dict(listed.top), listed.room
    for name in names:
        if named.get(name, ()) is None:
            return None  # (a directory was there)
        try:
            st = os.lstat(os.path.join(top, name))
        except FileNotFoundError:
            room += name in named
            named.pop(name, None)
            continue
        except (OSError, ValueError):
            return None
        if st_isdir(st.st_mode):
            return None
        room -= name not in named
        named[name] = identity_of(st)
    if room < 0:
        return None
    files = listed.rest.union(i for i in named.values() if i is not None)
    return Listed(mtime, files, listed.below, taken, of, named, listed.rest, room)


class Listings:
    """The listing of each protected directory (`handed.NeverHanded`), taken again only
    when it may have changed."""

    def __init__(self, bounds: Callable[[], tuple[float, int]], unlinked: str) -> None:
        self._bounds, self._unlinked = bounds, unlinked
        """`handed.VIEW_AGE` and `handed.TREE_LIMIT` (read at each question), `handed.PROC`
        (no directory below it listed: the kernel's, no hard link reaches them)."""
        self._listed: dict[str, Listed] = {}

    def files(self, path: str) -> frozenset[Identity]:
        """The identities in and below `path` as last listed (`holds` listed it)."""
        return self._listed[path].files

    def holds(
        self,
        path: str,
        identity: Identity,
        mtime: int,
        taken: float,
        key: Identity,
        followed: Followed | None = None,
    ) -> bool:
        """Whether the file `key` is in or below the protected directory `path` (`identity`,
        `mtime` in the view taken at `taken`). Its listing (`walk`) is taken again when the
        directory changed, or a directory listed below it did: those are stat'ed again at
        most every `age` (a tree of `limit` entries costs as many stats), and always
        before a file found in the listing is taken for a hard link (one gone since may
        have left its inode number to `key`). Where `followed` follows it, only the names
        it reports made, removed or renamed in it since are lstat'ed (`relisted`), also
        where its mtime is as it was (a clock tick: two changes in one tick leave it so),
        and it is listed whole where `followed` cannot say (None)."""
        listed, (age, limit) = self._listed.get(path), self._bounds()
        asked = followed is not None and path != self._unlinked  # (the kernel's: untold)
        names = followed.named(path) if followed is not None and asked else None
        if (
            (not asked or (names is not None and not names))
            and listed is not None
            and listed.mtime == mtime
            and (taken - listed.checked < age or unchanged(listed, taken))
        ):
            if key not in listed.files:
                return False
            if listed.checked >= taken or unchanged(listed, taken):
                return True
        found = None
        if asked and names is not None and listed is not None:
            found = relisted(listed, path, identity, names, mtime, taken)
        if found is None:
            device = None if path == self._unlinked else int(identity[1]) >> 64
            found = walk(path, device, mtime, taken, limit, identity)
        self._listed[path] = found
        return key in found.files
