"""The `sysfs` driver: devices described the way operators know them (USB vendor, product
and serial; PCI IDs, class and driver; any bus or class by attribute), each passed to the
container with every device node the kernel created for it.

Discovery reads sysfs (see kdp_host/sysfs/): `SysfsScanner` is one look, run by the shared
scan loop (`scanning.py`). Hot-plug is seen through inotify on the dev root's directories
that hold the devices' nodes (devtmpfs creates and removes them as the kernel adds and
removes devices), with a periodic full rescan as a safety net. A device that leaves sysfs,
or loses a node, is reported Unhealthy at once and dropped (or forgotten its lost node)
after the grace period (the loop's `Tracker`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..config import (
    NodeSelectConfig,
    PciMatchConfig,
    SysfsDriverConfig,
    SysfsMatchConfig,
    UsbMatchConfig,
    render_template,
)
from ..devices import Device, DeviceNode
from ..logs import quote_text
from ..sysfs import PCI, USB, NodeInfo, SysfsDevice, SysfsReader, SysfsScan
from ..sysfs.match import class_matches, hex_matches, text_matches
from ..sysfs.model import VFIO_CONTAINER_NODE, VFIO_PCI_DRIVER, device_id
from ..sysfs.reader import enclosing_device
from .base import DriverDeps, Skipped
from .scanning import DirWatch, Listed, Notice, ScanLoop, ScanResult, ScanSettings

FULL_RESCAN_EVERY = 10
"""A safety-net rescan is skipped while no watched node directory changed, but at least
every this many intervals one runs (a device without nodes changes nothing in /dev)."""


# --------------------------------------------------------------------------- matching


def usb_matches(match: UsbMatchConfig, device: SysfsDevice) -> bool:
    attrs = device.attributes
    checks = (
        match.vendor is None or hex_matches(match.vendor, device.vendor),
        match.product is None or hex_matches(match.product, device.product),
        match.serial is None or text_matches(match.serial, device.serial),
        match.manufacturer is None or text_matches(match.manufacturer, attrs.get("manufacturer")),
        match.product_name is None or text_matches(match.product_name, attrs.get("product")),
        match.interface_class is None
        or any(hex_matches(match.interface_class, i.interface_class, 2) for i in device.interfaces),
    )
    return all(checks)


def pci_matches(match: PciMatchConfig, device: SysfsDevice) -> bool:
    attrs = device.attributes
    checks = (
        match.vendor is None or hex_matches(match.vendor, device.vendor),
        match.device is None or hex_matches(match.device, device.product),
        match.subsystem_vendor is None
        or hex_matches(match.subsystem_vendor, attrs.get("subsystem_vendor")),
        match.subsystem_device is None
        or hex_matches(match.subsystem_device, attrs.get("subsystem_device")),
        match.pci_class is None or class_matches(match.pci_class, attrs.get("class")),
        match.driver is None or text_matches(match.driver, device.driver),
    )
    return all(checks)


def generic_matches(match: SysfsMatchConfig, device: SysfsDevice) -> bool:
    source = f"class/{match.device_class}" if match.device_class else match.bus
    if device.source != source:
        return False
    if match.driver is not None and not text_matches(match.driver, device.driver):
        return False
    if match.name is not None and not text_matches(match.name, device.name):
        return False
    return all(
        text_matches(pattern, device.attributes.get(name))
        for name, pattern in match.attributes.items()
    )


def matches(config: SysfsDriverConfig, device: SysfsDevice) -> bool:
    """Whether a device of the scan belongs to the resource (any entry of any section)."""
    if device.source == USB and any(usb_matches(m, device) for m in config.usb):
        return True
    if device.source == PCI and any(pci_matches(m, device) for m in config.pci):
        return True
    return any(generic_matches(m, device) for m in config.devices)


def scan_sources(config: SysfsDriverConfig) -> tuple[list[str], list[str], list[str]]:
    """The buses, classes and extra attribute files a resource's matches need read."""
    buses: list[str] = []
    classes: list[str] = []
    extra: list[str] = []
    if config.usb:
        buses.append(USB)
    if config.pci:
        buses.append(PCI)
    for match in config.devices:
        if match.bus:
            buses.append(match.bus)
        if match.device_class:
            classes.append(match.device_class)
        extra.extend(match.attributes)
    return list(dict.fromkeys(buses)), list(dict.fromkeys(classes)), list(dict.fromkeys(extra))


