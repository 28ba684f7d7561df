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
  `Timings.heard_after` after the booking shows no pod holding the ID and its device's release
  (`release.command`) is not still due, or is replaced when the kubelet allocates the same
  ID again. With PodResources polling off nothing can show the pod ended: a booking then
  lives until the ID is allocated again, or until it is dropped with `kdp-host unbook` while
  kdp-host is stopped; a device it holds says so in its `device_held` line. What the
  kubelet's checkpoint says each pod was handed is booked at start, with what the file
  holds (lost, or stale), and before a reload starts a resource (`checkpoint_bookings`);
  an ID a pod holds with no booking still (admitted before bookings were kept, an answer
  with CDI names) is booked from PodResources (`ownership_adopt`).
  Hosts on one state directory (a rolling update) share the file: another host's bookings
  hold what they reach as this host's own do, from the moment it writes them (`take_in`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from .devices import Device, advertises, replica_ids
from .files import Offload
from .identity import Identity
from .logs import EventLogger
from .metrics import Metrics
from .mount_table import MountMap, read_mounts
from .ownership_adopt import Adoption
from .ownership_batches import RESOLVE_TIMEOUT
from .ownership_booked import checkpoint_device
from .ownership_bookings import BookedElsewhere, Releases
from .ownership_claims import Claim, ClaimKey, Owner, Reached, Resolver, places
from .ownership_gate import ADMISSION_CHUNK
from .ownership_held import OWN_PATHS
from .ownership_linked import LinkedClaims
from .ownership_lost import Found as LostFound
from .ownership_table import Holding, ResourceState
from .places_followed import FollowedPlaces, Vouching
from .timings import Timings
from .turns import TURN_BUDGET, in_turns

if TYPE_CHECKING:
    from .holdings import Holdings
    from .ownership_document import Saved
    from .safety_net import SafetyNet
    from .watch import Watcher

Devices = Mapping[str, Device]
Reaches = Mapping[str, Reached]


_NONE_HELD: Mapping[str, Holding] = MappingProxyType({})


