"""The grace period of the watching drivers: a device that vanished stays listed,
Unhealthy, for `gracePeriod`; a device still present that lost one of its nodes (not an
optional one) is Unhealthy for the grace period, then listed without it (unless it comes
back). Each merge looks only at devices that are not the very objects listed before
(scanners reuse unchanged devices) and at those that vanished or came back since the last
scan; the vanished ones are kept between merges with their Unhealthy copies, in the order
they vanished (the first to expire first), so a hot-plug costs O(changed); a scan's list
that says what changed (`device_changes.Derived`) spares the identity pass too. The merge works
in bounded turns of the event loop (`MERGE_CHUNK` devices a turn): 10,000 devices
unplugged at once are 10,000 Unhealthy copies, made a chunk at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

from ..device_changes import Derived, changed_between
from ..devices import Device
from ..turns import Pace, Steps, to_the_end
from .scanner import Listed, ScanResult

MERGE_CHUNK: Final = 500
"""Devices a merge works on per turn of the event loop (about a millisecond)."""


@dataclass(frozen=True)
class Missing:
    """What a tracker lists missing: each vanished device (its Unhealthy copy) and each
    present device's lost nodes, with when each went missing (`Tracker.missing`)."""

    gone: Mapping[str, tuple[Device, float]]
    """Device ID -> (its Unhealthy copy, when it vanished)."""
    lost: Mapping[str, Mapping[str, float]]
    """Device ID -> host path of a lost node -> when it vanished."""


class Tracker:
    """The grace period: merges each scan with what was listed before (see the module
    docstring). Runs on the loop; `listed` is what the next scan reads."""

    def __init__(
        self, grace_period: float, clock: Callable[[], float], ids_name_nodes: bool = False
    ) -> None:
        """`ids_name_nodes`: a device's ID names its node (`ScanSettings.ids_name_nodes`):
        no device loses a node while it is listed."""
        self._grace = grace_period
        self._clock = clock
        self._ids_name_nodes = ids_name_nodes
        self.listed = Listed()
        self._present: Mapping[str, Device] = {}
        """The devices of the last scan merged."""
        self._gone_since: dict[str, float] = {}
        """Device ID -> when it vanished, while it is listed Unhealthy."""
        self._gone: dict[str, Device] = {}
        """Device ID -> the Unhealthy copy listed while it is gone."""
        self._expiring: deque[tuple[float, str]] = deque()
        """(when it vanished, device ID), in that order (an entry whose device came back or
        vanished again since is skipped when it comes up)."""
        self._lost: dict[str, dict[str, float]] = {}
        """Device ID -> host path of a lost node -> when it vanished."""

    def missing(self) -> Missing:
        """What this tracker lists missing now (a stopped driver's: `carry`)."""
        since = self._gone_since
        gone = {device_id: (device, since[device_id]) for device_id, device in self._gone.items()}
        return Missing(gone, {device_id: dict(lost) for device_id, lost in self._lost.items()})

    def carry(self, missing: Missing) -> None:
        """Before the first merge: list `missing` as missing, each from when it went missing
        (a predecessor's, `drivers.carry`), so its grace period runs on: counted with this
        tracker's `gracePeriod` from then, not begun again, nor ended by the restart."""
        gone = sorted(missing.gone.items(), key=lambda item: item[1][1])
        for device_id, (device, since) in gone:
            self._gone[device_id] = device
            self._gone_since[device_id] = since
            self._expiring.append((since, device_id))
        self._lost = {device_id: dict(lost) for device_id, lost in missing.lost.items()}

    def merge(self, result: ScanResult) -> tuple[Mapping[str, Device], float | None]:
        """`merging` at once (no event loop to yield to)."""
        return to_the_end(self.merging(result, Pace(MERGE_CHUNK)))

    def merging(
        self, result: ScanResult, pace: Pace
    ) -> Steps[tuple[Mapping[str, Device], float | None]]:
        """The list to publish, and when the next grace period ends (None: none running);
        yields when `pace` says. Nothing of the tracker changes before its last step (a
        merge given up on leaves it as it was)."""
        now = self._clock()
        grace = self._grace
        present = result.devices
        places = result.places
        before = self.listed
        gone_since = self._gone_since
        next_expiry: float | None = None
        extra: dict[str, Device] = {}
        lost_now: dict[str, dict[str, float]] = {}
        # Only devices that are not the very object listed before can have lost a node or
        # come back (scanners reuse unchanged devices), plus those losing one already:
        # O(changed) work, after one identity pass unless the scan says what changed.
        listed_before = before.devices.get
        changed = changed_between(self._present, present)
        looked: Collection[str] = present if changed is None else sorted({*changed, *self._lost})
        touched = [i for i in looked if i in present and listed_before(i) is not present[i]]
        back = [i for i in touched if i in gone_since]
        added = sum(1 for i in touched if listed_before(i) is None)
        touched.extend(i for i in self._lost if i in present and listed_before(i) is present[i])
        if not self._lost and added == len(touched):
            touched = []  # (each one new, none losing a node: nothing to look at, a first list)
        for device_id in touched:
            if pace.due():
                yield
            device = present[device_id]
            old = before.devices.get(device_id)
            lost = self._lost.get(device_id)
            if (
                old is not None
                and old is not device
                and not self._ids_name_nodes
                and device_id not in gone_since
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
        # Vanished since the last scan: listed then, not found now (a count tells whether
        # any did; only then a walk of the last scan's devices).
        last = self._present
        vanishing = len(last) - (len(present) - added - len(back))
        vanished = []
        if vanishing > 0 and grace > 0:
            maybe = last if changed is None else sorted(changed)
            vanished = [i for i in maybe if i in last and i not in present]
        copies: dict[str, Device] = {}
        for device_id in vanished:
            if pace.due():
                yield
            old = listed_before(device_id) or last[device_id]
            # Scans only ever produce healthy devices: an Unhealthy one is a copy already.
            copies[device_id] = old if not old.healthy else old.with_health(False)
        # The last step: the tracker changes (O(changed)).
        gone = self._gone
        for device_id in back:
            del gone_since[device_id], gone[device_id]
        gone.update(copies)
        gone_since.update(dict.fromkeys(copies, now))
        self._expiring.extend((now, device_id) for device_id in copies)
        expired: list[str] = []
        ends = self._expire(now, expired)
        if ends is not None:
            next_expiry = ends if next_expiry is None else min(next_expiry, ends)
        # `present` is never changed: copy it only when something must be added or replaced
        # (usually: no copy at all); a copy says what changed since the last list.
        listed: Mapping[str, Device] = present
        if changed is not None and (extra or gone or before.devices is not self._present):
            ids = (*changed, *self._lost, *extra, *expired)
            listed = Derived(before.devices, ids, {**present, **extra, **gone})
        elif extra or gone:
            listed = Derived(None, (), {**present, **extra, **gone})
        self._present = present
        self._lost = lost_now
        self.listed = Listed(listed, places if places is not None else {})
        return listed, next_expiry

    def _expire(self, now: float, expired: list[str]) -> float | None:
        """Drop the vanished devices whose grace period ended (into `expired`); when the
        next one ends."""
        expiring, gone_since, grace = self._expiring, self._gone_since, self._grace
        while expiring:
            since, device_id = expiring[0]
            if gone_since.get(device_id) != since:
                expiring.popleft()  # it came back (or vanished again since)
            elif since + grace <= now:
                expiring.popleft()
                del gone_since[device_id], self._gone[device_id]
                expired.append(device_id)
            else:
                return since + grace
        return None


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
