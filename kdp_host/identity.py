"""What a host path is: the identity that claims in the ownership index and the devices of
the glob driver are compared by (one rule for both: the driver hands what its scan learnt to
the index, which takes it instead of asking again).

A character or block device node is its device number (a second node or a link for it is
the same device: what a container's cgroup allows). Anything else, a directory, a regular
file or any other file (a FIFO, a socket: `OTHER`), is its inode, `st_dev` and `st_ino` (a
hard link, a bind mount or a rename of it is the same file; a file made anew at the same
path is another). Like a device number, an inode
number can be reused once its file is gone: what holds one (a booking) holds the new file
until it ends, and a glob device whose file went takes the new one for itself renamed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

Identity = tuple[str, int | str]
"""What a host path is (`identity_of`): `('c'|'b', st_rdev)` for a device node, `('d'|'f'|'o',
inode)` for a directory, a regular file or any other file; the ownership index's claim key."""
Reach = Mapping[str, Identity]
"""Host path -> the identity it reached (when handed out: `handed_out.Handed.reached`)."""
NONE: Reach = MappingProxyType({})
DIRECTORY = "d"
"""The kind of a directory's identity (a mount of it holds what is below its real path)."""
FILE = "f"
"""The kind of the identity of a regular file."""
OTHER: Final = "o"
"""The kind of the identity of a file that is neither a device node, a directory nor a
regular file (a FIFO, a socket)."""
NOT_NODES: Final = frozenset((DIRECTORY, OTHER))
"""The kinds of what a device node's host path may not reach (`NOT_A_NODE`): a directory, a
FIFO, a socket. A regular file passes (tests, `make demo` and the README hand one out as a
device on purpose)."""
NOT_A_NODE: Final = "not_a_node"
"""Why a device is left out that hands out, as a device node (a DeviceSpec's `PathOnHost`),
a path reaching what `NOT_NODES` names (hostile16 F6): a container runtime makes the
container's device from it with mknod semantics (runc, containerd: "not a device node"),
so the pod would be admitted and its container would never start. The skip reason in
`kdp_driver_skipped_total` (every driver: the ownership index applies it,
`ownership_claims.not_a_node`); a mount of the same path is fine."""
NODES: Final = frozenset(("c", "b"))
"""The kinds of a device node's identity (its device number: the kernel may give a number
again, to a device plugged later)."""
NOTHING: Final = "path"
"""The kind of the claim of a path where nothing is in kdp-host's view, by the real path of
its place (`ownership_claims.missing`): what such a path reaches is not known (`UNSEEN`)."""
UNSEEN: Final = (
    "does not exist in kdp-host's view, so what it reaches on the host is not known (if it "
    "exists on the host, mount it into kdp-host's container: chart hostMounts.extra)"
)
"""Why a host path where nothing is in kdp-host's view (`NOTHING`) is never handed out
(hostile9 H5): kdp-host in a container sees only its volumes; the host's runtime resolves
the path on the host, where it may be a link to `/`, the kubelet's `pods` directory or
stateDir, or a directory shown at another place, and creates a missing mount source. The
rules that compare what a path is (`config.handed`, the ownership index) cannot judge a
path that is not there, so it is refused like an `Uncheckable` one (`unseen`)."""
UNRESOLVABLE: Final = "unresolvable"
"""Why a path is left out whose real path does not name what it reaches (`names_it`): the
skip reason of a glob path, and of a device whose claimed path the ownership index found so
(every driver), in `kdp_driver_skipped_total`."""


def not_a_node_why(kind: str) -> str:
    """Why a device node's host path reaching `kind` (of `NOT_NODES`) is not handed out."""
    what = "a directory" if kind == DIRECTORY else "a FIFO or a socket (no device node)"
    return (
        f"is {what}: a container runtime makes no device of it (runc, containerd: not a "
        "device node) and the container would never start; hand it out as a mount instead"
    )


def not_a_node(nodes: Iterable[str], reach: Reach) -> str | None:
    """`NOT_A_NODE` for an Allocate answer (an `allocate.command`'s `paths` too): why the
    first of `nodes` (its DeviceSpecs' host paths) that `reach` (what each reached, as the
    answer's paths were resolved: no system call) says is no node may not be handed out."""
    for path in sorted(nodes):
        found = reach.get(path)
        if found is not None and found[0] in NOT_NODES:
            return f"{path}: the path of a DeviceSpec {not_a_node_why(found[0])}"
    return None


def identity_of(st: os.stat_result) -> Identity:
    """What a host path is, from its (followed) stat: a character or block device node by
    its device number (a second node or a link for it is the same device), a directory or
    any other file by its inode, `st_dev` and `st_ino` in one number (a hard link or a
    rename is the same file; a file made anew at the same path is another), its kind
    saying which (`DIRECTORY`, `FILE`: a regular one, `OTHER`)."""
    mode = st.st_mode
    if stat.S_ISCHR(mode):
        return ("c", st.st_rdev)
    if stat.S_ISBLK(mode):
        return ("b", st.st_rdev)
    kind = FILE if stat.S_ISREG(mode) else DIRECTORY if stat.S_ISDIR(mode) else OTHER
    return (kind, st.st_dev << 64 | st.st_ino)


