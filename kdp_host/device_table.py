"""The versioned device table that ListAndWatch streams from (`DeviceTable`).

A driver reports the whole device list of its resource (never a delta); health checks and
the driver's failure policy lay health overrides on top. The table folds all of it into
immutable snapshots with a version number, and wakes every waiter when the effective list
(what the kubelet would see) changes. A list made from the last one (`device_changes.Derived`)
costs the table what changed to order and to count (`Snapshot.healthy_count`), not a walk.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Mapping

from .device_changes import carry_count, changed_between, healthy_count, same_entries
from .devices import AdvertisedDevice, Device, Snapshot, replica_ids
from .identity import PathReach

SMALL_CHANGE = 64
"""IDs added or removed at once up to which the table updates its order instead of sorting."""


class DeviceTable:
    """The current device list of one resource, as versioned immutable snapshots."""

    def __init__(self, replicas: int = 1) -> None:
        self._replicas = replicas
        self._reported: Mapping[str, Device] = {}
        self._degraded_reason: str | None = None
        self._failed_checks: set[str] = set()
        self._kept: set[str] = set()  # failed checks kept while the device is gone
        self._held: Callable[[Device], bool] | None = None
        self._withheld = False
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._list_followers: list[Callable[[Mapping[str, Device]], None]] = []
        self.published = asyncio.Event()
        """Set once the driver reported its first list (even an empty one)."""
        self._order: tuple[Mapping[str, Device], list[str]] = (self._reported, [])
        """The reported mapping last ordered, and its IDs sorted."""
        self._replica_entries: dict[str, tuple[AdvertisedDevice, ...]] = {}
        """Device ID -> its replicas' entries in the last snapshot (reused: same device)."""
        self._overridden: dict[str, tuple[Device, Device]] = {}
        """Device ID -> (reported device, its Unhealthy copy) in the last snapshot (reused
        while the reported device is the same object: ListAndWatch writes no entry again)."""
        self._snapshot = self._build(0)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def reported(self) -> Mapping[str, Device]:
        """The driver's last list as reported (id -> device; health overrides aside)."""
        return self._reported

    @property
    def degraded_reason(self) -> str | None:
        return self._degraded_reason

    def add_listener(self, listener: Callable[[Snapshot], None]) -> Callable[[], None]:
        """Call `listener` with every new snapshot, on the loop; returns the call that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def follow_lists(self, follower: Callable[[Mapping[str, Device]], None]) -> None:
        """Call `follower` with every list reported (also one that changes nothing the kubelet
        sees), while the one before it is still held: a stage that follows the lists costs
        what changed (`device_changes.changed_between`), never a walk for a broken chain."""
        self._list_followers.append(follower)

    def publish(
        self,
        devices: Iterable[Device] | Mapping[str, Device],
        reached: Mapping[str, PathReach] | None = None,
    ) -> bool:
        """Replace the whole reported list. Returns True if what the kubelet sees changed.
        (`reached` is for the ownership index in front of a table: a table claims nothing.)
        A mapping (id -> device) is kept as it is, not copied: one dict per resource even
        for very long lists. The caller must not change it afterwards."""
        self.published.set()
        reported: Mapping[str, Device]
        if isinstance(devices, Mapping):
            reported = devices
        else:
            reported = {}
            for device in devices:
                reported.setdefault(device.id, device)
        before = self._reported  # (held until the new list is counted from it: `_build`)
        if reported is before:
            return False  # (the same mapping again: never changed, see above)
        self._reported = reported  # (an equal one too: the next list may be made from it)
        for follower in self._list_followers:
            follower(reported)
        if same_entries(before, reported):  # (held, ordered and counted as `before`: it may go)
            self._order = (reported, self._order[1])
            carry_count(reported)  # (from `before`, while it is held)
            return False
        self._failed_checks = {i for i in self._failed_checks if i in reported or i in self._kept}
        return self._rebuild()

    async def taken(self) -> None:
        """A list is taken as it is published."""

    def set_degraded(self, reason: str | None) -> bool:
        """Report every device Unhealthy (reason given) or lift that (None); keeps the list."""
        if reason == self._degraded_reason:
            return False
        self._degraded_reason = reason
        return self._rebuild()

    def hold_unhealthy(self, predicate: Callable[[Device], bool] | None) -> bool:
        """Report Unhealthy every device `predicate` holds back (a device whose CDI name is not
        in the spec file on disk yet); None lifts it. Call again after what the predicate
        depends on changed: the snapshot is rebuilt with its new answers."""
        self._held = predicate
        return self._rebuild()

    @property
    def withheld(self) -> bool:
        return self._withheld

    def set_withheld(self, withheld: bool) -> bool:
        """Report every device Unhealthy while something every answer of the resource needs
        is not there (`answer_needs`), or lift that; each device keeps its own health
        (`own_healthy`)."""
        if withheld == self._withheld:
            return False
        self._withheld = withheld
        return self._rebuild()

    def own_healthy(self, snapshot: Snapshot, ids: Iterable[str]) -> set[str]:
        """Of `ids`, those healthy of their own in `snapshot` (the table's last): as listed,
        or, while the table is withheld (`set_withheld`), as they would be were it not: a
        device withheld for its resource is not missing for the pod that holds it. Each ID
        is looked up (those pods hold), the list is not walked."""
        if not self._withheld:
            found = map(snapshot.device, ids)
            return {device.id for device in found if device is not None and device.healthy}
        reported = self._reported
        return {
            i
            for i in ids
            if (device := reported.get(i)) is not None and self._own_health(i, device)
        }

    def _own_health(self, device_id: str, device: Device) -> bool:
        """A device's health under every override but the withhold (the one rule)."""
        held = self._held
        return (
            device.healthy
            and self._degraded_reason is None
            and device_id not in self._failed_checks
            and not (held is not None and held(device))
        )

    def set_check_result(self, device_id: str, healthy: bool, *, keep: bool = False) -> bool:
        """A check's verdict. With `keep` (a failed release) the device stays Unhealthy also
        when it leaves the list and comes back, until a passing verdict."""
        if healthy:
            self._kept.discard(device_id)
        elif keep:
            self._kept.add(device_id)
        elif device_id not in self._reported:
            return False
        if healthy == (device_id not in self._failed_checks):
            return False
        if healthy:
            self._failed_checks.discard(device_id)
        else:
            self._failed_checks.add(device_id)
        return self._rebuild()

    async def wait_newer(self, version: int) -> Snapshot:
        """The first snapshot newer than `version` (a waiter listens while it waits)."""
        newer = asyncio.Event()
        stop = self.add_listener(lambda _: newer.set())
        try:
            while self._snapshot.version <= version:
                await newer.wait()
        finally:
            stop()
        return self._snapshot

    def _rebuild(self) -> bool:
        snapshot = self._build(self._snapshot.version + 1)
        if snapshot.advertised == self._snapshot.advertised and (
            snapshot.devices == self._snapshot.devices
        ):
            return False
        self._snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)
        return True

    def _sorted_ids(self) -> list[str]:
        """The reported IDs in order: after a change of a few devices, the last order with
        those inserted or removed (a hot-plug costs O(changed) here, not a sort; nor a walk
        of the lists where the new one says what changed: `changed_between`)."""
        reported = self._reported
        before, order = self._order
        if before is reported:
            return order
        changed = changed_between(before, reported)
        if changed is not None:
            added = {i for i in changed if i in reported and i not in before}
            removed = {i for i in changed if i in before and i not in reported}
        else:
            added, removed = reported.keys() - before.keys(), before.keys() - reported.keys()
        if added or removed:
            if len(added) + len(removed) > SMALL_CHANGE:
                order = sorted(reported)
            else:
                order = list(order)
                for device_id in removed:
                    del order[bisect.bisect_left(order, device_id)]
                for device_id in added:
                    bisect.insort(order, device_id)
        self._order = (reported, order)
        return order

    def _build(self, version: int) -> Snapshot:
        reported = self._reported
        order = self._sorted_ids()
        overridden = self._degraded_reason is not None or self._failed_checks
        if not overridden and self._held is None and not self._withheld:
            devices = list(map(reported.__getitem__, order))  # every device as reported
            count = healthy_count(reported)  # (O(changed) from the last list: Derived)
        else:
            devices, count = [], 0
            copies, self._overridden = self._overridden, {}
            withheld, own_health = self._withheld, self._own_health
            for device_id in order:
                device = reported[device_id]
                healthy = not withheld and own_health(device_id, device)
                if healthy != device.healthy:
                    known = copies.get(device_id)
                    copy = known[1] if known and known[0] is device else device.with_health(False)
                    self._overridden[device_id] = (device, copy)
                    device = copy
                count += device.healthy
                devices.append(device)
        physical = tuple(devices)
        if self._replicas == 1:
            return Snapshot(version, physical, physical, count)
        replicas: list[AdvertisedDevice] = []
        made = self._replica_entries
        self._replica_entries = {}
        for device in physical:
            entries = made.get(device.id)
            if entries is None or entries[0].device is not device:
                entries = tuple(
                    AdvertisedDevice(rid, device, device.healthy)
                    for rid in replica_ids(device.id, self._replicas)
                )
            self._replica_entries[device.id] = entries
            replicas.extend(entries)
        return Snapshot(version, physical, tuple(replicas), count * self._replicas)
