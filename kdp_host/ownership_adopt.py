"""Bookings from PodResources: what a pod holds that no booking holds.

A pod admitted before kdp-host kept bookings (an upgrade from a version without
`ownership.json`), or whose booking was lost with the state directory (deleted, or a file
that did not parse and was set aside) and not booked again at start from the kubelet's
checkpoint (`kubelet_checkpoint`: none, or an answer with a CDI name no spec file defines),
holds a device the index does not know is booked: a reload or a restart that renames the
device would advertise its node again under a new ID.
So each PodResources answer is also read the other way round (`Adoption.book_held`): an ID
of one of the host's resources that a pod holds and no booking holds is booked with the
claims its device has now (advertised, or lingering since it stopped being advertised), as
an Allocate would have booked it (also one booked from the checkpoint with a CDI name that
resolved nowhere, `Ledger.unresolved`: widened by them); a replica ID `<id>::<k>` whose
resource has no such device is the device `<id>`'s if it has one (`replicas` changed while
kdp-host was down: the device then waits for the pod, as after a live change, its resource
admitted again). An ID whose
resource, listing now, has no such device (it was renamed or unplugged while kdp-host was
down) has nothing to hold: it is logged once while it stays so (`held_id_not_present`).
Both are counted (`kdp_pod_resources_unbooked_total{result}`). With PodResources polling
off nothing shows who holds what: the host says so at start (`WITHOUT_POD_RESOURCES`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .devices import physical_id, replica_ids
from .metric_labels import UnbookedResult
from .metrics import Metrics
from .ownership_bookings import PLACE_BOOKED, Ledger
from .ownership_claims import Claim, ClaimKey, Owner
from .ownership_table import ResourceState
from .ownership_unknown import NUMBER_UNKNOWN

if TYPE_CHECKING:
    from .holdings import Holder, Holdings

WITHOUT_POD_RESOURCES = (
    "PodResources polling is off (kubelet.podResourcesInterval: 0s): a pod admitted before "
    "kdp-host kept bookings, or whose booking was lost with stateDir/ownership.json, is not "
    "booked (a reload or restart that renames its device may advertise the node again under "
    "a new ID), and a booking ends only when its ID is allocated again or with "
    "`kdp-host unbook`"
)


def what_releases(reason: str, pod_resources: bool) -> str:
    """What ends the holding of a device held for `reason` (its `device_held` line's
    `action`), with PodResources polling on or off: a booking ends `booked`, `place_booked`,
    `booked_number_unknown` and `id_taken` (another device keeps the ID while a booking of it
    holds that device's node)."""
    if reason not in ("booked", PLACE_BOOKED, NUMBER_UNKNOWN, "id_taken"):
        return "not advertised until the owner is gone"
    if pod_resources:
        return "not advertised until PodResources shows no pod holding the booked ID"
    return (
        "not advertised while the booking lives: PodResources polling is off "
        "(kubelet.podResourcesInterval: 0s), so nothing shows its pod ended; it ends when "
        "the kubelet allocates the booked ID again, or with `kdp-host unbook` run while "
        "kdp-host is stopped"
    )


class DeviceClaims:
    """The exclusive claims of a resource's devices now: advertised, or lingering (the device
    stopped being advertised); the lingering ones are sorted by device on first need, once
    for any number of devices."""

    def __init__(self, state: ResourceState, exclusive: Mapping[ClaimKey, Owner]) -> None:
        self._state = state
        self._exclusive = exclusive
        self._lingering: dict[str, list[Claim]] | None = None

    def of(self, device: str) -> tuple[Claim, ...]:
        """() when the device has none."""
        claims = self._state.owned.get(device)
        if claims is not None:
            return claims.exclusive
        if self._lingering is None:
            self._lingering = {}
            name = self._state.name
            for key, (_, claim) in self._state.lingering.items():
                owner = self._exclusive.get(key)
                if owner is not None and owner.resource == name:
                    self._lingering.setdefault(owner.device, []).append(claim)
        return tuple(self._lingering.get(device, ()))

    def shared_of(self, device: str) -> tuple[Claim, ...]:
        """The device's shared claims, while it is advertised (a booking holds them: the pod
        has the node); () when it is not."""
        claims = self._state.owned.get(device)
        return () if claims is None else claims.shared


@dataclass
class Adoption:
    """Books the held IDs no booking holds (one per ownership index)."""

    ledger: Ledger
    metrics: Metrics | None = None
    noted: set[Owner] = field(default_factory=set)
    """Held IDs without a device, logged already (not again while a pod holds them)."""
    heard: Holdings | None = None
    """The last PodResources answer."""
    unchecked: set[str] = field(default_factory=set)
    """Resources whose runtime has not been admitted yet since it attached."""
    stale: set[str] = field(default_factory=set)
    """Resources with a device booked under an ID it is not advertised under: held
    (`Ledger.conflict`) once the resource is admitted again in full."""
    unplaced: Callable[[str], None] | None = None
    """Told the resource of each held ID no device has, as it is logged: an admission may
    have been missed (`checkpoint_reads.CheckpointReads.unplaced` reads the checkpoint
    again)."""

    def admitted(
        self, state: ResourceState, exclusive: Mapping[ClaimKey, Owner], now: float
    ) -> bool:
        """`state` was admitted, its list not given yet: at its runtime's first admission,
        book what the last answer (it may have come before the resource listed, as at
        start) shows its pods hold. True: admit it again, in full (set here, after the
        admission that would set them back)."""
        name = state.name
        if name in self.unchecked:
            self.unchecked.discard(name)
            if self.heard is not None and self.book_held(self.heard, {name: state}, exclusive, now):
                self.ledger.changed()
        if name not in self.stale:
            return False
        self.stale.discard(name)
        state.settled = state.plain = False
        return True

    def book_held(
        self,
        holdings: Holdings,
        resources: Mapping[str, ResourceState],
        exclusive: Mapping[ClaimKey, Owner],
        now: float,
    ) -> bool:
        """Book every ID of `resources` that `holdings` shows held and no booking holds;
        True if one was booked (a resource whose device it holds under another ID is then
        `stale`). A resource that has not listed since its runtime started is left for its
        first admission (`admitted`)."""
        ledger = self.ledger
        booked = False
        noted = {o for o in self.noted if o.device in holdings.of(o.resource)}
        for name, held in holdings.by_resource.items():
            state = resources.get(name)
            if state is None:
                continue  # not one of ours
            devices = DeviceClaims(state, exclusive)
            for kubelet_id, holders in held.items():
                owner = Owner(name, kubelet_id)
                partial = ledger.bookings.get(owner) if owner in ledger.unresolved else None
                if partial is None and ledger.has(owner):
                    continue
                device = physical_id(kubelet_id)  # (of any replica count: changed since)
                claims = devices.of(device)
                shared = devices.shared_of(device)
                if claims or shared:
                    if partial is None:
                        ledger.record(owner, device, claims, now, shared=shared)
                    else:  # (what else its answer handed out: kept)
                        unknown = partial.number_unknown
                        ledger.record(owner, device, claims, now, partial.places, unknown, shared)
                        ledger.unresolved.discard(owner)
                    booked = True
                    self._note(state, kubelet_id, holders, "booked")
                    if kubelet_id not in replica_ids(device, state.replicas or 1):
                        self.stale.add(name)
                elif partial is not None:
                    continue  # (booked with what else its answer handed out)
                elif state.settled and not state.retired and owner not in noted:
                    noted.add(owner)
                    self._note(state, kubelet_id, holders, "not_present")
                    if self.unplaced is not None:
                        self.unplaced(name)
        self.noted = noted
        return booked

    def _note(
        self,
        state: ResourceState,
        kubelet_id: str,
        holders: tuple[Holder, ...],
        result: UnbookedResult,
    ) -> None:
        if self.metrics is not None:
            self.metrics.pod_resources_unbooked.labels(result).inc()
        log = state.log
        if log is None:
            return
        pods = ",".join(sorted({h.shown(container=False) for h in holders}))
        if result == "booked":
            log.info("held_id_booked", device=kubelet_id, pods=pods)
        else:
            log.warning(
                "held_id_not_present",
                device=kubelet_id,
                pods=pods,
                detail="a pod holds this ID but no device of the resource has it now "
                "(renamed or unplugged while kdp-host was down, with no booking kept; or "
                "handed out by another plugin by a CDI name no spec file defines: "
                "kubelet_checkpoint_cdi_unresolved): its node is not known, so it may be "
                "advertised under another ID",
            )
