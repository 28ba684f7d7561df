"""What the log says of held devices: a `device_held` line per device held back by another's
claim (with both owners and what ends it), once while it stays held, and a `device_claim_won`
line when it is advertised; past `rules.SKIPPED_SHOWN` of one reason in one change of a
resource, one summary line instead (`devices_held`, `device_claims_won`: a probe whose
thousands of IDs share one node would fill the node's log). Each is counted either way."""

from __future__ import annotations

import heapq
import time
from collections.abc import Collection, Iterator, Mapping
from typing import Final

from .config import UNSAFE_MOUNT
from .devices import Device
from .identity import UNSEEN
from .metrics import Metrics
from .ownership_adopt import what_releases
from .ownership_table import Holding, ResourceState
from .rules import HELD_SHOWN, SKIPPED_SHOWN

HELD_REASON = "node_owned"
"""The `reason` of `kdp_driver_skipped_total` for a device held back by another's claim."""


def note_held(
    state: ResourceState,
    holding: dict[str, Holding],
    ids: Mapping[str, str],
    advertised: Collection[str],
    resources: Mapping[str, ResourceState],
    pod_resources: bool,
    metrics: Metrics | None,
) -> None:
    """Log and count what an admission of `state` held (`holding`), then keep it as held;
    `ids`: the advertised ID of each device advertised now; `advertised`: the IDs this
    admission advertises (another resource's: what its last one did)."""
    log = state.log
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
    return UNSAFE_MOUNT if why.reason == UNSAFE_MOUNT else HELD_REASON


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
    if why.reason == UNSAFE_MOUNT:
        return {
            "reason": why.reason,
            "path": why.path,
            "error": why.detail,
            "action": "not advertised until kdp-host sees it there"
            if why.detail.endswith(UNSEEN)
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
