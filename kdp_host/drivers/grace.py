"""The grace period of the watching drivers: a device that vanished stays listed,
Unhealthy, for `gracePeriod`; a device still present that lost one of its nodes (not an
optional one) is Unhealthy for the grace period, then listed without it (unless it comes
back). Each merge looks only at devices that are not the very objects listed before
(scanners reuse unchanged devices), so a hot-plug costs O(changed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..devices import Device
from .scanner import Listed, ScanResult


class Tracker:
    """The grace period: merges each scan with what was listed before (see the module
    docstring). Runs on the loop; `listed` is what the next scan reads."""

    def __init__(self, grace_period: float, clock: Callable[[], float]) -> None:
        self._grace = grace_period
        self._clock = clock
        self.listed = Listed()
        self._gone_since: dict[str, float] = {}
        self._lost: dict[str, dict[str, float]] = {}
        """Device ID -> host path of a lost node -> when it vanished."""

    def merge(self, result: ScanResult) -> tuple[Mapping[str, Device], float | None]:
        """The list to publish, and when the next grace period ends (None: none running)."""
        now = self._clock()
        grace = self._grace
        present = result.devices
        places = result.places
        before = self.listed
        next_expiry: float | None = None
        extra: dict[str, Device] = {}
        lost_now: dict[str, dict[str, float]] = {}
        # Only devices that are not the very object listed before can have lost a node
        # (scanners reuse unchanged devices), plus those losing one already: O(changed)
        # work after one identity pass.
        listed_before = before.devices.get
        touched = [i for i, device in present.items() if listed_before(i) is not device]
        added = sum(1 for i in touched if listed_before(i) is None)
        touched.extend(i for i in self._lost if i in present and listed_before(i) is present[i])
        for device_id in touched:
            device = present[device_id]
            old = before.devices.get(device_id)
            lost = self._lost.get(device_id)
            if (
                old is not None
                and old is not device
                and device_id not in self._gone_since
                and (places is None or before.places.get(device_id) == places[device_id])
            ):
                lost = _lost_parts(old, device, now, lost)
            if not lost:
                continue
            kept = _parts(device)
            lost = {
                part: since
                for part, since in lost.items()
                if part not in kept and grace > 0 and since + grace > now
            }
            if lost:
                lost_now[device_id] = lost
                expiry = min(lost.values()) + grace
                next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
                extra[device_id] = device.with_health(False) if device.healthy else device
        gone_now: dict[str, float] = {}
        for device_id in _vanished(before.devices, present, added, self._gone_since):
            old = before.devices[device_id]
            since = self._gone_since.get(device_id, now)
            if grace <= 0 or since + grace <= now:
                continue
            gone_now[device_id] = since
            expiry = since + grace
            next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
            # Still listed from the last merge: reuse that Unhealthy copy (scans only ever
            # produce healthy devices), so a long list of vanished devices costs no copies.
            extra[device_id] = old if not old.healthy else old.with_health(False)
        # `present` is never changed: copy it only when something must be added or replaced
        # (usually: no copy at all).
        listed = {**present, **extra} if extra else present
        self._gone_since = gone_now
        self._lost = lost_now
        self.listed = Listed(listed, places if places is not None else {})
        return listed, next_expiry


def _vanished(
    before: Mapping[str, Device], present: Mapping[str, Device], added: int, gone: Iterable[str]
) -> Iterable[str]:
    """The devices listed `before` that are not `present` (`added`: how many of `present`
    were not listed): those already gone that stay gone when no other went (a count tells),
    else a walk of `before` (no set of every ID)."""
    vanished = len(before) - (len(present) - added)
    if not vanished:
        return ()
    still = [device_id for device_id in gone if device_id not in present]
    if len(still) == vanished:
        return still
    return [device_id for device_id in before if device_id not in present]


def _parts(device: Device) -> set[str]:
    """The nodes a device cannot lose without being Unhealthy for a while: all but the
    optional ones (a glob group's optional member may come and go)."""
    return {node.host_path for node in device.nodes if not node.optional}


def _lost_parts(
    old: Device, device: Device, now: float, lost: dict[str, float] | None
) -> dict[str, float] | None:
    """`lost` plus the required nodes `old` had and `device` has not (since now)."""
    if old.nodes == device.nodes:
        return lost
    kept = _parts(device)
    gone = [part for part in _parts(old) if part not in kept]
    if not gone:
        return lost
    lost = dict(lost or {})
    for part in gone:
        lost.setdefault(part, now)
    return lost
