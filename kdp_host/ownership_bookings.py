"""Booked claims: the IDs the kubelet booked, each with the claims of its device then.

When kdp-host answers an Allocate, the kubelet has booked those IDs: each (resource, ID) is
recorded with its device's exclusive claims (`OwnershipIndex.book`) and kept in
`<stateDir>/ownership.json` (through `StateFile`) before the answer goes out; the file is
written only when the bookings change. The index reads them back at start, before any
resource publishes, as lingering claims of their device (`ClaimTable.keep_bookings_in`).
While a booking lives, nothing else reaching its claims is advertised (`Ledger.conflict`),
and its claims linger even when their node is gone. This module holds the bookings
(`Ledger`) and the file's document, read and written one way (`bookings_document`,
`read_saved`), shared with `kdp-host unbook`.

Hosts that share the state directory (a rolling update with `maxSurge` runs the new host
beside the old one) share the file: each entry names its `writer` (the host's instance ID),
a host writes its own entries only and keeps every other's (`ownership_sync.merged_with`:
read again and merged under the file's lock, `state_file`), and it follows the file: the
entries of a host that runs are its *foreign* bookings (`Ledger.mirror`), which hold their
claims like its own but which only their writer drops; the entries of a host that ended
(`state_lock.running`), or of no named writer (an older version, `kdp-host unbook`), are
taken over as its own. So no host's write drops another's bookings, and a booking one drops
(its pod ended) is not written back by another.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .devices import advertises, replica_ids
from .files import Offload
from .identity import DIRECTORY, FILE
from .logs import EventLogger
from .ownership_claims import (
    NOTHING,
    SYSFS,
    Claim,
    ClaimKey,
    Claims,
    Owner,
    Resolver,
    ancestors,
    owner_order,
    reach,
    sysfs_claim,
)
from .rules import below
from .state_file import Merge, StateFile

OWNERSHIP_FILE = "ownership.json"
OWNERSHIP_VERSION = 1


@dataclass
class Booking:
    """What the kubelet booked under one ID: the claims of its device then."""

    device: str
    """The device's ID in the index (the booked ID without a replica suffix)."""
    claims: tuple[Claim, ...]
    """Its exclusive claims (key, host path, real path)."""
    since: float
    """When it was last booked (index clock): a PodResources answer asked for later than
    `HEARD_AFTER` after it shows the pod."""
    places: tuple[Claim, ...] = ()
    """What the Allocate answer handed out besides the device's own claims (the nodes and
    mount sources of `allocate.mounts` and of the `allocate.command`'s output): no device
    reaching one of them (the same place, below it, or a directory above it) is
    advertised while the booking lives; other allocations may share them."""
    group: tuple[str, ...] = ()
    """IDs booked from one answer of the kubelet's checkpoint: its places are theirs too."""


class StateSink(Protocol):
    """Where the index keeps its bookings (`state_file.StateFile`)."""

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None: ...

    async def written(self) -> None: ...


class SavedBooking(NamedTuple):
    """A booking as the file keeps it."""

    owner: Owner
    """(resource, booked ID)"""
    device: str
    claims: tuple[Claim, ...]
    places: tuple[Claim, ...] = ()
    writer: str | None = None
    """The instance ID of the host that wrote it (None: no host named, one that ended)."""


Saved = list[SavedBooking]

Counted = dict[Owner, int]
"""The bookings that hold a claim, each with how many times (its own and a foreign copy)."""


ReleasePending = Callable[[str, str], bool]
"""(resource, device) -> whether the device's release (`release.command`) is still due: its
users are not seen gone, or no release has succeeded since (`ReleaseStateStore.pending`)."""


def _none_pending(_resource: str, _device: str) -> bool:
    return False


