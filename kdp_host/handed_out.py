"""What each Allocate handed out: the one record, kept in `<stateDir>/handed-out.json`.

Per resource, per device: the device as each Allocate handed it out (nodes, mounts, env as
they were then; an earlier use not released yet too: `Handed.earlier`) and the IDs it went
under, kept while one of those IDs is booked (`ownership_bookings`). A container that
restarts gets the kubelet's cached answer again, so what acts on it takes the device as
handed out, not where anything moved it since: preStart (`hooks.handed_devices`), the CDI
entry of each held ID (`cdi.CdiSpecWriter`, `cdi_keeper`) and a release
(`release.ReleaseTracker`) read this record (`HandedRecord.of`), another host's uses too
(`handed_peers`).

Written as `release-state.json` is (`state_file.StateFile`: atomically, through the offload,
merged per writer under the file's lock while hosts share the state directory). An Allocate
answers once its entry is written, else is refused within `state_file.WRITE_LIMIT`
(`protocol/kept.py`): nothing is handed out that a restart would not find here. Entries go
when none of their IDs is booked (at each Allocate, PodResources answer and CDI sync); at
most `MAX_DEVICES` are kept (an Allocate that would need more is refused, saying so). A
release of a device whose entry is withheld (below) is not run (`unknown_release`).

Fails closed: a file that cannot be read (set aside), or one whose writer stopped before a
write succeeded (its `.unsaved` marker), leaves every ID booked at start without an entry
*withheld* (preStart refuses it, its CDI entry is left out) until a new Allocate hands the
ID out or its booking ends; then so is an ID PodResources shows held with no entry while
shown. A missing file does too when the bookings are lost too (the state directory
emptied); beside an `ownership.json` it is one an older version never wrote."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .devices import Device, Snapshot
from .files import Offload
from .handed_entries import (
    UNKNOWN_CONSEQUENCE,
    Answer,
    Bookings,
    Entries,
    Handed,
    Lost,
    all_ids,
    check_room,
    entries_document,
    handed_anew,
    merged,
    paths_reached,
    reached_of,
    read_document,
    same_device,
)
from .handed_peers import adopted, take_up
from .identity import Identity
from .logs import EventLogger
from .rendered_json import encoded
from .state_file import StateFile
from .state_lock import running

HANDED_FILE = "handed-out.json"
HANDED_VERSION = 1
MAX_DEVICES = 20_000
"""Most devices the record keeps (all resources): far above what one node's pods hold, and
well within what the file may hold (`state_document.MAX_STATE_SIZE`)."""


class HandedRecord:
    """The record of every resource (one per host); `of(resource)` is a resource's view.
    `directory` None: kept in memory only (tests, tools)."""

    def __init__(
        self,
        directory: str | None = None,
        log: EventLogger | None = None,
        offload: Offload | None = None,
        writer: str | None = None,
        *,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self._wall = wall or time.time
        self._writer = writer
        self._log = log
        self._data: Entries = {}
        self._withheld: dict[str, set[str]] = {}
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._drops: dict[str, int] = {}
        """Per resource: the ownership index's `drops` at its last Allocate's let-go."""
        self._all_drops: int | None = None
        """`drops` at the last let-go of every resource (a PodResources answer)."""
        self._unbooked: set[str] = set()
        """Resources whose last Allocate handed out an ID left unbooked."""
        self._lost: Lost | None = None  # (the record lost at start: `booked_at_start`)
        self.file: StateFile | None = None
        if directory is not None:
            assert offload is not None and log is not None
            self.file = StateFile(
                directory,
                HANDED_FILE,
                "handed_out",
                HANDED_VERSION,
                log,
                offload,
                consequence="the devices booked now are withheld (preStart refuses them, "
                "their CDI entries are left out) until handed out again or no longer booked",
                if_unwritten="every Allocate is refused until it is written (a device is "
                "handed out only once this record keeps it)",
                merge=None if writer is None else self._merge,
                mark_unsaved=True,
                writer=writer,
                running=running,
                encode=encoded,
            )

    # ------------------------------------------------------------------ start

    def load(self) -> None:
        """Read the file (blocking: call it in a thread). Missing: nothing was recorded."""
        if self.file is None:
            return
        self._data = (self.file.load(read_document) or ({}, {}))[0]

    @classmethod
    async def read(
        cls, directory: str, log: EventLogger, offload: Offload, writer: str | None = None
    ) -> HandedRecord:
        record = cls(directory, log, offload, writer)
        await offload.run(record.load)
        return record

    def booked_at_start(
        self,
        booked: Mapping[str, Collection[str]],
        bookings_found: bool = True,
        served: Collection[str] = (),
        booked_now: Callable[[str, str], bool] = lambda resource, advertised: True,
    ) -> None:
        """At start, once the bookings are read (resource -> booked IDs): those the record
        cannot tell of are withheld when the file was unreadable, or missing with the
        bookings lost too (`bookings_found` False; `booked` has CDI answers' IDs too: those
        not `booked_now` stay until an answer shows them not held); so are then the IDs of
        `served` resources an answer shows held with no entry (hostile10 F4) while it does."""
        file = self.file
        if file is None or not (file.unknown or (not file.found and not bookings_found)):
            return
        self._lost = lost = Lost(served)
        for resource, ids in booked.items():
            known = {i for handed in self._data.get(resource, {}).values() for i in all_ids(handed)}
            self._withhold(resource, unknown := {i for i in ids if i not in known})
            if waiting := {i for i in unknown if not booked_now(resource, i)}:
                lost.shown[resource] = waiting
        self._settle()

    def _withhold(self, resource: str, ids: set[str]) -> bool:
        withheld = self._withheld.setdefault(resource, set())
        if new := ids - withheld:
            withheld |= new
            assert self._log is not None
            ids_text, why = ",".join(sorted(new)), UNKNOWN_CONSEQUENCE
            self._log.error("handed_out_unknown", resource=resource, ids=ids_text, consequence=why)
        elif not withheld:
            del self._withheld[resource]
        return bool(new)

    # ------------------------------------------------------------------ views

    def of(self, resource: str) -> HandedOut:
        return HandedOut(self, resource)

    def devices(self, resource: str) -> dict[str, Device]:
        return {d: h.device for d, h in self._data.get(resource, {}).items()}

    def withheld(self, resource: str) -> frozenset[str]:
        return frozenset(self._withheld.get(resource, ()))

    def entry(self, resource: str, device_id: str) -> Handed | None:
        return self._data.get(resource, {}).get(device_id)

    def resources(self) -> list[str]:
        return sorted(self._data)

    def watch(self, resource: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` whenever `resource`'s entries change; returns the unsubscribe."""
        callbacks = self._watchers.setdefault(resource, [])
        callbacks.append(callback)
        return lambda: callbacks.remove(callback) if callback in callbacks else None

    # ------------------------------------------------------------------ changes

    def check_room(self, resource: str, snapshot: Snapshot, ids: Iterable[str]) -> None:
        """Raises RecordFull when handing `ids` out would keep more than `MAX_DEVICES`."""
        check_room(self._data, resource, snapshot, ids, (HANDED_FILE, MAX_DEVICES))

    def hand_out(
        self,
        resource: str,
        snapshot: Snapshot,
        ids: Iterable[str],
        reached: Mapping[str, Identity] | None = None,
    ) -> bool:
        """An Allocate handed these IDs out as `snapshot` lists them, each host path
        reaching what `reached` says (the Allocate's claim check). True when it changed."""
        entries = self._data.setdefault(resource, {})
        withheld = self._withheld.get(resource, set())
        changed, now, reached = False, self._wall(), reached or {}
        for advertised in ids:
            withheld.discard(advertised)
            entry = snapshot.by_advertised_id.get(advertised)
            if entry is None:
                continue
            device, old, named = entry.device, entries.get(entry.device.id), True
            found = paths_reached(device, reached)
            same = old is not None and not old.owed and same_device(old.device, device)
            kept = old.ids if old and same and found in ({}, old.reached) else frozenset()
            if advertised in kept:
                continue  # handed out again as it was: nothing to write
            if old is not None and kept:  # (an older version's use stays so: `id_names`)
                found, named = found or dict(old.reached), old.id_names
            new = Handed(device, kept | {advertised}, now, found, id_names=named)
            entries[device.id] = handed_anew(old, new, replaced=not kept)
            changed = True
        if not entries:
            del self._data[resource]
        self._changed(resource, changed)
        return changed

    def answered(
        self,
        resource: str,
        snapshot: Snapshot,
        ids: Sequence[str],
        booked: Callable[[str], bool] | None = None,
        drops: int = 0,
        reached: Mapping[str, Identity] | None = None,
    ) -> None:
        """An Allocate handed `ids` out as `snapshot` lists them, its host paths reaching
        `reached` (and booked them, when `booked` says what is booked now). The entries
        none of whose IDs is booked are let go first, but only when one can be (issue 19:
        no walk of every device handed out at each answer): after a booking went (`drops`,
        the ownership index's count) or after an answer handed out an ID left unbooked."""
        if booked is not None and (
            resource in self._unbooked or self._drops.get(resource) != drops
        ):
            self.let_go(lambda _name, advertised: booked(advertised), resource)
            self._drops[resource] = drops
        self.hand_out(resource, snapshot, ids, reached)
        if booked is not None and not all(map(booked, ids)):
            self._unbooked.add(resource)
        else:
            self._unbooked.discard(resource)

    def adopt(self, resource: str, device: Device, ids: Collection[str], at: float) -> None:
        """Take up a device an older version kept elsewhere (`handed_peers.adopted`)."""
        self._changed(resource, adopted(self._data, resource, device, ids, at))

    def peers_wrote(self, document: Mapping[str, Any]) -> None:
        """Another host wrote the file: its later uses are taken up (`handed_peers`)."""
        assert self._log is not None
        for resource in take_up(self._data, document, self._writer, self._log):
            self._changed(resource, True)

    def let_go(
        self,
        booked: Callable[[str, str], bool],
        resource: str | None = None,
        drops: int | None = None,
    ) -> None:
        """Entries (of `resource`, or every resource) none of whose IDs is booked go; so do
        withheld IDs no longer booked. `drops` (the ownership index's count of bookings gone,
        every resource): nothing is looked at when no booking went since the last call."""
        if drops is not None:
            if drops == self._all_drops:
                return
            self._all_drops = drops
        for name in [resource] if resource is not None else list(self._data | self._withheld):
            entries = self._data.get(name, {})
            gone = [d for d, h in entries.items() if not any(booked(name, i) for i in all_ids(h))]
            for device_id in gone:
                del entries[device_id]
            if name in self._data and not entries:
                del self._data[name]
            withheld, lost = self._withheld.get(name, set()), self._lost
            shown = lost.shown.get(name, ()) if lost is not None else ()
            freed = {i for i in withheld if not booked(name, i) and i not in shown}
            withheld -= freed
            if not withheld:
                self._withheld.pop(name, None)
            self._changed(name, bool(gone or freed))

    def change(self, resource: str, device_id: str, change: Callable[[Handed], Handed]) -> None:
        """The device's entry becomes `change(entry)` (`handed_entries.owed_all`, when its
        release is owed; `after_release`, when one succeeded: hostile14 N6)."""
        entries = self._data.get(resource, {})
        if (old := entries.get(device_id)) is not None and (new := change(old)) != old:
            entries[device_id] = new
            self._changed(resource, True)

    def after_answers(self, bookings: Bookings) -> Callable[[Answer], None]:
        """A PodResources subscriber: after each answer, what it shows held with no entry is
        withheld (the record lost at start), and entries and withheld IDs unbooked go."""

        def heard(answer: Answer) -> None:
            lost = self._lost
            changed = lost is not None and lost.heard(answer, self._data)
            for resource, ids in lost.shown.items() if lost is not None else ():
                self._changed(resource, self._withhold(resource, ids))
            self._lost = lost if lost is None or lost.shown else None  # (none left from before)
            self.let_go(bookings.is_booked, None, None if changed else bookings.drops())

        return heard

    def _changed(self, resource: str, changed: bool) -> None:
        if not changed:
            return
        self._settle()
        if self.file is not None:
            self.file.changed(self.document)
        for callback in list(self._watchers.get(resource, ())):
            callback()

    def _settle(self) -> None:
        """Once nothing is withheld, the unsaved marker may go (`state_file`)."""
        if self.file is not None and self.file.unsettled and not self._withheld:
            self.file.unsettled = False

    async def written(self) -> str | None:
        """Until the file holds every change (an Allocate awaits it, at most
        `state_file.WRITE_LIMIT`): None once it does, else why not (the Allocate is
        refused: nothing is handed out that a restart would not find here)."""
        file = self.file
        if file is None or await file.written():
            return None
        return file.unwritten or f"{HANDED_FILE} not written within {file.write_limit:g} s"

    # ------------------------------------------------------------------ the file

    def document(self) -> Mapping[str, Any]:
        return {"resources": entries_document(self._data)}

    def _merge(
        self, mine: Mapping[str, Any], current: Mapping[str, Any] | None
    ) -> Mapping[str, Any]:
        """This host's entries replace those it wrote before; every other running host's
        stay (those of a host that had ended when this one read the file go: taken up).
        The union, the later Allocate winning per device, is what a start reads."""
        assert self._writer is not None and self.file is not None
        directory = str(self.file.path.parent)
        return merged(mine, current, self._writer, self.file.taken, directory)


