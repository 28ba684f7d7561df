"""What kdp-host knows about a device in sysfs: plain immutable data, no file access.

The reader (`reader.py`) builds these from a sysfs tree; the driver matches them against
the config and turns them into advertised devices; `kdp-host discover` prints them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..names import DEVICE_ID, make_name
from ..rules import join_list
from .entry import PCI as PCI
from .entry import USB as USB
from .entry import normalize_hex as normalize_hex

USB_DEVICE_NAME = re.compile(r"usb\d+|\d+-\d+(?:\.\d+)*")
"""Kernel names of USB devices (root hubs `usbN`, ports `B-P[.P...]`); interfaces have `:`."""
PCI_DEVICE_NAME = re.compile(r"[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")

USB_ATTRIBUTES = (
    "idVendor",
    "idProduct",
    "serial",
    "manufacturer",
    "product",
    "busnum",
    "devnum",
    "bDeviceClass",
)
USB_INTERFACE_ATTRIBUTES = ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol")
PCI_ATTRIBUTES = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class")
OPTIONAL_ATTRIBUTES = frozenset({"serial", "manufacturer", "product"})
"""USB string descriptors many devices lack: their absence is not an error."""

VFIO_PCI_DRIVER = "vfio-pci"
VFIO_GROUP_NAME = re.compile(r"[0-9]+|noiommu-[0-9]+")
"""An IOMMU group as the kernel names it (`/dev/vfio/<group>`): a number, or `noiommu-N`."""
VFIO_CONTAINER_NODE = "vfio/vfio"

_NONE: Mapping[str, str] = MappingProxyType({})


def _no_entries() -> Mapping[str, str]:
    return _NONE


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A device node the kernel announces for a device (a `uevent` with `DEVNAME`)."""

    devname: str
    """Relative to /dev, as the kernel names it: `ttyUSB0`, `bus/usb/001/004`, `dri/card0`."""
    subsystem: str
    """`tty`, `usb`, `drm`, `block`, `vfio`, ... (the `subsystem` link of its sysfs dir)."""
    present: bool
    """Whether the node exists under the dev root now."""
    devnum: str | None = None
    """`MAJOR:MINOR` from the uevent, when given."""
    sysfs_path: str | None = None
    """The directory of its uevent (None for nodes derived from attributes, like vfio's)."""

    @property
    def host_path(self) -> str:
        """Where the node is on the host: the kernel puts every node under the host's /dev."""
        return "/dev/" + self.devname


@dataclass(frozen=True, slots=True)
class UsbInterface:
    """One interface of a USB device, with its class codes."""

    name: str
    """`1-1.2:1.0`: device, configuration, interface."""
    interface_class: str | None
    interface_subclass: str | None
    interface_protocol: str | None
    driver: str | None


