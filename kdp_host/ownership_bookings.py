"""Booked claims: the IDs the kubelet booked, each with the claims of its device then.

When kdp-host answers an Allocate, the kubelet has booked those IDs: each (resource, ID) is
recorded with its device's exclusive claims (`OwnershipIndex.book`) and kept in
`<stateDir>/ownership.json` (through `StateFile`) before the answer goes out; the file is
written only when the bookings change. The index reads them back at start, before any
resource publishes, as lingering claims of their device (`ClaimTable.keep_bookings_in`).
While a booking lives, nothing else reaching its claims is advertised (`Ledger.conflict`),
and its claims linger even when their node is gone. This module holds the bookings
(`Ledger`), each rendered into its entry of the file once, when booked; the file's document
is read and written one way (`ownership_document`), shared with `kdp-host unbook`.

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

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .devices import replica_ids
from .identity import DIRECTORY
from .ownership_claims import SYSFS, Claim, ClaimKey, Claims, Owner, ancestors, owner_order
from .ownership_document import Entry, Saved, SavedBooking, entry_of
from .ownership_unknown import TreeNodes, not_known, reaching_node
from .rules import below

PLACE_BOOKED = "place_booked"
"""Why a device is held whose node or mount source is at the real path another booked ID's
device was handed out at (moved there, or made anew there: `Ledger.place_conflict`)."""


@dataclass
class Booking:
    """What the kubelet booked under one ID: the claims of its device then."""

    device: str
    """The device's ID in the index (the booked ID without a replica suffix)."""
    claims: tuple[Claim, ...]
    """Its exclusive claims (key, host path, real path)."""
    since: float
    """When it was last booked (index clock): a PodResources answer asked for later than
    `Timings.heard_after` after it shows the pod."""
    places: tuple[Claim, ...] = ()
    """What the Allocate answer handed out besides the device's own claims (the nodes and
    mount sources of `allocate.mounts` and of the `allocate.command`'s output): no device
    reaching one of them (the same place, below it, or a directory above it) is
    advertised while the booking lives; other allocations may share them."""
    group: tuple[str, ...] = ()
    """IDs booked from one answer of the kubelet's checkpoint: its places are theirs too."""
    number_unknown: bool = False
    """Booked from the checkpoint for a node that was gone at start, with no booking that
    knew its device number: a node found later may have that number (hostile9 H2)."""


