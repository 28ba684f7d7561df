"""The host paths a device passes (`host_paths`: its nodes where kdp-host sees them, its mount
sources; those handed out read-only only; with its sysfs directory, what its claims are
resolved from), and which devices of a resource's admitted list pass a host path.

The watcher reports a changed path; the index must forget the claims of the devices that
pass it (`ownership_watching.Watching._recheck`). A walk of the list for them costs every
device of the resource per report: a hot-plug among 10,000 devices, or 10,000 reports while
every device comes back, would stall the event loop. `PathIndex` answers by lookup instead:
it is built for a resource at its first recheck and then kept with each admission from the
devices that admission found changed (`PathIndex.follow`), so a change costs what it touches.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .devices import Device
from .ownership_claims import read_only_of
from .turns import Pace


def host_paths(device: Device) -> tuple[str, ...]:
    """Every host path a device puts into a container: its nodes (where kdp-host sees them:
    `DeviceNode.seen`), then its mount sources."""
    path = device.path
    if not device.mounts and path is not None and device.has_only_node(path, path):
        return (path,)
    return (*(n.seen for n in device.nodes), *(m.host_path for m in device.mounts))


def read_only_paths(device: Device) -> frozenset[str]:
    """The host paths a device hands out read-only only (a mount with `readOnly`, not also
    a node or a writable mount): a place that changes what kdp-host runs is refused handed
    writable only (`config.handed`, hostile11 K7)."""
    if not device.mounts:
        return frozenset()
    mounts = ((m.host_path, m.read_only) for m in device.mounts)
    return read_only_of((n.seen for n in device.nodes), mounts)


def claimed_paths(device: Device) -> tuple[str, ...]:
    """Every path a device's claims are resolved from: its host paths, then its sysfs
    directory and its IOMMU group, if any."""
    paths = host_paths(device)
    if device.sysfs_path is None:
        return paths
    group = device.iommu_group
    return (*paths, device.sysfs_path) if group is None else (*paths, device.sysfs_path, group)


Ids = str | tuple[str, ...]
"""The device passing a path, or the devices (rare: a path two devices of a list pass)."""


@dataclass
class PathIndex:
    """Host path (as the device gives it) -> the devices of one list that pass it."""

    of: dict[str, Ids] = field(default_factory=dict)

    @classmethod
    def of_devices(cls, devices: Mapping[str, Device]) -> PathIndex:
        index = cls()
        for device_id, device in devices.items():
            index._add(device_id, device)
        return index

    def follow(
        self,
        before: Mapping[str, Device],
        after: Mapping[str, Device],
        ids: Iterable[str] | None,
        pace: Pace,
    ) -> Generator[None, None, None]:
        """The list went from `before` to `after`: `ids` (at least) changed (None: any, a walk
        of both lists), yielding when `pace` says (a device at a time, as admissions do)."""
        if ids is None:
            ids = itertools.chain(after, (d for d in before if d not in after))
        for device_id in ids:
            if pace.due():
                yield
            old, new = before.get(device_id), after.get(device_id)
            if old is new:
                continue
            if old is not None:
                self._remove(device_id, old)
            if new is not None:
                self._add(device_id, new)

    def through(self, directory: str, paths: set[str] | None) -> Iterator[str]:
        """The devices passing one of `paths` (None: any path in `directory`, a walk of the
        index: a watcher's overflow, the mount table changed)."""
        if paths is not None:
            found: Iterable[Ids | None] = map(self.of.get, paths)
        else:
            found = (ids for path, ids in self.of.items() if os.path.dirname(path) == directory)
        for ids in found:
            if ids is None:
                continue
            if isinstance(ids, str):
                yield ids
            else:
                yield from ids

    def _add(self, device_id: str, device: Device) -> None:
        of = self.of
        for path in host_paths(device):
            ids = of.get(path)
            if ids is None:
                of[path] = device_id
            elif isinstance(ids, str):
                if ids != device_id:
                    of[path] = (ids, device_id)
            elif device_id not in ids:
                of[path] = (*ids, device_id)

    def _remove(self, device_id: str, device: Device) -> None:
        of = self.of
        for path in host_paths(device):
            ids = of.get(path)
            if ids == device_id:
                del of[path]
            elif isinstance(ids, tuple) and device_id in ids:
                rest = tuple(i for i in ids if i != device_id)
                of[path] = rest[0] if len(rest) == 1 else rest