class OwnershipIndex(LinkedClaims):
    """The host-wide index of claims (one per host, passed to every resource). Built in
    layers, one module each: the claim table (`ownership_table.ClaimTable`), admission
    (`ownership_admission.Admission`), resolving off the loop (`ownership_resolve.Resolving`),
    one admission at a time in bounded turns of the loop (`ownership_gate.AdmissionGate`),
    what an answer hands out (`ownership_hand_out.HandingOut`), booking it
    (`ownership_allocate.BookingAllocations`), following the watcher (`ownership_watching.
    Watching`, `ownership_linked`); this adds runtimes, publishing and PodResources answers.

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
        timings: Timings | None = None,
        budget: float | None = TURN_BUDGET,
    ) -> None:
        """`pod_resources`: PodResources polling is on (a booking can be seen to end);
        `chunk`: devices an admission works on per turn of the event loop (`budget`: seconds a
        later turn runs at most, None: no bound but `chunk`; `turns.Pace`); `mounts`: the
        mount table now (read again when it changes: a bind mount shows a path twice);
        `timings`: when the kubelet has heard of a device no longer advertised (`heard_after`)."""
        super().__init__(clock, metrics, resolve, offload, timeout, chunk, mounts, budget)
        self.pod_resources = pod_resources
        self._heard_after = (timings or Timings()).heard_after
        self._adoption = Adoption(self._ledger, metrics)
        self._cdi_kinds, self._cdi_handed = {}, {}

    def watch(self, watcher: Watcher, net: SafetyNet | None = None) -> None:
        """`Watching.watch`; an inotify one vouches for the protected places (`places_followed`)."""
        super().watch(watcher, net)
        self._protected = FollowedPlaces(watcher) if isinstance(watcher, Vouching) else None

    # ------------------------------------------------------------------ runtimes

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

    def checkpoint_handed(
        self, resource: str, device_id: str, shared: bool = False
    ) -> tuple[Device, dict[str, Identity]] | None:
        """What the kubelet's checkpoint says `device_id` of `resource` was handed, where this
        host booked it from there alone (no record of its own: another plugin's ID), with
        what each path reached then (`ownership_booked.checkpoint_device`); else None, also
        when another pod holds one of its paths under another ID (unless `shared`: what it
        was handed, whoever else holds it)."""
        state = self._resources.get(resource)
        replicas = 1 if state is None else state.replicas or 1
        for advertised in (device_id, *replica_ids(device_id, replicas)):
            booking = self._ledger.bookings.get(Owner(resource, advertised))
            if booking is not None and booking.from_checkpoint:
                owner = Owner(resource, advertised)
                if not shared and self._shared_with_a_holder(owner, booking.places):
                    return None
                return checkpoint_device(device_id, booking)
        return None

    def _shared_with_a_holder(self, owner: Owner, places: Iterable[Claim]) -> bool:
        """Whether another booking holds one of `places` while the last PodResources answer
        shows its ID held (or no answer came yet): another plugin handed one node to several
        pods under several IDs (generic-device-plugin's `count`), and the release of one must
        wait for every one (hostile12 L8: it ran under the other pod)."""
        heard = self._adoption.heard
        others = {o for key, _, real in places for o in self._ledger.holders(key, real)}
        others.discard(owner)
        if heard is None:
            return bool(others)
        return any(o.device in heard.of(o.resource) for o in others)

    def held_now(self, resource: str) -> Mapping[str, Holding]:
        """The devices of `resource` held back now, with why: the admission's map, replaced
        whole, never changed in place (`/devices` reads it from the HTTP thread, and tells a
        new one by its identity)."""
        state = self._resources.get(resource)
        return _NONE_HELD if state is None else state.held

    def held_in_place(self, resource: str, device_id: str) -> bool:
        """Whether `device_id` is held back by another's claim while its driver lists it
        healthy: its node is there (a claim needs it), so a pod that holds the device still
        has it. Such a device is `held`, not missing (hostile13 M3: a node made in another
        pod's mount showed it missing, and the README's recipe deleted the pod that held it)."""
        state = self._resources.get(resource)
        if state is None:
            return False
        why, device = state.held.get(device_id), state.reported.get(device_id)
        own = why is None or why.reason in OWN_PATHS  # (held for its own path: no node there)
        return not own and bool(device and device.healthy)

    def hold_while_releasing(self, store: Releases) -> None:
        """A booking whose device's release is still due (`store.pending`) stays, holding
        its claims for every resource, until a PodResources answer after the release
        succeeded (hostile3 G9: the release is owed by the resource's ID, the node is the
        index's), unless no tracker can ever run it (`HandOver.releasing`).
        `store.booked_elsewhere` is told what another host books (`peer_booked`);
        `store.held_before`, the devices advertised once a booking of another resource that
        held their node ended (`ownership_held.HandOver`)."""
        self._handover.releases = store
        self._ledger.releasing = self._releasing
        self.peer_booked(store.booked_elsewhere)

    def _releasing(self, resource: str, device: str) -> bool:
        """`Ledger.releasing` (`HandOver.releasing`)."""
        return self._handover.releasing(resource, device, self._resources, self._ledger.bookings)

    def peer_booked(self, told: BookedElsewhere) -> None:
        """`told` is told the IDs another host on the state directory books once the bookings
        read at start are in (new among the other hosts' bookings: `Ledger.mirroring`)."""
        self._ledger.booked_elsewhere.append(told)

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
        released = self._expire(holdings.asked_at, self._heard_after, holdings.of)
        booked = adoption.book_held(holdings, self._resources, self._exclusive, self._clock())
        if released or booked:
            ledger.changed()
        self._pending.update(dict.fromkeys(adoption.stale))
        for state in self._resources.values():
            held = holdings.of(state.name)
            for key, (since, _) in list(state.lingering.items()):
                if holdings.asked_at < since + self._heard_after or self._pod_may_reach(key):
                    continue
                device = self._exclusive[key].device
                if not any(advertises(a, device) for a in held):
                    self._release_lingering(state, key)
                    released = True
        if released:
            self._wake_waiting("")
        if released or adoption.stale:
            self._drain()

    def lists(self, resource: str, device_id: str) -> bool:
        """Whether the driver's last list of `resource` has `device_id` (advertised or held)."""
        state = self._resources.get(resource)
        return state is not None and device_id in state.reported

    def tell_unplaced(self, unplaced: Callable[[str], None]) -> None:
        """`unplaced` is told the resource of each held ID no device has, as it is logged
        (`held_id_not_present`)."""
        self._adoption.unplaced = unplaced

    def kept_for(self, resource: str, advertised_ids: Iterable[str]) -> list[Device]:
        """The devices of `resource` held for the kubelet's bookings of `advertised_ids`
        (the IDs a pod holds of one device): its node is there under another ID (a reload
        renamed it, `replicas` changed), kept for the pod that holds the old one. Only the
        device booked is (`Ledger.booked_as`): one that shares a node with it is not."""
        state = self._resources.get(resource)
        if state is None:
            return []
        owners, booked_as = {Owner(resource, i) for i in advertised_ids}, self._ledger.booked_as
        return [
            found
            for device, why in sorted(state.held.items())
            if why.owner in owners
            and (found := state.reported.get(device)) is not None
            and (claims := state.claims.get(places(found))) is not None
            and booked_as(why.owner, claims.exclusive_keys())
        ]

    async def take_in(
        self, saved: Saved | None, running: Collection[str], ours: bool = False
    ) -> None:
        """`ownership.json` as read now (`ours`: this host's last write), while hosts `running`
        share it (`ownership_sync`; None: it could not be read): their bookings hold what they
        reach, in bounded turns of the loop (`Ledger.taking_in`: 100,000 entries of another
        host never stall it), then every resource is admitted again against them; this host's
        own are written back when the file lacks them as they are (deleted, set aside, taken
        over)."""
        changed, stale = await in_turns(self._ledger.taking_in(saved, running, self._clock(), ours))
        self._handover.ended(self._ledger.ended, self._resources.values())
        if stale:
            self._ledger.changed()
        if changed:
            self._admit_all_again()

    # ------------------------------------------------------------------ publishing

    def publish(self, resource: str, devices: Devices, reached: Reaches | None = None) -> bool:
        """A complete list of `resource` (driver IDs; `reached`: what its scan learnt paths
        reach): claim, and publish what may be advertised (under the IDs the kubelet knows).
        Returns whether its table changed. A retired resource's runtime changes nothing."""
        state = self._state(resource)
        if state.retired:
            return False
        state.reported, state.known = devices, reached or {}
        self._listed(resource)
        changed = self._admit_or_defer(state)
        self._drain()
        return changed

    def _lost(self) -> Collection[ClaimKey]:
        dirs = self._ledger.dirs
        if not dirs or self._watcher is None:
            return ()
        return dirs.keys() - self._arrivals.pins.keys()

    def _found_lost(self, found: LostFound) -> None:
        self._arrived(found)

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

    async def taken(self) -> None:
        """Once the index admitted the lists given (`OwnershipIndex.quiet`): a list that waits
        for an admission is taken with it, only the newest of a resource's lists is."""
        await self.index.quiet()

    def set_degraded(self, reason: str | None) -> bool:
        return self.table.set_degraded(reason)
