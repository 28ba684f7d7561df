"""Devices: what a driver reports (`Device`, its nodes and mounts), what the kubelet sees
of them (`Snapshot`: a version of the list, the replicas advertised) and the replica IDs.
The versioned table that makes the snapshots is `device_table.DeviceTable`.
"""

from __future__ import annotations

import bisect
import functools
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from .rules import REPLICA_SEPARATOR as REPLICA_SEPARATOR

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


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
    seen_path: str | None = None
    """Where kdp-host sees the node, when not at `host_path`: a sysfs node below a `devRoot`
    other than `/dev` (hostile9 L1). The ownership index claims and checks it there
    (`seen`); the DeviceSpec hands out `host_path`, the host's spelling."""

    @property
    def seen(self) -> str:
        """The path kdp-host sees the node at (`seen_path`, else `host_path`)."""
        return self.host_path if self.seen_path is None else self.seen_path


@dataclass(frozen=True, slots=True)
class DeviceMount:
    """A mount of a device: a host path at a container path."""

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
    iommu_group: str | None
    """The IOMMU group of a device assigned with its group (bound to vfio-pci): the path of
    its `iommu_group` link, whose directory the ownership index claims (the group, not a
    node: hostile27 F7)."""

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
        iommu_group: str | None = None,
    ) -> None:
        """`nodes` None: one node, `path` on the host and in the container (no DeviceNode
        built: a first scan makes one device per matched path)."""
        node = nodes[0] if nodes is not None and len(nodes) == 1 else None
        compact = nodes is None or (
            node is not None  # (compared without building a DeviceNode)
            and (node.host_path, node.container_path, node.permissions) == (path, path, None)
            and not (node.optional or node.shared or node.seen_path)
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
        set_field(self, "iommu_group", iommu_group)

    @property
    def nodes(self) -> tuple[DeviceNode, ...]:
        if self._nodes is None:
            assert self.path is not None
            return (DeviceNode(self.path, self.path),)
        return self._nodes

    def node_places(self) -> Iterator[tuple[str, str]]:
        """(host path, container path) of each node (builds no DeviceNode for a one-node
        device)."""
        if self._nodes is None:
            assert self.path is not None
            yield self.path, self.path
        else:
            for node in self._nodes:
                yield node.host_path, node.container_path

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
        mine = (self.path, self._nodes, self.mounts, self.sysfs_path, self.iommu_group)
        theirs = (other.path, other._nodes, other.mounts, other.sysfs_path, other.iommu_group)
        return mine == theirs

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
        return Device(device_id, healthy, *fields, s.iommu_group)

    @property
    def device(self) -> Device:
        """A device is its own advertised entry when it is not shared (replicas: 1)."""
        return self

    @property
    def primary_path(self) -> str:
        if self.path is not None:
            return self.path
        return self.nodes[0].host_path if self.nodes else ""

    def checked_at(self) -> dict[str, str]:
        """Each host path of the device (nodes and mounts, as handed out) -> where kdp-host
        sees it, which is where what it reaches is checked (`DeviceNode.seen`)."""
        where = {node.host_path: node.seen for node in self.nodes}
        where.update((mount.host_path, mount.host_path) for mount in self.mounts)
        return where


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
    """One version of a device table: what ListAndWatch sends."""

    version: int
    devices: tuple[Device, ...]
    """Physical devices, sorted by id, with their effective health."""
    advertised: tuple[Advertised, ...]
    """What the kubelet sees: the devices themselves, or their replicas."""
    healthy_count: int
    """How many of `advertised` are healthy: counted by the table as it changes (the
    metrics, NFD and the reporter's log ask at every version)."""

    @functools.cached_property
    def by_advertised_id(self) -> Mapping[str, Advertised]:
        """Built on first use (allocation), not for every snapshot of a large idle list."""
        return {entry.id: entry for entry in self.advertised}

    @functools.cached_property
    def has_numa(self) -> bool:
        """Whether a device carries a NUMA node: one walk per snapshot, at first use."""
        return any(device.numa is not None for device in self.devices)

    @property
    def unhealthy_count(self) -> int:
        return len(self.advertised) - self.healthy_count

    def device(self, device_id: str) -> Device | None:
        """The device of this ID, found by a binary search of `devices` (sorted by ID): what
        asks about a few devices (those pods hold) never walks a long list."""
        devices = self.devices
        at = bisect.bisect_left(devices, device_id, key=_DEVICE_ID)
        return devices[at] if at < len(devices) and devices[at].id == device_id else None


_DEVICE_ID = operator.attrgetter("id")


def replica_ids(device_id: str, replicas: int) -> list[str]:
    if replicas == 1:
        return [device_id]
    return [f"{device_id}{REPLICA_SEPARATOR}{k}" for k in range(replicas)]


def advertises(advertised_id: str, device_id: str) -> bool:
    """Whether an advertised ID is the device or one of its replicas (`<id>::<k>`)."""
    return physical_id(advertised_id) == device_id


def physical_id(advertised_id: str) -> str:
    """The device a kubelet ID names: the ID itself, or for a replica ID (`<id>::<k>`) the
    text before the last separator. One rule for every host and every replica count: no
    device ID contains REPLICA_SEPARATOR (`rules.device_id_problem`), so an ID holds it only
    as a replica's; one may end with `:` (`a:` advertises `a:::0`), and `<k>` holds no `:`,
    so the last separator is the replica's. `fpga0::0` is fpga0's whether this host
    advertises the resource with `replicas: 1` or 2 (a rollout or reload that changed the
    count, another host on the stateDir: hostile20 F6). The inverse of `replica_ids`."""
    return advertised_id.rpartition(REPLICA_SEPARATOR)[0] or advertised_id
