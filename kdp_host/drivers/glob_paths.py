"""What a path matched by a glob pattern is: which physical device it reaches (identity),
what its device ID is, whether it can be a device at all, and which directories to watch.

Identity (`identity.identity_of`): a character or block device node is identified by its
device number (`st_rdev`, so a node and every symlink or second node for it are one device),
anything else by its inode (a hard link to a file is the same device). IDs: `DeviceIds`, a
pure function of the device's canonical path (the resolved real path of the node) and the
patterns, never of which matched path (a link or the node itself) led to it, so a link that
appears or vanishes never renames a device.
A device already listed keeps its ID and host path while it stays present (`assign_ids`):
a second node for its device number, whatever its path, never renames it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Generic, NamedTuple, TypeVar

from .. import rules
from ..identity import UNRESOLVABLE, Identity, identity_of, names_it
from ..names import PATH_ID, make_name
from .base import Skipped
from .glob_walk import glob_paths
from .scanner import ScanGuard

_HASH_SUFFIX = re.compile(r"-[0-9a-f]{10}\Z")

DeviceIdentity = Identity
"""('c' or 'b', st_rdev) for device nodes, ('f', inode) for anything else."""


def fixed_parent(pattern: str) -> str:
    """The deepest directory of `pattern` with no wildcard in it."""
    parts = pattern.split("/")[:-1]
    for index, part in enumerate(parts):
        if rules.GLOB_MAGIC.search(part):
            parts = parts[:index]
            break
    return "/".join(parts) or "/"


def _depth(pattern: str, base: str) -> int:
    return len(pattern[len(base.rstrip("/")) :].strip("/").split("/"))


class DeviceIds:
    """The ID of a device's canonical path (its resolved real path): a pure function of
    that path and the patterns, distinct for distinct paths.

    The path is taken relative to the patterns' common fixed directory (`/dev/fpga0` under
    `/dev/fpga*` -> `fpga0`; `/dev/bus/usb/001/002` under `/dev/bus/usb/*/*` -> `001-002`),
    `/` written as `-`. That readable form is used only where it cannot be confused with
    another path's: a path outside that directory (a link's target elsewhere), characters
    outside `[A-Za-z0-9._-]`, `-` or `_` inside a multi-level path, `-` in a one-level name
    when the patterns reach different depths, a result that is too long, starts with `-` or
    ends like a hashed ID all take the hashed form instead (`names.PATH_ID`): a sanitized
    prefix plus `-` and 10 hex digits of the path's SHA-256 (the prefix of a path outside
    the directory is its file name: `/dev/ttyUSB0` under `/dev/serial/by-id/*` ->
    `ttyUSB0-<10 hex>`).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        bases = [fixed_parent(p) for p in patterns]
        self.base = os.path.commonpath(bases) if bases else "/"
        self._prefix = self.base.rstrip("/") + "/"
        self._mixed_depths = len({_depth(p, self.base) for p in patterns}) > 1

    def __call__(self, path: str) -> str:
        inside = path.startswith(self._prefix)
        rel = path[len(self._prefix) :] if inside else path.lstrip("/")
        parts = rel.split("/")
        joined = "-".join(parts)
        if (
            inside
            and PATH_ID.unsafe.search(joined) is None
            and joined not in (".", "..")
            and rules.device_id_problem(joined) is None
            and not _HASH_SUFFIX.search(joined)
            and not (len(parts) > 1 and ("-" in rel or "_" in rel))
            and not (len(parts) == 1 and self._mixed_depths and "-" in rel)
        ):
            return joined
        return make_name(path, PATH_ID, shown=joined if inside else parts[-1])


