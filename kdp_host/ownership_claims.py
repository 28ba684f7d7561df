"""Claims: what a device would put into a container, as the ownership index compares it.

Each DeviceSpec host path of a device claims what it reaches (`identity.identity_of`): a
character or block node by its device number (so a second node or a link for it is the same
claim), a directory or any other file by its inode (so a hard link, a bind mount or a
rename of it is the same claim), a path where nothing is by its place (`missing`). A
DeviceSpec's claim of a directory, a FIFO or a socket is one no runtime makes a device of
(`Claims.not_nodes`: the ownership index holds such a device, `identity.NOT_A_NODE`). Each
mount source claims the same way. Nodes and mounts a driver marks `shared` are claimed
shared. A sysfs device also claims itself, by its sysfs directory's inode (`SYSFS`): a
device that passes no node is advertised once too, whatever the spelling of the sysfs root
it was found through (a link to it or a bind mount of it is the same directory); one assigned
with its IOMMU group (bound to vfio-pci) claims the group's directory so too, so a function
of the group in another resource is held however each passes its nodes (hostile27 F7). A
directory holds everything below its real path (`ancestors`, `below`): the index compares
claims by key and by containment.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from .devices import Device
from .identity import (
    DIRECTORY,
    NOT_NODES,
    PathReach,
    Uncheckable,
    identity_of,
    nothing_or_raise,
    real_path,
)
from .identity import NOTHING as NOTHING  # (the kind of a claim where nothing is)

ClaimKey = tuple[str, int | str]
"""What a path is (`identity.identity_of`: ('c'|'b', st_rdev), ('d'|'f'|'o', inode)), ('path',
the real path of its place: `missing`) where nothing is yet, or (SYSFS, inode of its
directory; its normalised path when that is gone) for a sysfs device itself."""

SYSFS = "sysfs"
"""The kind of a sysfs device's claim of itself (its sysfs directory, by inode: `sysfs_claim`)."""
PLACE = "place"
"""The kind of a node's claim of the host path its DeviceSpec names, by that path, where
kdp-host sees the node elsewhere (`DeviceNode.seen_path`: a sysfs node below a `devRoot`
other than /dev is claimed by the number found there): two devices that hand out one host
path clash, as a claim by text does with the identity its path names (`ownership_aliases`),
whatever node each found there (hostile10 L4: a `devRoot` that is not the host's /dev)."""


Reached = PathReach
"""What a host path reaches (its claim) and its real path."""


def reach(path: str, real_dirs: dict[str, str] | None = None) -> Reached | None:
    """What a host path reaches (`identity.identity_of`: a device node by its number, anything
    else by its inode). Follows links (a link to a node claims the node). With the claim,
    the real path (what a directory mount contains is below it). Where nothing is (yet),
    its place (`missing`); None for a path that is no path (a NUL in it).

    One lstat for a path that is no link: its real path is its directory's real path
    (cached in `real_dirs`, for one list) joined with its name. A path that is its own real
    path is kept as it is (no copy per claim).
    """
    try:
        found = stat_real(path, real_dirs)
        return missing(path, real_dirs) if found is None else (identity_of(found[0]), found[1])
    except Uncheckable:
        return None  # (the admission's resolver, `checked_reach`, fails closed)


def missing(path: str, real_dirs: dict[str, str] | None = None) -> Reached | None:
    """The claim of a path where nothing is: the real path of its longest existing prefix
    (links followed), then the rest as written (`os.path.realpath`, not strict), by that
    text. A mount source the runtime creates there is one place however it is spelled
    (hostile4 H4: `run/lnk/m`, `lnk` a link to `run`, is `run/m`). None: a NUL in it.
    With `real_dirs`, an absolute path with no entry at all (not even a dangling link) is
    its directory's real path (cached there, as `reach` does) joined with its name (raises
    Uncheckable: `identity.nothing_or_raise`)."""
    try:
        parent, name = os.path.split(path)
        if real_dirs is not None and parent[:1] == "/" and name not in ("", ".", ".."):
            try:
                os.lstat(path)
            except FileNotFoundError:
                real_parent = real_dirs.get(parent)
                if real_parent is None:
                    real_parent = real_dirs[parent] = real_path(parent)
                real = os.path.join(real_parent, name)
                return (NOTHING, real), real
        real = real_path(path)
    except (OSError, ValueError) as exc:
        nothing_or_raise(path, exc)
        return None
    return (NOTHING, real), real


