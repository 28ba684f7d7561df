"""One host device node, or one mount source, in at most one advertised device of the host.

The kubelet books devices per resource by ID; it cannot know that two IDs (of one resource
or of two) reach the same node. So the host keeps one ownership index, shared by every
resource, that every published device list passes through (`OwnershipIndex.publish`, which a
resource's `DeviceReporter` writes to through `OwnedTable`). Each device claims what it would
put into a container:

- every DeviceSpec host path: a character or block node by its device number (so a second
  node or a link for it is the same claim), any other file or a directory by its inode (a
  hard link or a rename is the same claim), a path where nothing is by its text (one with
  the claim that path was made under while that is held: `ownership_aliases`);
- every mount source of the device, the same way;
- a sysfs device itself, by its directory in sysfs (one that passes no node is one device).

A directory mounted into a container holds everything below its real path, so a claim below a
directory another device claims (a mount of `/dev/dri` and the node `/dev/dri/card0`), or a
directory with another's claim below it, clashes as if both were one claim.

Nodes a driver marks `shared` (a control node every device needs, like `/dev/vfio/vfio`) are
claimed shared: any number of shared claims may coexist, but not with an exclusive one.

Rules:

- **First owner keeps it.** A device whose claim is owned by another device (of any resource)
  is not advertised: logged once with both owners (`device_held`) and counted
  (`kdp_driver_skipped_total{reason="node_owned"}`). Within one list, devices that own their
  claims already come first, then the others in ID order.
- **The owner keeps its claim while a pod may hold the node.** The Device Plugin API never
  says when a pod lets go of a device. So a claim whose device stops being advertised (it
  left its list, its resource was restarted or removed by a reload) *lingers* with its owner
  while a pod may hold it: until the node is gone, or, with PodResources polling on
  (`kubelet.podResourcesInterval`), until the kubelet's answer shows no pod holding it. The
  held device is then advertised (`device_claim_won`). A device held because a path of it
  is one no container may be handed, and a lingering claim that became one, keep only
  what a booking holds (`ownership_letgo`). A resource restarted by a reload or
  after a crash finds its claims where it left them, so no other resource can take a node
  in between; a resource added back takes its lingering claims back.
- **A booked ID follows the physical device.** A device whose claims another ID of its
  resource owns (a reload changed the patterns, `usbIdFrom`, a probe renamed it) keeps that
  ID while a booking of it holds them (a pod has the node under it); a device reporting
  that ID is held (`id_taken`) meanwhile. Else, and once the booking ends, each device has
  its own ID (`ownership_admission`).
- **A booked claim wins.** When kdp-host answers an Allocate, the kubelet has booked those
  IDs: each (resource, ID) is recorded with its device's exclusive claims (`book`,
  `ownership_bookings`) and kept in `<stateDir>/ownership.json` (through `StateFile`) before
  the answer goes out; writing only when the bookings change. While a booking lives, nothing
  else reaching its claims is advertised: no other resource, no other ID of the same node (a
  reload or a probe renamed it, `replicas` changed), before or after any restart (bookings
  are read back at start, before any resource publishes, as lingering claims of their
  device); nor another ID's device where a booked one was handed out (`place_booked`). A
  booking lives while PodResources shows a pod holding its ID, even when the node is gone (a
  reused device number stays owned until the old pod ends); it goes when an answer asked for
  `HEARD_AFTER` after the booking shows no pod holding the ID and its device's release
  (`release.command`) is not still due, or is replaced when the kubelet allocates the same
  ID again. With PodResources polling off nothing can show the pod ended: a booking then
  lives until the ID is allocated again, or until it is dropped with `kdp-host unbook` while
  kdp-host is stopped; a device it holds says so in its `device_held` line. When the file
  was lost, what the kubelet's checkpoint says each pod was handed is booked at start
  (`kubelet_checkpoint`); an ID a pod holds with no booking still (admitted before bookings
  were kept, an answer with CDI names) is booked from PodResources (`ownership_adopt`).
  Hosts on one state directory (a rolling update) share the file: another host's bookings
  hold what they reach as this host's own do, from the moment it writes them (`take_in`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .devices import Device, advertises
from .files import Offload
from .identity import DIRECTORY
from .logs import EventLogger
from .metrics import Metrics
from .mount_table import MountMap, read_mounts
from .ownership_adopt import Adoption
from .ownership_allocate import BookingAllocations
from .ownership_arrivals import Arrivals, Found
from .ownership_bookings import ReleasePending
from .ownership_claims import SYSFS, Claims, Reached, Resolver, named_in, places
from .ownership_gate import ADMISSION_CHUNK
from .ownership_paths import PathIndex
from .ownership_resolve import RESOLVE_TIMEOUT
from .ownership_table import ResourceState

if TYPE_CHECKING:
    from .holdings import Holdings
    from .ownership_document import Saved
    from .safety_net import SafetyNet
    from .watch import Watcher

Devices = Mapping[str, Device]
Reaches = Mapping[str, Reached]
HEARD_AFTER = 5.0
"""Seconds after a device stops being advertised by which the kubelet has heard of it (a
ListAndWatch update, or the end of a stopped resource's stream): a PodResources answer asked
for later shows every pod that can hold it."""


class OwnershipIndex(BookingAllocations):
    """The host-wide index of claims (one per host, passed to every resource). Built in
    layers, one module each: the claim table (`ownership_table.ClaimTable`), admission
    (`ownership_admission.Admission`), resolving off the loop (`ownership_resolve.Resolving`),
    one admission at a time in bounded turns of the loop (`ownership_gate.AdmissionGate`),
    booking an answered Allocate (`ownership_allocate.BookingAllocations`);
    this adds runtimes, publishing, PodResources answers and the watcher.

    A claim whose device stops being advertised (it left the list, its resource was
    removed) *lingers* with its owner while its node is there, as a pod may hold the device
    under that ID: until the node is gone, or taken back by its own resource (one no
    container may be handed: while a booking holds it, `ownership_letgo`)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        resolve: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
        offload: Offload | None = None,
        timeout: float = RESOLVE_TIMEOUT,
        pod_resources: bool = True,
        chunk: int = ADMISSION_CHUNK,
        mounts: Callable[[], MountMap] = read_mounts,
    ) -> None:
        """`pod_resources`: PodResources polling is on (a booking can be seen to end);
        `chunk`: devices an admission works on per turn of the event loop; `mounts`: the
        mount table now (read again when it changes: a bind mount shows a path twice)."""
        super().__init__(clock, metrics, resolve, offload, timeout, chunk)
        self._read_mounts = mounts
        self._within.remount(mounts())
        self._arrivals = Arrivals(self._arrived, offload, metrics)
        self.pod_resources = pod_resources
        self._adoption = Adoption(self._ledger, metrics)
        self._cdi_kinds = {}
        self._watcher: Watcher | None = None
        self._keeps = False
        """What an Allocate hands out may be kept (`_follows`)."""
        self._followed: dict[str, set[str]] = {}
        """Directory of a claimed host path -> the resources that claimed through it."""
        self._changed_paths: dict[str, set[str] | None] = {}
        """Names the watcher reported changed per directory since the last recheck (None:
        anything in it)."""

    # ------------------------------------------------------------------ runtimes

    def watch(self, watcher: Watcher, net: SafetyNet | None = None) -> None:
        """Follow the directories of claimed host paths through the host's watcher: a claim
        is resolved again when its path changes (a node replaced by one with another device
        number must not keep the old claim). Their subscriptions last as long as the host;
        a mounted tree it cannot follow in full is read by `net` (`Arrivals.rescan_with`)."""
        self._watcher = watcher
        self._arrivals.rescan_with(net)
        # (a poll sees a change late; a mount over a path makes no directory event)
        self._keeps = watcher.kind != "poll" and watcher.follow_mounts(self._mounts_changed)

    def _mounts_changed(self) -> None:
        """A watcher callback: the mount table changed: forget everything kept and recheck
        every claim, as after an overflow, each at its places now."""
        self._within.remount(self._read_mounts())
        self._forget_kept(lambda _path: True)
        for directory in list(self._followed):
            self._path_changed(directory, None)

    def _follow(self, resource: str, claims: Claims) -> None:
        for key, path, real in claims.all():
            if key[0] == SYSFS:
                continue  # (not resolved from its path: its driver follows the device)
            users = self._users(os.path.dirname(path))
            if users is None:
                return
            users.add(resource)
            if key[0] == DIRECTORY and self._watcher is not None:
                self._arrivals.follow(self._watcher, real, self._resources[resource].log)

    async def quiet(self) -> None:
        """Return once what arrived in claimed directories was read, and no admission runs,
        waits for its turn or for its paths."""
        await self._arrivals.quiet()
        await super().quiet()

    def _arrived(self, found: Found) -> None:
        """Claims renamed or linked into a claimed directory: the devices that mount it
        are checked again (`ownership_arrivals`)."""
        for path in self._within.found_at(found, self._ledger.booked.__contains__):
            self._path_changed(os.path.dirname(path), os.path.basename(path))

    def _follows(self, path: str) -> bool:
        """Its directory (as for a claim: `_users`), every directory above it
        (`_follow_above`) and the mount table (`_keeps`)."""
        watcher = self._watcher
        directory = os.path.dirname(path)
        if watcher is None or not self._keeps or self._users(directory) is None:
            return False
        self._follow_above(watcher, directory)
        return True

    def _users(self, directory: str) -> set[str] | None:
        """The resources that claimed through `directory`, the watcher following it from
        now on (None: no watcher)."""
        watcher = self._watcher
        if watcher is None:
            return None
        users = self._followed.get(directory)
        if users is None:
            users = self._followed[directory] = set()
            watcher.subscribe(directory, functools.partial(self._path_changed, directory))
        return users

    def _path_changed(self, directory: str, name: str | None) -> None:
        """A watcher callback: forget the places kept there, note it, and recheck once the
        burst is over (soon)."""
        paths = None if name is None or not self._kept else {os.path.join(directory, name)}
        self._forget_kept(functools.partial(named_in, directory=directory, paths=paths))
        first = not self._changed_paths
        if name is None:
            self._changed_paths[directory] = None
        else:
            names = self._changed_paths.setdefault(directory, set())
            if names is not None:
                names.add(name)
        if first:
            asyncio.get_running_loop().call_soon(self._recheck)

    def _recheck(self) -> None:
        """Forget the claims of devices with a changed path, and admit their resources
        again (which resolves them anew): found by path (`PathIndex`), not by a walk."""
        changed, self._changed_paths = self._changed_paths, {}
        for directory, names in changed.items():
            paths = None if names is None else {os.path.join(directory, n) for n in names}
            fresh = self._fresh
            if paths is not None:
                for path in paths:
                    fresh.pop(path, None)  # (resolved before it changed)
            else:
                for path in [p for p in fresh if named_in(p, directory, paths)]:
                    del fresh[path]
            for name in self._followed.get(directory, ()):
                state = self._resources[name]
                if state.paths is None:
                    state.paths = PathIndex.of_devices(state.admitted_from)
                stale = set(state.paths.through(directory, paths))
                for device_id in stale:  # (the index may be ahead of an admission running)
                    if (device := state.admitted_from.get(device_id)) is not None:
                        state.claims.pop(places(device), None)
                state.stale |= stale
                if stale and state.publish is not None and not state.retired:
                    self._pending[name] = None
        self._drain()

    def attach(
        self,
        resource: str,
        publish: Callable[[Mapping[str, Device]], bool],
        log: EventLogger,
        replicas: int = 1,
        cdi_kind: str | None = None,
    ) -> Callable[[], None]:
        """A runtime of `resource` starts publishing to `publish`; returns its detach.

        A resource added back after it was retired takes its old claims back. Its `replicas`
        decide which booked IDs its devices may have (`book`); CDI names of its `cdi_kind`
        (`allocate.cdi.kind`) name its devices only (`book`)."""
        state = self._state(resource)
        state.publish, state.log, state.retired = publish, log, False
        state.held = {}
        state.settled, state.sent = False, None
        # A new runtime's first list is admitted in full (and logged, what it holds too)
        # unless the resource never listed a device.
        state.plain = not state.admitted_from and not state.owned and not state.lingering
        state.replicas = replicas
        if cdi_kind is not None:
            self._cdi_kinds[cdi_kind] = resource
        self._adoption.unchecked.add(resource)

        def detach() -> None:
            """The runtime stopped: an admission waiting for paths is dropped with it."""
            if state.publish is publish:
                state.publish = None
                if state.resolving is not None:
                    state.resolving.cancel()

        return detach

    def hold_while_releasing(self, pending: ReleasePending) -> None:
        """A booking whose device's release is still due (`release_state`) stays, holding its
        claims for every resource, until a PodResources answer after the release succeeded
        (hostile3 G9: the release is owed by the resource's ID, the node is the index's)."""
        self._ledger.releasing = pending

    def retire(self, resource: str) -> None:
        """`resource` left the config: its claims linger while their nodes are there."""
        state = self._resources.get(resource)
        if state is None:
            return
        state.retired, state.publish, state.held, state.settled = True, None, {}, False
        released = False
        for advertised_id in list(state.owned):
            released |= self._unadvertise(state, advertised_id)
        if released:
            self._wake_waiting(resource)
            self._drain()

    def holdings(self, holdings: Holdings) -> None:
        """Who holds what, from the kubelet's PodResources API: a booking no pod holds goes,
        a held ID no booking holds is booked (`ownership_adopt`), then a lingering claim
        whose device no pod holds is released (its waiter is advertised), once the answer
        was asked for well after the booking, or after the device stopped being advertised
        (the kubelet may have admitted a pod with it until it heard of that)."""
        ledger, adoption = self._ledger, self._adoption
        adoption.heard = holdings
        released = self._expire(holdings.asked_at, HEARD_AFTER, holdings.of)
        booked = adoption.book_held(holdings, self._resources, self._exclusive, self._clock())
        if released or booked:
            ledger.changed()
        self._pending.update(dict.fromkeys(adoption.stale))
        booked_keys = ledger.booked
        for state in self._resources.values():
            held = holdings.of(state.name)
            for key, (since, _) in list(state.lingering.items()):
                if holdings.asked_at < since + HEARD_AFTER or key in booked_keys:
                    continue
                device = self._exclusive[key].device
                if not any(advertises(a, device) for a in held):
                    self._release_lingering(state, key)
                    released = True
        if released:
            self._wake_waiting("")
        if released or adoption.stale:
            self._drain()

    def take_in(self, saved: Saved | None, running: Collection[str], ours: bool = False) -> None:
        """`ownership.json` as read now (`ours`: this host's last write), while hosts `running`
        share it (`ownership_sync`; None: it could not be read): their bookings hold what they
        reach at once, every resource is admitted again against them; this host's own are
        written back when the file lacks them as they are (deleted, set aside, taken over)."""
        changed, stale = self._ledger.take_in(saved, running, self._clock(), ours)
        if stale:
            self._ledger.changed()
        if not changed:
            return
        for state in self._resources.values():
            if state.publish is not None and not state.retired:
                state.settled = state.plain = False
                self._pending[state.name] = None
        self._drain()

    # ------------------------------------------------------------------ publishing

    def publish(self, resource: str, devices: Devices, reached: Reaches | None = None) -> bool:
        """A complete list of `resource` (driver IDs; `reached`: what its scan learnt paths
        reach): claim, and publish what may be advertised (under the IDs the kubelet knows).
        Returns whether its table changed. A retired resource's runtime changes nothing."""
        state = self._state(resource)
        if state.retired:
            return False
        state.reported, state.known = devices, reached or {}
        changed = self._admit_or_defer(state)
        self._drain()
        return changed

    def _admit_again(self, state: ResourceState) -> bool:
        return self._adoption.admitted(state, self._exclusive, self._clock())


class _Table(Protocol):
    """What OwnedTable needs of a DeviceTable (lists go through the index)."""

    def set_degraded(self, reason: str | None) -> bool: ...


@dataclass
class OwnedTable:
    """The sink a resource's reporter writes to: lists go through the host's ownership
    index on their way to the resource's device table."""

    index: OwnershipIndex
    resource: str
    table: _Table

    def publish(self, devices: Iterable[Device] | Devices, reached: Reaches | None = None) -> bool:
        if not isinstance(devices, Mapping):
            listed: dict[str, Device] = {}
            for device in devices:
                listed.setdefault(device.id, device)
            devices = listed
        return self.index.publish(self.resource, devices, reached)

    def set_degraded(self, reason: str | None) -> bool:
        return self.table.set_degraded(reason)
