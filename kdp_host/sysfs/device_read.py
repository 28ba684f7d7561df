"""Reading one device out of sysfs (`DeviceReads.read`), and keeping what was read of it
while the device is provably the one read.

A rescan or an update reads each device again: its `uevent`, its links, its nodes. Its
attribute files (a USB device's IDs, strings and interface classes, a PCI device's IDs and
class) are read again only when something they come from may have changed. What they are
kept by (`_key`), each for a case the kernel makes:
- the device's directory itself (its inode and times, `dir_signature`): kernfs makes a new
  directory, with a new inode, for every device it adds, so a stick plugged into the port
  another left, given the same address and the same node names, is read as the new stick
  it is (hostile25 F6; a same `uevent`, since its IDs are the same model's);
- its `uevent` (USB: PRODUCT, BUSNUM, DEVNUM; PCI: PCI_ID, PCI_SUBSYS_ID, DRIVER);
- a USB device's interfaces (their names and inodes): kernfs leaves a directory's times as
  they are when an entry is added below it, and the interfaces come after the device (its
  configuration is set after the kernel adds it: hostile25 F7) or change without it (a new
  configuration), so only its listing says they did;
- the nodes announced at or below it (a device whose node set changed is read again);
- the attribute names asked.
A class device is read whole every time (its `uevent` does not name it).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from ..dir_signature import signature_of
from ..logs import quote_text
from .model import (
    OPTIONAL_ATTRIBUTES,
    PCI,
    PCI_ATTRIBUTES,
    USB,
    USB_ATTRIBUTES,
    USB_INTERFACE_ATTRIBUTES,
    VFIO_CONTAINER_NODE,
    VFIO_PCI_DRIVER,
    NodeInfo,
    SysfsDevice,
    UsbInterface,
    usb_bus_node,
    vfio_group_problem,
)
from .nodes import DevNodes
from .tree import (
    link_name,
    numa_of_parents,
    parse_numa,
    parse_uevent,
    read_quiet,
    read_text,
    resolve_entry_stat,
)

InterfaceClasses = tuple[tuple[str, tuple[str | None, str | None, str | None]], ...]


@dataclass
class ScanState:
    """Caches of one scan (NUMA nodes of parent directories)."""

    numa_of_dir: dict[str, int | None] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(sysfs path, why) of names left out (see SysfsScan.skipped)."""


@dataclass(frozen=True)
class _Kept:
    """What was read of a device's attribute files, and what it was read by (`_key`)."""

    key: tuple[object, ...]
    attributes: dict[str, str]
    errors: dict[str, str]
    interface_classes: InterfaceClasses


