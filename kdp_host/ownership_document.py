"""`<stateDir>/ownership.json`: the bookings' document, read and written one way (the host,
hosts sharing the state directory, `kdp-host unbook`).

`{"bookings": [entry, ...], "version": 1}`, one entry per booked ID: `resource`, `id`,
`device`, `claims` (each `kind`, `key`, `path`, `real`), `places` where the allocation handed
out more than its device, `shared` where its device claimed a node or mount shared (a file
without it reads as none), `writer` where a host is named (`ownership_bookings`).

Each entry is made once (`Entry`): rendered when its booking is made (`entry_of`), or read and
checked when another host's entry is first merged (`checked_entries`), with its JSON text and
the booking it reads as. A document of entries is written as their texts joined
(`rendered_json.encoded`), and the file read back unchanged is that document again
(`state_file.StateFile`), so a write and the host's reading of its own write cost what changed,
not every booking. Another writer's file is decoded an entry at a time, each entry checked as
it comes (`decode_bookings`), once per content (`state_document`), and kept as its text and
booking only (`rendered_json.ReadBack`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .devices import advertises
from .files import Offload
from .identity import DIRECTORY, FILE, OTHER
from .json_document import object_entries
from .logs import EventLogger
from .ownership_claims import (
    NOTHING,
    PLACE,
    SYSFS,
    Claim,
    ClaimKey,
    Owner,
    Resolver,
    owner_order,
    reach,
    sysfs_claim,
)
from .rendered_json import ReadBack, Rendered, encoded, fields_of
from .state_file import Merge, StateFile

OWNERSHIP_FILE = "ownership.json"
OWNERSHIP_VERSION = 1


class SavedBooking(NamedTuple):
    """A booking as the file keeps it."""

    owner: Owner
    """(resource, booked ID)"""
    device: str
    claims: tuple[Claim, ...]
    places: tuple[Claim, ...] = ()
    writer: str | None = None
    """The instance ID of the host that wrote it (None: no host named, one that ended)."""
    shared: tuple[Claim, ...] = ()
    """Its device's shared claims (`ownership_booked.Booking.shared`)."""


Saved = list[SavedBooking]


Entry = Rendered[SavedBooking]
"""One entry of the file, made once: its JSON text and the booking it reads as when read as
written (`as_written`)."""


def as_written(_path: str) -> None:
    """A resolver that resolves nothing: bookings read as they were written (a host
    compares its own entries with what it wrote, `ownership_sync`)."""
    return None


def entry_of(booked: SavedBooking) -> Entry:
    """A booking's entry (`places` only where its allocation handed out more than its
    device, `shared` only where its device claimed something shared, `writer` where a host
    is named); claims in the file's order."""
    claims, places = _in_order(_by_path(booked.claims)), _in_order(booked.places)
    shared = _in_order(_by_path(booked.shared))
    fields: dict[str, Any] = {
        "resource": booked.owner.resource,
        "id": booked.owner.device,
        "device": booked.device,
        "claims": _claims_document(claims),
    }
    if places:
        fields["places"] = _claims_document(places)
    if shared:
        fields["shared"] = _claims_document(shared)
    if booked.writer is not None:
        fields["writer"] = booked.writer
    return Entry(fields, booked._replace(claims=claims, places=places, shared=shared))


def bookings_document(bookings: Iterable[SavedBooking]) -> dict[str, Any]:
    """`ownership.json`'s body: `bookings`, one entry per booked ID, in `owner_order`."""
    ordered = sorted(bookings, key=lambda b: owner_order(b.owner))
    return {"bookings": [entry_of(booked) for booked in ordered]}


def _by_path(claims: tuple[Claim, ...]) -> tuple[Claim, ...]:
    """A host path a node is handed out at (`PLACE`) as a claim by path (`path`): read back
    as what is there then, as older versions read it too (the file's shape is unchanged)."""
    if not any(claim[0][0] == PLACE for claim in claims):
        return claims
    return tuple(((NOTHING, c[0][1]), c[1], c[2]) if c[0][0] == PLACE else c for c in claims)


def _in_order(claims: tuple[Claim, ...]) -> tuple[Claim, ...]:
    return tuple(sorted(claims, key=lambda claim: str(claim[0])))


def _claims_document(claims: tuple[Claim, ...]) -> list[dict[str, Any]]:
    return [{"kind": k[0], "key": k[1], "path": path, "real": real} for k, path, real in claims]