class Ledger:
    """The host's bookings (one per ownership index), by booked ID and by claim."""

    def __init__(self, writer: str | None = None) -> None:
        self.writer = writer
        """This host's instance ID, written with each of its bookings."""
        self.bookings: dict[Owner, Booking] = {}
        """(resource, ID the kubelet booked) -> what it booked: this host's entries of the
        file."""
        self.foreign: dict[tuple[str, Owner], Booking] = {}
        """(writer, owner) -> the bookings of the other hosts that run on the state directory
        (`mirror`): they hold their claims as this host's own do."""
        self.foreign_owners: set[Owner] = set()
        self.booked: dict[ClaimKey, Counted] = {}
        """Claim (of a device or a place) -> the bookings that hold it."""
        self.places: dict[str, Counted] = {}
        """Real path of a booked place -> the bookings that handed it out."""
        self.sink: StateSink | None = None
        self.releasing: ReleasePending = _none_pending  # (see `expire`)
        self.drops = 0
        """Bookings gone so far (`drop`, another host's: `mirror`): `HandedRecord.answered`."""

    def add(self, owner: Owner, booking: Booking) -> None:
        self.bookings[owner] = booking
        self._index(owner, booking, 1)

    def drop(self, owner: Owner) -> None:
        self.drops += 1
        self._index(owner, self.bookings.pop(owner), -1)

    def has(self, owner: Owner) -> bool:
        """Whether a host on the state directory (this one or another) has `owner` booked."""
        return owner in self.bookings or owner in self.foreign_owners

    def mirror(self, foreign: dict[tuple[str, Owner], Booking]) -> bool:
        """The other hosts' bookings are now `foreign`; True if that changed any."""
        before = self.foreign
        changed = False
        for key, booking in before.items():
            if not _same(foreign.get(key), booking):
                self._index(key[1], booking, -1)
                changed = True
        for key, booking in foreign.items():
            if not _same(before.get(key), booking):
                self._index(key[1], booking, 1)
                changed = True
        owners = {owner for _, owner in foreign}
        self.drops += len(self.foreign_owners - owners)
        self.foreign, self.foreign_owners = foreign, owners
        return changed

    def take_in(
        self, saved: Saved | None, running: Collection[str], now: float
    ) -> tuple[bool, bool]:
        """The file as read now: the bookings of the other hosts `running` become the
        foreign ones; a booking of a host that ended (or of none named) is taken over
        unless this host has its ID booked. Returns whether the bookings changed, and
        whether the file does not hold this host's own as they are (it is to be written).
        None (the file could not be read): what is held stays, and the file is written."""
        if saved is None:
            return False, True
        foreign: dict[tuple[str, Owner], Booking] = {}
        on_file: Saved = []
        taken = False
        for booked in saved:
            booking = Booking(booked.device, booked.claims, now, booked.places)
            if booked.writer is not None and booked.writer == self.writer:
                on_file.append(booked)
            elif booked.writer is not None and booked.writer in running:
                foreign[(booked.writer, booked.owner)] = booking
            elif booked.owner not in self.bookings:
                self.add(booked.owner, booking)
                taken = True
        changed = self.mirror(foreign) or taken
        return changed, bookings_document(on_file) != self.document()

    def _index(self, owner: Owner, booking: Booking, step: int) -> None:
        for key, _, _ in (*booking.claims, *booking.places):
            _count(self.booked, key, owner, step)
        for _, _, real in booking.places:
            _count(self.places, real, owner, step)

    def record(
        self,
        owner: Owner,
        device: str,
        claims: tuple[Claim, ...],
        now: float,
        places: tuple[Claim, ...] = (),
    ) -> bool:
        """Book `owner` with `claims` (and the `places` its allocation handed out besides);
        False when it is booked so already (only its time is refreshed: nothing to write)."""
        before = self.bookings.get(owner)
        booking = Booking(device, claims, now, places)
        if before is not None and _same(before, booking):
            before.since = now
            return False
        if before is not None:
            self.drop(owner)
        self.add(owner, booking)
        return True

    def expire(self, asked_at: float, after: float, held: Callable[[str], Collection[str]]) -> bool:
        """Drop the bookings no pod holds, by an answer asked for at `asked_at` (at least
        `after` seconds after the booking), unless their device's release is still due
        (`releasing`: the node reaches no other pod before it is clean); True if one went."""
        gone = [
            owner
            for owner, booking in self.bookings.items()
            if asked_at >= booking.since + after
            and owner.device not in held(owner.resource)
            and not self.releasing(owner.resource, booking.device)
        ]
        for owner in gone:
            self.drop(owner)
        return bool(gone)

    def conflict(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of one of the device's claims that is not one of the IDs it is about to
        be advertised under (another resource, another device, another replica count), with
        the host path of that claim."""
        if not self.booked:
            return None
        mine: set[str] | None = None
        for key, path, real in claims.exclusive:
            holders: Iterable[Owner] = self.booked.get(key, ())
            if self.places:
                holders = [*holders, *self._places_reached(key, real)]
            for owner in holders:
                if owner.resource == resource:
                    if mine is None:
                        mine = set(replica_ids(device_id, replicas))
                    if owner.device in mine or self._together(owner, mine):
                        continue
                return owner, path
        return None

    def _together(self, owner: Owner, ids: set[str]) -> bool:
        """Whether `owner` was booked in one answer with one of `ids` (its places too)."""
        booking = self.bookings.get(owner)
        return booking is not None and not ids.isdisjoint(booking.group)

    def _places_reached(self, key: ClaimKey, real: str) -> list[Owner]:
        """The bookings whose places a claim reaches: the same real path, a place it is
        below (a mounted directory holds it), or, for a directory, a place below it."""
        places = self.places
        found = [*places.get(real, ())]
        for directory in ancestors(real):
            found += places.get(directory, ())
        if key[0] == DIRECTORY:
            for place, owners in places.items():
                if below(place, real):
                    found += owners
        return found

    def changed(self) -> None:
        if self.sink is not None:
            self.sink.changed(self.document)

    def document(self) -> Mapping[str, Any]:
        """This host's entries of the file."""
        return bookings_document(
            SavedBooking(owner, booking.device, booking.claims, booking.places, self.writer)
            for owner, booking in self.bookings.items()
        )


def _same(one: Booking | None, other: Booking) -> bool:
    return (
        one is not None
        and one.device == other.device
        and one.claims == other.claims
        and one.places == other.places
    )


def _count(index: dict[Any, Counted], key: object, owner: Owner, step: int) -> None:
    holders = index.setdefault(key, {})
    left = holders.get(owner, 0) + step
    if left > 0:
        holders[owner] = left
    else:
        holders.pop(owner, None)
        if not holders:
            del index[key]


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
    )


