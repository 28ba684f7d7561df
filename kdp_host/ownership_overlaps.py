"""Overlaps: every claim two devices would make, by the ownership index's rules (what
`kdp-host check` warns about before anything runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .devices import Device, DeviceMount
from .identity import DIRECTORY
from .mount_table import MountMap
from .ownership_arrivals import INSIDE_LIMIT
from .ownership_claims import (
    PLACE,
    Claim,
    ClaimKey,
    Owner,
    Resolver,
    device_claims,
    reach,
    twins,
)
from .ownership_reads import INDEXED, Read, arrived
from .rules import below


@dataclass(frozen=True)
class Overlap:
    """Two devices that reach one node or mount source (what `check` warns about)."""

    path: str
    first: Owner
    second: Owner
    other: str | None = None
    """Where the first device's tree holds it (two mounted trees that share a node's number
    or a file: `ownership_shared`), None for a claim."""


def overlaps(
    devices: Iterable[tuple[str, Device]],
    resolve: Resolver = reach,
    mounts: MountMap | None = None,
    read: Read = arrived,
) -> list[Overlap]:
    """Every claim two devices would make (not two shared ones), by the index's rules (a
    host path a node is handed out at, `PLACE`, and any claim at that real path; a
    claim below a directory another device mounts too, at every place the mount table
    `mounts` shows each: a bind mount; what is below a mounted directory, `read` as an
    Allocate reads it, up to `INSIDE_LIMIT` entries: another node of a claimed device
    number there, hostile15 F6): the later device in `devices` order would be held while
    the first is advertised. Two devices' trees that hold one node's number or one file
    (another path of it: `Overlap.other`) are an overlap too: an answer mounting the one is
    refused while a pod holds the other (`ownership_shared`)."""
    places = (mounts or MountMap()).places
    seen: dict[ClaimKey, tuple[Owner, bool]] = {}
    at: dict[str, list[tuple[Owner, bool, bool]]] = {}
    """Real path -> the devices that claim there: a `PLACE` clashes with any other."""
    dirs: list[tuple[str, Owner, bool]] = []
    made: list[tuple[Claim, Owner, bool]] = []
    found: list[Overlap] = []
    for resource, device in devices:
        me = Owner(resource, device.id)
        claims = device_claims(device, resolve)
        for mine, is_shared in ((claims.exclusive, False), (claims.shared, True)):
            for claim in mine:
                key, path, real = claim
                made.append((claim, me, is_shared))
                if key[0] == DIRECTORY:
                    dirs += [(place, me, is_shared) for place in places(real)]
                for first, first_shared in filter(None, map(seen.get, (key, *twins(key)))):
                    if first != me and not (is_shared and first_shared):
                        found.append(Overlap(path, first, me))
                seen.setdefault(key, (me, is_shared))
                place = key[0] == PLACE
                for owner, shared, placed in at.get(real, ()):
                    if owner != me and (place or placed) and not (is_shared and shared):
                        found.append(Overlap(path, owner, me))
                at.setdefault(real, []).append((me, is_shared, place))
    for directory, owner, dir_shared in dirs:
        for (_, path, real), me, is_shared in made:
            if me == owner or (is_shared and dir_shared):
                continue
            if any(below(place, directory) for place in places(real)):
                found.append(Overlap(path, owner, me))
    trees: dict[ClaimKey, tuple[str, Owner, bool]] = {}
    """What the trees read hold, as `NodesFound` keeps it -> where, below whose directory."""
    for (key, _, real), owner, dir_shared in made:
        if key[0] != DIRECTORY:
            continue
        for inside, path in read([real], INSIDE_LIMIT)[0]:
            known = seen.get(inside)
            if known is not None and known[0] != owner and not (dir_shared and known[1]):
                found.append(Overlap(path, owner, known[0]))
            if inside[0] not in INDEXED:
                continue  # (a directory, a file of one link: in no other tree)
            was, by, by_shared = trees.setdefault(inside, (path, owner, dir_shared))
            if by != owner and was != path and not (dir_shared and by_shared):
                found.append(Overlap(path, by, owner, was))
    return list(dict.fromkeys(found))


STATIC_MOUNTS = "(allocate.mounts)"
"""The device `check` compares a resource's `allocate.mounts` as (no device ID has `(`)."""


def overlap_warnings(
    devices: list[tuple[str, Device]],
    static_mounts: Mapping[str, Sequence[str]],
    quote: Callable[[str], str],
    table: MountMap | None = None,
) -> list[str]:
    """`check`'s warning lines: one per node or mount source two devices would reach (the
    host advertises one of them at a time; docs: Reliability, one node, one advertised
    device; booked claims). A resource's `allocate.mounts` (`static_mounts`, host paths by
    resource) are compared as a device every pod of the resource gets (shared by them, not
    with another device)."""
    for resource, paths in static_mounts.items():
        if paths:
            mounts = tuple(DeviceMount(path, path, shared=True) for path in paths)
            devices = [*devices, (resource, Device(STATIC_MOUNTS, mounts=mounts))]
    lines = []
    for o in overlaps(devices, mounts=table):
        if o.other is not None:
            lines.append(
                f"warning: {quote(o.path)} (below a directory of {quote(o.second.resource)} "
                f"device {quote(o.second.device)}) is also at {quote(o.other)} (below one of "
                f"{quote(o.first.resource)} device {quote(o.first.device)}): one device number "
                "or one file; while a pod holds the one, the other is not advertised and an "
                "Allocate that mounts it is refused"
            )
            continue
        if STATIC_MOUNTS in (o.first.device, o.second.device):
            static, other = (o.first, o.second)
            if other.device == STATIC_MOUNTS:
                static, other = other, static
            lines.append(
                f"warning: {quote(o.path)} is reachable from the allocate.mounts of "
                f"{quote(static.resource)} and {quote(other.resource)} (device "
                f"{quote(other.device)}): an Allocate of {quote(static.resource)} is refused "
                "while that device is advertised or held, and the device is not advertised "
                "while a pod holds the mount"
            )
            continue
        lines.append(
            f"warning: {quote(o.path)} is reachable from {quote(o.first.resource)} "
            f"(device {quote(o.first.device)}) and {quote(o.second.resource)} (device "
            f"{quote(o.second.device)}): only one is advertised at a time, the one a pod "
            "holds it through, else the first to list it"
        )
    return lines
