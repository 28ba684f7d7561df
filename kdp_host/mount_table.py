"""Changes of the process's mount table: a mount made or removed in the host's mount
namespace changes what a path reaches with no inotify event anywhere; the kernel reports it
on /proc/self/mountinfo instead (POLLPRI|POLLERR). The watcher (`watch.Watcher.follow_mounts`)
hands it on."""

from __future__ import annotations

import asyncio
import os
import re
import select
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Final

from .logs import EventLogger
from .rules import below, parent

MountCallback = Callable[[], None]

MOUNTINFO = "/proc/self/mountinfo"
"""Where Linux reports a change of the process's mount table (poll: POLLPRI|POLLERR)."""
BELOW_LIMIT = 4096
"""Directories whose mount point a `MountMap` keeps found (`MountMap._point`)."""


class MountTable:
    """Changes of the process's mount table, on the watcher's loop.

    /proc/self/mountinfo is always readable, so the loop cannot wait for it to be: an epoll
    instance of its own waits for its POLLPRI (a change), and the loop waits for that
    instance's descriptor to be readable (`attach`). Opened at construction, so a change
    made before the loop runs is still reported. `open` is None where the file is absent or
    cannot be polled (not Linux, /proc not mounted): the caller says so once.
    """

    def __init__(self, fd: int, poller: select.epoll, log: EventLogger) -> None:
        self._fd = fd
        self._poller = poller
        self._log = log
        self._callbacks: list[MountCallback] = []
        self._due = False

    @classmethod
    def open(cls, log: EventLogger, path: str = MOUNTINFO) -> MountTable | None:
        fd = poller = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            poller = select.epoll()
            poller.register(fd, select.EPOLLPRI | select.EPOLLERR)
        except (OSError, AttributeError) as exc:  # (AttributeError: no epoll, not Linux)
            if poller is not None:
                poller.close()
            if fd is not None:
                os.close(fd)
            log.warning(
                "mount_changes_unwatched",
                path=path,
                reason=f"{type(exc).__name__}: {exc}",
                consequence="every Allocate resolves the paths it hands out",
            )
            return None
        return cls(fd, poller, log)

    def follow(self, callback: MountCallback) -> None:
        self._callbacks.append(callback)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self._poller.fileno(), self._changed)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._poller.fileno())

    def close(self) -> None:
        self._poller.close()
        os.close(self._fd)

    @property
    def fd(self) -> int:
        """The file's descriptor: a poll of it for POLLPRI asks whether the table changed
        since it was last asked (`noticed`: the loop's own look then finds nothing)."""
        return self._fd

    @property
    def due(self) -> bool:
        """A change was `noticed` that the callbacks were not told of yet."""
        return self._due

    def noticed(self) -> None:
        """A poll of `fd` found a change (`InotifyWatcher.untold`), which the loop's own look
        no longer finds: told on the loop's next turn, `due` until then."""
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self._changed)

    def _changed(self) -> None:
        self._due = False
        # The loop's own check of the epoll instance already took the change from the
        # file (its poll is what clears it): this poll only empties the instance's ready list
        # (else the loop would call again at once), and may find nothing.
        self._poller.poll(0)
        self._log.debug("mount_table_changed", action="paths resolved again")
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                self._log.exception("watch_callback_failed", dir=MOUNTINFO)


Source = tuple[str, str]
"""What a mount shows: its file system (`major:minor`) and the directory of that file system
at its root (a bind mount of `/srv/a` shows `/srv/a` of its file system)."""


LOCAL_FILE_SYSTEMS: Final = frozenset(
    {
        "btrfs", "devtmpfs", "erofs", "ext2", "ext3", "ext4", "f2fs", "overlay", "ramfs",
        "squashfs", "tmpfs", "vfat", "xfs", "zfs",
    }
)  # fmt: skip
"""File system types whose lookups wait on nothing but this machine's memory and disks:
no server, no user-space daemon (a network or FUSE file system can hang a lookup for good)."""


