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
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

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
    below,
    owner_order,
    reach,
)
from .state_file import StateFile

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


class StateSink(Protocol):
    """Where the index keeps its bookings (`state_file.StateFile`)."""

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None: ...

    async def written(self) -> None: ...


Saved = list[tuple[Owner, str, tuple[Claim, ...], tuple[Claim, ...]]]
"""Bookings read back: (resource, booked ID), the device's ID, its claims, its places."""


class Ledger:
    """The host's bookings (one per ownership index), by booked ID and by claim."""

    def __init__(self) -> None:
        self.bookings: dict[Owner, Booking] = {}
        """(resource, ID the kubelet booked) -> what it booked: what the file holds."""
        self.booked: dict[ClaimKey, set[Owner]] = {}
        """Claim (of a device or a place) -> the bookings that hold it."""
        self.places: dict[str, set[Owner]] = {}
        """Real path of a booked place -> the bookings that handed it out."""
        self.sink: StateSink | None = None

    def add(self, owner: Owner, booking: Booking) -> None:
        self.bookings[owner] = booking
        for claim in (*booking.claims, *booking.places):
            self.booked.setdefault(claim[0], set()).add(owner)
        for _, _, real in booking.places:
            self.places.setdefault(real, set()).add(owner)

    def drop(self, owner: Owner) -> None:
        booking = self.bookings.pop(owner)
        for key, _, _ in (*booking.claims, *booking.places):
            _discard(self.booked, key, owner)
        for _, _, real in booking.places:
            _discard(self.places, real, owner)

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
        if (
            before is not None
            and before.device == device
            and before.claims == claims
            and before.places == places
        ):
            before.since = now
            return False
        if before is not None:
            self.drop(owner)
        self.add(owner, Booking(device, claims, now, places))
        return True

    def expire(self, asked_at: float, after: float, held: Callable[[str], Collection[str]]) -> bool:
        """Drop the bookings no pod holds, by an answer asked for at `asked_at` (at least
        `after` seconds after the booking); True if one went."""
        gone = [
            owner
            for owner, booking in self.bookings.items()
            if asked_at >= booking.since + after and owner.device not in held(owner.resource)
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
                    if owner.device in mine:
                        continue
                return owner, path
        return None

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
        return bookings_document(
            (owner, booking.device, booking.claims, booking.places)
            for owner, booking in self.bookings.items()
        )


def _discard(index: dict[Any, set[Owner]], key: object, owner: Owner) -> None:
    holders = index.get(key)
    if holders is not None:
        holders.discard(owner)
        if not holders:
            del index[key]


def what_releases(reason: str, pod_resources: bool) -> str:
    """What ends the holding of a device held for `reason` (its `device_held` line's
    `action`), with PodResources polling on or off."""
    if reason != "booked":
        return "not advertised until the owner is gone"
    if pod_resources:
        return "not advertised until PodResources shows no pod holding the booked ID"
    return (
        "not advertised while the booking lives: PodResources polling is off "
        "(kubelet.podResourcesInterval: 0s), so nothing shows its pod ended; it ends when "
        "the kubelet allocates the booked ID again, or with `kdp-host unbook` run while "
        "kdp-host is stopped"
    )


def ownership_file(directory: str, log: EventLogger, offload: Offload) -> StateFile:
    """`<directory>/ownership.json`, where the bookings are kept."""
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
    )


def bookings_document(
    bookings: Iterable[tuple[Owner, str, tuple[Claim, ...], tuple[Claim, ...]]],
) -> dict[str, Any]:
    """`ownership.json`'s body: `bookings`, one entry per booked ID (`places` only where
    its allocation handed out more than its device)."""
    entries = []
    for owner, device, claims, places in sorted(bookings, key=lambda b: owner_order(b[0])):
        entry: dict[str, Any] = {
            "resource": owner.resource,
            "id": owner.device,
            "device": device,
            "claims": _claims_document(claims),
        }
        if places:
            entry["places"] = _claims_document(places)
        entries.append(entry)
    return {"bookings": entries}


def _claims_document(claims: tuple[Claim, ...]) -> list[dict[str, Any]]:
    return [
        {"kind": key[0], "key": key[1], "path": path, "real": real}
        for key, path, real in sorted(claims, key=lambda claim: str(claim[0]))
    ]


NUMBERED = ("c", "b", DIRECTORY, FILE)
"""Claim kinds whose key is a number: a device number, an inode (`identity.identity_of`)."""
BY_TEXT = (NOTHING, SYSFS)
"""Claim kinds whose key is a path: nothing there when booked, a sysfs device itself."""
OLD_DIRECTORY = "dir"
"""A directory's claim by its real path, as versions before inodes wrote it."""


def read_saved(document: Mapping[str, Any], resolve: Resolver = reach) -> Saved:
    """The bookings of `ownership.json`, checked: text resource, id, device (the id, or the
    device the id is a replica of), paths and real paths; a claim `kind` of `c`, `b` (device
    number), `d`, `f` (inode) with a number, or `path`, `sysfs` (or `dir`, as older versions
    wrote) with a path; `places` (optional) read as claims are. A claim by path (`path`,
    `dir`: an older version claimed every file and directory so) is what that path is now,
    if anything is there (`resolve`)."""
    saved: Saved = []
    for entry in document["bookings"]:
        texts = [entry[name] for name in ("resource", "id", "device")]
        if not all(isinstance(text, str) and text for text in texts):
            raise TypeError(f"a booking's resource, id and device must be text: {entry!r}")
        if not advertises(texts[1], texts[2]):
            raise ValueError(f"a booking's id must be its device or a replica of it: {entry!r}")
        claims = _read_claims(entry["claims"], resolve)
        places = _read_claims(entry.get("places", []), resolve)
        saved.append((Owner(texts[0], texts[1]), texts[2], claims, places))
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
                f"a claim is not c/b/d/f with a number or path/sysfs with a path: {claim!r}"
            )
        path, real = claim["path"], claim["real"]
        if not all(isinstance(text, str) and text for text in (path, real)):
            raise TypeError(f"a claim's path and real path must be text: {claim!r}")
        if kind in (NOTHING, OLD_DIRECTORY):
            reached = resolve(value)
            key, real = ((NOTHING, value), real) if reached is None else reached
        claims.append((key, path, real))
    return tuple(claims)
