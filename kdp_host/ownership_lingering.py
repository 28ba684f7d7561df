"""Lingering claims: the exclusive claims of devices no longer advertised (or of a node a
device no longer has), kept with their owner while a pod may hold the node, and when they
end (the layer of `ownership_table.ClaimTable` that owns `ResourceState.lingering`).

A lingering claim ends when its node is gone (`_released_if_gone`; not while what arrived
in the followed trees is being read: a node renamed into one is gone from its path first),
when its resource takes it back under another ID no booking holds (`_taken_over`), or when
a PodResources answer shows no pod holding its device (`OwnershipIndex.holdings`), but
never while a pod may reach the node (`_pod_may_reach`, the one rule):

- its device is still listed, missing (`_device_missing`: the grace period's Unhealthy
  entry, or a present device's lost node, with nothing at the claim's host path now): the
  identity (device number, inode) stays its claim wherever it is seen again, not only
  where it was last found, until the device is dropped (its grace ends) or found again
  (as itself: the claim is its own again). A node moved to a place nothing follows, then
  into a source, a tree a pod holds mounted or over a shared node (or by way of a
  directory moved there, a swapped directory, a hard link) is the claim the index checks
  every arrival against by identity (`_exclusive`), as a node moved there directly is
  (issue 17, hostile26 N2: released as gone while it was in the unfollowed place, it came
  back as a file no device claims and went to every new pod);
- a booking holds it (a pod was handed the device: even when its node is gone);
- or the node is, where it was last found, below a tree a booking holds mounted, alone or
  shared (a node renamed into a directory a running pod mounts is in that pod), or below a
  configured `allocate.mounts` source (every pod of its resource is handed it). What a
  device claimed stays its claim there for as long as the node stays (but see below: a
  device gone for good): an answer that mounts the tree is refused for it
  (`HandingOut._nothing_moved_in`) whether or not the device is still listed (issue 17,
  hostile24 F2: once the moved node's device was heard to be held by no pod, only the
  booking of the shared source held its node, and that one is exempt as the shared
  source: every later pod was handed the node).
  A node no device ever claimed there (a firmware file, a control node every pod is meant
  to share) is shared by design and no clash;
- or the node is what a device of a driver's list claims shared, or below a directory one
  claims shared (a glob group's member without `{key}`, a probe's `shared: true` node or
  mount: every pod of its devices is handed it), and a node found at such a path is not
  gone (`_at_shared_place`): a node moved into a shared directory, or renamed over a shared
  node (a new inode or number at the shared path), stays its device's claim there, and the
  devices that share the path are held for it (issue 17, hostile24 F2 (b), (c): the claim
  lapsed ~5.5 s after the move, or was released as gone at once, and every later pod of
  the group was handed the node).

A configured source and what a list claims shared keep a claim for the pods that would be
handed it later, and only while the device that made it may come back: its resource is
configured and its driver still lists it (a vanished glob path within its `gracePeriod`).
Once it is gone for good (not `_still_listed`: a reload removed its resource, its path
stayed missing past the grace), only a pod that has the node keeps the claim: its booking
of the device, or of a tree the node is below. A restarted host knows the bookings
(`ownership.json`) but no claim of a node that left its device's path: with no pod holding
it, the two agree (issue 17, hostile26 N3: a node of a removed resource, or of a device
missing past its grace, left in a source withheld that source's resource for good, while a
restart admitted it at once).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

from .devices import Device, advertises, physical_id
from .identity import DIRECTORY, FILE, NODES, NOTHING
from .ownership_arrivals import Arrivals
from .ownership_bookings import Ledger
from .ownership_claims import Claim, ClaimKey, Owner, places
from .ownership_contain import Containment
from .ownership_state import ResourceState
from .rules import below
from .turns import Pace

MOVABLE: Final = NODES | {FILE}
"""The kinds of claims a node renamed over a shared node may be (`_at_shared_place`)."""


class Lingering(abc.ABC):
    """When a lingering claim ends (the module's doc)."""

    _clock: Callable[[], float]
    _exclusive: dict[ClaimKey, Owner]
    _resources: dict[str, ResourceState]
    _ledger: Ledger
    _within: Containment
    _arrivals: Arrivals
    """What arrives in followed trees (a node gone from its path may be read there now)."""
    _mounts_configured: Mapping[str, frozenset[str]] = MappingProxyType({})
    """Resource -> the host paths of its `allocate.mounts` (`share_mounts`; replaced whole)."""
    _sources_real: frozenset[str] = frozenset()
    """The real paths the configured sources were last handed out at (`mounts_shared_by`)."""
    _shared_at: dict[ClaimKey, str]
    """Lingering claim -> the shared path (what a device of a list claims shared) its node
    was found at, renamed over the shared node (`_at_shared_place`): kept until a look there
    finds it gone (a node below a shared directory: the followed trees' reads, `found`)."""

    @abc.abstractmethod
    def _still_there(self, key: ClaimKey, path: str) -> bool:
        """Whether `path` still reaches `key` (a lingering claim is kept while it does)."""

    @abc.abstractmethod
    def _uncount(self, key: ClaimKey) -> None:
        """A claim is gone (from both maps)."""

    @abc.abstractmethod
    def _claims_changed(self, claims: Iterable[Claim]) -> None:
        """Exclusive `claims` were made or let go of: what they may clash with is asked again
        (`ownership_shared.SharedTrees`: the configured sources they may be reached from)."""

    def _pod_may_reach(self, key: ClaimKey) -> bool:
        """Whether a pod may reach the node of claim `key` (the module's rule): its device
        is listed missing, or a booking holds it, or where it was last found is below a tree
        a booking holds mounted (a pod has it), or, while the device that made it may come
        back (`_still_listed`), below a configured `allocate.mounts` source or (below) what
        a device of a list claims shared (every later pod of those would be handed it).
        Nothing read: what the index knows."""
        ledger = self._ledger
        if key in ledger.booked or self._device_missing(key):
            return True
        owner = self._exclusive.get(key)
        lingering = None if owner is None else self._resources[owner.resource].lingering.get(key)
        found = self._within.found.get(key, ())
        where = found[-1:] if lingering is None else (*found[-1:], lingering[1][2])
        if any(ledger.holds_mounted(real) for real in where):
            return True
        if owner is not None and self._still_listed(owner) is None:
            return False  # (gone for good: a restarted host knows no such claim, module doc)
        sources = self._sources_real.union(*self._mounts_configured.values())
        if key in self._shared_at or any(below(r, s) for r in where for s in sources):
            return True
        for shared_key, _, shared_real in self._listed_shared():
            if shared_key == key:  # (renamed over a shared node: kept where it is)
                self._shared_at[key] = shared_real
                return True
            if shared_key[0] == DIRECTORY and any(below(real, shared_real) for real in where):
                return True  # (the followed trees' reads keep where it is: `found`)
        return False

    def _device_missing(self, key: ClaimKey) -> bool:
        """Whether the device that left `key` lingering is still listed (`_still_listed`),
        missing: the claim it makes now at the lingering claim's host path is of nothing
        there (`NOTHING`). Dict lookups and the device's own few claims: no read, no scan."""
        owner = self._exclusive.get(key)
        listed = None if owner is None else self._still_listed(owner)
        if owner is None or listed is None:
            return False
        state, device = listed
        lingering = state.lingering.get(key)
        claims = state.owned.get(owner.device) or state.claims.get(places(device))
        if lingering is None or claims is None:  # (held: its claims by places, unowned)
            return False
        path = lingering[1][1]
        return any(claim[1] == path and claim[0][0] == NOTHING for claim in claims.all())

    def _still_listed(self, owner: Owner) -> tuple[ResourceState, Device] | None:
        """The state of the resource of the device that made a claim, and that device as
        its driver's last list has it (a vanished path within its `gracePeriod` too); None:
        its resource left the config (a reload removed it) or the list no longer has it."""
        state = self._resources.get(owner.resource)
        if state is None or state.retired:
            return None
        device = state.reported.get(physical_id(owner.device))
        return None if device is None else (state, device)

    def _listed_shared(self) -> Iterator[Claim]:
        """The shared claims of the advertised devices and of those of the drivers' lists
        as last resolved (held ones too: what every pod of them would be handed;
        `ResourceState.shared_claims`). The watcher's recheck forgets the resolved claims
        of a changed path for a while (`_shared_at` keeps where a node was found)."""
        for state in self._resources.values():
            yield from state.shared_claims()

    def _at_shared_place(self, key: ClaimKey, looked: str | None) -> bool:
        """Whether the node of `key` is still where it was found shared (`_shared_at`; not
        where it was `looked` for already: the followed trees' reads say where it went), or
        is now at a path a device of a list claims shared (renamed over the shared node: a
        new identity at its path), or is such a claim; kept in `_shared_at` if so."""
        at = self._shared_at.pop(key, None)
        if key[0] not in MOVABLE:
            return False  # (a claim by place, of a directory, a sysfs device's own)
        if at is not None and at != looked and self._still_there(key, at):
            self._shared_at[key] = at
            return True
        for shared_key, _, real in self._listed_shared():
            movable = shared_key[0] in MOVABLE  # (below a shared directory: `found`)
            if shared_key == key or (movable and self._still_there(key, real)):
                self._shared_at[key] = real
                return True
        return False

    def _taken_over(self, me: Owner, owner: Owner, key: ClaimKey) -> bool:
        """Whether `me` may take a claim that `owner`, another ID of its resource, left
        lingering: no booking of that ID holds it (a pod reaches a node under a booked ID
        only), so the device is advertised under its own ID, not one it had before
        (`Admission._admit_all`); `_claim` takes it from the lingering ones."""
        return (
            me.resource == owner.resource
            and key in self._resources[owner.resource].lingering
            and not self._booked_under(owner, key)
        )

    def _booked_under(self, owner: Owner, key: ClaimKey) -> bool:
        """Whether a booking (of any host) of device `owner` or a replica of it holds `key`."""
        return any(
            b.resource == owner.resource and advertises(b.device, owner.device)
            for b in self._ledger.booked.get(key, ())
        )

    def _released_if_gone(self, key: ClaimKey) -> bool:
        """Release a lingering claim whose node is gone; True if it was released."""
        state = self._resources[self._exclusive[key].resource]
        lingering = state.lingering.get(key)
        if lingering is None or key in self._ledger.booked or self._device_missing(key):
            return False  # advertised, a pod holds it (even when its node is gone), or its
            # device is listed missing (its node may be anywhere: `_device_missing`)
        if self._still_there(key, lingering[1][1]):
            return False
        found = self._within.found.get(key)
        if found is not None and self._still_there(key, found[-1]):
            return False  # (where it was found last: `ownership_arrivals`)
        if self._arrivals.reading:
            return False  # (renamed into a followed tree: where it went, told at once)
        if self._at_shared_place(key, None if found is None else found[-1]):
            return False  # (every pod of the devices sharing that path would be handed it)
        self._release_lingering(state, key)
        return True

    def _release_lingering(self, state: ResourceState, key: ClaimKey) -> None:
        claim = state.lingering.pop(key)[1]
        del self._exclusive[key]
        self._shared_at.pop(key, None)
        self._uncount(key)
        self._claims_changed((claim,))

    def _prune_gone(self, state: ResourceState, pace: Pace) -> Generator[None, None, bool]:
        """Release this resource's lingering claims whose nodes are gone."""
        released = False
        for key in list(state.lingering):
            if pace.due():
                yield
            if key in state.lingering and key in self._exclusive:
                released |= self._released_if_gone(key)
        return released