def stat_real(path: str, real_dirs: dict[str, str] | None) -> tuple[os.stat_result, str] | None:
    """A path's (followed) stat and real path; None: nothing there (Uncheckable raised)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return os.stat(path), real_path(path)
        return st, _real_path(path, {} if real_dirs is None else real_dirs)
    except (OSError, ValueError) as exc:
        nothing_or_raise(path, exc)
        return None


def _real_path(path: str, real_dirs: dict[str, str]) -> str:
    """The real path of a path that is no link, from its directory's (cached)."""
    norm = os.path.normpath(path)
    parent, name = os.path.split(norm)
    real_parent = real_dirs.get(parent)
    if real_parent is None:
        real_parent = real_dirs[parent] = real_path(parent)
    if real_parent == parent:
        return path if norm == path else norm
    return os.path.join(real_parent, name)


class Unresolvable(ValueError):
    """A host path whose real path does not name what the path reaches (a magic link such
    as `/proc/<pid>/root/...`, whose text is not where the kernel goes, or a link swapped
    between the two lookups), or that no longer reaches what was claimed for it (`stale`:
    that path, to be claimed anew): it is not handed out."""

    def __init__(self, message: str, stale: str | None = None) -> None:
        super().__init__(message)
        self.stale = stale


def claim_key(path: str, real_dirs: dict[str, str] | None = None) -> ClaimKey | None:
    """The claim a host path makes (see `reach`; where nothing is, by its place), or None
    for a path that is no path."""
    reached = reach(path, real_dirs)
    return None if reached is None else reached[0]


def still_reaches(key: ClaimKey, reached: Reached | None) -> bool:
    """Whether a claim's path still reaches it (what it reaches now: `reach`): the same
    node or file, for a sysfs device's claim of itself its directory, for a `PLACE` anything."""
    if reached is None or reached[0][0] == NOTHING:
        return False  # (nothing there: a claim of what was there is gone)
    if key[0] == SYSFS:
        return reached[0][0] == DIRECTORY and (isinstance(key[1], str) or reached[0][1] == key[1])
    return key[0] == PLACE or reached[0] == key  # (a place: while something is there)


def ancestors(real: str) -> Iterator[str]:
    """The directories a real path is below (`/a/b/c`: `/a/b`, `/a`, `/`)."""
    end = real.rfind("/")
    while end > 0:
        yield real[:end]
        end = real.rfind("/", 0, end)
    if end == 0 and len(real) > 1:
        yield "/"


Resolver = Callable[[str], "Reached | None"]


Claim = tuple[ClaimKey, str, str]
"""A claim, the host path it was made through and its real path."""


class Claims(Protocol):
    """What one device claims, with the host path each claim came from (one of these is
    kept per device of the host): a `ClaimSet`, or the common device's `OneClaim`."""

    @property
    def exclusive(self) -> tuple[Claim, ...]: ...

    @property
    def shared(self) -> tuple[Claim, ...]: ...

    def exclusive_keys(self) -> frozenset[ClaimKey]: ...

    def shared_keys(self) -> frozenset[ClaimKey]: ...

    def all(self) -> tuple[Claim, ...]: ...

    @property
    def renamed(self) -> tuple[tuple[str, str], ...]:
        """(host path, real path) of its paths that are not their real path (`canonical`)."""

    @property
    def not_nodes(self) -> tuple[Claim, ...]:
        """The rule of `identity.NOT_A_NODE`, for every driver: the claims of its device
        nodes' host paths (DeviceSpecs, where kdp-host sees them) that reach a directory, a
        FIFO or a socket (`identity.NOT_NODES`), known from the kind of each claim (the
        stat it was made from: no system call)."""