def select_nodes(selection: NodeSelectConfig | None, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """The nodes passed to the container: all, or those of the given subsystems and names."""
    chosen = []
    for node in nodes:
        if selection is not None:
            if selection.subsystems and node.subsystem not in selection.subsystems:
                continue
            if selection.names and not any(
                fnmatch.fnmatchcase(node.devname, pattern) for pattern in selection.names
            ):
                continue
        chosen.append(node)
    return chosen


# --------------------------------------------------------------------------- devices


VFIO_GROUP_PEER_DRIVERS = frozenset({VFIO_PCI_DRIVER, "pci-stub", "pcieport"})
"""Drivers a function may be bound to for its IOMMU group to be assignable (the kernel's
rule for opening `/dev/vfio/<group>`; a function with no driver counts too)."""


def advertised_devices(
    config: SysfsDriverConfig,
    devices: Sequence[SysfsDevice],
    is_match: Callable[[SysfsDevice], bool] | None = None,
) -> tuple[list[SysfsDevice], tuple[Skipped, ...]]:
    """The devices a resource advertises out of one scan, and what it refuses.

    - Each physical device once: a matched device inside another matched one (a drm card
      or a partition below a matched device) is part of the outermost, whose nodes hold
      its nodes already; a bus device of its own (a GPU behind a matched PCIe bridge, a
      USB device behind a matched hub) never is. Decided over the whole set.
    - Each IOMMU group once: functions bound to vfio-pci are assigned by group (they all
      pass the same `/dev/vfio/<group>`), so the matched functions of a group are one
      device, named by the first of them, with the nodes of every vfio-pci function of
      the group. A group with a function bound to a host driver cannot be assigned: its
      matched functions are refused (`incomplete_group`).

    `is_match` answers `matches(config, device)` (a caller may remember the answers).
    """
    if is_match is None:
        is_match = functools.partial(matches, config)
    found = {device.path: device for device in devices if is_match(device)}
    outer: list[SysfsDevice] = []
    above: list[str] = []
    """The matched directories above the current one (sorted by `path + "/"`, a directory's
    subtree directly follows it)."""
    for path in sorted(found, key=lambda path: path + "/"):
        while above and not path.startswith(above[-1] + "/"):
            above.pop()
        if not above or enclosing_device(path, found) is None:
            outer.append(found[path])
        above.append(path)
    kept: list[SysfsDevice] = []
    groups: dict[str, list[SysfsDevice]] = {}
    for device in outer:
        if device.source == PCI and device.driver == VFIO_PCI_DRIVER and device.iommu_group:
            groups.setdefault(device.iommu_group, []).append(device)
        else:
            kept.append(device)
    skipped: list[Skipped] = []
    for group, matched_functions in groups.items():
        functions = sorted(
            (d for d in devices if d.source == PCI and d.iommu_group == group),
            key=lambda d: d.name,
        )
        held = [d for d in functions if d.driver and d.driver not in VFIO_GROUP_PEER_DRIVERS]
        if held:
            holders = ", ".join(f"{quote_text(d.name)} ({quote_text(d.driver)})" for d in held)
            skipped.extend(
                Skipped(
                    "incomplete_group",
                    quote_text(device.path),
                    f"IOMMU group {quote_text(group)} is assigned whole, and its {holders} "
                    "is bound to a host driver: bind every function of the group to vfio-pci",
                )
                for device in matched_functions
            )
            continue
        first = min(matched_functions, key=lambda d: d.name)
        nodes = dict.fromkeys(
            node
            for function in (first, *functions)
            if function.driver == VFIO_PCI_DRIVER
            for node in function.nodes
        )
        kept.append(dataclasses.replace(first, nodes=tuple(nodes)))
    kept.sort(key=lambda d: d.path)
    return kept, tuple(skipped)


def reader_skipped(scan: SysfsScan) -> tuple[Skipped, ...]:
    """What the reader left out (a device name with a control character, an IOMMU group
    name no vfio node can have), to be logged and counted."""
    return tuple(Skipped("bad_name", quote_text(path), why) for path, why in scan.skipped)


# --------------------------------------------------------------------------- the driver


class SysfsScanner:
    """The sysfs driver's scan: read sysfs, match, identify, build the devices.

    After a full read, a scan that is told what changed under the dev root (the loop's
    `changed` paths) updates the last read instead (`SysfsReader.update`: the devices
    those nodes belong to, and new devices), and reuses the match and the advertised
    Device of every device it did not read again: O(changed) file reads.
    """

    def __init__(self, config: SysfsDriverConfig, reader: SysfsReader) -> None:
        self._config = config
        self._reader = reader
        self._buses, self._classes, self._extra = scan_sources(config)
        self._last: SysfsScan | None = None
        self._matches: dict[str, tuple[SysfsDevice, bool]] = {}
        """Sysfs path -> the device read there last, and whether it matches."""
        self._built: dict[str, tuple[SysfsDevice, str, Device]] = {}
        """Sysfs path -> the device read there last, its ID and the Device made of it."""
        self._ids: dict[str, tuple[SysfsDevice, str]] = {}
        """Sysfs path -> the device read there last and its ID."""

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        previous = self._last
        self._last = None  # until this read is complete
        if changed is None or previous is None:
            scan = self._reader.scan(self._buses, self._classes, self._extra)
        else:
            names = self._node_names(changed)
            scan = self._reader.update(previous, names, self._buses, self._classes, self._extra)
        self._last = scan
        # Node directories are known only after the read: signed now (a change between the
        # read and this is caught by a full rescan every FULL_RESCAN_EVERY intervals).
        for directory in scan.watch_dirs:
            dirs.watch(directory)
        matches_before = self._matches
        self._matches = {}
        advertised, refused = advertised_devices(
            self._config, scan.devices, functools.partial(self._is_match, matches_before)
        )
        identified, skipped = self.identified(advertised, listed.places)
        built_before = self._built
        self._built = {}
        devices: dict[str, Device] = {}
        places: dict[str, str] = {}
        for found, found_id in identified:
            cached = built_before.get(found.path)
            if cached is not None and cached[0] is found and cached[1] == found_id:
                device = cached[2]
            else:
                device = self._device(found, found_id)
            self._built[found.path] = (found, found_id, device)
            devices[found_id] = device
            places[found_id] = found.path
        return ScanResult(
            devices,
            (*reader_skipped(scan), *refused, *skipped),
            places,
            tuple(Notice("sysfs_source_unreadable", (("problem", p),)) for p in scan.problems),
        )

    def _is_match(self, before: dict[str, tuple[SysfsDevice, bool]], device: SysfsDevice) -> bool:
        cached = before.get(device.path)
        if cached is not None and cached[0] is device:
            answer = cached[1]
        else:
            answer = matches(self._config, device)
        self._matches[device.path] = (device, answer)
        return answer

    def _node_names(self, changed: Iterable[str]) -> list[str]:
        """The changed paths below the dev root, by name relative to it."""
        root = self._reader.dev_root + os.sep
        return [path[len(root) :] for path in changed if path.startswith(root)]

    def identified(
        self, found: list[SysfsDevice], places: Mapping[str, str]
    ) -> tuple[list[tuple[SysfsDevice, str]], list[Skipped]]:
        """Each device advertised, with its ID, and the devices left out.

        Of present devices with one ID (two USB sticks with one serial) only one is
        advertised: the one listed under it now (`places`: where each present device of
        the last scan was), else the first by kernel name. The others are left out, not
        given another ID: a device that carried two IDs over time (its serial now, its port
        after a restart) could be handed to two pods.
        """
        ids_before = self._ids
        self._ids = {}
        groups: dict[str, list[SysfsDevice]] = {}
        for device in found:
            cached = ids_before.get(device.path)
            if cached is not None and cached[0] is device:
                did = cached[1]
            else:
                did = device_id(device, self._config.usb_id_from)
            self._ids[device.path] = (device, did)
            groups.setdefault(did, []).append(device)
        result: list[tuple[SysfsDevice, str]] = []
        skipped: list[Skipped] = []
        for did, group in groups.items():
            if len(group) == 1:
                result.append((group[0], did))
                continue
            group.sort(key=lambda d: d.name)
            holder = places.get(did)
            keeper = next((d for d in group if d.path == holder), group[0])
            result.append((keeper, did))
            skipped.extend(
                Skipped(
                    "id_collision",
                    quote_text(other.path),
                    f"ID {quote_text(did)} is the device's at {quote_text(keeper.name)}; "
                    f"this one at {quote_text(other.name)} has the same "
                    + ("serial" if other.serial and other.source == USB else "ID")
                    + " and is not advertised (usbIdFrom: port identifies sticks by port)",
                )
                for other in group
                if other is not keeper
            )
        return result, skipped

    def _device(self, found: SysfsDevice, device_id: str) -> Device:
        config = self._config
        nodes = select_nodes(config.nodes, found.nodes)
        healthy = all(node.present for node in nodes) and (bool(nodes) or config.nodes is None)
        values = found.template_values()
        return Device(
            id=device_id,
            healthy=healthy,
            nodes=tuple(
                # /dev/vfio/vfio (the container node) goes with every vfio device: shared.
                DeviceNode(
                    node.host_path, node.host_path, shared=node.devname == VFIO_CONTAINER_NODE
                )
                for node in nodes
            ),
            numa=found.numa,
            env={k: render_template(v, values) for k, v in config.env.items()},
            annotations={k: render_template(v, values) for k, v in config.annotations.items()},
            path=nodes[0].host_path if nodes else None,
        )


class SysfsDriver(ScanLoop[SysfsScanner]):
    """The `sysfs` driver: the scan loop running a `SysfsScanner`."""

    def __init__(
        self, config: SysfsDriverConfig, deps: DriverDeps, reader: SysfsReader | None = None
    ) -> None:
        scanner = SysfsScanner(config, reader or SysfsReader(config.sysfs_root, config.dev_root))
        settings = ScanSettings(
            config.rescan_interval, config.grace_period, config.scan_timeout, FULL_RESCAN_EVERY
        )
        super().__init__(scanner, settings, deps)