@dataclass(frozen=True)
class SysfsDevice:
    """One device of a bus (`usb`, `pci`, any other) or of a class (`class/video4linux`)."""

    source: str
    """`usb`, `pci`, another bus name, or `class/<name>`."""
    name: str
    """The kernel's name: `1-1.2` (a USB port path), `0000:3b:00.0`, `video0`."""
    path: str
    """Its directory in sysfs, symlinks resolved."""
    attributes: Mapping[str, str] = field(default_factory=_no_entries)
    """Attribute files read, without the trailing newline (hex IDs as the kernel writes them)."""
    errors: Mapping[str, str] = field(default_factory=_no_entries)
    """Attributes that exist but could not be read, with the reason: shown, never fatal."""
    driver: str | None = None
    numa: int | None = None
    iommu_group: str | None = None
    nodes: tuple[NodeInfo, ...] = ()
    interfaces: tuple[UsbInterface, ...] = ()
    uevent: Mapping[str, str] = field(default_factory=_no_entries, repr=False)

    @property
    def bus(self) -> str:
        return self.source

    @property
    def vendor(self) -> str | None:
        raw = self.attributes.get("idVendor" if self.source == USB else "vendor")
        return normalize_hex(raw) if raw is not None else None

    @property
    def product(self) -> str | None:
        """The USB product ID, or the PCI device ID."""
        raw = self.attributes.get("idProduct" if self.source == USB else "device")
        return normalize_hex(raw) if raw is not None else None

    @property
    def serial(self) -> str | None:
        return self.attributes.get("serial") or None

    @property
    def port_path(self) -> str | None:
        """A USB device's physical position (`1-1.2`): stable while it stays in that port."""
        return self.name if self.source == USB else None

    @property
    def display_name(self) -> str:
        parts = [self.attributes.get("manufacturer", ""), self.attributes.get("product", "")]
        return " ".join(p for p in parts if p).strip()

    def template_values(self) -> dict[str, str]:
        """The fields per-device env and annotation templates may use (`entry.TEMPLATE_FIELDS`)."""
        attrs = self.attributes
        values = {
            "name": self.name,
            "address": self.name,
            "bus": self.source,
            "vendor": self.vendor or "",
            "product": self.product or "",
            "serial": self.serial or "",
            "manufacturer": attrs.get("manufacturer", ""),
            "productName": attrs.get("product", "") if self.source == USB else "",
            "driver": self.driver or "",
            "numa": "" if self.numa is None else str(self.numa),
            "nodes": join_list(node.host_path for node in self.nodes),
            "subsystemVendor": normalize_hex(attrs.get("subsystem_vendor", "")),
            "subsystemDevice": normalize_hex(attrs.get("subsystem_device", "")),
            "class": normalize_hex(attrs.get("class", "")),
            "iommuGroup": self.iommu_group or "",
            "busnum": attrs.get("busnum", ""),
            "devnum": attrs.get("devnum", ""),
        }
        return values


@dataclass(frozen=True)
class SysfsScan:
    """One read of the sysfs tree: the devices of the buses and classes asked for."""

    devices: tuple[SysfsDevice, ...]
    problems: tuple[str, ...] = ()
    """Whole sources that could not be listed (`usb: no /sys/bus/usb/devices`): shown, not fatal."""
    watch_dirs: frozenset[str] = frozenset()
    """Directories under the dev root whose entries hold the devices' nodes (for inotify)."""
    skipped: tuple[tuple[str, str], ...] = ()
    """(sysfs path, why) of what was left out: device names with control characters, IOMMU
    group names no vfio node can have. Logged and counted (`bad_name`) by the driver."""
    changed: Mapping[str, SysfsDevice | None] | None = None
    """After `SysfsReader.update`: the directory of every device that was read again,
    appeared or vanished, with the device there now (None: gone); every other device is
    the same object as in the read it updates. None: a full read."""


def is_device_boundary(name: str) -> bool:
    """Whether a sysfs directory named `name` is a bus device of its own (a USB device
    behind a hub, a PCI device behind a bridge, a USB root hub below its PCI host
    controller), never part of the device above it: node walks stop there, and a matched
    device there is advertised on its own even inside another matched one."""
    return USB_DEVICE_NAME.fullmatch(name) is not None or (
        PCI_DEVICE_NAME.fullmatch(name) is not None
    )


def usb_bus_node(busnum: str, devnum: str) -> str | None:
    """`bus/usb/001/004` from the decimal `busnum` and `devnum` attributes."""
    try:
        return f"bus/usb/{int(busnum):03d}/{int(devnum):03d}"
    except ValueError:
        return None


def vfio_group_problem(group: str) -> str | None:
    """Why `group` (the name an `iommu_group` link points to) is no vfio group name."""
    if VFIO_GROUP_NAME.fullmatch(group) is None:
        return "is not an IOMMU group name (digits, or noiommu-N)"
    return None


def device_id(device: SysfsDevice, usb_id_from: str = "serial") -> str:
    """A device's ID: a function of the device alone, never of the other devices present
    (an ID that depended on them would move between devices over a restart). A USB device:
    its serial when it has one and `usbIdFrom` is `serial`, else its port path; a PCI
    device: its address; any other: its kernel name. Each is used as it is when it is a
    device ID already (serials, port paths and PCI addresses usually are), else spelled by
    `names.DEVICE_ID`."""
    if device.source == USB and usb_id_from == "serial" and device.serial:
        return make_name(device.serial, DEVICE_ID)
    return make_name(device.name, DEVICE_ID)
