"""What the log says of held devices: a `device_held` line per device held back by another's
claim (with both owners and what ends it), once while it stays held, and a `device_claim_won`
line when it is advertised; past `rules.SKIPPED_SHOWN` of one reason in one change of a
resource, one summary line instead (`devices_held`, `device_claims_won`: a probe whose
thousands of IDs share one node would fill the node's log). Each is counted either way."""

from __future__ import annotations

import heapq
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Final

from .config import UNSAFE_MOUNT
from .devices import Device
from .identity import NOT_A_NODE, UNSEEN
from .metrics import Metrics
from .ownership_adopt import what_releases
from .ownership_booked import Booking
from .ownership_bookings import Releases
from .ownership_claims import Owner
from .ownership_table import Holding, ResourceState
from .rules import HELD_SHOWN, SKIPPED_SHOWN

HELD_REASON = "node_owned"
"""The `reason` of `kdp_driver_skipped_total` for a device held back by another's claim."""


class HandOver:
    """A node a booking held counts as used by the resource that serves it next.

    The kubelet books IDs per resource; the node is the index's. A device held back while a
    booking of another resource holds its node (a resource renamed by a reload, another
    plugin's ID booked from the kubelet's checkpoint, an overlapping resource) gets the node
    once that booking's pod is seen gone: the node was used, whatever name booked it, and
    the resource now advertising it owes its release before a container of its own starts
    with it (hostile14 N1). So the devices such a booking held back when it ended are kept
    (`ended`) until their resource's next admission: advertised then, their resource is told
    once its table has them (`published`); held still (by what else reaches the node), they
    wait for the admission that advertises them. A device of the booking's own resource is
    not: its release tracker sees its own IDs held."""

    def __init__(self) -> None:
        self.releases: Releases | None = None
        """The release state (`ReleaseStateStore`): told the devices of a resource
        advertised after such a booking ended (`held_before`; None: nobody releases,
        nothing is kept)."""
        self._orphans: set[Owner] = set()
        """Booked devices whose removed resource's owed release keeps them (logged once)."""
        self._worn: dict[str, dict[str, Owner]] = {}
        """Resource -> device -> the booked device whose booking ended while it held it."""
        self._freed: dict[str, dict[str, Owner]] = {}
        """Resource -> advertised ID -> that booked device: told once published."""

    def ended(self, ended: list[tuple[Owner, str]], states: Iterable[ResourceState]) -> None:
        """The bookings `ended` (owner, device; `Ledger.ended`, taken: emptied) were seen
        gone: the devices they held back (by the booked ID, or by the claims of its device)
        are kept for their resource's next admission."""
        if not ended:
            return
        owners: dict[Owner, Owner] = {}
        for owner, device in ended:
            owners[owner] = owners[Owner(owner.resource, device)] = Owner(owner.resource, device)
        ended.clear()
        if self.releases is None:
            return
        for state in states:
            for device_id, why in state.held.items():
                booked = owners.get(why.owner)
                if booked is not None and booked.resource != state.name:
                    self._worn.setdefault(state.name, {})[device_id] = booked

    def won(self, resource: str, holding: Mapping[str, Holding], ids: Mapping[str, str]) -> None:
        """An admission of `resource` held `holding`; `ids`: the advertised ID of each of its
        devices advertised or held now (those not held are advertised)."""
        worn = self._worn.pop(resource, None)
        if not worn:
            return
        kept = {device_id: booked for device_id, booked in worn.items() if device_id in holding}
        if kept:
            self._worn[resource] = kept
        freed = {ids[d]: booked for d, booked in worn.items() if d in ids and d not in holding}
        if freed:
            self._freed.setdefault(resource, {}).update(freed)

    def published(self, resource: str) -> None:
        """`resource`'s table has what its last admission advertised: tell its freed devices."""
        freed = self._freed.pop(resource, None)
        if freed and self.releases is not None:
            self.releases.held_before(resource, freed)

    def releasing(
        self,
        resource: str,
        device: str,
        states: Mapping[str, ResourceState],
        bookings: Mapping[Owner, Booking],
    ) -> bool:
        """`Ledger.releasing`: the device's release is still due, and it can run. A release
        owed by a resource retired with no tracker (a reload or a restart removed or renamed
        it) never can: its booking goes with its pod when every device held back for its
        node (by the booked ID or by its device's claims) is of another resource with a
        release tracker, whose release then runs for it (`held_before`, hostile14 N2); else
        it stays (logged once: `kdp-host unbook` drops it). One not retired (a runtime of it
        crashed, or a reload restarts it) may run it soon: its booking stays."""
        store = self.releases
        if store is None or not store.pending(resource, device):
            return False
        owner = states.get(resource)
        if store.releases(resource) or (owner is not None and not owner.retired):
            return True  # (a runtime of it may start again: a crash, a reload's restart)
        waiting = {
            (state.name, device_id)
            for state in states.values()
            for device_id, held in state.held.items()
            if held.owner.resource == resource
            and (
                held.owner.device == device
                or ((booking := bookings.get(held.owner)) is not None and booking.device == device)
            )
        }
        if waiting and all(n != resource and store.releases(n) for n, _ in waiting):
            self._orphans.discard(Owner(resource, device))
            return False
        if waiting and (booked := Owner(resource, device)) not in self._orphans:
            name, device_id = min(waiting)
            if (log := states[name].log) is not None:
                self._orphans.add(booked)
                log.warning(
                    "release_orphaned",
                    device=device_id,
                    owner_resource=resource,
                    owner_device=device,
                    reason=f"{resource} is not served: its owed release of {device} can "
                    "never run, and a resource without `release` would serve the node next",
                    action=f"held until you drop the booking: kdp-host unbook --config F "
                    f"{resource} {device} (kdp-host stopped)",
                )
        return True


