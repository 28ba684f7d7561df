"""What the log says of held devices: a `device_held` line per device held back by another's
claim (with both owners and what ends it), once while it stays held, and a `device_claim_won`
line when it is advertised; past `rules.SKIPPED_SHOWN` of one reason in one change of a
resource, one summary line instead (`devices_held`, `device_claims_won`: a probe whose
thousands of IDs share one node would fill the node's log). Each is counted either way."""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from .config import UNSAFE_MOUNT
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
    resources: Mapping[str, ResourceState],
    pod_resources: bool,
    metrics: Metrics | None,
) -> None:
    """Log and count what an admission of `state` held (`holding`), then keep it as held;
    `ids`: the advertised ID of each device advertised now."""
    log = state.log
    newly: dict[str, list[tuple[str, Holding]]] = {}
    for device_id, why in holding.items():
        before = state.held.get(device_id)
        if before == why:
            continue
        if metrics is not None and before is None:
            reason = UNSAFE_MOUNT if why.reason == UNSAFE_MOUNT else HELD_REASON
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
                    **_fields(first[0][1], resources, pod_resources),
                )
                continue
            for device_id, why in items:
                log.warning(
                    "device_held", device=device_id, **_fields(why, resources, pod_resources)
                )
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


def _fields(
    why: Holding, resources: Mapping[str, ResourceState], pod_resources: bool
) -> dict[str, object]:
    """What a `device_held` line says of why (for a summary line: of its first device)."""
    if why.reason == UNSAFE_MOUNT:
        return {
            "reason": why.reason,
            "path": why.path,
            "error": why.detail,
            "action": "not advertised while it reaches there",
        }
    owner = why.owner
    owner_state = resources.get(owner.resource)
    return {
        "reason": why.reason,
        "path": why.path,
        "owner_resource": owner.resource,
        "owner_device": owner.device,
        "owner_advertised": bool(owner_state and owner.device in owner_state.owned),
        "owner_retired": bool(owner_state and owner_state.retired),
        "action": what_releases(why.reason, pod_resources),
    }
