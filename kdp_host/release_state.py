"""`<stateDir>/release-state.json`: what the release trackers must keep across restarts.

Per resource, per device: `used` (the advertised IDs handed to containers whose end has not
been seen), `owed` (the users are gone and no release has succeeded since), `allocatedAt`
(when it was last allocated: a PodResources answer from before then is no news about it,
also for a tracker started later); see `release.py`. What the device was handed out as is
`handed_out`'s record (`handed-out.json`); the `handed` of an older version's file is read
and given to that record. A file that
cannot be read or does not have that shape is kept aside and marks the state unknown: every
device then counts as used; so does a file whose writes failed when its host stopped
(`state_file`'s unsaved marker: a SIGKILL while the disk is full).

Hosts that share the state directory (a rolling update runs the new host beside the old one)
share the file as they share `ownership.json` (`state_file`'s merge, under the file's lock):
each writes its own entries under `writers.<instance ID>` and keeps those of every other
host that runs (`state_lock.running`); `resources` is the union of them all (used IDs
joined, owed if any host owes it), which is what a host reads at start. So no host's write
drops what another wrote. A host that ended leaves its entries until a host that started
after it ended (and so took them up at start) writes: then they go. A device's release and
PreStartContainer are one at a time across the hosts, which read each other's entries fresh
for it (`release_lock`).

Whose uses the file holds: `tracked.<instance ID>` lists the resources each host tracked
(`begin`) with no use it did not count, kept and merged as its entries are. A resource every
host of the file tracked (`load`) is taken as the file holds it: the checkpoint keeps an
ended pod's entry until the kubelet's next allocation, and taking that entry again would
release a clean device again at every restart. Any other resource's release tracking begins
now, whatever begins it: a start with no file (the state directory emptied or changed while
kdp-host was down), a resource with no `release` before (a reload or a restart that adds it,
a rename that adds it: hostile14 N1), a host beside one that served it without `release` (a
rolling update that adds it), a file of an older version (which names none). Then every ID
the bookings say was handed out (`ownership.json`, the kubelet's checkpoint read into them,
another host's running on the directory) counts as used (`begin`), once (hostile15 F1, F2).
A resource served without `release` leaves the set (`untracked`). A file deleted while the
host runs is written again at once (`follow`), and /readyz says so until it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from .atomic_files import read_or_none
from .files import Offload
from .logs import EventLogger
from .ownership_claims import Owner
from .release_document import (
    Resources,
    merged_entry,
    parse_resources,
    read_document,
    tracked_of,
    writers_of,
)
from .release_lock import DeviceLocks
from .state_file import StateFile
from .state_lock import other_writers, running
from .state_presence import KeptPresent
from .watch import Subscription, Watcher


class Listener(Protocol):
    """A resource's release tracker, told of uses it did not see begin (`listen`)."""

    def booked(self, ids: Collection[str], writer: str | None = None) -> None:
        """`booked_elsewhere`."""

    def held_before(self, devices: Mapping[str, Owner], taken: Collection[Owner]) -> None:
        """`held_before` (`taken`: the bookings whose removed resource's release it runs)."""


Bookings = Callable[[str], Mapping[str, "str | None"]]
"""Resource -> the IDs of it booked now (`ownership.json`, with what the kubelet's checkpoint
said), each with the running host whose booking it is (None: this host's):
`OwnershipIndex.booked_ids`."""


def _no_bookings(_resource: str) -> Mapping[str, str | None]:
    return {}


STATE_FILE = "release-state.json"
STATE_VERSION = 1