def note_held(
    state: ResourceState,
    holding: dict[str, Holding],
    ids: Mapping[str, str],
    advertised: Collection[str],
    resources: Mapping[str, ResourceState],
    pod_resources: bool,
    metrics: Metrics | None,
    handed_over: HandOver | None = None,
) -> None:
    """Log and count what an admission of `state` held (`holding`), then keep it as held;
    `ids`: the advertised ID of each device advertised now; `advertised`: the IDs this
    admission advertises (another resource's: what its last one did); `handed_over`: told
    what the admission advertises of what bookings that ended held back (`HandOver.won`)."""
    log = state.log
    if handed_over is not None:
        handed_over.won(state.name, holding, ids)
    newly: dict[str, list[tuple[str, Holding]]] = {}
    for device_id, why in holding.items():
        before = state.held.get(device_id)
        if before == why:
            continue
        reason = _counted_as(why)
        if metrics is not None and (before is None or _counted_as(before) != reason):
            metrics.driver_skipped.labels(state.name, reason).inc()
        newly.setdefault(why.reason, []).append((device_id, why))
    if log is not None:
        for reason in sorted(newly):
            items = newly[reason]
            if len(items) > SKIPPED_SHOWN:
                first = heapq.nsmallest(HELD_SHOWN, items, key=lambda item: item[0])
                log.warning(
                    "devices_held",
                    count=len(items),
                    devices=",".join(device_id for device_id, _ in first),
                    **_fields(first[0][1], state, advertised, resources, pod_resources),
                )
                continue
            for device_id, why in items:
                fields = _fields(why, state, advertised, resources, pod_resources)
                if why.detail.endswith(UNSEEN):
                    kept = state.unseen_lines.shown(time.monotonic(), UNSEEN_LINE_EVERY)
                    if kept is None:
                        continue
                    if kept:
                        fields["like_lines_not_shown"] = kept
                log.warning("device_held", device=device_id, **fields)
        won = [d for d in state.held.keys() - holding.keys() if d in ids]
        if len(won) > SKIPPED_SHOWN:
            log.info(
                "device_claims_won",
                count=len(won),
                devices=",".join(heapq.nsmallest(HELD_SHOWN, won)),
            )
        else:
            for device_id in won:
                log.info("device_claim_won", device=device_id, advertised_as=ids[device_id])
    state.held = holding


def _counted_as(why: Holding) -> str:
    """The `kdp_driver_skipped_total` reason of a holding: a device held first for one and
    then for the other (a node gone, then found owned) is counted under each."""
    return why.reason if why.reason in OWN_PATHS else HELD_REASON


OWN_PATHS: Final = frozenset((UNSAFE_MOUNT, NOT_A_NODE))
"""The reasons of a device held for what a path of its own reaches (no owner), counted
under their own name."""


UNSEEN_LINE_EVERY: Final = 1.0
"""Seconds between two `device_held` lines of one resource for a path where nothing is.
Mostly a node gone between the scan that listed it and its admission (the next scan drops
the device): a file churn of thousands a second would log each."""


def _fields(
    why: Holding,
    state: ResourceState,
    advertised: Collection[str],
    resources: Mapping[str, ResourceState],
    pod_resources: bool,
) -> dict[str, object]:
    """What a `device_held` line says of why (for a summary line: of its first device)."""
    if why.reason in OWN_PATHS:
        return {
            "reason": why.reason,
            "path": why.path,
            "error": why.detail,
            "action": "not advertised until kdp-host sees it there"
            if why.detail.endswith(UNSEEN)
            else "not advertised until a device node is there"
            if why.reason == NOT_A_NODE
            else "not advertised while it reaches there",
        }
    owner = why.owner
    owner_state = resources.get(owner.resource)
    return {
        "reason": why.reason,
        "path": why.path,
        "owner_resource": owner.resource,
        "owner_device": owner.device,
        "owner_advertised": _advertised(owner.device, owner_state, state, advertised),
        "owner_retired": bool(owner_state and owner_state.retired),
        "action": what_releases(why.reason, pod_resources),
    }


def _advertised(
    device: str, owner: ResourceState | None, state: ResourceState, advertised: Collection[str]
) -> bool:
    """Whether the owner of a claim is advertised: it owns its claims and its resource's
    admission (this one for `state`'s own) advertises it; a device that keeps its claims
    while a booking holds it (`booked`, `place_booked`) is not (hostile8 L1)."""
    if owner is None or owner.retired or owner.publish is None or device not in owner.owned:
        return False
    return device in (advertised if owner is state else owner.admitted)


class Advertised(Collection[str]):
    """The IDs a plain admission advertises: those of `devices` not in `holding`."""

    def __init__(self, devices: Mapping[str, Device], holding: Mapping[str, Holding]) -> None:
        self._devices, self._holding = devices, holding

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices and device_id not in self._holding

    def __iter__(self) -> Iterator[str]:
        return (d for d in self._devices if d not in self._holding)

    def __len__(self) -> int:
        return sum(1 for _ in self)