class DeviceReads:
    """Reads devices, keeping their attributes from one read to the next (see the module
    docstring). A read is begun (`begin`), then ended by a full read (`end_full`: what
    it did not read is forgotten) or an update (`end_update`)."""

    def __init__(self, sysfs_root: str, nodes: DevNodes) -> None:
        self.sysfs_root = sysfs_root
        self.nodes = nodes
        self._kept: dict[str, _Kept] = {}
        """Device path -> what was read there (one entry per path)."""
        self._next: dict[str, _Kept] = {}
        """What the running read read or kept."""

    def begin(self) -> None:
        self._next = {}

    def end_full(self) -> None:
        self._kept, self._next = self._next, {}

    def end_update(self) -> None:
        self._kept.update(self._next)
        self._next = {}

    def read(
        self,
        source: str,
        name: str,
        link: str,
        extra: tuple[str, ...] = (),
        state: ScanState | None = None,
    ) -> SysfsDevice | None:
        """The device behind `link` (a bus or class entry), or None if it vanished."""
        state = state or ScanState()
        found = resolve_entry_stat(link)
        if found is None:
            return None
        path, info = found
        try:
            listing = list(os.scandir(path))
        except OSError:
            listing = []
        uevent_text = read_quiet(os.path.join(path, "uevent")) or ""
        nodes = self.nodes.nodes_beneath(path, uevent_text, listing)
        kept = self._attributes(source, name, path, info, listing, uevent_text, nodes, extra)
        attributes = dict(kept.attributes)
        errors = dict(kept.errors)
        driver = link_name(os.path.join(path, "driver"))
        iommu_group = link_name(os.path.join(path, "iommu_group"))
        if iommu_group is not None and (why := vfio_group_problem(iommu_group)) is not None:
            errors["iommu_group"] = f"{quote_text(iommu_group)} {why}: no vfio node"
            state.skipped.append((os.path.join(path, "iommu_group"), errors["iommu_group"]))
            iommu_group = None
        interfaces: tuple[UsbInterface, ...] = ()
        if source == USB:
            interfaces = tuple(
                UsbInterface(entry, *classes, driver=link_name(os.path.join(path, entry, "driver")))
                for entry, classes in kept.interface_classes
            )
            if not any(node.subsystem == USB for node in nodes):
                derived = usb_bus_node(attributes.get("busnum", ""), attributes.get("devnum", ""))
                if derived is not None:
                    nodes = (*nodes, self.nodes.node(derived, USB, None, None))
        if source == PCI and driver == VFIO_PCI_DRIVER and iommu_group is not None:
            nodes = (
                *nodes,
                self.nodes.node(f"vfio/{iommu_group}", "vfio", None, None),
                self.nodes.node(VFIO_CONTAINER_NODE, "vfio", None, None),
            )
        numa = parse_numa(attributes.pop("numa_node", None) if source == PCI else None)
        if numa is None:
            numa = numa_of_parents(self.sysfs_root, path, state.numa_of_dir)
        return SysfsDevice(
            source=source,
            name=name,
            path=path,
            attributes=attributes,
            errors=errors,
            driver=driver,
            numa=numa,
            iommu_group=iommu_group,
            nodes=nodes,
            interfaces=interfaces,
            uevent=parse_uevent(uevent_text),
        )

    def _attributes(
        self,
        source: str,
        name: str,
        path: str,
        info: os.stat_result,
        listing: list[os.DirEntry[str]],
        uevent_text: str,
        nodes: tuple[NodeInfo, ...],
        extra: tuple[str, ...],
    ) -> _Kept:
        """What the device's attribute files hold: kept from the last read while its
        `_key` is the same (USB and PCI devices read without an error), else read."""
        wanted: tuple[str, ...]
        if source == USB:
            wanted = USB_ATTRIBUTES
        elif source == PCI:
            wanted = (*PCI_ATTRIBUTES, "numa_node")
        else:
            return self._read_attributes(path, name, (), (), extra)
        prefix = name + ":"
        interfaces = sorted(
            (entry.name, entry.inode())
            for entry in listing
            if source == USB and entry.name.startswith(prefix)
        )
        key = (
            signature_of(info),
            uevent_text,
            tuple(interfaces),
            tuple(node.devname for node in nodes),
            wanted,
            extra,
        )
        kept = self._kept.get(path)
        if kept is None or kept.key != key:
            names = tuple(entry for entry, _ in interfaces)
            kept = self._read_attributes(path, name, key, names, (*wanted, *extra))
        if not kept.errors:
            self._next[path] = kept
        return kept

    def _read_attributes(
        self,
        path: str,
        name: str,
        key: tuple[object, ...],
        interfaces: tuple[str, ...],
        attributes: tuple[str, ...],
    ) -> _Kept:
        read: dict[str, str] = {}
        errors: dict[str, str] = {}
        for attribute in dict.fromkeys(attributes):
            self.read_attribute(path, attribute, read, errors)
        classes: list[tuple[str, tuple[str | None, str | None, str | None]]] = []
        for entry in interfaces:
            values: dict[str, str] = {}
            for attribute in USB_INTERFACE_ATTRIBUTES:
                self.read_attribute(os.path.join(path, entry), attribute, values, {})
            found = tuple(values.get(a) for a in USB_INTERFACE_ATTRIBUTES)
            classes.append((entry, (found[0], found[1], found[2])))
        return _Kept(key, read, errors, tuple(classes))

    def read_attribute(
        self, directory: str, attribute: str, into: dict[str, str], errors: dict[str, str]
    ) -> None:
        """The attribute file's text into `into`; why it could not be read into `errors`
        (absent: neither)."""
        if attribute.startswith("/") or ".." in attribute.split("/"):
            errors[attribute] = "not a path below the device"
            return
        try:
            text = read_text(os.path.join(directory, attribute))
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT or (
                exc.errno == errno.ENODATA and attribute in OPTIONAL_ATTRIBUTES
            ):
                return
            errors[attribute] = exc.strerror or str(exc)
            return
        into[attribute] = text