def ownership_file(
    directory: str, log: EventLogger, offload: Offload, merge: Merge | None = None
) -> StateFile:
    """`<directory>/ownership.json`, where the bookings are kept; written with `merge` (the
    other hosts' entries kept, `ownership_sync.merged_with`) when given."""
    return StateFile(
        directory,
        OWNERSHIP_FILE,
        "ownership_state",
        OWNERSHIP_VERSION,
        log,
        offload,
        consequence="bookings are forgotten: a device the kubelet booked before this restart "
        "may be advertised under another ID or resource while a pod holds it",
        if_unwritten="bookings made now are forgotten if kdp-host restarts before a write succeeds",
        merge=merge,
        encode=encoded,
        decode=decode_bookings,
    )


NUMBERED = ("c", "b", DIRECTORY, FILE, OTHER, SYSFS)
"""Claim kinds whose key is a number: a device number, an inode (`identity.identity_of`; a
sysfs device's directory: `ownership_claims.sysfs_claim`)."""
BY_TEXT = (NOTHING, SYSFS)
"""Claim kinds whose key is a path: nothing there when booked, a sysfs device whose directory
was gone (or as versions before inodes wrote it: read as what is there now)."""
OLD_DIRECTORY = "dir"
"""A directory's claim by its real path, as versions before inodes wrote it."""


def read_saved(document: Mapping[str, Any], resolve: Resolver = reach) -> Saved:
    """The bookings of `ownership.json`, each entry checked (`checked_entry`; an `Entry`
    read as written is its booking already)."""
    return [
        entry.value
        if isinstance(entry, Rendered) and resolve is as_written
        else checked_entry(fields_of(entry), resolve)
        for entry in document["bookings"]
    ]


def decode_bookings(text: str) -> dict[str, Any]:
    """`ownership.json`'s text read as its document of entries, each checked as it is
    decoded (`checked_entries`, an entry at a time: `state_document`)."""
    return object_entries(text, "bookings", _checked)


def _checked(entry: Any) -> Entry:
    return ReadBack(entry, checked_entry(entry, as_written))  # (its fields not kept)


def checked_entries(document: Mapping[str, Any]) -> list[Entry]:
    """The entries of `ownership.json` as written, each checked once (an `Entry` is)."""
    return [
        entry if isinstance(entry, Rendered) else _checked(entry) for entry in document["bookings"]
    ]


def checked_entry(entry: Mapping[str, Any], resolve: Resolver = reach) -> SavedBooking:
    """One entry, checked: text resource, id, device (the id, or the device the id is a
    replica of), paths and real paths; a claim `kind` of `c`, `b` (device number), `d`, `f`,
    `sysfs` (inode) with a number, or `path`, `sysfs` (or `dir`, as older versions wrote)
    with a path; `places` and `shared` (optional) read as claims are. A claim by path
    (`path`, `dir`, `sysfs`: an older version claimed every file and directory, and a sysfs
    device, so) is what that path is now, if anything is there (`resolve`). `writer`
    (optional) text."""
    texts = [entry[name] for name in ("resource", "id", "device")]
    if not all(isinstance(text, str) and text for text in texts):
        raise TypeError(f"a booking's resource, id and device must be text: {entry!r}")
    if not advertises(texts[1], texts[2]):
        raise ValueError(f"a booking's id must be its device or a replica of it: {entry!r}")
    writer = entry.get("writer")
    if writer is not None and not (isinstance(writer, str) and writer):
        raise TypeError(f"a booking's writer must be text: {entry!r}")
    claims = _read_claims(entry["claims"], resolve)
    places = _read_claims(entry.get("places", []), resolve)
    shared = _read_claims(entry.get("shared", []), resolve)
    return SavedBooking(Owner(texts[0], texts[1]), texts[2], claims, places, writer, shared)


def _read_claims(listed: Iterable[Any], resolve: Resolver) -> tuple[Claim, ...]:
    claims: list[Claim] = []
    for claim in listed:
        kind, value = claim["kind"], claim["key"]
        if kind in NUMBERED and isinstance(value, int) and not isinstance(value, bool):
            key: ClaimKey = (kind, value)
        elif kind in (*BY_TEXT, OLD_DIRECTORY) and isinstance(value, str):
            key = (kind, value)
        else:
            raise TypeError(
                f"a claim is not c/b/d/f/sysfs with a number or path/sysfs with a path: {claim!r}"
            )
        path, real = claim["path"], claim["real"]
        if not all(isinstance(text, str) and text for text in (path, real)):
            raise TypeError(f"a claim's path and real path must be text: {claim!r}")
        if kind in (NOTHING, OLD_DIRECTORY):
            reached = resolve(value)
            key, real = ((NOTHING, value), real) if reached is None else reached
        elif kind == SYSFS and isinstance(value, str):
            key, _, real = sysfs_claim(value, resolve(value))  # (by its path: older versions)
        claims.append((key, path, real))
    return tuple(claims)