@dataclass(frozen=True)
class HandedOut:
    """One resource's view of the record."""

    record: HandedRecord
    resource: str

    @property
    def devices(self) -> dict[str, Device]:
        return self.record.devices(self.resource)

    @property
    def withheld(self) -> frozenset[str]:
        """Advertised IDs booked whose device as handed out is not known (fail closed)."""
        return self.record.withheld(self.resource)

    def entry(self, device_id: str) -> Handed | None:
        return self.record.entry(self.resource, device_id)

    def reached(self, devices: Iterable[Device]) -> dict[str, Identity]:
        return reached_of(self.entry, devices)

    def change(self, device_id: str, change: Callable[[Handed], Handed]) -> None:
        self.record.change(self.resource, device_id, change)

    def hand_out(
        self, snapshot: Snapshot, ids: Iterable[str], reached: Mapping[str, Identity] | None = None
    ) -> bool:
        return self.record.hand_out(self.resource, snapshot, ids, reached)

    def let_go(self, booked: Callable[[str], bool]) -> None:
        self.record.let_go(lambda _name, advertised: booked(advertised), self.resource)

    def answered(
        self,
        snapshot: Snapshot,
        ids: Sequence[str],
        booked: Callable[[str], bool] | None = None,
        drops: int = 0,
        reached: Mapping[str, Identity] | None = None,
    ) -> None:
        self.record.answered(self.resource, snapshot, ids, booked, drops, reached)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.record.watch(self.resource, callback)


def in_memory(resource: str) -> HandedOut:
    """A view of a record of its own, not persisted (a part made without a host)."""
    return HandedRecord(None).of(resource)
