"""What a path matched by a glob pattern is: which physical device it reaches (identity),
what its device ID is, whether it can be a device at all, and which directories to watch.

Identity (`identity.identity_of`): a character or block device node is identified by its
device number (`st_rdev`, so a node and every symlink or second node for it are one device),
anything else by its inode (a hard link to a file is the same device). IDs: `DeviceIds`, a
pure function of the device's canonical path (the resolved real path of the node) and the
patterns, never of which matched path (a link or the node itself) led to it, so a link that
appears or vanishes never renames a device.
A device already listed keeps its ID and host path while it stays present (`assign_ids`):
a second node for its device number, whatever its path, never renames it; one that comes
back while still listed takes its ID back.
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
NOT_FOLLOWED = "not_followed"
"""What `examine` without `follow` answers for a symlink (never reported: a scan on the loop
that meets one leaves the answer to the full look off the loop)."""

DeviceIdentity = Identity
"""('c' or 'b', st_rdev) for device nodes, ('f' or 'o', inode) for anything else."""


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
        shown, readable = self._readable(path)
        return shown if readable else make_name(path, PATH_ID, shown=shown)

    def elsewhere(self, path: str, identity: DeviceIdentity) -> str:
        """The ID of a new device whose path's ID a present device holds (one that kept its
        ID through a move: `assign_ids`): the hashed form of its path and identity. No
        path's ID is ever equal to it: a readable ID never ends like a hashed one, and a
        hashed one spells its path alone."""
        kind, key = identity
        return make_name(f"{path}\0{kind}:{key}", PATH_ID, shown=self._readable(path)[0])

    def _readable(self, path: str) -> tuple[str, bool]:
        """The readable form of `path` (relative to the base, `/` as `-`; outside it, its
        file name) and whether it may be the ID as it is."""
        inside = path.startswith(self._prefix)
        rel = path[len(self._prefix) :] if inside else path.lstrip("/")
        parts = rel.split("/")
        joined = "-".join(parts)
        readable = (
            inside
            and PATH_ID.unsafe.search(joined) is None
            and joined not in (".", "..")
            and rules.device_id_problem(joined) is None
            and not _HASH_SUFFIX.search(joined)
            and not (len(parts) > 1 and ("-" in rel or "_" in rel))
            and not (len(parts) == 1 and self._mixed_depths and "-" in rel)
        )
        return (joined if inside else parts[-1]), readable


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


def link_parents(directory: str) -> list[str]:
    """The directory of each link on the way to `directory` (one lstat a component; asked
    only where its real path is another): a link switched at once to another directory (a
    ConfigMap's `..data`) changes what a pattern below it matches (hostile18 F12)."""
    parts = directory.rstrip("/").split("/")
    return [
        "/".join(parts[: depth - 1]) or "/"
        for depth in range(2, len(parts) + 1)
        if os.path.islink("/".join(parts[:depth]))
    ]


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
    returning: Mapping[DeviceIdentity, str],
    ids: DeviceIds,
) -> tuple[dict[DeviceIdentity, Assigned], dict[DeviceIdentity, DeviceIdentity]]:
    """The ID of each device of a scan (its (matched path, real path) pairs by identity),
    and the devices left out because every ID they may take is another's (identity -> the
    holder's: only where two hashes collide).

    A device listed last time (`held`: its Device by identity) keeps its ID, and its host
    path (its node's) while that path still reaches it (else the canonical path of what
    does): a second node with the same device number and a lower path (`mknod`, a devtmpfs
    alias) never renames a device the kubelet may have given to a pod. A device that
    vanished while still listed (`returning`: its ID by identity, the grace period's
    Unhealthy entry) takes its ID back while no present device holds it. Any other gets the
    ID of its canonical path; if a present device holds that one (it kept its ID through
    a move: two nodes that swap device numbers), the ID of its path and identity
    (`DeviceIds.elsewhere`): it is advertised at once, never left waiting on a device
    that may stay for good.
    """
    assigned: dict[DeviceIdentity, Assigned] = {}
    owner: dict[str, DeviceIdentity] = {}
    collided: dict[DeviceIdentity, DeviceIdentity] = {}
    # The devices that hold an ID first, then those coming back for theirs, so a newcomer
    # never takes one (a first scan holds none: nothing to sort).
    order = (
        sorted(by_identity, key=lambda i: (i not in held, i not in returning))
        if held or returning
        else by_identity
    )
    for identity in order:
        paths = by_identity[identity]
        kept = held.get(identity)
        if kept is not None:
            host_path = kept.nodes[0].host_path
            if not any(real == host_path for _matched, real in paths):
                host_path = canonical_path(paths)
            choice = Assigned(kept.id, host_path)
            owner.setdefault(choice.device_id, identity)
            assigned[identity] = choice
            continue
        canonical = canonical_path(paths)
        elsewhere = ids.elsewhere(canonical, identity)
        wanted = (returning.get(identity), ids(canonical), elsewhere)
        device_id = next((w for w in wanted if w is not None and w not in owner), None)
        if device_id is None:
            collided[identity] = owner[elsewhere]
            continue
        owner[device_id] = identity
        assigned[identity] = Assigned(device_id, canonical)
    return assigned, collided


def canonical_path(paths: Sequence[tuple[str, str]]) -> str:
    """The canonical path of one device from its (matched path, real path) pairs: the real
    path of the node (the least one where two nodes share a device number). A pure function
    of the set of real nodes, never of which links to them exist."""
    if len(paths) == 1:
        return paths[0][1]  # (the common device: one path)
    return min(real for _matched, real in paths)


def examine(path: str, real_dirs: dict[str, str], *, follow: bool = True) -> Found | Skipped | None:
    """What a matched path is: a device, a skipped path (with why), or None (a directory, or
    gone since the glob).

    One lstat for a plain path: its real path is its directory's real path (cached in
    `real_dirs` for one scan) joined with its name; a symlink must lead to an existing
    non-directory. Without `follow`, a symlink is `NOT_FOLLOWED` (a scan on the event loop
    looks no further than the directories it knows to be local).
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    link_dir = None
    try:
        if stat.S_ISLNK(st.st_mode):
            if not follow:
                return Skipped(NOT_FOLLOWED, printable_path(path), "a symlink, not followed here")
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
