"""What the start books from `handed-out.json` alone: a use no other file keeps (issue 17).

An Allocate's answer waits for its record (`handed_out`: refused unless `handed-out.json`
keeps it), but not for `ownership.json` (a booking whose write stalls past the limit is
answered all the same, held in memory), and the kubelet writes its checkpoint only once
every resource of the container is allocated (a slow other plugin of the pod holds it
back). A host killed inside both windows starts with the pod's use in the record alone:
neither `ownership.json` nor the checkpoint (`checkpoint_bookings`) books it, PodResources
books the ID later by what its path reaches then (`ownership_adopt`), and a device renamed
or moved meanwhile went out under another ID to a second pod (restartrec).

So at start, once `ownership.json` and the checkpoint are booked and before any resource
publishes, every ID of a served resource's use in the record (each use not seen gone, not
owed) that no booking holds, this host's or another running host's, is booked as the
checkpoint's entry of that use would be (`kubelet_checkpoint.take_handed`): the host paths
the record keeps of its device (nodes, then mounts), each with what it reaches now and what
it reached when handed out (`as_recorded`). The device under that same ID is advertised
as ever (a booking holds back only other IDs and resources), so it costs nothing unless
its node went elsewhere.

What ends it: the IDs are held as handed out and not shown yet (`unlisted.Unlisted.take`,
a checkpoint counting from `ANSWERED_WITHIN` after their record): until a PodResources
answer shows them (from then the usual rule), or the kubelet's checkpoint, written after
that, no longer lists them (an Allocate the kubelet never had: kdp-host was killed before
its answer went out; or a pod gone), and then the usual `heard_after` (`Ledger.expire`).
With PodResources off, as every booking: until the ID is allocated again or `kdp-host
unbook`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from .checkpoint_handed import with_claims
from .files import Offload
from .handed_entries import Handed as HandedUse
from .handed_entries import uses
from .kubelet_checkpoint import (
    READ_TIMEOUT,
    Gained,
    Handed,
    HandedClaims,
    as_recorded,
)
from .logs import EventLogger
from .state_file import WRITE_LIMIT

ANSWERED_WITHIN: Final = 3 * WRITE_LIMIT
"""Seconds after its record an answer may still go out: it waits for `handed-out.json`,
then for `ownership.json`, then for its CDI names on disk, `WRITE_LIMIT` each at most."""


class Record(Protocol):
    """`handed-out.json` as read at start (`HandedRecord`)."""

    def resources(self) -> list[str]: ...

    def entry(self, resource: str, device_id: str) -> HandedUse | None: ...

    def devices(self, resource: str) -> Mapping[str, object]: ...


class Index(Protocol):
    """Where the uses are booked (`OwnershipIndex`)."""

    def handed_out(self) -> dict[str, set[str]]: ...

    def take_handed(self, handed: Iterable[HandedClaims]) -> Gained: ...


@dataclass(frozen=True)
class Recorded:
    """IDs booked from the record alone, and when their Allocate handed them out."""

    resource: str
    ids: tuple[str, ...]
    at: float
    """Unix time of the Allocate (`HandedUse.at`)."""


def unbooked_uses(
    record: Record, served: Collection[str], booked: Mapping[str, Collection[str]]
) -> list[tuple[Handed, float]]:
    """Each use the record keeps of a `served` resource, not owed, with its IDs that are not
    `booked` (resource -> IDs), as the checkpoint's entry of it would read, and its time."""
    out: list[tuple[Handed, float]] = []
    for resource in record.resources():
        if resource not in served:
            continue
        held = booked.get(resource, ())
        for device_id in sorted(record.devices(resource)):
            entry = record.entry(resource, device_id)
            for use in uses(entry) if entry is not None else ():
                ids = tuple(sorted(i for i in use.ids if i not in held))
                if use.owed or not ids:
                    continue
                nodes = [n.host_path for n in use.device.nodes]
                paths = (*nodes, *(m.host_path for m in use.device.mounts))
                out.append((Handed(resource, ids, paths, nodes=len(nodes)), use.at))
    return out


async def book_recorded(
    index: Index,
    record: Record,
    served: Collection[str],
    offload: Offload,
    log: EventLogger,
) -> list[Recorded]:
    """At start, after `ownership.json` and the checkpoint: book the IDs of the record's uses
    that no booking holds (module doc), their paths resolved off the loop (bounded, as the
    checkpoint's read; a read that fails books what the record says they reached alone)."""
    found = unbooked_uses(record, served, index.handed_out())
    if not found:
        return []
    handed = [use for use, _ in found]
    try:
        work = functools.partial(with_claims, handed)
        claimed = await asyncio.wait_for(offload.run(work), READ_TIMEOUT)
    except Exception as exc:  # (a hung or failing path: the record's identities alone)
        log.warning("handed_out_paths_unread", error=str(exc) or type(exc).__name__)
        claimed = [HandedClaims(use, ()) for use in handed]
    taken = index.take_handed(as_recorded(claimed, record.entry))
    gained = {(owner.resource, owner.device) for owner, _ in taken}
    out = []
    for use, at in found:
        ids = tuple(i for i in use.ids if (use.resource, i) in gained)
        if ids:
            log.bind(resource=use.resource).warning(
                "handed_out_booked",
                ids=",".join(ids),
                paths=",".join(use.paths),
                reason="handed-out.json keeps this use, neither ownership.json nor the "
                "kubelet's checkpoint does (kdp-host stopped before they were written)",
            )
            out.append(Recorded(use.resource, ids, at))
    return out


class Unlisted(Protocol):
    """`unlisted.Unlisted`: IDs held as handed out until an answer shows them."""

    def take(self, keys: Iterable[tuple[str, str]], wall: float = 0.0, late: float = 0.0) -> None:
        """Held from `wall` (Unix time), a checkpoint counting from `late` seconds after."""


def unlist_recorded(unlisted: Unlisted | None, recorded: Iterable[Recorded]) -> None:
    """The booked IDs held as handed out and not shown yet (when PodResources is polled),
    from their Allocate; a checkpoint counts from `ANSWERED_WITHIN` after it: one written
    before the answer could reach the kubelet lacks them without meaning anything."""
    if unlisted is None:
        return
    for use in recorded:
        unlisted.take(((use.resource, i) for i in use.ids), use.at, ANSWERED_WITHIN)
