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
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .. import rules
from ..devices import Device
from ..identity import UNRESOLVABLE, Identity, Uncheckable, absent, identity_of, names_it
from ..identity import real_path as resolve
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
    held: Mapping[DeviceIdentity, Device],
    ids: DeviceIds,
) -> tuple[dict[DeviceIdentity, Assigned], dict[DeviceIdentity, DeviceIdentity]]:
    """The ID of each device of a scan (its (matched path, real path) pairs by identity),
    and the devices left out because their ID is another's (identity -> the holder's).

    A device listed last time (`held`: its Device by identity) keeps its ID, and its host
    path (its node's) while that path still
    reaches it (else the canonical path of what does): a second node with the same device
    number and a lower path (`mknod`, a devtmpfs alias) never renames a device the kubelet
    may have given to a pod. A new device gets the ID of its canonical path; if a listed
    device holds that ID, the newcomer waits (`id_collision`) until the holder is gone.
    """
    assigned: dict[DeviceIdentity, Assigned] = {}
    owner: dict[str, DeviceIdentity] = {}
    collided: dict[DeviceIdentity, DeviceIdentity] = {}
    # The devices that hold an ID first, so a newcomer never takes theirs (a first scan
    # holds none: nothing to sort).
    order = sorted(by_identity, key=lambda i: i not in held) if held else by_identity
    for identity in order:
        paths = by_identity[identity]
        kept = held.get(identity)
        if kept is not None:
            host_path = kept.nodes[0].host_path
            if not any(real == host_path for _matched, real in paths):
                host_path = canonical_path(paths)
            choice = Assigned(kept.id, host_path)
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
    if len(paths) == 1:
        return paths[0][1]  # (the common device: one path)
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
    try:
        if stat.S_ISLNK(st.st_mode):
            real_path = resolve(path)
            try:
                st = os.stat(path)
            except OSError as exc:
                if not absent(exc) and exc.errno != errno.ELOOP:
                    raise Uncheckable(path, exc) from None
                reason = "link_loop" if exc.errno == errno.ELOOP else "dangling_link"
                why = f"symlink leads nowhere: {exc.strerror}"
                return Skipped(reason, printable_path(path), why)
            link_dir = os.path.dirname(real_path)
        elif stat.S_ISDIR(st.st_mode):
            return None
        else:
            at = path.rfind("/") + 1  # (`os.path.split`, without its per-call look-ups)
            parent, name = rules.parent(path), path[at:]
            real_parent = real_dirs.get(parent)
            if real_parent is None:
                real_parent = real_dirs[parent] = resolve(parent)
            real_path = path if real_parent == parent else os.path.join(real_parent, name)
    except Uncheckable as exc:
        return Skipped(UNRESOLVABLE, printable_path(path), f"{exc}: what it reaches is not known")
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