@dataclass(frozen=True, slots=True)
class ClaimSet:
    """Claims of any number (tuples, not dicts)."""

    exclusive: tuple[Claim, ...]
    shared: tuple[Claim, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    not_nodes: tuple[Claim, ...] = ()

    def exclusive_keys(self) -> frozenset[ClaimKey]:
        return frozenset(claim[0] for claim in self.exclusive)

    def shared_keys(self) -> frozenset[ClaimKey]:
        return frozenset(claim[0] for claim in self.shared)

    def all(self) -> tuple[Claim, ...]:
        return self.exclusive + self.shared if self.shared else self.exclusive


class OneClaim(tuple[ClaimKey, str, str]):
    """The claims of a device with one exclusive claim and no other (the common one-node
    device): that claim itself, one object per device instead of a ClaimSet, a tuple and
    the claim (9 MiB less at 100,000 devices)."""

    __slots__ = ()
    renamed: tuple[tuple[str, str], ...] = ()
    """(Its path is its real path: else the device's claims are a ClaimSet.)"""

    @property
    def not_nodes(self) -> tuple[Claim, ...]:
        return (self,) if self[0][0] in NOT_NODES else ()  # (its one path is a node's)

    @property
    def exclusive(self) -> tuple[Claim, ...]:
        return (self,)

    @property
    def shared(self) -> tuple[Claim, ...]:
        return ()

    def exclusive_keys(self) -> frozenset[ClaimKey]:
        return frozenset((self[0],))

    def shared_keys(self) -> frozenset[ClaimKey]:
        return frozenset()

    def all(self) -> tuple[Claim, ...]:
        return (self,)


def sysfs_claim(path: str, reached: Reached | None) -> Claim:
    """A sysfs device's claim of itself, its directory (`reached`: what `path` reaches):
    by the directory's inode, so a sysfs root spelled through a link or a bind mount of
    another is the same device; by its normalised text where no directory is there (the
    device left)."""
    if reached is None or reached[0][0] != DIRECTORY:
        norm = os.path.normpath(path)
        return (SYSFS, norm), path, norm
    return (SYSFS, reached[0][1]), path, reached[1]


def twins(key: ClaimKey) -> tuple[ClaimKey, ...]:
    """The other key of what `key` claims: a sysfs device's claim of its directory
    (`sysfs_claim`, by inode) and a directory claim of that inode (a mount of the directory)
    are one directory a container reaches, each to clash with the other (hostile18 F14).
    Kept two kinds: a sysfs device holds no other below its directory (a hub and a stick
    behind it, a bridge and its GPU, are two devices), a mounted directory holds all."""
    kind, value = key
    if isinstance(value, int) and kind in (SYSFS, DIRECTORY):
        return ((DIRECTORY if kind == SYSFS else SYSFS, value),)
    return ()


def claim_of(path: str, resolve: Resolver) -> Claim:
    """A path's claim; a path that does not exist (yet) is claimed by its normalised text."""
    reached = resolve(path)
    if reached is None:
        norm = os.path.normpath(path)
        return (NOTHING, norm), path, norm
    return reached[0], path, reached[1]


def read_only_of(nodes: Iterable[str], mounts: Iterable[tuple[str, bool]]) -> frozenset[str]:
    """The host paths handed out read-only only (`ownership_paths.read_only_paths`) of an
    answer's nodes and (host path, read-only) mounts."""
    writable, read_only = set(nodes), set[str]()
    for path, ro in mounts:
        (read_only if ro else writable).add(path)
    return frozenset(read_only - writable)


def named_in(path: str, directory: str, paths: set[str] | None) -> bool:
    """Whether `path` is one of `paths` (None: any in `directory`): what a watcher report
    names."""
    return path in paths if paths is not None else os.path.dirname(path) == directory


Places = str | tuple[tuple[str, bool | None], ...]
"""What a device's claims depend on: its host paths with their `shared` flags (the one path
of the common one-node device), then its sysfs directory, if any, as (path, None)."""


def places(device: Device) -> Places:
    """The key of a device's claims: two devices with the same places claim the same (a
    device renamed on its paths needs no resolution)."""
    path, mounts, sysfs = device.path, device.mounts, device.sysfs_path
    if not mounts and sysfs is None:
        if path is not None and device.has_only_node(path, path):
            return path
        nodes = device.nodes
        if len(nodes) == 1:
            return ((nodes[0].seen, nodes[0].shared),)
    found: list[tuple[str, bool | None]] = [(n.seen, n.shared) for n in device.nodes]
    found += [(m.host_path, m.shared) for m in mounts]
    if sysfs is not None:
        found.append((sysfs, None))
    if device.iommu_group is not None:
        found.append((device.iommu_group, None))
    return tuple(found)


def reaches_else(claims: Claims, known: Mapping[str, Reached]) -> bool:
    """Whether a scan learnt (`known`: what host paths reach now) that a path of `claims`
    reaches another claim now. Claims are kept by places (`places`): a node made anew at a
    path (two nodes that swap device numbers) must not be taken for what was there."""
    for key, path, _real in claims.all():
        found = known.get(path)
        if found is not None and found[0] != key and key[0] not in (PLACE, SYSFS):
            return True
    return False


def device_claims(device: Device, resolve: Resolver = reach) -> Claims:
    """A device's claims: its nodes (shared ones apart; one seen elsewhere also by the host
    path it is handed out at: `PLACE`), its mount sources, and a sysfs device itself (its
    directory: `sysfs_claim`)."""
    path, sysfs = device.path, device.sysfs_path
    if (
        sysfs is None
        and not device.mounts
        and path is not None
        and device.has_only_node(path, path)
    ):
        claim = claim_of(path, resolve)  # the common one-node device: no dicts
        if claim[2] == path or claim[0][0] == NOTHING:
            return OneClaim(claim)
        odd = (claim,) if claim[0][0] in NOT_NODES else ()
        return ClaimSet((claim,), (), ((path, claim[2]),), odd)
    exclusive: dict[ClaimKey, Claim] = {}
    shared: dict[ClaimKey, Claim] = {}
    made: list[Claim] = []
    paths = [(n.seen, n.shared) for n in device.nodes]
    paths += [(m.host_path, m.shared) for m in device.mounts]
    for host_path, is_shared in paths:
        claim = claim_of(host_path, resolve)
        made.append(claim)
        (shared if is_shared else exclusive).setdefault(claim[0], claim)
    for node in device.nodes:  # (seen elsewhere: its host path claimed by place too)
        if node.seen_path is not None:
            at = os.path.normpath(node.host_path)
            (shared if node.shared else exclusive).setdefault((PLACE, at), ((PLACE, at), at, at))
    for key in exclusive:
        shared.pop(key, None)
    for sysfs_dir in (sysfs, device.iommu_group):  # (a vfio device's group: hostile27 F7)
        if sysfs_dir is not None:
            mine = sysfs_claim(sysfs_dir, resolve(sysfs_dir))
            exclusive.setdefault(mine[0], mine)
    nodes = tuple(c for c in made[: len(device.nodes)] if c[0][0] in NOT_NODES)
    return ClaimSet(tuple(exclusive.values()), tuple(shared.values()), _renamed(made), nodes)


def _renamed(claims: Iterable[Claim]) -> tuple[tuple[str, str], ...]:
    """(host path, real path) of the claims not made by their real path (nothing there: text)."""
    found = {(path, real) for key, path, real in claims if real != path and key[0] != NOTHING}
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a claim: a device of a resource."""

    resource: str
    device: str
    """The ID the kubelet knows the device by."""


def owner_order(owner: Owner) -> tuple[str, str]:
    return owner.resource, owner.device
