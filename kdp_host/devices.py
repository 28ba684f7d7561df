"""Devices and the versioned device table that ListAndWatch streams from.

A driver reports the whole device list of its resource (never a delta); health checks and
the driver's failure policy lay health overrides on top. The table folds all of it into
immutable snapshots with a version number, and wakes every waiter when the effective list
(what the kubelet would see) changes.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from .identity import PathReach

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
REPLICA_SEPARATOR = "::"
SMALL_CHANGE = 64
"""IDs added or removed at once up to which the table updates its order instead of sorting."""


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """One device node passed into the container: a DeviceSpec.

    A device may be made of several nodes (a GPU's card and render nodes, a USB serial
    adapter's tty and its /dev/bus/usb node); Allocate passes every node of every device.
    """

    host_path: str
    container_path: str
    permissions: str | None = None
    """cgroup permissions (`r`, `w`, `m`) of this node; None: the resource's
    `allocate.permissions`."""
    optional: bool = False
    """A node that may be missing without making its device Unhealthy. Drivers list a
    missing optional node not at all, so Allocate never passes a path that does not exist."""
    shared: bool = False
    """A node every device of the driver passes (a control node like `/dev/vfio/vfio`), not
    a device of its own: claimed shared in the host's ownership index (`ownership.py`)."""


@dataclass(frozen=True, slots=True)
class DeviceMount:
    host_path: str
    container_path: str
    read_only: bool = True
    shared: bool = False
    """Mounted for every device of the driver (as `DeviceNode.shared`)."""


_NO_ENTRIES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, init=False)
class Device:
    """One physical device as its driver found it.

    A device whose only node is its own `path`, the same inside the container (most glob
    devices), keeps no DeviceNode: `nodes` derives it on use (~10 MB less for 100,000
    devices); the constructor takes and `nodes` returns the same thing either way."""

    id: str
    healthy: bool
    _nodes: tuple[DeviceNode, ...] | None
    """None: one node, `path` on the host and in the container."""
    numa: int | None
    env: Mapping[str, str]
    mounts: tuple[DeviceMount, ...]
    annotations: Mapping[str, str]
    path: str | None
    """Where the driver found it (the matched path of a glob), for `{path}` in health checks."""
    sysfs_path: str | None
    """A sysfs device's directory (real path): the ownership index claims the device itself."""

    def __init__(
        self,
        id: str,
        healthy: bool = True,
        nodes: tuple[DeviceNode, ...] | None = (),
        numa: int | None = None,
        env: Mapping[str, str] = _NO_ENTRIES,
        mounts: tuple[DeviceMount, ...] = (),
        annotations: Mapping[str, str] = _NO_ENTRIES,
        path: str | None = None,
        sysfs_path: str | None = None,
    ) -> None:
        """`nodes` None: one node, `path` on the host and in the container (no DeviceNode
        built: a first scan makes one device per matched path)."""
        node = nodes[0] if nodes is not None and len(nodes) == 1 else None
        compact = nodes is None or (
            node is not None  # (compared without building a DeviceNode)
            and (node.host_path, node.container_path, node.permissions) == (path, path, None)
            and not (node.optional or node.shared)
        )
        set_field = object.__setattr__
        set_field(self, "id", id)
        set_field(self, "healthy", healthy)
        set_field(self, "_nodes", None if compact else nodes)
        set_field(self, "numa", numa)
        set_field(self, "env", env)
        set_field(self, "mounts", mounts)
        set_field(self, "annotations", annotations)
        set_field(self, "path", path)
        set_field(self, "sysfs_path", sysfs_path)

    @property
    def nodes(self) -> tuple[DeviceNode, ...]:
        if self._nodes is None:
            assert self.path is not None
            return (DeviceNode(self.path, self.path),)
        return self._nodes

    def any_node_path_contains(self, text: str) -> bool:
        """True if a node's host or container path contains `text` (cheap: builds no
        DeviceNode for a one-node device)."""
        if self._nodes is None:
            return self.path is not None and text in self.path
        return any(text in n.host_path or text in n.container_path for n in self._nodes)

    def has_only_node(self, host_path: str, container_path: str) -> bool:
        """True if the device has exactly this one node (cheap: builds no DeviceNode)."""
        if self._nodes is None:
            return host_path == container_path == self.path
        return len(self._nodes) == 1 and self._nodes[0] == DeviceNode(host_path, container_path)

    def same_places(self, other: Device) -> bool:
        """Whether `other` passes the same nodes and mounts (health, env or NUMA aside)."""
        mine = (self.path, self._nodes, self.mounts, self.sysfs_path)
        return mine == (other.path, other._nodes, other.mounts, other.sysfs_path)

    def with_health(self, healthy: bool) -> Device:
        return self._copy(self.id, healthy)

    def with_id(self, device_id: str, known: Device | None = None) -> Device:
        """The same device under another ID (the kubelet's); `known` if it is that already."""
        s, k = self, known
        if k is None or k.id != device_id or not k.same_places(s):
            return self._copy(device_id, self.healthy)
        rest = (k.healthy, k.numa, k.env, k.annotations)
        return k if rest == (s.healthy, s.numa, s.env, s.annotations) else s.with_id(device_id)

    def _copy(self, device_id: str, healthy: bool) -> Device:
        s = self
        fields = (s._nodes, s.numa, s.env, s.mounts, s.annotations, s.path, s.sysfs_path)
        return Device(device_id, healthy, *fields)

    @property
    def device(self) -> Device:
        """A device is its own advertised entry when it is not shared (replicas: 1)."""
        return self

    @property
    def primary_path(self) -> str:
        if self.path is not None:
            return self.path
        return self.nodes[0].host_path if self.nodes else ""


