"""Reading devices out of a sysfs tree (plain file reads, no library, no udev database).

Everything here is synchronous file access meant to run off the event loop: the driver and
`kdp-host discover` call `SysfsReader.scan` through the host's offload (`files.Offload`),
with a timeout. Sysfs and the dev root are constructor arguments, so tests and containers
(which often mount the host's /sys and /dev elsewhere) point them anywhere.

Layout relied on, as the kernel makes it:
- `<sysfs>/bus/<bus>/devices/<name>` and `<sysfs>/class/<class>/<name>` are symlinks into
  `<sysfs>/devices/...`, the one real tree;
- a device's directory holds its attribute files, `driver` and `subsystem` links, and
  below it the devices the kernel created for it (USB interfaces, tty, drm, block...);
- every directory whose `uevent` holds `DEVNAME=` stands for a node the kernel created at
  `/dev/<DEVNAME>` (devtmpfs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..rules import name_text_problem
from .device_read import DeviceReads, ScanState
from .index import ReadIndex
from .model import PCI, USB, SysfsDevice, SysfsScan
from .nodes import DevNodes, NodeLooks
from .placing import may_be_device, place_nodes, source_names

MAX_UNPLACED = 256
"""Nodes no listed device has that an update places one by one at most; more: a full read."""


class SysfsReader:
    """Reads devices; not thread-safe: one scan at a time per reader.

    Attribute values of USB and PCI devices are kept from one read to the next (a scan or
    an update) while the device is provably the one read (`device_read.DeviceReads`: its
    directory, `uevent`, interfaces and nodes the same), so a rescan lists each unchanged
    device's directory and reads its `uevent`, plus its nodes, and so does an update that
    reads a device again (its node's second event).
    """

    def __init__(self, sysfs_root: str = "/sys", dev_root: str = "/dev") -> None:
        self.sysfs_root = os.path.normpath(sysfs_root)
        self.dev_root = os.path.normpath(dev_root)
        self.nodes = DevNodes(self.sysfs_root, self.dev_root)
        """Where the devices' nodes are (`nodes.py`)."""
        self._devices = DeviceReads(self.sysfs_root, self.nodes)
        self._index: ReadIndex | None = None
        """Of the last scan this reader made or updated."""
        self._not_devices: dict[str, set[str]] = {}
        """Source -> names listed there that are no device (USB interfaces), since the last
        full scan."""

    def scan(
        self,
        buses: Iterable[str] = (USB, PCI),
        classes: Iterable[str] = (),
        extra_attributes: Iterable[str] = (),
        looks: NodeLooks | None = None,
    ) -> SysfsScan:
        """Every device of the given buses and classes, with attributes and nodes."""
        self.nodes.looks = looks
        state = ScanState()
        self._devices.begin()
        self._not_devices = {}
        extra = tuple(dict.fromkeys(extra_attributes))
        devices: list[SysfsDevice] = []
        entries, problems, _ = self._entries(buses, classes, state)
        for source, name, link in entries:
            device = self.read_device(source, name, link, extra, state)
            if device is not None:
                devices.append(device)
        self._devices.end_full()
        watch = {self.dev_root, *self.nodes.dev_directories()}
        for device in devices:
            watch.update(self.nodes.node_dirs(device))
        result = SysfsScan(tuple(devices), tuple(problems), frozenset(watch), tuple(state.skipped))
        self._index = ReadIndex.of(result)
        return result

    def update(
        self,
        previous: SysfsScan,
        changed: Iterable[str],
        buses: Iterable[str] = (USB, PCI),
        classes: Iterable[str] = (),
        extra_attributes: Iterable[str] = (),
        looks: NodeLooks | None = None,
    ) -> SysfsScan:
        """`previous` brought up to date after the nodes `changed` (names relative to the
        dev root) appeared, vanished or changed: O(changed), not O(devices). `looks`: when
        each node was looked at (in `scan` too), of those whose every holder was read again.

        A node of a listed device: that device is read again (it may have gone). A node no
        listed device has: the bus and class lists are read for new devices (a hot-plug),
        and a node of none of them is placed through its device number
        (`<sysfs>/dev/char|block/MAJ:MIN`, else the class entry of its name) and read again
        with every listed device whose nodes it is among (a USB interface's late tty or
        input node). Unchanged devices are the same objects as in `previous`, as is a device
        read again and found the same (not in the result's `changed`: a node's second event, a
        create then its permissions, changes nothing downstream). What cannot be placed waits
        for the next full scan (the caller's safety net)."""
        index = self._index if self._index is not None and self._index.scan is previous else None
        if index is None:
            index = ReadIndex.of(previous)
        self.nodes.looks = looks
        state = ScanState()
        self._devices.begin()
        extra = tuple(dict.fromkeys(extra_attributes))
        watch = set(previous.watch_dirs)
        dirty: set[str] = set()
        unplaced: list[str] = []
        for devname in self.nodes.changed_names(changed, watch):
            owners = index.by_node.get(devname)
            if owners:
                dirty.update(owners)
            else:
                unplaced.append(devname)
        if len(unplaced) > MAX_UNPLACED:
            # A flood of nodes no listed device has: one full read costs less than placing
            # each (and bounds what a burst of unrelated nodes can cost).
            return self.scan(buses, classes, extra_attributes, looks)
        fresh: list[SysfsDevice] = []
        added: list[SysfsDevice] = []
        listed: dict[str, set[str]] | None = None
        if unplaced:
            sources = source_names(buses, classes)
            entries, reached, unplaceable = place_nodes(
                self.nodes, self._entry_link, unplaced, sources, index
            )
            dirty.update(reached)
            for source, name, link in entries:
                device = self.read_device(source, name, link, extra, state)
                if device is not None:
                    added.append(device)
            new_nodes = {node.devname for device in added for node in device.nodes}
            if any(devname not in new_nodes for devname in unplaceable):
                # A node that is there, cannot be placed (no device number sysfs knows, no
                # class entry of its name) and is no new device's: look in the lists.
                read = {(source, name) for source, name, _ in entries}
                entries, _, listed = self._entries(buses, classes, state, index.known)
                for source, name, link in entries:
                    if (source, name) not in read:
                        device = self.read_device(source, name, link, extra, state)
                        if device is not None:
                            added.append(device)
        dropped: list[SysfsDevice] = []
        if listed is not None:
            for source, names in index.known.items():
                gone = names - listed.get(source, set())
                dropped.extend(index.by_entry[(source, name)] for name in gone)
        replaced: dict[str, SysfsDevice | None] = {device.path: None for device in dropped}
        for path in dirty:
            device = index.by_path[path]
            if path in replaced:
                continue
            link = self._entry_link(device.source, device.name)
            found = self.read_device(device.source, device.name, link, extra, state)
            if found == device:
                continue  # read again, the same: no change (the same object goes on)
            dropped.append(device)
            if found is None or found.path != path:
                replaced[path] = None  # gone
                if found is not None:
                    added.append(found)  # another device under its name
            else:
                replaced[path] = found
                fresh.append(found)
        fresh.extend(added)
        vanished = sum(device is None for device in replaced.values())
        # The index's `by_path` is in the devices' order (new ones last): when it holds
        # exactly them before and after, it gives the new tuple at C speed.
        whole = len(index.by_path) == len(previous.devices)
        if looks is not None:
            looks.keep_read(index.by_node, dirty | replaced.keys())
            looks.look_too(path for path, device in replaced.items() if device is None)
        index.move(dropped, fresh)
        if whole and len(index.by_path) == len(previous.devices) - vanished + len(added):
            kept = tuple(index.by_path.values())
        else:
            devices = [replaced.get(device.path, device) for device in previous.devices]
            kept = tuple(filter(None, [*devices, *added]))  # (no device is falsy)
        for device in fresh:
            watch.update(self.nodes.node_dirs(device))
        self._devices.end_update()
        delta: dict[str, SysfsDevice | None] = {device.path: None for device in dropped}
        delta.update((device.path, device) for device in fresh)
        result = SysfsScan(
            kept,
            previous.problems,
            frozenset(watch),
            tuple(dict.fromkeys((*previous.skipped, *state.skipped))),
            delta,
        )
        index.scan = result
        self._index = index
        return result

    def _entry_link(self, source: str, name: str) -> str:
        relative = source if source.startswith("class/") else f"bus/{source}/devices"
        return os.path.join(self.sysfs_root, relative, name)

    def _entries(
        self,
        buses: Iterable[str],
        classes: Iterable[str],
        state: ScanState,
        known: dict[str, set[str]] | None = None,
    ) -> tuple[list[tuple[str, str, str]], list[str], dict[str, set[str]]]:
        """(source, kernel name, entry) of every device listed under the buses and classes
        (with `known`: of those not in it), the sources that could not be listed, and the
        names listed of each source."""
        sources = source_names(buses, classes)
        entries: list[tuple[str, str, str]] = []
        problems: list[str] = []
        listed: dict[str, set[str]] = {}
        for source in sources:
            directory = os.path.dirname(self._entry_link(source, "x"))
            try:
                names = os.listdir(directory)
            except OSError as exc:
                problems.append(f"{source}: cannot list {directory}: {exc.strerror or exc}")
                continue
            listed[source] = set(names)
            ignored = self._not_devices.setdefault(source, set())
            if known is not None:
                names = list(listed[source] - known.get(source, set()) - ignored)
            for name in sorted(names):
                if not may_be_device(source, name):
                    ignored.add(name)
                    continue  # an interface (`1-1:1.0`), listed under its device
                if (why := name_text_problem(name)) is not None:
                    state.skipped.append((os.path.join(directory, name), f"device name {why}"))
                    continue
                entries.append((source, name, os.path.join(directory, name)))
        return entries, problems, listed

    def read_device(
        self,
        source: str,
        name: str,
        link: str,
        extra: tuple[str, ...] = (),
        state: ScanState | None = None,
    ) -> SysfsDevice | None:
        """The device behind `link` (a bus or class entry), or None if it vanished."""
        return self._devices.read(source, name, link, extra, state)