def bookings_document(bookings: Iterable[SavedBooking]) -> dict[str, Any]:
    """`ownership.json`'s body: `bookings`, one entry per booked ID (`places` only where
    its allocation handed out more than its device, `writer` where a host is named)."""
    entries = []
    for booked in sorted(bookings, key=lambda b: owner_order(b.owner)):
        entry: dict[str, Any] = {
            "resource": booked.owner.resource,
            "id": booked.owner.device,
            "device": booked.device,
            "claims": _claims_document(booked.claims),
        }
        if booked.places:
            entry["places"] = _claims_document(booked.places)
        if booked.writer is not None:
            entry["writer"] = booked.writer
        entries.append(entry)
    return {"bookings": entries}


def _claims_document(claims: tuple[Claim, ...]) -> list[dict[str, Any]]:
    return [
        {"kind": key[0], "key": key[1], "path": path, "real": real}
        for key, path, real in sorted(claims, key=lambda claim: str(claim[0]))
    ]


NUMBERED = ("c", "b", DIRECTORY, FILE, SYSFS)
"""Claim kinds whose key is a number: a device number, an inode (`identity.identity_of`; a
sysfs device's directory: `ownership_claims.sysfs_claim`)."""
BY_TEXT = (NOTHING, SYSFS)
"""Claim kinds whose key is a path: nothing there when booked, a sysfs device whose directory
was gone (or as versions before inodes wrote it: read as what is there now)."""
OLD_DIRECTORY = "dir"
"""A directory's claim by its real path, as versions before inodes wrote it."""


def read_saved(document: Mapping[str, Any], resolve: Resolver = reach) -> Saved:
    """The bookings of `ownership.json`, checked: text resource, id, device (the id, or the
    device the id is a replica of), paths and real paths; a claim `kind` of `c`, `b` (device
    number), `d`, `f`, `sysfs` (inode) with a number, or `path`, `sysfs` (or `dir`, as older
    versions wrote) with a path; `places` (optional) read as claims are. A claim by path
    (`path`, `dir`, `sysfs`: an older version claimed every file and directory, and a sysfs
    device, so) is what that path is now, if anything is there (`resolve`). `writer`
    (optional) text."""
    saved: Saved = []
    for entry in document["bookings"]:
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
        saved.append(SavedBooking(Owner(texts[0], texts[1]), texts[2], claims, places, writer))
    return saved


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
