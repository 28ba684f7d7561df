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

import fnmatch
import functools
import os
from collections.abc import Iterable

from ..config import (
    NodeSelectConfig,
    SysfsDriverConfig,
    render_template,
)
from ..devices import Device, DeviceNode
from ..logs import quote_text
from ..sysfs.model import PCI, USB, VFIO_CONTAINER_NODE, NodeInfo, SysfsDevice, SysfsScan, device_id
from ..sysfs.nodes import NodeLooks
from ..sysfs.reader import SysfsReader
from .base import DriverDeps, Skipped
from .scanner import DirWatch, Listed, Notice, ScanResult, ScanSettings
from .scanning import ScanLoop
from .sysfs_advertised import Advertising, in_group
from .sysfs_match import matches

HOST_DEV = "/dev"
"""Where the kernel puts every node on the host (`NodeInfo.host_path`)."""

FULL_RESCAN_EVERY = 10
"""A safety-net rescan is skipped while no watched node directory changed, but at least
every this many intervals one runs (a device without nodes changes nothing in /dev)."""


# --------------------------------------------------------------------------- matching


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


def reader_skipped(scan: SysfsScan) -> tuple[Skipped, ...]:
    """What the reader left out (a device name with a control character, an IOMMU group
    name no vfio node can have), to be logged and counted."""
    return tuple(Skipped("bad_name", quote_text(path), why) for path, why in scan.skipped)


# --------------------------------------------------------------------------- the driver


class SysfsScanner:
    """The sysfs driver's scan: read sysfs, match, identify, build the devices.

    After a full read, a scan that is told what changed under the dev root (the loop's
    `changed` paths) updates the last read instead (`SysfsReader.update`: the devices
    those nodes belong to, and new devices), and what is advertised is updated from the
    devices that changed (`Advertising`): a hot-plug costs O(changed), not O(devices).
    """

    def __init__(self, config: SysfsDriverConfig, reader: SysfsReader) -> None:
        self._config = config
        self._reader = reader
        self._buses, self._classes, self._extra = scan_sources(config)
        self._last: SysfsScan | None = None
        self._advertising = Advertising(
            config,
            functools.partial(matches, config),
            functools.partial(device_id, usb_id_from=config.usb_id_from),
            self._device,
        )

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        previous = self._last
        self._last = None  # until this read is complete
        reader, sources = self._reader, (self._buses, self._classes, self._extra)
        looks = NodeLooks(dirs.clock) if dirs.clock is not None else None
        if changed is None or previous is None:
            scan = reader.scan(*sources, looks)
        else:
            scan = reader.update(previous, self._node_names(changed), *sources, looks)
        self._last = scan
        if looks is not None:  # (a node's second event, read with its first: no scan)
            root = reader.dev_root
            dirs.read_at.update((os.path.join(root, n), at) for n, at in looks.at.items())
        # Node directories are known only after the read: signed now (a change between the
        # read and this is caught by a full rescan every FULL_RESCAN_EVERY intervals).
        for directory in scan.watch_dirs:
            dirs.watch(directory)
        answer = None
        if scan.changed is not None:
            answer = self._advertising.update(scan.changed, listed.places)
        if answer is None:
            answer = self._advertising.decide(scan.devices, listed.places)
        return ScanResult(
            answer.devices,
            (*reader_skipped(scan), *answer.skipped),
            answer.places,
            tuple(Notice("sysfs_source_unreadable", (("problem", p),)) for p in scan.problems),
            reached=None if looks is None else looks.reached,
        )

    def _node_names(self, changed: Iterable[str]) -> list[str]:
        """The changed paths below the dev root, by name relative to it."""
        root = self._reader.dev_root + os.sep
        return [path[len(root) :] for path in changed if path.startswith(root)]

    def _seen(self, host_path: str) -> str | None:
        """Where kdp-host sees a node of the host's /dev (`DeviceNode.seen_path`): below
        `devRoot` where that is not `/dev` (hostile9 L1: claimed as the node found there)."""
        root = self._reader.dev_root
        if root == HOST_DEV:
            return None
        return os.path.join(root, os.path.relpath(host_path, HOST_DEV))

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
                    node.host_path,
                    node.host_path,
                    shared=node.devname == VFIO_CONTAINER_NODE,
                    seen_path=self._seen(node.host_path),
                )
                for node in nodes
            ),
            numa=found.numa,
            env={k: render_template(v, values) for k, v in config.env.items()},
            annotations={k: render_template(v, values) for k, v in config.annotations.items()},
            path=nodes[0].host_path if nodes else None,
            sysfs_path=found.path,
            iommu_group=os.path.join(found.path, "iommu_group") if in_group(found) else None,
        )


class SysfsDriver(ScanLoop[SysfsScanner]):
    """The `sysfs` driver: the scan loop running a `SysfsScanner`."""

    def __init__(
        self, config: SysfsDriverConfig, deps: DriverDeps, reader: SysfsReader | None = None
    ) -> None:
        scanner = SysfsScanner(config, reader or SysfsReader(config.sysfs_root, config.dev_root))
        settings = ScanSettings(
            config.rescan_interval,
            config.grace_period,
            config.scan_timeout,
            FULL_RESCAN_EVERY,
            entries=True,  # (a node is there or not: its mode, its writes change nothing)
        )
        super().__init__(scanner, settings, deps)
