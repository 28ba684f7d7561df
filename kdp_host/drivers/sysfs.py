"""The `sysfs` driver: devices described the way operators know them (USB vendor, product
and serial; PCI IDs, class and driver; any bus or class by attribute), each passed to the
container with every device node the kernel created for it.

Discovery reads sysfs (see kdp_host/sysfs/); hot-plug is seen through inotify on the dev
root's directories that hold the devices' nodes (devtmpfs creates and removes them as the
kernel adds and removes devices), with a periodic full rescan as a safety net. A device
that leaves sysfs, or loses a node, is reported Unhealthy at once and dropped (or forgotten
its lost node) after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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
from ..rules import MAX_DEVICE_ID_LENGTH, device_id_problem
from ..sysfs import PCI, USB, NodeInfo, ScanTimeout, SysfsDevice, SysfsReader, SysfsScan
from ..sysfs.match import class_matches, hex_matches, text_matches
from ..sysfs.model import VFIO_CONTAINER_NODE, VFIO_PCI_DRIVER
from ..sysfs.reader import enclosing_device, start_off_loop
from ..watch import DirSignature, Subscription, dir_signature
from .base import DriverDeps, DriverError, Notifier, Skipped
from .glob import RECENT_CHANGE, wait_for_change

FULL_RESCAN_EVERY = 10
"""A safety-net rescan is skipped while no watched node directory changed, but at least
every this many intervals one runs (a device without nodes changes nothing in /dev)."""
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]")


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
    config: SysfsDriverConfig, devices: Sequence[SysfsDevice]
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
    """
    found = {device.path: device for device in devices if matches(config, device)}
    outer = [
        device for path, device in sorted(found.items()) if enclosing_device(path, found) is None
    ]
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


# --------------------------------------------------------------------------- identity


def safe_id(text: str) -> str:
    """`text` as a device ID when it is one already (serials, port paths and PCI addresses
    usually are); otherwise its safe characters plus 8 hex digits of its SHA-256, so two
    different texts never share an ID and a text always gets the same one."""
    if _UNSAFE_ID_CHARS.search(text) is None and device_id_problem(text) is None:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    readable = _UNSAFE_ID_CHARS.sub("_", text).lstrip("-_")[: MAX_DEVICE_ID_LENGTH - 9]
    return f"{readable}-{digest}" if readable else digest


def device_id(device: SysfsDevice, usb_id_from: str = "serial") -> str:
    """A device's ID: a function of the device alone, never of the other devices present
    (an ID that depended on them would move between devices over a restart). A USB device:
    its serial when it has one and `usbIdFrom` is `serial`, else its port path; a PCI
    device: its address; any other: its kernel name."""
    if device.source == USB and usb_id_from == "serial" and device.serial:
        return safe_id(device.serial)
    return safe_id(device.name)


def reader_skipped(scan: SysfsScan) -> tuple[Skipped, ...]:
    """What the reader left out (a device name with a control character, an IOMMU group
    name no vfio node can have), to be logged and counted."""
    return tuple(Skipped("bad_name", quote_text(path), why) for path, why in scan.skipped)


# --------------------------------------------------------------------------- the driver


@dataclass
class _Tracked:
    """A device the driver has listed: its last view and what of it vanished, and when."""

    device: Device
    place: str
    """Its directory in sysfs: a device that moved (a stick in another port) lost no node."""
    gone_since: float | None = None
    lost_nodes: dict[str, float] | None = None
    """Node name -> when it vanished (kept Unhealthy for the grace period)."""


