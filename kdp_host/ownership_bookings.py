"""Booked claims: the IDs the kubelet booked, each with the claims of its device then.

When kdp-host answers an Allocate, the kubelet has booked those IDs: each (resource, ID) is
recorded with its device's claims, exclusive and shared (`OwnershipIndex.book`), and kept in
`<stateDir>/ownership.json` (through `StateFile`) before the answer goes out; the file is
written only when the bookings change. The index reads them back at start, before any
resource publishes, as lingering claims of their device (`ClaimTable.keep_bookings_in`).
While a booking lives, nothing else reaching its claims is advertised (`ownership_booked`),
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
from collections.abc import Callable, Collection, Container, Mapping
from typing import Any, Protocol

from .devices import advertises
from .identity import DIRECTORY
from .ownership_answering import AnswersInFlight
from .ownership_booked import Booking
from .ownership_claims import SYSFS, Claim, ClaimKey, Owner, owner_order
from .ownership_document import Entry, Saved, SavedBooking, entry_of
from .ownership_learnt import LearntBookings
from .ownership_reach import linked_spot
from .ownership_shared_held import count as _count
from .turns import Pace, Steps, to_the_end

TAKE_IN_CHUNK = 500
"""Entries of another host's file taken in per turn of the event loop (`taking_in`)."""

PLACE_BOOKED = "place_booked"
"""Why a device is held whose node or mount source is at the real path another booked ID's
device was handed out at (moved there, or made anew there: `Ledger.place_conflict`)."""


class StateSink(Protocol):
    """Where the index keeps its bookings (`state_file.StateFile`)."""

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None: ...

    async def written(self) -> object: ...


ReleasePending = Callable[[str, str], bool]
"""(resource, device) -> whether the device's release (`release.command`) is still due: its
users are not seen gone, or no release has succeeded since (`ReleaseStateStore.pending`)."""


def _none_pending(_resource: str, _device: str) -> bool:
    return False


BookedElsewhere = Callable[[str, Collection[str], str], None]
"""(resource, IDs, the host's instance ID): what another host booked, seen since this
host's start (its Allocate, which this host did not see): a use of the device
(`ReleaseStateStore.booked_elsewhere`), held until an answer shows it as an Allocate of
this host's is (`unlisted.Unlisted.booked_elsewhere`)."""


class Releases(Protocol):
    """The release state the index keeps bookings for (`ReleaseStateStore`)."""

    def pending(self, resource: str, device: str) -> bool:
        """`ReleasePending`."""

    def booked_elsewhere(self, resource: str, ids: Collection[str], writer: str) -> None:
        """`BookedElsewhere`."""

    def held_before(self, resource: str, devices: Mapping[str, Owner]) -> None:
        """`resource` advertises `devices` (advertised ID -> the device a booking of another
        resource held its node under) since that booking's pod was seen gone."""

    def releases(self, resource: str) -> bool:
        """Whether a release tracker of `resource` runs (its owed releases can run)."""


