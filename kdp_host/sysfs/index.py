"""Where the devices and nodes of one sysfs read are, for updating the read in place when
nodes change (`SysfsReader.update`): O(changed), not O(devices)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .model import SysfsDevice, SysfsScan


@dataclass
class ReadIndex:
    """Where a scan's devices and nodes are, for updating it (see SysfsReader.update)."""

    scan: SysfsScan
    by_path: dict[str, SysfsDevice]
    """In the order of the scan's devices (an update keeps a device read again in its
    place and adds new ones at the end, as `SysfsReader.update` orders them)."""
    by_node: dict[str, set[str]]
    """Node name (relative to the dev root) -> the directories of the devices holding it."""
    known: dict[str, set[str]]
    """Source -> the kernel names of the scan's devices from it."""
    by_entry: dict[tuple[str, str], SysfsDevice]

    @classmethod
    def of(cls, scan: SysfsScan) -> ReadIndex:
        index = cls(scan, {}, {}, {}, {})
        for device in scan.devices:
            index._add(device)
        return index

    def _add(self, device: SysfsDevice) -> None:
        self.by_path[device.path] = device
        self.known.setdefault(device.source, set()).add(device.name)
        self.by_entry[(device.source, device.name)] = device
        for node in device.nodes:
            self.by_node.setdefault(node.devname, set()).add(device.path)

    def _remove(self, device: SysfsDevice, staying: bool = False) -> None:
        """`device` leaves the index (`staying`: a new read of its directory takes its
        place, keeping its position in `by_path`)."""
        if self.by_path.get(device.path) is device and not staying:
            del self.by_path[device.path]
        if self.by_entry.get((device.source, device.name)) is device:
            del self.by_entry[(device.source, device.name)]
            self.known.get(device.source, set()).discard(device.name)
        for node in device.nodes:
            holders = self.by_node.get(node.devname)
            if holders is not None:
                holders.discard(device.path)
                if not holders:
                    del self.by_node[node.devname]

    def move(self, dropped: Iterable[SysfsDevice], fresh: Iterable[SysfsDevice]) -> None:
        """Drop the devices `dropped` and add `fresh` (O(changed)); a fresh device read in
        the directory of a dropped one takes its place in `by_path`."""
        fresh = list(fresh)
        staying = {device.path for device in fresh}
        for device in dropped:
            self._remove(device, device.path in staying)
        for device in fresh:
            self._add(device)