class SysfsDriver:
    def __init__(
        self,
        config: SysfsDriverConfig,
        deps: DriverDeps,
        clock: Callable[[], float] | None = None,
        reader: SysfsReader | None = None,
    ) -> None:
        self._config = config
        self._deps = deps
        self._clock = clock or deps.clock
        self._reader = reader or SysfsReader(config.sysfs_root, config.dev_root)
        self._buses, self._classes, self._extra = scan_sources(config)
        self._tracked: dict[str, _Tracked] = {}
        self._pending: asyncio.Future[SysfsScan] | None = None
        self.skipped: tuple[Skipped, ...] = ()
        """The devices the last scan left out (an ID another present device has, an IOMMU
        group that cannot be assigned)."""
        self._group_skipped: tuple[Skipped, ...] = ()
        self._watched: frozenset[str] = frozenset()
        """The dev root directories watched now (set on the loop, read by the scan thread)."""
        self._signatures: dict[str, DirSignature | None] = {}

    # -------------------------------------------------------------- reading

    def _scan_sync(self) -> SysfsScan:
        # Signatures first: a change during the scan then shows as a difference later.
        watched = self._watched
        signatures = {directory: dir_signature(directory) for directory in watched}
        scan = self._reader.scan(self._buses, self._classes, self._extra)
        scan = dataclasses.replace(scan, watch_dirs=scan.watch_dirs | self._future_node_dirs())
        # Directories watched from now on: their state after the scan (inotify covers them
        # from the moment the loop subscribes; a full rescan every FULL_RESCAN_EVERY anyway).
        for directory in scan.watch_dirs - watched:
            signatures[directory] = dir_signature(directory)
        self._signatures = signatures
        return scan

    def _unchanged_since_scan(self) -> bool:
        """Whether no watched directory of the dev root changed since the last scan began
        (so a safety-net rescan would find the same). Runs in a thread."""
        signatures = self._signatures
        if not signatures or not self._watched <= signatures.keys():
            return False
        now_ns = time.time_ns()
        for directory in self._watched:
            before = signatures[directory]
            current = dir_signature(directory)
            if current != before:
                return False
            if current is not None and now_ns - current[1] < RECENT_CHANGE * 1e9:
                return False
        return True

    async def read(self) -> SysfsScan:
        """One sysfs read off the loop, bounded by `scanTimeout`. Raises DriverError.

        A read that timed out may still be stuck in the kernel: no second one is started
        while it is (threads would pile up on a hung attribute).
        """
        if self._pending is not None and not self._pending.done():
            raise DriverError("timeout", "the previous sysfs read is still stuck")
        self._pending = start_off_loop(self._scan_sync, "kdp-sysfs-scan")
        try:
            async with asyncio.timeout(self._config.scan_timeout):
                return await asyncio.shield(self._pending)
        except TimeoutError:
            raise DriverError(
                "timeout", f"sysfs read took longer than {self._config.scan_timeout:g}s"
            ) from None
        except ScanTimeout as exc:
            raise DriverError("timeout", str(exc)) from None
        except OSError as exc:
            raise DriverError("io", f"sysfs read failed: {exc}") from None

    def matched(self, scan: SysfsScan) -> list[SysfsDevice]:
        """The scan's devices this resource advertises (see `advertised_devices`); what it
        refuses (an IOMMU group a host driver holds) goes to `skipped` with the ID clashes."""
        devices, self._group_skipped = advertised_devices(self._config, scan.devices)
        return devices

    async def scan(self) -> list[Device]:
        scan = await self.read()
        devices = [self._device(found, did) for found, did in self._identified(self.matched(scan))]
        for item in (*reader_skipped(scan), *self.skipped):
            self._deps.log.warning(
                "path_skipped", reason=item.reason, path=item.subject, error=item.message
            )
        return sorted(devices, key=lambda d: d.id)

    def _identified(self, found: list[SysfsDevice]) -> list[tuple[SysfsDevice, str]]:
        """Each device advertised, with its ID; sets `skipped` to the others.

        Of present devices with one ID (two USB sticks with one serial) only one is
        advertised: the one listed under it now, else the first by kernel name. The others
        are left out, not given another ID: a device that carried two IDs over time (its
        serial now, its port after a restart) could be handed to two pods.
        """
        groups: dict[str, list[SysfsDevice]] = {}
        for device in sorted(found, key=lambda d: d.name):
            groups.setdefault(device_id(device, self._config.usb_id_from), []).append(device)
        result: list[tuple[SysfsDevice, str]] = []
        skipped: list[Skipped] = []
        for did, group in groups.items():
            tracked = self._tracked.get(did)
            holder = tracked.place if tracked is not None and tracked.gone_since is None else None
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
        self.skipped = (*self._group_skipped, *skipped)
        return result

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

    # -------------------------------------------------------------- merging

    def merge(self, found: list[SysfsDevice]) -> tuple[dict[str, Device], float | None]:
        """The list to publish, and when the next grace period ends (None: none running)."""
        now = self._clock()
        grace = self._config.grace_period
        present: dict[str, Device] = {}
        places: dict[str, str] = {}
        for sysfs_device, device_id in self._identified(found):
            present[device_id] = self._device(sysfs_device, device_id)
            places[device_id] = sysfs_device.path
        next_expiry: float | None = None

        def expires(at: float) -> None:
            nonlocal next_expiry
            next_expiry = at if next_expiry is None else min(next_expiry, at)

        listed: dict[str, Device] = {}
        for device_id, device in present.items():
            tracked = self._tracked.get(device_id)
            lost = dict(tracked.lost_nodes or {}) if tracked is not None else {}
            if (
                tracked is not None
                and tracked.gone_since is None
                and tracked.place == places[device_id]
            ):
                now_nodes = {n.host_path for n in device.nodes}
                for node in tracked.device.nodes:
                    if node.host_path not in now_nodes:
                        lost.setdefault(node.host_path, now)
            for node in device.nodes:
                lost.pop(node.host_path, None)
            for name, since in list(lost.items()):
                if grace <= 0 or since + grace <= now:
                    del lost[name]
                else:
                    expires(since + grace)
            if lost:
                device = device.with_health(False)
            self._tracked[device_id] = _Tracked(device, places[device_id], None, lost or None)
            listed[device_id] = device
        for device_id, tracked in list(self._tracked.items()):
            if device_id in present:
                continue
            since = tracked.gone_since if tracked.gone_since is not None else now
            if grace <= 0 or since + grace <= now:
                del self._tracked[device_id]
                continue
            expires(since + grace)
            device = (
                tracked.device if not tracked.device.healthy else tracked.device.with_health(False)
            )
            self._tracked[device_id] = _Tracked(device, tracked.place, since, None)
            listed[device_id] = device
        return listed, next_expiry

    # -------------------------------------------------------------- running

    async def run(self, notifier: Notifier) -> None:
        log = self._deps.log
        watcher = self._deps.watcher
        wake = asyncio.Event()
        subscriptions: dict[str, Subscription] = {}
        last_problems: tuple[str, ...] | None = None

        def on_change(_name: str | None) -> None:
            wake.set()

        scan: SysfsScan | None = None
        woken = True
        skipped = 0
        try:
            while True:
                wake.clear()
                if (
                    scan is None
                    or woken
                    or skipped >= FULL_RESCAN_EVERY
                    or not await asyncio.to_thread(self._unchanged_since_scan)
                ):
                    skipped = 0
                    started = self._clock()
                    try:
                        scan = await self.read()
                    except DriverError as exc:
                        notifier.failure(exc)
                        scan = None
                    else:
                        notifier.scanned(self._clock() - started)
                else:
                    skipped += 1
                next_expiry: float | None = None
                if scan is not None:
                    wanted = scan.watch_dirs
                    for directory in wanted - subscriptions.keys():
                        subscriptions[directory] = watcher.subscribe(directory, on_change)
                    for directory in subscriptions.keys() - wanted:
                        subscriptions.pop(directory).cancel()
                    self._watched = frozenset(subscriptions)
                    devices, next_expiry = self.merge(self.matched(scan))
                    notifier.update(devices, (*reader_skipped(scan), *self.skipped))
                    if scan.problems != last_problems:
                        for problem in scan.problems:
                            log.warning("sysfs_source_unreadable", problem=problem)
                        last_problems = scan.problems
                woken = await wait_for_change(
                    wake, self._config.rescan_interval, next_expiry, self._clock
                )
        finally:
            for subscription in subscriptions.values():
                subscription.cancel()

    def _future_node_dirs(self) -> set[str]:
        """Where nodes of devices not plugged in yet will appear (read in the scan thread)."""
        dev_root = self._reader.dev_root
        dirs = {dev_root}
        if USB in self._buses:
            usb = os.path.join(dev_root, "bus", "usb")
            dirs.add(usb)
            with contextlib.suppress(OSError):
                dirs.update(os.path.join(usb, name) for name in os.listdir(usb))
        if PCI in self._buses:
            dirs.update(os.path.join(dev_root, name) for name in ("dri", "vfio"))
        return dirs