class Ledger(LearntBookings):
    """The host's bookings (one per ownership index), by booked ID and by claim."""

    def __init__(self, writer: str | None = None) -> None:
        super().__init__()
        self._writer = writer
        self._order: list[Owner] = []
        """This host's booked IDs in the file's order (`owner_order`), and the entry of each,
        rendered once, when booked (`document` hands out the list)."""
        self._entries: list[Entry] = []
        self.foreign: dict[tuple[str, Owner], Booking] = {}
        """(writer, owner) -> the bookings of the other hosts that run on the state directory
        (`mirror`): they hold their claims as this host's own do."""
        self.foreign_owners: set[Owner] = set()
        self.unresolved: set[Owner] = set()
        """Booked from a checkpoint answer with a CDI name that resolved nowhere
        (`take_handed`): PodResources adds its device's claims (`Adoption.book_held`)."""
        self.sink: StateSink | None = None
        self.releasing: ReleasePending = _none_pending  # (see `expire`)
        self.booked_elsewhere: list[BookedElsewhere] = []  # (told in turn: `mirroring`)
        self.drops = 0
        """Bookings gone so far (`drop`, another host's: `mirror`): `HandedRecord.answered`."""
        self.in_flight = AnswersInFlight()
        """The bookings of Allocates not answered yet: `expire` ends none of them."""
        self.ended: list[tuple[Owner, str]] = []
        """(owner, device) of the bookings whose pods were seen gone (`expire`, another
        host's: `mirroring`) since the index last took them (`HandOver.ended`): the
        devices they held back were used (`ownership_held.HandOver`)."""

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
        if known:
            self._learn(owner, self.bookings[owner], -1)
        self.bookings[owner] = booking
        self._index(owner, booking, 1)
        self._learn(owner, booking, 1)
        at = bisect_left(self._order, owner_order(owner), key=owner_order)
        if known:
            self._entries[at] = self._entry(owner)
        else:
            self._order.insert(at, owner)
            self._entries.insert(at, self._entry(owner))

    def drop(self, owner: Owner) -> None:
        self.drops += 1
        booking = self.bookings.pop(owner)
        self._index(owner, booking, -1)
        self._learn(owner, booking, -1)
        at = bisect_left(self._order, owner_order(owner), key=owner_order)
        del self._order[at], self._entries[at]

    def _entry(self, owner: Owner) -> Entry:
        booking = self.bookings[owner]
        return entry_of(
            SavedBooking(
                owner, booking.device, booking.claims, booking.places, self._writer, booking.shared
            )
        )

    def resize(self, owner: Owner, extra: tuple[Claim, ...], gone: frozenset[ClaimKey]) -> None:
        """`owner`'s booking holds `extra` too, and no longer the grown claims `gone`: its
        device reports them now, or no longer (`ownership_growth`); written to the file."""
        booking = self.bookings[owner]
        dropped = tuple(claim for claim in booking.claims if claim[0] in gone)
        self._index(owner, Booking(booking.device, dropped, booking.since), -1)
        booking.claims = tuple(c for c in booking.claims if c[0] not in gone) + extra
        booking.grown = (booking.grown - gone) | {claim[0] for claim in extra}
        self._index(owner, Booking(booking.device, extra, booking.since), 1)
        at = bisect_left(self._order, owner_order(owner), key=owner_order)
        self._entries[at] = self._entry(owner)
        self.drops += bool(gone)  # (a claim let go of may free a device)
        self.changed()

    def has(self, owner: Owner) -> bool:
        """Whether a host on the state directory (this one or another) has `owner` booked."""
        return owner in self.bookings or owner in self.foreign_owners

    def booked_as(self, owner: Owner, keys: Container[ClaimKey]) -> bool:
        """Whether a device with claims `keys` is the one the kubelet booked as `owner`
        (an ID it booked): `owner` is booked, and each booking of it (this host's, another
        host's) holds nothing but `keys`. Only that device is the held one (hostile16 F2,
        F3): one that merely shares a node with it (another stick given the held one's tty
        number, another glob group with the node the held group kept) is not, and the held
        device, whose other nodes are gone, is missing."""
        mine = self.bookings.get(owner)
        found = [] if mine is None else [mine]
        if owner in self.foreign_owners:
            found += [b for (_, o), b in self.foreign.items() if o == owner]
        return bool(found) and all(k in keys for b in found for k, _, _ in b.claims)

    def holds_as(self, owner: Owner, key: ClaimKey, keys: Container[ClaimKey]) -> bool:
        """Whether bookings of device `owner` (the index's ID: itself or a replica of it)
        hold `key`, each the device with claims `keys` (`booked_as`)."""
        booked = [
            b
            for b in self.booked.get(key, ())
            if b.resource == owner.resource and advertises(b.device, owner.device)
        ]
        return bool(booked) and all(self.booked_as(b, keys) for b in booked)

    def mirror(self, foreign: dict[tuple[str, Owner], Booking]) -> bool:
        """The other hosts' bookings are now `foreign`; True if that changed any."""
        return to_the_end(self.mirroring(foreign, Pace(TAKE_IN_CHUNK)))

    def mirroring(self, foreign: dict[tuple[str, Owner], Booking], pace: Pace) -> Steps[bool]:
        """`mirror` in steps: the claims of what changed are held (and let go) as their step
        comes; the other hosts' IDs (`has`) change at the last."""
        before = self.foreign
        changed = False
        gone: list[tuple[Owner, str]] = []
        for key, booking in before.items():
            if pace.due():
                yield
            if not _same(found := foreign.get(key), booking):
                self._index(key[1], booking, -1)
                changed = True
                if found is None:
                    gone.append((key[1], booking.device))
        for key, booking in foreign.items():
            if pace.due():
                yield
            if not _same(before.get(key), booking):
                self._index(key[1], booking, 1)
                changed = True
        owners = {owner for _, owner in foreign}
        if self.booked_elsewhere and self.sink is not None:  # (not those at start)
            new: dict[tuple[str, str], set[str]] = {}
            for writer, owner in foreign.keys() - before.keys():
                if owner not in self.foreign_owners and owner not in self.bookings:
                    new.setdefault((owner.resource, writer), set()).add(owner.device)
            for (resource, writer), ids in sorted(new.items()):
                for told in self.booked_elsewhere:
                    told(resource, ids, writer)
        self.drops += len(self.foreign_owners - owners)
        self.ended.extend(g for g in gone if g[0] not in owners and g[0] not in self.bookings)
        self.foreign, self.foreign_owners = foreign, owners
        return changed

    def take_in(
        self, saved: Saved | None, running: Collection[str], now: float, ours: bool = False
    ) -> tuple[bool, bool]:
        """`taking_in` at once (at start, before anything is served)."""
        return to_the_end(self.taking_in(saved, running, now, ours))

    def taking_in(
        self, saved: Saved | None, running: Collection[str], now: float, ours: bool = False
    ) -> Steps[tuple[bool, bool]]:
        """The file as read now: the bookings of the other hosts `running` become the
        foreign ones; a booking of a host that ended (or of none named) is taken over
        unless this host has its ID booked. Returns whether the bookings changed, and
        whether the file does not hold this host's own as they are (it is to be written).
        None (the file could not be read): what is held stays, and the file is written.
        `ours`: the file is this host's last write and `saved` the other entries in it (its
        own are as it wrote them: a change since asked for another write). In steps
        (`turns`): between two, a booking may be made or dropped (each entry is checked
        when its step comes), and the foreign ones change at the last."""
        if saved is None:
            return False, True
        foreign: dict[tuple[str, Owner], Booking] = {}
        on_file: Saved = []
        taken = False
        pace = Pace(TAKE_IN_CHUNK)
        for booked in saved:
            if pace.due():
                yield
            if booked.writer is not None and booked.writer == self._writer:
                on_file.append(booked)
                continue
            places, shared = booked.places, booked.shared
            booking = Booking(booked.device, booked.claims, now, places, shared=shared)
            if booked.writer is not None and booked.writer in running:
                foreign[(booked.writer, booked.owner)] = booking
            elif booked.owner not in self.bookings:
                self.add(booked.owner, booking)
                taken = True
        changed = (yield from self.mirroring(foreign, pace)) or taken
        if ours:
            return changed, taken
        on_file.sort(key=lambda booked: owner_order(booked.owner))
        return changed, on_file != [entry.value for entry in self._entries]

    def _index(self, owner: Owner, booking: Booking, step: int) -> None:
        for key, _, real in (*booking.claims, *booking.places):
            _count(self.booked, key, owner, step)
            if key[0] == DIRECTORY:
                self.count_mounted(real, owner, step)
                _count(self.dirs, key, owner, step)
                if step > 0:
                    self.follow_mounted(owner, real)
                elif not self.tree_held(real):
                    self.let_go_mounted(real)
                for moved in self.moved.get(key, ()):  # (where it was found since)
                    self.relocate(owner, moved, step)
            if step < 0:
                self.forget_moved(key)
        from_kubelet = booking.from_checkpoint  # (kdp-host's answers hand real paths)
        for _, path, real in booking.places:
            _count(self.places, real, owner, step)
            self._sorted_places = None
            if from_kubelet and (spot := linked_spot(path, real)) is not None:  # (now too)
                _count(self.spots, spot, owner, step)
                self.reach.count_linked(spot, owner, step)
        for key, _, real in booking.claims:
            if key[0] != SYSFS:
                _count(self.spots, real, owner, step)
                if real not in self.spots:
                    self.reach.forget(real)  # (no longer booked: what it reaches is free)
            if (left := self.own.get(key, 0) + step) > 0:
                self.own[key] = left
            elif self.own.pop(key, None) is not None and self.unknown:
                self.unheld.append(key)  # (a device reaching it may have the unknown number)
        if booking.number_unknown:
            _count(self.unknown, owner.resource, owner, step)
        self.index_shared(owner, booking.shared, step)

    def record(
        self,
        owner: Owner,
        device: str,
        claims: tuple[Claim, ...],
        now: float,
        places: tuple[Claim, ...] = (),
        number_unknown: bool = False,
        shared: tuple[Claim, ...] = (),
    ) -> bool:
        """Book `owner` with `claims` (and the `places` its allocation handed out besides, and
        its device's `shared` claims); False when it is booked so already (only its time is
        refreshed: nothing to write)."""
        before = self.bookings.get(owner)
        booking = Booking(device, claims, now, places, number_unknown=number_unknown, shared=shared)
        if before is not None and _same(before, booking):
            before.since = now
            return False
        if before is not None:
            self.drop(owner)
        self.add(owner, booking)
        return True

    def expire(self, asked_at: float, after: float, held: Callable[[str], Collection[str]]) -> bool:
        """Drop the bookings no pod holds, by an answer asked for at `asked_at` (at least
        `after` seconds after the booking, or after its Allocate answered: never while it
        is answered, `in_flight`), unless their device's release is still due
        (`releasing`: the node reaches no other pod before it is clean); True if one went."""
        gone = [
            owner
            for owner, booking in self.bookings.items()
            if asked_at >= booking.since + after
            and owner not in self.in_flight
            and owner.device not in held(owner.resource)
            and not self.releasing(owner.resource, booking.device)
        ]
        return self._end(gone)

    def end_unvouched(
        self, listed: Container[tuple[str, str]], covered: Callable[[str], bool], began: float
    ) -> list[Owner]:
        """End the bookings `unvouched` (`LearntBookings`) by a read of the kubelet's
        checkpoint begun at `began` (index clock); the owners of those that ended."""
        gone = self.unvouched(listed, covered, began)
        self._end(gone)
        return gone

    def _end(self, gone: list[Owner]) -> bool:
        """The bookings of `gone` end, their pods seen gone (`ended`); True if one did."""
        self.ended.extend((owner, self.bookings[owner].device) for owner in gone)
        if len(gone) == 1:
            self.drop(gone[0])
        elif gone:  # (one pass over the file's order, not one per booking gone)
            for owner in gone:
                self.drops += 1
                booking = self.bookings.pop(owner)
                self._index(owner, booking, -1)
                self._learn(owner, booking, -1)
            kept = [at for at, owner in enumerate(self._order) if owner in self.bookings]
            self._order = [self._order[at] for at in kept]
            self._entries = [self._entries[at] for at in kept]
        return bool(gone)

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
        and one.shared == other.shared
    )
