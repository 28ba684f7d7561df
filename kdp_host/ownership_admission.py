"""Admission: which devices of a resource's list are advertised, and under which IDs.

Devices that own their claims already go first (the kubelet may have given them to a pod),
then the others in ID order; a device whose claims another owns is held; a device whose
claims an old ID of the same resource owns is advertised under that ID while a booking of
that ID holds them and it is the device booked (a pod may have the node under it; one that
shares a node with it is not: `Ledger.booked_as`), else under its own, taking the
claims the old ID left lingering (`ClaimTable._taken_over`): the old ID is then free for
whatever device reports it. The PodResources answer that ends such a booking admits the
resource again (`AdmissionGate._expire`); an Allocate of an ID whose device an
admission let go of meanwhile is refused (`BookingAllocations.book`). The common case
(no renames) costs the devices that changed (found without a walk when the list says what
changed: `device_changes`); an unchanged list costs what is held and what lingers.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Generator, Iterable, Mapping

from .device_changes import changed_among, changed_between
from .devices import Device
from .identity import unseen
from .metrics import Metrics
from .ownership_bookings import PLACE_BOOKED
from .ownership_claims import (
    SYSFS,
    Claim,
    Claims,
    Owner,
    Places,
    places,
)
from .ownership_held import Advertised, HandOver, note_held
from .ownership_renames import RenameAdmission
from .ownership_table import Holding, ResourceState
from .ownership_unknown import NUMBER_UNKNOWN
from .turns import Pace

PRUNE_SLACK = 64
"""Places of devices gone that the claims cache keeps beyond twice the list (a rename may
bring them back) before it is cut to the list's."""