def names_it(st: os.stat_result, real: str) -> bool:
    """Whether a real path names what a path reached (`st`, its followed stat): the same
    (st_dev, st_ino). Not so through a magic link (`/proc/<pid>/root/...`: the kernel goes
    into another mount namespace, the link's text says "/") or a link swapped between the
    two lookups: such a real path is not handed out for the path."""
    try:
        at = os.stat(real)
    except (OSError, ValueError):
        return False
    return (at.st_dev, at.st_ino) == (st.st_dev, st.st_ino)


PathReach = tuple[Identity, str]
"""What a host path reaches, as a scan learnt it: its identity and its real path; the answer
of `ownership_claims.reach` (the ownership index takes it instead of asking again)."""


def own_reach(path: str, real_dirs: dict[str, str]) -> PathReach | None:
    """What `path` reaches where it is its own real path, as the ownership index resolves a
    claimed path (`ownership_canonical.checked_reach` answers the same): a node by its
    number, anything else by its inode, nothing there by its place (`NOTHING`). One lstat,
    and the real path of its directory (cached in `real_dirs`, for one read). None where
    it is not its own real path (a link, a directory reached through one, a path not
    normalised) or cannot be checked: the index resolves such a path itself."""
    parent = os.path.dirname(path)
    if parent[:1] != "/" or os.path.normpath(path) != path:
        return None
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError):
        return None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return None
    real_parent = real_dirs.get(parent)
    if real_parent is None:
        try:
            real_parent = real_dirs[parent] = real_path(parent)
        except (Uncheckable, ValueError):
            return None
    if real_parent != parent:
        return None
    return ((NOTHING, path) if st is None else identity_of(st)), path


class Uncheckable(ValueError):
    """A path kdp-host cannot resolve or stat for a reason other than "nothing is there"
    (`real_path`, `absent`): a `/proc/<pid>/root/...` magic link it may not read (EACCES,
    even as root without the capabilities of that process), a directory it may not search,
    an I/O error. What such a path reaches is not known, so it is never handed out: a config
    naming it is refused (with its line), a device with it is not advertised, an Allocate
    answer with it is refused."""

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(f"cannot be checked ({exc.strerror or exc}: {exc.filename or path})")
        self.path = path


def unseen(key: tuple[str, object] | None) -> bool:
    """Whether a claim or identity (None: not known) is of a path where nothing is in
    kdp-host's view (`NOTHING`): never handed out (`UNSEEN`)."""
    return key is not None and key[0] == NOTHING


def absent(exc: OSError) -> bool:
    """Whether a failed lstat/stat/readlink says nothing is there (ENOENT, ENOTDIR), not that
    the path cannot be checked (`Uncheckable`: EACCES, ELOOP, EIO, ...)."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR)


def real_path(path: str) -> str:
    """`os.path.realpath(path)` (not strict: links resolved as far as the path exists, the
    rest normalised), the one way kdp-host resolves a config or host path. Raises
    Uncheckable where realpath would let an OSError escape (readlink of a magic link it may
    not read: EACCES): the caller fails closed. ValueError (a NUL) passes.

    A normalised absolute path with no link on the way is its own real path: that is found
    with an lstat per component and little else (a third of realpath's time, which a
    claimed path's directory costs per scan and per resolution: issue 19)."""
    plain = path[:1] == "/" and path[:2] != "//" and os.path.normpath(path) == path
    if plain and _no_link_on_the_way(path):
        return path
    try:
        return os.path.realpath(path)
    except OSError as exc:
        raise Uncheckable(path, exc) from None


def _no_link_on_the_way(path: str) -> bool:
    """Whether no component of the normalised absolute `path` is a symlink: an lstat of each,
    in order; one that fails (nothing there, not a directory) counts as no link, as realpath
    (not strict) has it. ValueError (a NUL) passes, as it does from realpath."""
    end = 0
    while end >= 0:
        end = path.find("/", end + 1)
        try:
            st = os.lstat(path if end < 0 else path[:end])
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            return False
    return True


def nothing_or_raise(path: str, exc: OSError | ValueError) -> None:
    """Return where `exc` (of an lstat, stat or `real_path` of `path`) says nothing is there
    (`absent`) or the path is no path (a NUL: ValueError); raise Uncheckable otherwise (an
    Uncheckable as it is): the caller's None then means "nothing there", never "not known"."""
    if isinstance(exc, Uncheckable):
        raise exc
    if isinstance(exc, OSError) and not absent(exc):
        raise Uncheckable(path, exc) from None


LINK_HOPS: Final = 40
"""Symlinks followed resolving one path before giving up (Linux's MAXSYMLINKS)."""


def links_on_the_way(path: str) -> list[str]:
    """Every symlink met resolving `path` as `real_path` does, each at its place: its own
    name in its directory resolved (hostile13 M5, M6). Whoever can write that directory
    re-points the link, and so where `path` leads: for a path kdp-host re-reads, writes or
    runs by name, each is a place no container is handed writable (`config.places`). Stops
    where nothing is (or cannot be read: `real_path` says why), after LINK_HOPS links."""
    found: list[str] = []
    rest = os.path.abspath(path).split("/")
    done = "/"
    while rest and len(found) < LINK_HOPS:
        name = rest.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            done = os.path.dirname(done)
            continue
        step = os.path.join(done, name)
        try:
            if not stat.S_ISLNK(os.lstat(step).st_mode):
                done = step
                continue
            target = os.readlink(step)
        except (OSError, ValueError):
            break
        found.append(step)
        rest[:0] = target.split("/")
        done = "/" if target.startswith("/") else done
    return found