def watch_dirs(pattern: str, guard: ScanGuard) -> list[str]:
    """Directories whose entries decide what `pattern` matches (inotify is not recursive)."""
    parent = os.path.dirname(pattern)
    base = fixed_parent(pattern)
    dirs = [base]
    if parent != base:
        parts = parent.split("/")
        for depth in range(len(base.rstrip("/").split("/")) + 1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            dirs.extend(p for p in glob_paths(prefix, guard, pattern) if os.path.isdir(p))
    return dirs


def printable_path(path: str) -> str:
    """`path` for a log line: bytes that are not printable ASCII escaped (`\\xff`, `\\n`)."""
    return repr(os.fsencode(path))[2:-1]


def name_problem(path: str) -> str | None:
    """Why a matched path cannot become a device, or None: it must pass as text to the
    kubelet and the runtime and log cleanly (no bytes that are not UTF-8, no control
    characters: rules.absolute_path_problem)."""
    return rules.absolute_path_problem(path)


class Found(NamedTuple):
    """A matched path that is a device: where it really is, and which device it is."""

    real_path: str
    identity: DeviceIdentity
    link_dir: str | None
    """For a symlink: the directory of its target (watched: the target may vanish)."""


class Assigned(NamedTuple):
    """A device's ID and the path it is passed as."""

    device_id: str
    host_path: str


def assign_ids(
    by_identity: Mapping[DeviceIdentity, Sequence[tuple[str, str]]],
    held: Mapping[DeviceIdentity, Assigned],
    ids: DeviceIds,
) -> tuple[dict[DeviceIdentity, Assigned], dict[DeviceIdentity, DeviceIdentity]]:
    """The ID of each device of a scan (its (matched path, real path) pairs by identity),
    and the devices left out because their ID is another's (identity -> the holder's).

    A device listed last time (`held`) keeps its ID, and its host path while that path still
    reaches it (else the canonical path of what does): a second node with the same device
    number and a lower path (`mknod`, a devtmpfs alias) never renames a device the kubelet
    may have given to a pod. A new device gets the ID of its canonical path; if a listed
    device holds that ID, the newcomer waits (`id_collision`) until the holder is gone.
    """
    assigned: dict[DeviceIdentity, Assigned] = {}
    owner: dict[str, DeviceIdentity] = {}
    collided: dict[DeviceIdentity, DeviceIdentity] = {}
    # The devices that hold an ID first, so a newcomer never takes theirs.
    for identity in sorted(by_identity, key=lambda identity: identity not in held):
        paths = by_identity[identity]
        kept = held.get(identity)
        if kept is not None and any(real == kept.host_path for _matched, real in paths):
            choice = kept
        elif kept is not None:
            choice = Assigned(kept.device_id, canonical_path(paths))
        else:
            canonical = canonical_path(paths)
            choice = Assigned(ids(canonical), canonical)
        holder = owner.setdefault(choice.device_id, identity)
        if holder != identity:
            collided[identity] = holder
            continue
        assigned[identity] = choice
    return assigned, collided


def canonical_path(paths: Sequence[tuple[str, str]]) -> str:
    """The canonical path of one device from its (matched path, real path) pairs: the real
    path of the node (the least one where two nodes share a device number). A pure function
    of the set of real nodes, never of which links to them exist."""
    return min(real for _matched, real in paths)


def examine(path: str, real_dirs: dict[str, str]) -> Found | Skipped | None:
    """What a matched path is: a device, a skipped path (with why), or None (a directory, or
    gone since the glob).

    One lstat for a plain path: its real path is its directory's real path (cached in
    `real_dirs` for one scan) joined with its name; a symlink must lead to an existing
    non-directory.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    link_dir = None
    if stat.S_ISLNK(st.st_mode):
        real_path = os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            reason = "link_loop" if exc.errno == errno.ELOOP else "dangling_link"
            return Skipped(reason, printable_path(path), f"symlink leads nowhere: {exc.strerror}")
        link_dir = os.path.dirname(real_path)
    elif stat.S_ISDIR(st.st_mode):
        return None
    else:
        parent, name = os.path.split(path)
        real_parent = real_dirs.get(parent)
        if real_parent is None:
            real_parent = real_dirs[parent] = os.path.realpath(parent)
        real_path = path if real_parent == parent else os.path.join(real_parent, name)
    if stat.S_ISDIR(st.st_mode):
        return None
    if real_path != path and not names_it(st, real_path):
        return Skipped(
            UNRESOLVABLE,
            printable_path(path),
            f"its real path {printable_path(real_path)} is not what the path reaches (a "
            "magic link such as /proc/<pid>/root, or changed while it was resolved)",
        )
    return Found(real_path, identity_of(st), link_dir)


T = TypeVar("T")


def _leaf_pattern(pattern: str) -> tuple[str, str] | None:
    """(directory, leaf) of a pattern whose only wildcards are in its last component, the
    case a change named by the watcher can be applied to directly; else None."""
    directory, leaf = os.path.split(pattern)
    if rules.GLOB_MAGIC.search(directory) or os.path.normpath(pattern) != pattern:
        return None  # (a path spelt with `//` or `.` is listed as spelt, not as named)
    return directory, leaf


def _leaf_matches(leaf: str, name: str) -> bool:
    """What glob.glob lists in a directory: names matching `leaf`, hidden ones only when
    `leaf` starts with a dot."""
    if name.startswith(".") and not leaf.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, leaf)


DirLinks = dict[str, tuple[tuple[str, ...], str]]
"""Per directory (as spelt): the links resolving it passes through and where it leads."""


def links_on_the_way(path: str, limit: int = 40, dirs: DirLinks | None = None) -> tuple[str, ...]:
    """Every symlink that resolving `path` passes through, each named as the path it has
    there: a matched path depends on all of them (`dev/a0/a1` through a link `dev/a0 -> dev`
    depends on `dev/a1`), not only on itself and its real path.

    With `dirs` (kept for one scan), the directory above `path` is walked once, not once per
    path in it: one lstat per path instead of one per component of each."""
    parts = [part for part in path.split("/") if part]
    if dirs is None or len(parts) < 2:
        links: list[str] = []
        _follow(parts, "/", links, limit)
        return tuple(links)
    directory = "/".join(parts[:-1])
    known = dirs.get(directory)
    if known is None:
        links = []
        end = _follow(parts[:-1], "/", links, limit)
        known = dirs[directory] = (tuple(links), end)
    links = list(known[0])
    _follow(parts[-1:], known[1], links, limit)
    return tuple(links)


def _follow(parts: list[str], current: str, links: list[str], limit: int) -> str:
    """Resolve `parts` from the directory `current`, adding each symlink passed through to
    `links` (at most `limit`); where they lead."""
    pending = list(reversed(parts))
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if len(links) >= limit or not os.path.islink(candidate):
            current = candidate
            continue
        links.append(candidate)
        try:
            target = os.readlink(candidate)
        except OSError:
            current = candidate
            continue
        if target.startswith("/"):
            current = "/"
        pending.extend(part for part in reversed(target.split("/")) if part)
    return current


class MatchCache(Generic[T]):
    """What a scan learnt about each matched path, kept for the next scan, so that a scan
    told which paths changed (the watcher's names) looks again only at those: O(changed)
    system calls instead of one listing and a few per path.

    A kept answer is reused while neither the path nor its real path, nor a directory above
    either, was named as changed; anything else is looked at again. The listing of a
    pattern whose wildcards are all in its last component is the last listing with the
    named entries of its directory added or removed; other patterns are listed again.
    Without a change set (None: the first scan, a safety-net rescan) nothing is reused.
    Used by one scan at a time (the scan loop never runs two at once).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = tuple(patterns)
        self._leaves = tuple(_leaf_pattern(p) for p in self._patterns)
        self._listed: list[list[str] | None] = [None] * len(self._patterns)
        self._kept: dict[Hashable, tuple[T, str | None, tuple[str, ...]]] = {}
        self._seen: dict[Hashable, tuple[T, str | None, tuple[str, ...]]] = {}
        self._dirs: DirLinks = {}
        """The links above each directory, learnt in this scan."""
        self._changed: frozenset[str] | None = None
        self._below: tuple[str, ...] = ()

    def begin(self, changed: frozenset[str] | None) -> None:
        self._changed = changed
        self._below = tuple(path.rstrip("/") + "/" for path in changed or ())
        """Everything below a changed path (a directory replaced) changed too."""
        self._seen = {}
        self._dirs = {}
        if changed is None:
            self._kept = {}
            self._listed = [None] * len(self._patterns)

    def end(self) -> None:
        """Keep what this scan saw (and only that) for the next."""
        self._kept, self._seen = self._seen, {}

    def matched(self, index: int, guard: ScanGuard) -> list[str]:
        """The paths pattern `index` matches now, in sorted order (walked under `guard`:
        raises DriverError)."""
        pattern = self._patterns[index]
        listed = self._listed[index]
        leaf = self._leaves[index]
        changed = self._changed
        if listed is None or leaf is None or changed is None:
            listed = sorted(glob_paths(pattern, guard))
        else:
            directory, name_pattern = leaf
            named = [
                path
                for path in changed
                if os.path.dirname(path) == directory
                and _leaf_matches(name_pattern, os.path.basename(path))
            ]
            if named:
                paths = set(listed)
                for path in named:
                    if os.path.lexists(path):
                        paths.add(path)
                    else:
                        paths.discard(path)
                listed = sorted(paths)
                guard.match(pattern, len(listed))
        self._listed[index] = listed
        return listed

    def lookup(self, key: Hashable, path: str, look: Callable[[], tuple[T, str | None, bool]]) -> T:
        """What `key` (a matched `path`) is: the answer kept from the last scan if neither
        the path nor the real path it had changed, else `look()`'s: (the answer, the real
        path it depends on (`path` itself when no link is on the way), whether it may be
        kept: a dangling link may not)."""
        kept = self._kept.get(key)
        if (
            kept is not None
            and not self._touched(path)
            and (kept[1] is None or not self._touched(kept[1]))
            and not any(self._touched(link) for link in kept[2])
        ):
            self._seen[key] = kept
            return kept[0]
        value, real_path, keep = look()
        if keep:
            # A path that is its own real path passes through no link (resolving it went
            # through none): no lstat of each of its components again.
            links = () if real_path == path else links_on_the_way(path, dirs=self._dirs)
            self._seen[key] = (value, real_path, links)
        return value

    def _touched(self, path: str) -> bool:
        changed = self._changed
        if changed is None:
            return True
        return path in changed or path.startswith(self._below)