class Admission(RenameAdmission):
    """Admitting lists against the claim table (the index supplies resolved paths and
    says what was held)."""

    @abc.abstractmethod
    def _resolved(self, device: Device, known: Claims | None) -> Claims:
        """The device's claims (`known`, else resolved for this admission)."""

    _metrics: Metrics | None
    _handover: HandOver
    pod_resources: bool = True
    """PodResources polling is on (a booking can be seen to end: `device_held` says so)."""

    def _note_held(
        self,
        state: ResourceState,
        holding: dict[str, Holding],
        ids: Mapping[str, str],
        advertised: Collection[str],
    ) -> None:
        """Log and count what the admission held (once while it stays held); `advertised`:
        the IDs it advertises."""
        resources, metrics, over = self._resources, self._metrics, self._handover
        note_held(state, holding, ids, advertised, resources, self.pod_resources, metrics, over)

    @abc.abstractmethod
    def _wake_waiting(self, releaser: str) -> None:
        """A claim was released: admit again the resources with held devices."""

    def _booking_conflict(
        self, state: ResourceState, device_id: str, claims: Claims
    ) -> Holding | None:
        """A booking wins: held when one of the device's claims is booked under an ID it is
        not about to be advertised under (another resource, device or replica count), when
        a claim's real path is where such a booking's device was handed out, or such a
        path reaches a claim under a second name (`PLACE_BOOKED`: a pod's answer names that
        path: `ownership_reach`), when it reaches a node no booking holds while a booking
        lost its node's number (`NUMBER_UNKNOWN`: `ownership_unknown`), or when a claim is
        below a directory such a booking mounts (`Ledger.mount_conflict`: `_contained` leaves
        that clash to this, so the device keeps its claims and is advertised once it ends)."""
        ledger, replicas = self._ledger, state.replicas or 1
        found = ledger.conflict(state.name, device_id, replicas, claims)
        if found is not None:
            return Holding("booked", found[0], found[1])
        found = ledger.place_conflict(state.name, device_id, replicas, claims) or (
            ledger.reached_conflict(state.name, device_id, replicas, claims, self._still_there)
        )
        if found is not None:
            return Holding(PLACE_BOOKED, found[0], found[1])
        found = ledger.number_unknown(state.name, device_id, replicas, claims)
        if found is not None:
            return Holding(NUMBER_UNKNOWN, found[0], found[1])
        within = self._within
        if not within.dirs or not ledger.booked:
            return None
        outer = (
            (path, directory)
            for key, path, real in claims.all()
            if key[0] != SYSFS
            for directory in within.outer(within.places(key, real))
        )
        found = ledger.mount_conflict(state.name, device_id, replicas, outer)
        return None if found is None else Holding("booked", found[0], found[1])

    def _claims_of(
        self, state: ResourceState, devices: Mapping[str, Device], pace: Pace
    ) -> Generator[None, None, dict[str, Claims]]:
        """Claims of every device, resolved only for places not known (a device renamed on
        its paths is not resolved again) or whose path changed; the cache keeps the places
        of this list."""
        cache, stale = state.claims, state.stale
        fresh: dict[Places, Claims] = {}
        claims: dict[str, Claims] = {}
        for device_id, device in devices.items():
            if pace.due():
                yield
            key = places(device)
            known = fresh.get(key) or (None if device_id in stale else cached_claims(cache, device))
            known = self._resolved(device, known)
            claims[device_id] = fresh[key] = known
        state.claims = fresh
        return claims

    def _admit(
        self, state: ResourceState, pace: Pace
    ) -> Generator[None, None, Mapping[str, Device]]:
        """What to advertise of `state.reported`, yielding when `pace` says (between two
        devices: the table is consistent at every yield). An unchanged list costs what is
        held and what lingers, not a walk of the list: advertised devices own their claims,
        so only a held device (its owner may have gone) or a lingering claim (its node may
        have gone) can change the outcome; nor do devices whose path changed (`stale`)."""
        devices = state.reported
        if state.unresolved:
            devices = {d: device for d, device in devices.items() if d not in state.unresolved}
        delta = changed_between(state.admitted_from, devices)
        unchanged = state.settled and (
            devices is state.admitted_from or (delta is None and devices == state.admitted_from)
        )
        if unchanged and not state.held and not state.lingering and not state.stale:
            return state.admitted
        stale, before, moved = set(state.stale), state.admitted_from, list[str]()
        admitted = yield from self._admit_changes(state, devices, unchanged, pace, moved)
        changed: list[str] | None = moved
        if admitted is None:
            admitted, changed = (yield from self._admit_all(state, devices, pace)), None
        if state.paths is not None and devices is not before:
            yield from state.paths.follow(before, devices, changed, pace)
        state.stale -= stale  # (a path that changed meanwhile is claimed anew next time)
        state.admitted_from, state.admitted, state.settled = devices, admitted, True
        return admitted

    def _admit_all(
        self, state: ResourceState, devices: Mapping[str, Device], pace: Pace
    ) -> Generator[None, None, Mapping[str, Device]]:
        name, rule = state.name, self._rule()
        released = yield from self._prune_gone(state, pace)
        claims = yield from self._claims_of(state, devices, pace)
        if (yield from self._renamed(state, devices, claims, pace)):
            return devices  # (each under its own ID: `ownership_renames`)
        # The ID each device is advertised under: the ID of this resource that owns its
        # claims already while a booking of that ID holds them and it is the device booked
        # (`Ledger.booked_as`; the kubelet gave it to a pod: it must not see the node under
        # a second ID), else its own (it takes the
        # claims an old ID no booking holds left lingering: `_taken_over`). Devices that own
        # their claims already go first, then the others in ID order.
        ids: dict[str, str] = {}
        first: list[str] = []
        others: list[str] = []
        holds = self._ledger.holds_as
        for device_id, claim in claims.items():
            if pace.due():
                yield
            inherited = [
                owner.device
                for key, _, _ in claim.exclusive
                if (owner := self._exclusive.get(key)) is not None
                and owner.resource == name
                and owner.device != device_id
                and holds(owner, key, claim.exclusive_keys())
            ]
            advertised_id = ids[device_id] = min(inherited) if inherited else device_id
            (first if self._incumbent(state, advertised_id, claim) else others).append(device_id)
        first.sort()
        others.sort()
        order = first + others
        wanted: dict[str, Claims] = {}
        for device_id in order:
            wanted.setdefault(ids[device_id], claims[device_id])
        released |= yield from self._release_stale(state, wanted, pace)
        admitted: dict[str, Device] = {}
        holding: dict[str, Holding] = {}
        taken: set[str] = set()
        """Advertised IDs whose device owns its claims (advertised, or waiting on replicas)."""
        last, same = state.admitted, True
        """What the last admission advertised, and whether each entry so far equals its own
        there (then that is given again: the table compares nothing, sends nothing)."""
        unsafe, freed = yield from self._unsafe_first(state, claims, ids, holding, pace)
        released |= freed
        for device_id in order:
            if pace.due():
                yield
            advertised_id = ids[device_id]
            claim = claims[device_id]
            if device_id in holding:
                continue  # (unsafe: `_unsafe_first`)
            if advertised_id in taken:
                holding[device_id] = Holding("id_taken", Owner(name, advertised_id), "")
                continue
            why = unsafe.get(device_id) or self._conflict(name, advertised_id, claim)
            if why is not None:
                holding[device_id] = why
                released |= self._unadvertise(state, advertised_id)
                continue
            self._claim(state, advertised_id, claim)
            taken.add(advertised_id)
            booked = self._booking_conflict(state, advertised_id, claim)
            if booked is not None:
                # it keeps its claims, but a pod holds them under another ID
                holding[device_id] = booked
                continue
            device, before = devices[device_id], last.get(advertised_id)
            entry = device if advertised_id == device_id else device.with_id(advertised_id, before)
            admitted[advertised_id] = entry
            same = same and (before is entry or before == entry)
        for advertised_id in [a for a in state.owned if a not in taken]:
            released |= self._unadvertise(state, advertised_id)
        self._checked_all(state, rule)
        self._note_held(state, holding, ids, admitted)
        if released:
            self._wake_waiting(name)
        state.plain = all(ids[d] == d for d in ids if d not in holding)
        if same and len(admitted) == len(last):
            return last  # what the kubelet sees is unchanged (a rename on the same paths)
        if not holding and state.plain:
            return devices
        return admitted

    def _admit_changes(
        self,
        state: ResourceState,
        devices: Mapping[str, Device],
        unchanged: bool,
        pace: Pace,
        moved: list[str],
    ) -> Generator[None, None, Mapping[str, Device] | None]:
        """The common case in O(changed) claim work: every device the last admission
        advertised kept its own ID. Devices that changed, and
        those held last time, are admitted or held one by one (with `unchanged`, the list is
        the last one: only those held and those whose path changed); a change that may
        rename a device (a node one device let go of that another claims, a claim of a device
        of this resource that is no longer advertised) goes to the full admission, which
        starts from what this did. A device that only lets go of a node (a node made again,
        with another identity: a hot-plug) is admitted here, its old claim lingering as the
        full admission leaves it. Returns what to advertise, or None; `moved` gets the
        devices that are not the very objects of the last list (for `PathIndex.follow`)."""
        if not state.plain:
            return None
        cache, before, stale = state.claims, state.admitted_from, state.stale
        dirty = [d for d in state.held if d in devices]
        released = yield from self._prune_gone(state, pace)
        removed = False
        delta = changed_between(before, devices)
        if unchanged:
            dirty.extend(d for d in stale if d in devices)
        else:
            added = 0
            ids = changed_among(before, devices, stale, equal_is_same=False)
            for device_id, device in _listed(devices, ids):
                if pace.due():
                    yield
                old = before.get(device_id)
                if old is not device:
                    moved.append(device_id)
                if old is None or device_id in stale:
                    added += old is None
                    dirty.append(device_id)
                elif old is not device and old != device:
                    dirty.append(device_id)
            removed = len(before) + added != len(devices)
        examined: list[tuple[str, Claims]] = []
        let_go: list[tuple[str, Claim]] = []
        """Claims a device examined no longer makes (they linger with its ID), by device."""
        for device_id in sorted(set(dirty)):
            if pace.due():
                yield
            device = devices[device_id]
            key = places(device)
            claims = None if device_id in stale else cached_claims(cache, device)  # (renamed)
            old = before.get(device_id)
            if not examined and old is None and self._rename_of(state, devices, claims):
                if released:  # (the first device examined would break off below)
                    self._wake_waiting(state.name)
                return None
            if claims is None or old is None or not old.same_places(device):
                claims = cache[key] = self._resolved(device, claims)
            elif device_id not in state.held:
                continue  # health or env changed: it owns its claims
            owned = state.owned.get(device_id)
            if owned is not None and not owned.exclusive_keys() <= claims.exclusive_keys():
                kept = claims.exclusive_keys()
                let_go.extend((device_id, c) for c in owned.exclusive if c[0] not in kept)
            examined.append((device_id, claims))
        holding: dict[str, Holding] = {}
        result: Mapping[str, Device] | None = devices
        if let_go and len(examined) > 1 and (yield from _taken_over(let_go, examined, pace)):
            examined, result = [], None  # a node let go of may keep its ID: a rename
        unsafe, freed = yield from self._unsafe_first(state, dict(examined), None, holding, pace)
        released |= freed
        for device_id, claims in examined:
            if pace.due():
                yield
            if device_id in unsafe:
                continue
            why = self._conflict(state.name, device_id, claims)
            if why is not None:
                owner = why.owner
                if owner.resource == state.name and (
                    owner.device not in state.owned or owner.device not in devices
                ):
                    result = None  # a node of a device of ours that went: a rename
                    break
                holding[device_id] = why
                released |= self._unadvertise(state, device_id)
                continue
            released |= self._drop_keys(state, device_id, claims)
            self._claim(state, device_id, claims)
            booked = self._booking_conflict(state, device_id, claims)
            if booked is not None:
                holding[device_id] = booked  # it keeps its claims (see _admit_all)
        if removed and result is not None:
            # (after the changed ones: a rename is found before anything is let go of)
            gone = before if delta is None else sorted(d for d in delta if d in before)
            for device_id in [d for d in gone if d not in devices]:
                if pace.due():
                    yield
                moved.append(device_id)
                released |= self._unadvertise(state, device_id)
            if len(cache) > 2 * len(devices) + PRUNE_SLACK:
                keep = {places(device) for device in devices.values()}
                state.claims = {k: c for k, c in cache.items() if k in keep}
        if released:
            self._wake_waiting(state.name)
        if result is None:
            return None
        same_held = holding.keys() == state.held.keys()
        advertised = Advertised(devices, holding)
        self._note_held(state, holding, {d: d for d in state.held if d in devices}, advertised)
        if unchanged and same_held:
            return state.admitted
        if holding:
            return {d: device for d, device in devices.items() if d not in holding}
        return devices