class StateSink(Protocol):
    """Where the index keeps its bookings (`state_file.StateFile`)."""

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None: ...

    async def written(self) -> object: ...


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
        self._writer = writer
        self.bookings: dict[Owner, Booking] = {}
        """(resource, ID the kubelet booked) -> what it booked: this host's entries of the
        file."""
        self._order: list[Owner] = []
        """This host's booked IDs in the file's order (`owner_order`), and the entry of each,
        rendered once, when booked (`document` hands out the list)."""
        self._entries: list[Entry] = []
        self.foreign: dict[tuple[str, Owner], Booking] = {}
        """(writer, owner) -> the bookings of the other hosts that run on the state directory
        (`mirror`): they hold their claims as this host's own do."""
        self.foreign_owners: set[Owner] = set()
        self.booked: dict[ClaimKey, Counted] = {}
        """Claim (of a device or a place) -> the bookings that hold it."""
        self.places: dict[str, Counted] = {}
        """Real path of a booked place -> the bookings that handed it out."""
        self._sorted_places: list[str] | None = None
        """`places` sorted (those below a directory are one run), made when first needed."""
        self.unknown: dict[str, Counted] = {}
        self.served: frozenset[str] = frozenset()
        """Resource -> its bookings whose device number is not known (`number_unknown`), and
        the config's resources (not another plugin's): one's unknown number may be any's."""
        self.spots: dict[str, Counted] = {}
        """Real path of a booked device's own claim (its node or mount source as the
        Allocate handed it out) -> the bookings that hold it: the place a pod's answer
        names stays that pod's, whatever is found there later (`place_conflict`)."""
        self.sink: StateSink | None = None
        self.releasing: ReleasePending = _none_pending  # (see `expire`)
        self.tree_nodes: TreeNodes = not_known  # (see `number_unknown`)
        self.drops = 0
        """Bookings gone so far (`drop`, another host's: `mirror`): `HandedRecord.answered`."""

    @property
    def writer(self) -> str | None:
        """This host's instance ID, written with each of its bookings."""
        return self._writer

    @writer.setter
    def writer(self, writer: str | None) -> None:
        self._writer = writer
        self._entries = [self._entry(owner) for owner in self._order]

    def add(self, owner: Owner, booking: Booking) -> None:
        known = owner in self.bookings
        self.bookings[owner] = booking
        self._index(owner, booking, 1)
        at = bisect_left(self._order, owner_order(owner), key=owner_order)
        if known:
            self._entries[at] = self._entry(owner)
        else:
            self._order.insert(at, owner)
            self._entries.insert(at, self._entry(owner))

    def drop(self, owner: Owner) -> None:
        self.drops += 1
        self._index(owner, self.bookings.pop(owner), -1)
        at = bisect_left(self._order, owner_order(owner), key=owner_order)
        del self._order[at], self._entries[at]

    def _entry(self, owner: Owner) -> Entry:
        booking = self.bookings[owner]
        return entry_of(
            SavedBooking(owner, booking.device, booking.claims, booking.places, self._writer)
        )

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
        self, saved: Saved | None, running: Collection[str], now: float, ours: bool = False
    ) -> tuple[bool, bool]:
        """The file as read now: the bookings of the other hosts `running` become the
        foreign ones; a booking of a host that ended (or of none named) is taken over
        unless this host has its ID booked. Returns whether the bookings changed, and
        whether the file does not hold this host's own as they are (it is to be written).
        None (the file could not be read): what is held stays, and the file is written.
        `ours`: the file is this host's last write and `saved` the other entries in it (its
        own are as it wrote them: a change since asked for another write)."""
        if saved is None:
            return False, True
        foreign: dict[tuple[str, Owner], Booking] = {}
        on_file: Saved = []
        taken = False
        for booked in saved:
            if booked.writer is not None and booked.writer == self._writer:
                on_file.append(booked)
                continue
            booking = Booking(booked.device, booked.claims, now, booked.places)
            if booked.writer is not None and booked.writer in running:
                foreign[(booked.writer, booked.owner)] = booking
            elif booked.owner not in self.bookings:
                self.add(booked.owner, booking)
                taken = True
        changed = self.mirror(foreign) or taken
        if ours:
            return changed, taken
        on_file.sort(key=lambda booked: owner_order(booked.owner))
        return changed, on_file != [entry.value for entry in self._entries]

    def _index(self, owner: Owner, booking: Booking, step: int) -> None:
        for key, _, _ in (*booking.claims, *booking.places):
            _count(self.booked, key, owner, step)
        for _, _, real in booking.places:
            _count(self.places, real, owner, step)
            self._sorted_places = None
        for key, _, real in booking.claims:
            if key[0] != SYSFS:
                _count(self.spots, real, owner, step)
        if booking.number_unknown:
            _count(self.unknown, owner.resource, owner, step)

    def record(
        self,
        owner: Owner,
        device: str,
        claims: tuple[Claim, ...],
        now: float,
        places: tuple[Claim, ...] = (),
        number_unknown: bool = False,
    ) -> bool:
        """Book `owner` with `claims` (and the `places` its allocation handed out besides);
        False when it is booked so already (only its time is refreshed: nothing to write)."""
        before = self.bookings.get(owner)
        booking = Booking(device, claims, now, places, number_unknown=number_unknown)
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
        return self._first_other(
            resource,
            device_id,
            replicas,
            ((path, self._holders(key, real)) for key, path, real in claims.exclusive),
        )

    def _holders(self, key: ClaimKey, real: str) -> Iterable[Owner]:
        holders: Iterable[Owner] = self.booked.get(key, ())
        if self.places:
            holders = [*holders, *self._places_reached(key, real)]
        return holders

    def place_conflict(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of another ID (or resource) whose device was handed out at the real
        path of one of the device's claims, with that claim's host path: a device moved
        there, or made anew there with another identity (an inode number reused), would
        be handed out at the path a pod's answer names (issue 17, hostile7 F3). Its own
        IDs pass: the device of a booked ID made anew is still that ID's."""
        spots = self.spots
        if not spots:
            return None
        return self._first_other(
            resource,
            device_id,
            replicas,
            ((path, spots.get(real, ())) for key, path, real in claims.all() if key[0] != SYSFS),
        )

    def number_unknown(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of another ID of `resource`, or of any `served` resource, whose node was
        gone at start, its device number not known (`Booking.number_unknown`), while the
        device reaches a device node no booking holds (that path: `reaching_node`, a node or
        a directory whose tree may hold one, `tree_nodes`): the kernel may have given the
        gone node's number to it, under any resource's name, and the pod's container reaches
        the device by that number (hostile9 H2, hostile10 F3, F7)."""
        served = self.served
        unknown = [o for name, owned in self.unknown.items() if name == resource or name in served
                   for o in owned]  # fmt: skip
        path = reaching_node(claims, self.booked, self.tree_nodes) if unknown else None
        if path is None:
            return None
        return self._first_other(resource, device_id, replicas, [(path, unknown)])

    def mount_conflict(
        self, resource: str, device_id: str, replicas: int, outer: Iterable[tuple[str, ClaimKey]]
    ) -> tuple[Owner, str] | None:
        """A booking of another ID (or resource) of a directory one of the device's claims is
        below (`outer`: host path of the claim, key of a claimed directory above one of its
        places), with that claim's host path: the pod's mount reaches the node, so the
        device is held while the booking lives (issue 17, hostile8 N1: a booked mount wins
        over advertising what was linked or renamed into it)."""
        booked = self.booked
        if not booked:
            return None
        return self._first_other(
            resource, device_id, replicas, ((path, booked.get(key, ())) for path, key in outer)
        )

    def _first_other(
        self,
        resource: str,
        device_id: str,
        replicas: int,
        held: Iterable[tuple[str, Iterable[Owner]]],
    ) -> tuple[Owner, str] | None:
        """The first owner of `held` (host path, its owners) that is none of the IDs the
        device is advertised under (its replicas, or one booked in one answer with them)."""
        mine: set[str] | None = None
        for path, holders in held:
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
            ordered = self._sorted_places
            if ordered is None:
                ordered = self._sorted_places = sorted(places)
            prefix = real.rstrip("/") + "/"
            at = bisect_left(ordered, prefix)
            while at < len(ordered) and ordered[at].startswith(prefix):
                if below(ordered[at], real):  # (the run: what starts with the prefix)
                    found += places[ordered[at]]
                at += 1
        return found

    def changed(self) -> None:
        if self.sink is not None:
            self.sink.changed(self.document)

    def document(self) -> Mapping[str, Any]:
        """This host's entries of the file, in its order (rendered when booked)."""
        return {"bookings": list(self._entries)}


def _same(one: Booking | None, other: Booking) -> bool:
    return (
        one is not None
        and one.device == other.device
        and one.claims == other.claims
        and one.places == other.places
        and one.number_unknown == other.number_unknown
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