class MountMap:
    """Where else the mount table shows a path: a bind mount shows one directory (or file)
    at a second place, which `realpath` does not know (it is no link). Read from
    /proc/self/mountinfo (`read_mounts`); without a second mount of any file system, every
    path is only its own place at no cost. `types`: each mount point's file system type."""

    def __init__(
        self, mounts: Iterable[tuple[str, Source]] = (), types: Mapping[str, str] | None = None
    ) -> None:
        points: dict[str, Source] = {}
        for point, source in mounts:
            points[point] = source  # (a later mount on the same point hides the earlier)
        self._types = dict(types or {})
        shown: dict[str, list[tuple[str, str]]] = {}
        for point, (dev, root) in points.items():
            shown.setdefault(dev, []).append((root, point))
        self._points = points
        """Mount point -> what it shows (only those not hidden by a mount on them)."""
        self._shown = {dev: tuple(at) for dev, at in shown.items() if len(at) > 1}
        """File system -> (root, mount point) of each of its mounts, for those shown more
        than once (the others show each path once)."""
        self._in: dict[str, tuple[str, ...]] = {}
        """Directory -> the places its entries are shown at (`_entries_shown`)."""
        self._below: dict[str, str | None] = {}
        """Directory -> the mount point it is below (itself or its nearest ancestor that is
        one; None: none), as `_point` found it: the devices of one directory (every node and
        mount of every device admitted asks) walk up from it once."""

    def places(self, real: str) -> tuple[str, ...]:
        """Every place the mount table shows what is at `real` (a real path), `real` first:
        its file system's path through the mount it is below, then that path through every
        other mount of the same file system whose root holds it. An entry of a directory
        that is no mount point is shown at each place of its directory (`_in`), found once
        for the directory: every node and mount of every device admitted asks."""
        if not self._shown:
            return (real,)
        shown = self.entry_dirs(real)
        if shown is None:
            return self._places_of(real)
        name = real[real.rfind("/") + 1 :]
        return (real, *[f"{place}/{name}" if place != "/" else f"/{name}" for place in shown[1:]])

    def entry_dirs(self, real: str) -> tuple[str, ...] | None:
        """The places of the directory of `real` (a real path), when `real` is shown at each
        of them (with its name) and nowhere else, its directory first; None when not so: a
        mount point, `/` or an entry of it, or an entry of a directory a mount's root lies
        below (found once per directory: `_entries_shown`)."""
        directory, _, name = real.rpartition("/")
        if not directory or not name or directory.endswith("/") or real in self._points:
            return None
        if not self._shown:
            return (directory,)
        shown = self._in.get(directory)
        if shown is None:
            if len(self._in) >= BELOW_LIMIT:
                self._in.clear()
            shown = self._in[directory] = self._entries_shown(directory)
        return shown or None

    def _places_of(self, real: str) -> tuple[str, ...]:
        """`places`, found from the mount table alone."""
        at = self._on_shown(real)
        if at is None:
            return (real,)
        point, inside, mounts = at
        found = [real]
        for other_root, other_point in mounts:
            rest = _rest(inside, other_root)
            if rest is not None and other_point != point:
                place = _joined(other_point, rest)
                if place not in found:
                    found.append(place)
        return tuple(found)

    def _entries_shown(self, directory: str) -> tuple[str, ...]:
        """The places of `directory` (a real path), when each entry of it that is no mount
        point is shown at those places and nowhere else (one name added to each); () when
        not so: the root of a mount of its file system lies below it (an entry may be shown
        again there)."""
        at = self._on_shown(directory)
        if at is None:
            return (directory,)
        inside, mounts = at[1], at[2]
        if any(below(root, inside) for root, _ in mounts):
            return ()
        return self.places(directory)

    def showing(self, real: str) -> tuple[str, ...]:
        """Every place the mount table shows what is at `real` or anything below it: its
        `places`, then the mount point of every other mount of its file system whose root
        lies below it (a bind mount of a directory inside it shows part of it there)."""
        found = list(self.places(real))
        at = self._on_shown(real)
        if at is None:
            return tuple(found)
        _, inside, mounts = at
        for other_root, other_point in mounts:
            rest = _rest(other_root, inside)
            if rest and other_point not in found:
                found.append(other_point)
        return tuple(found)

    def _on_shown(self, real: str) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
        """For a real path on a file system shown more than once: the mount point it is
        below, its path within the file system and that file system's mounts (root, point);
        None for any other path."""
        if not self._shown:
            return None
        point = self._point(real)
        if point is None:
            return None
        dev, root = self._points[point]
        mounts = self._shown.get(dev)
        if mounts is None:
            return None
        return point, _joined(root, _rest(real, point)), mounts

    def _point(self, real: str) -> str | None:
        """The mount point `real` is below: itself or its nearest ancestor that is one."""
        if real in self._points:
            return real
        below, walked = self._below, []
        at = real
        while True:
            if at == "/":
                point = None
                break
            at = parent(at)
            if at in below:
                point = below[at]
                break
            walked.append(at)
            if at in self._points:
                point = at
                break
        if len(below) + len(walked) > BELOW_LIMIT:
            below.clear()  # (a table lives until the next mount change: bounded all the same)
        for directory in walked:
            below[directory] = point
        return point

    def of_types(self, types: Container[str]) -> tuple[tuple[str, str], ...]:
        """(mount point, type) of each mount (not hidden by a later one on its point) whose
        file system type is one of `types`, in the table's order."""
        return tuple((point, kind) for point, kind in self._types.items() if kind in types)

    def changed(self, other: MountMap) -> list[str]:
        """The mount points where `other` (the table read later) shows something else: a
        mount made, gone, or made over another (sorted)."""
        mine, theirs = self._points, other._points
        return sorted(p for p in mine.keys() | theirs.keys() if mine.get(p) != theirs.get(p))

    def local(self, real: str) -> bool:
        """Whether a lookup of the real path `real` crosses only mounts of
        `LOCAL_FILE_SYSTEMS` (False where the table does not say)."""
        point = self._point(real)
        if point is None:
            return False
        while True:
            if self._types.get(point) not in LOCAL_FILE_SYSTEMS:
                return False
            if point == "/":
                return True
            above = self._point(os.path.dirname(point))
            if above is None:
                return False
            point = above

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MountMap)
            and other._points == self._points
            and other._types == self._types
        )

    __hash__ = None  # type: ignore[assignment]