def _listed(devices: Mapping[str, Device], ids: Collection[str]) -> Iterable[tuple[str, Device]]:
    """The entries of `devices` among `ids` (every one: `devices` itself)."""
    if ids is devices:
        return devices.items()
    return [(d, device) for d in ids if (device := devices.get(d)) is not None]


def _taken_over(
    let_go: list[tuple[str, Claim]], examined: list[tuple[str, Claims]], pace: Pace
) -> Generator[None, None, bool]:
    """Whether a device examined claims what another one let go of (its key, or a claim by
    its path or real path: a claim by text clashes with the identity its path had); yields
    when `pace` says (10,000 devices unplugged at once each let go of a node)."""
    named: dict[object, str | None] = {}
    """Name -> the device that let go of it (None: more than one did)."""
    for device_id, (key, path, real) in let_go:
        if pace.due():
            yield
        for name in (key, path, real):
            if named.setdefault(name, device_id) not in (device_id, None):
                named[name] = None
    for device_id, claims in examined:
        if pace.due():
            yield
        for key, path, real in claims.all():
            for name in (key, path, real):
                if name in named and named[name] != device_id:
                    return True
    return False


def cached_claims(cache: Mapping[Places, Claims], device: Device) -> Claims | None:
    """The claims the cache keeps for `device`'s places, unless they claim a path where
    nothing was (`identity.NOTHING`) and the device is healthy: those are resolved again (a
    node made since, while no listed device named it, sends no event the index follows; a
    healthy device with such a claim is held: `identity.UNSEEN`)."""
    claims = cache.get(places(device))
    if claims is None or not device.healthy:
        return claims
    return None if any(unseen(claim[0]) for claim in claims.all()) else claims