class ReleaseStateStore:
    """`<stateDir>/release-state.json`: per resource, per device, `used` and `owed`.

    One per host, shared by every resource (a restarted resource finds its entries here).
    Entries of resources not in the config are kept. Read and written by `StateFile`
    (atomically, through the host's offload).
    """

    def __init__(
        self, directory: str, log: EventLogger, offload: Offload, writer: str | None = None
    ) -> None:
        """`writer`: this host's instance ID (its entries are merged with the other hosts'
        on the state directory); None writes the file as this host's alone."""
        self._writer = writer
        self._file = StateFile(
            directory,
            STATE_FILE,
            "release_state",
            STATE_VERSION,
            log,
            offload,
            consequence="every device counts as used: each is released once it is free",
            if_unwritten="devices used now are not released if kdp-host restarts "
            "before a write succeeds and no marker could be made",
            merge=None if writer is None else self._merge,
            mark_unsaved=True,
            writer=writer,
            running=running,
        )
        self.path = self._file.path
        self._data: dict[str, dict[str, dict[str, Any]]] = {}
        self._assuming: set[str] = set()
        """Resources whose tracker still counts every device as used (`unknown`)."""
        self._offload = offload
        self.locks = DeviceLocks(directory, writer or "", offload, log)
        """The devices' release locks every host on the directory shares (`release_lock`)."""
        self._handed_out: dict[str, set[str]] = {}
        """Resource -> the IDs another host booked since this host's start while no tracker
        listened (`booked_elsewhere`); each taken once by its tracker (`begin`)."""
        self._tracked: set[str] = set()
        """Resources every use of which up to now the state counts (`begin`; the module
        docstring): written as this host's `tracked`."""
        self._bookings: Bookings = _no_bookings
        self._listeners: dict[str, Listener] = {}

    @property
    def unknown(self) -> bool:
        """The file could not be read: every device counts as used."""
        return self._file.unknown

    @property
    def write_failures(self) -> int:
        return self._file.write_failures

    @property
    def file(self) -> StateFile:
        return self._file

    def load(self) -> None:
        """Read the file (blocking: call it in a thread). Missing: nothing was tracked. A
        resource is tracked when every host of the file (`writers`, `tracked`) tracked it."""
        self._data, writers, tracked = self._file.load(read_document) or ({}, {}, {})
        if hosts := set(writers) | set(tracked):
            self._tracked = set.intersection(*(set(tracked.get(h, ())) for h in hosts))

    def begin(self, resource: str) -> dict[str | None, set[str]]:
        """`resource`'s tracker starts: the IDs it counts as used, by the host whose booking
        each is (None: this host's). The one rule (module docstring): a resource whose
        tracking begins now (not tracked) counts every ID booked now; any counts what another
        host booked while no tracker of it listened (`booked_elsewhere`)."""
        uses: dict[str, str | None] = dict.fromkeys(self._handed_out.pop(resource, ()))
        if resource not in self._tracked:
            uses.update(self._bookings(resource))
            self._tracked.add(resource)
            self._file.changed(self._document)
        by_host: dict[str | None, set[str]] = {}
        for advertised, writer in uses.items():
            by_host.setdefault(writer, set()).add(advertised)
        return by_host

    def untracked(self, resource: str) -> None:
        """`resource` is served without `release`: its uses from now are not counted, and a
        tracker started later begins anew (`begin`)."""
        if resource in self._tracked:
            self._tracked.discard(resource)
            self._file.changed(self._document)

    def _document(self) -> dict[str, Any]:
        """What this host writes (merged with the other hosts' in a shared file)."""
        return {"resources": self._data, "tracked": {self._writer or "": sorted(self._tracked)}}

    def listen(self, resource: str, tracker: Listener | None) -> None:
        """`resource`'s tracker takes the IDs another host books from now (`booked_elsewhere`)
        and the devices another resource's booking held (`held_before`); None: it stopped
        (the IDs are kept for `handed_out` meanwhile)."""
        if tracker is None:
            self._listeners.pop(resource, None)
        else:
            self._listeners[resource] = tracker

    def releases(self, resource: str) -> bool:
        """Whether a tracker runs `resource`'s releases (`listen`): a release owed by a
        resource none runs (a reload removed it) can never run."""
        return resource in self._listeners

    def held_before(self, resource: str, devices: Mapping[str, Owner]) -> None:
        """`resource` advertises `devices` (advertised ID -> the device a booking of another
        resource held its node under) since that booking's pod was seen gone
        (`ownership_held.HandOver`): its tracker owes their release (none: it has no
        `release`, nothing is owed). A release that booking's own resource owed and no
        tracker runs (a reload removed it) goes with it: this one is run instead."""
        tracker = self._listeners.get(resource)
        if tracker is None:
            return
        taken: set[Owner] = set()
        for booked in set(devices.values()):
            entries = self._data.get(booked.resource, {})
            if booked.resource not in self._listeners and booked.device in entries:
                del entries[booked.device]
                if not entries:
                    del self._data[booked.resource]
                taken.add(booked)
        if taken:
            self._file.changed(self._document)
        tracker.held_before(devices, taken)

    def booked_elsewhere(self, resource: str, ids: Collection[str], writer: str) -> None:
        """Host `writer` on the state directory booked `ids` of `resource` (its Allocate,
        seen in `ownership.json` after this host's start): a use the resource's tracker
        counts as it counts those booked at start with no state (`ReleaseTracker.booked`),
        whatever that host's config (one without `release` writes no entry here)."""
        if (listener := self._listeners.get(resource)) is not None:
            listener.booked(ids, writer)
        else:
            self._handed_out.setdefault(resource, set()).update(ids)

    @classmethod
    async def read(
        cls, directory: str, log: EventLogger, offload: Offload, writer: str | None = None
    ) -> ReleaseStateStore:
        """A store with the file read (through `offload`)."""
        store = cls(directory, log, offload, writer)
        await offload.run(store.load)
        return store

    def follow(self, watcher: Watcher, bookings: Bookings) -> Subscription:
        """At start, once the bookings are read: `bookings` tells what they say is handed
        out, for a tracker whose tracking begins (`begin`). From now on, write the file again
        whenever it goes while the host runs (cancel the returned subscription to stop)."""
        self._bookings = bookings
        return KeptPresent(self._file, self._document, self._offload).follow(watcher)

    def _merge(
        self, mine: Mapping[str, Any], current: Mapping[str, Any] | None
    ) -> Mapping[str, Any]:
        """This host's entries replace those it wrote before; every other host's stay, but
        those of a host that had ended when this one read the file (blocking: the hosts'
        lock files are asked; run while the file is locked)."""
        assert self._writer is not None
        _, kept, tracked = ({}, {}, {}) if current is None else read_document(current)
        directory = str(self.path.parent)
        writers = other_writers(kept, self._writer, self._file.taken, directory)
        tracked = {w: names for w, names in tracked.items() if w in writers}
        writers[self._writer] = parse_resources(mine)
        tracked[self._writer] = tracked_of(mine)[self._writer]
        union: Resources = {}
        for entries in writers.values():
            for name, devices in entries.items():
                for device, entry in devices.items():
                    known = union.setdefault(name, {})
                    found = known.get(device)
                    known[device] = dict(entry) if found is None else merged_entry(found, entry)
        return {"resources": union, "writers": writers, "tracked": tracked}

    def assuming(self, resource: str) -> None:
        """`resource`'s tracker counts every device as used until it learns who holds what
        (the state is `unknown`): the file stays marked unsaved meanwhile."""
        self._assuming.add(resource)

    def known(self, resource: str) -> None:
        """`resource`'s tracker learnt who holds what; once none is still assuming, the next
        write removes the marker (one is asked for now)."""
        self._assuming.discard(resource)
        if self._file.unsettled and not self._assuming:
            self._file.unsettled = False
            self._file.changed(self._document)

    def pending(self, resource: str, device: str) -> bool:
        """Whether the device's release is still due: used by a container whose end has not
        been seen, or owed (`ownership_bookings.ReleasePending`: its booking stays)."""
        return device in self._data.get(resource, {})

    async def peer_entries(self, resource: str, device: str) -> list[tuple[str, Mapping[str, Any]]]:
        """The other hosts' entries of the device, as the file holds them now (read fresh,
        through the offload: `release_lock.owed_by_peers`). A file missing or not of its
        shape has none."""
        return await self._offload.run(lambda: self._peer_entries(resource, device))

    def _peer_entries(self, resource: str, device: str) -> list[tuple[str, Mapping[str, Any]]]:
        try:
            document = json.loads(read_or_none(str(self.path)) or b"{}")
            writers = writers_of(document)
        except (ValueError, TypeError, KeyError, AttributeError):
            return []
        return [
            (writer, entries[resource][device])
            for writer, entries in writers.items()
            if writer != self._writer and device in entries.get(resource, {})
        ]

    def entries(self, resource: str) -> Mapping[str, dict[str, Any]]:
        return self._data.get(resource, {})

    def update(self, resource: str, entries: dict[str, dict[str, Any]]) -> None:
        if self._data.get(resource, {}) == entries:
            return
        if entries:
            self._data[resource] = entries
        else:
            self._data.pop(resource, None)
        self._file.changed(self._document)

    async def flush(self) -> bool:
        """Write the file until it holds every change made so far (changes are written
        soon by themselves; PreStartContainer awaits this before it answers, at most
        `state_file.WRITE_LIMIT`): whether it does."""
        return await self._file.written()