def _rest(path: str, base: str) -> str | None:
    """What follows `base` in `path` (`""` or `/...`); None: `path` is not `base` or below."""
    if base == "/":
        return path if path != "/" else ""
    if path == base:
        return ""
    return path[len(base) :] if path.startswith(base + "/") else None


def _joined(base: str, rest: str | None) -> str:
    if not rest:
        return base
    return rest if base == "/" else base + rest


def _unescape(field: str) -> str:
    """A mountinfo path field: a space, tab, newline and backslash are written in octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> MountMap:
    """The mount table from the text of a mountinfo file (lines that are not one are
    skipped)."""
    mounts: list[tuple[str, Source]] = []
    types: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5 or ":" not in fields[2]:
            continue
        point = _unescape(fields[4])
        mounts.append((point, (fields[2], _unescape(fields[3]))))
        types.pop(point, None)  # (a later mount on the same point hides the earlier)
        if "-" in fields[6:]:  # (optional fields, then "-", the type, the source, options)
            after = fields.index("-", 6) + 1
            types[point] = fields[after] if after < len(fields) else ""
    return MountMap(mounts, types)


def read_mounts(path: str = MOUNTINFO) -> MountMap:
    """The process's mount table now (procfs: answers at once); where it cannot be read,
    the empty one (every path its own place)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            return parse_mounts(file.read())
    except OSError:
        return MountMap()