@dataclass(frozen=True, slots=True)
class AdvertisedDevice:
    """One entry of the list the kubelet sees: a device, or one replica of a shared device."""

    id: str
    device: Device
    healthy: bool


class Advertised(Protocol):
    """An entry of the advertised list: a Device itself, or an AdvertisedDevice replica."""

    @property
    def id(self) -> str: ...
    @property
    def device(self) -> Device: ...
    @property
    def healthy(self) -> bool: ...


@dataclass(frozen=True)
class Snapshot:
    version: int
    devices: tuple[Device, ...]
    """Physical devices, sorted by id, with their effective health."""
    advertised: tuple[Advertised, ...]
    """What the kubelet sees: the devices themselves, or their replicas."""

    @functools.cached_property
    def by_advertised_id(self) -> Mapping[str, Advertised]:
        """Built on first use (allocation), not for every snapshot of a large idle list."""
        return {entry.id: entry for entry in self.advertised}

    @functools.cached_property
    def healthy_count(self) -> int:
        """Counted once per snapshot (the metrics, NFD and the reporter's log ask)."""
        return sum(1 for entry in self.advertised if entry.healthy)

    @property
    def unhealthy_count(self) -> int:
        return len(self.advertised) - self.healthy_count


def replica_ids(device_id: str, replicas: int) -> list[str]:
    if replicas == 1:
        return [device_id]
    return [f"{device_id}{REPLICA_SEPARATOR}{k}" for k in range(replicas)]


def advertises(advertised_id: str, device_id: str) -> bool:
    """Whether an advertised ID is the device or one of its replicas (`<id>::<k>`)."""
    return advertised_id == device_id or (
        advertised_id.startswith(device_id)
        and advertised_id[len(device_id) :].startswith(REPLICA_SEPARATOR)
    )


def physical_id(advertised_id: str, replicas: int) -> str:
    """The device a replica ID (`<id>::<k>`) belongs to: the inverse of `replica_ids`."""
    if replicas == 1:
        return advertised_id
    return advertised_id.rpartition(REPLICA_SEPARATOR)[0] or advertised_id


class DeviceTable:
    """The current device list of one resource, as versioned immutable snapshots."""

    def __init__(self, replicas: int = 1) -> None:
        self._replicas = replicas
        self._reported: Mapping[str, Device] = {}
        self._degraded_reason: str | None = None
        self._failed_checks: set[str] = set()
        self._kept: set[str] = set()  # failed checks kept while the device is gone
        self._held: Callable[[Device], bool] | None = None
        self._listeners: list[Callable[[Snapshot], None]] = []
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
    def degraded_reason(self) -> str | None:
        return self._degraded_reason

    def add_listener(self, listener: Callable[[Snapshot], None]) -> Callable[[], None]:
        """Call `listener` with every new snapshot, on the loop; returns the call that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

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
        if reported is self._reported or reported == self._reported:
            return False  # (the same mapping again: never changed, see above)
        self._reported = reported
        self._failed_checks = {i for i in self._failed_checks if i in reported or i in self._kept}
        return self._rebuild()

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
        those inserted or removed (a hot-plug costs O(changed) here, not a sort)."""
        reported = self._reported
        before, order = self._order
        if before is reported:
            return order
        if before.keys() != reported.keys():
            added = reported.keys() - before.keys()
            removed = before.keys() - reported.keys()
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
        held = self._held
        if self._degraded_reason is None and not self._failed_checks and held is None:
            devices = list(map(reported.__getitem__, order))  # every device as reported
        else:
            devices = []
            copies, self._overridden = self._overridden, {}
            for device_id in order:
                device = reported[device_id]
                healthy = (
                    device.healthy
                    and self._degraded_reason is None
                    and device_id not in self._failed_checks
                    and not (held is not None and held(device))
                )
                if healthy != device.healthy:
                    known = copies.get(device_id)
                    copy = known[1] if known and known[0] is device else device.with_health(False)
                    self._overridden[device_id] = (device, copy)
                    device = copy
                devices.append(device)
        physical = tuple(devices)
        if self._replicas == 1:
            return Snapshot(version=version, devices=physical, advertised=physical)
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
        return Snapshot(version=version, devices=physical, advertised=tuple(replicas))
