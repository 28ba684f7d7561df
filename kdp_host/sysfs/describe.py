"""What a device is, in words an operator knows: its USB strings, its name in the ID
databases (pci.ids, usb.ids), or its class from the built-in tables; which devices are
infrastructure (root hubs, bridges). `kdp-host discover` shows these next to each device.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import NO_DATABASE, IdsDatabase
from .model import PCI, USB, SysfsDevice, normalize_hex

PCI_CLASS_NAMES = {
    "0100": "SCSI storage controller",
    "0101": "IDE controller",
    "0104": "RAID controller",
    "0106": "SATA controller",
    "0107": "SAS controller",
    "0108": "NVMe controller",
    "0180": "storage controller",
    "0200": "Ethernet controller",
    "0207": "InfiniBand controller",
    "0280": "network controller",
    "0300": "VGA controller",
    "0302": "3D controller",
    "0380": "display controller",
    "0401": "audio device",
    "0403": "audio device",
    "0480": "multimedia controller",
    "0600": "host bridge",
    "0601": "ISA bridge",
    "0604": "PCI bridge",
    "0680": "bridge",
    "0880": "system peripheral",
    "0b40": "co-processor",
    "0c03": "USB controller",
    "0c05": "SMBus controller",
    "1200": "processing accelerator",
    "1280": "accelerator",
    "ff00": "unassigned class",
}
"""Common PCI class names (the PCI SIG's codes): what `discover` says without a pci.ids."""

USB_CLASS_NAMES = {
    "01": "audio",
    "02": "communications (CDC)",
    "03": "HID",
    "06": "imaging",
    "07": "printer",
    "08": "mass storage",
    "09": "hub",
    "0a": "CDC data",
    "0b": "smart card",
    "0e": "video",
    "e0": "wireless",
    "ef": "miscellaneous",
    "fe": "application specific",
    "ff": "vendor specific",
}

USB_ROOT_HUB_VENDOR = "1d6b"
PCI_BRIDGE_CLASS = "06"


@dataclass(frozen=True)
class Names:
    """The ID databases names come from (see ids.py); empty ones leave the built-in tables."""

    pci: IdsDatabase = NO_DATABASE
    usb: IdsDatabase = NO_DATABASE


BUILT_IN_NAMES = Names()
"""No ID database: the built-in class tables only."""


def driver_text(device: SysfsDevice) -> str:
    """The bound driver; for a USB device its interfaces' drivers (the device's own is `usb`)."""
    if device.source == USB:
        drivers = [i.driver for i in device.interfaces if i.driver]
        if drivers:
            return ",".join(dict.fromkeys(drivers))
    return device.driver or "-"


def describe(device: SysfsDevice, names: Names = BUILT_IN_NAMES) -> str:
    """What the device is: its USB strings, or its name in the ID databases, or its class,
    or its `name` attribute."""
    if device.source == USB:
        return (
            device.display_name
            or names.usb.product_text(device.vendor, device.product)
            or _usb_class_name(device, names.usb)
        )
    if device.source == PCI:
        if names.pci.device(device.vendor, device.product):
            return names.pci.product_text(device.vendor, device.product) or ""
        klass = pci_class_name(device.attributes.get("class"), names.pci)
        vendor = names.pci.vendor(device.vendor)
        return f"{vendor} {klass}" if vendor and klass else klass
    return device.attributes.get("name", "")


def pci_class_name(raw: str | None, database: IdsDatabase = NO_DATABASE) -> str:
    if raw is None:
        return ""
    code = normalize_hex(raw).zfill(6)
    return (
        database.class_name(code)
        or PCI_CLASS_NAMES.get(code[:4])
        or database.class_name(code[:2])
        or f"class {code}"
    )


def _usb_class_name(device: SysfsDevice, database: IdsDatabase) -> str:
    codes = [(i.interface_class or "").lower() for i in device.interfaces if i.interface_class]
    names = [database.class_name(c) or USB_CLASS_NAMES.get(c, c) for c in codes]
    return ", ".join(dict.fromkeys(n for n in names if n))


def is_infrastructure(device: SysfsDevice) -> bool:
    """USB root hubs and PCI bridges: listed only with `--all`."""
    if device.source == USB:
        return device.vendor == USB_ROOT_HUB_VENDOR
    if device.source == PCI:
        return (
            normalize_hex(device.attributes.get("class", "")).zfill(6).startswith(PCI_BRIDGE_CLASS)
        )
    return False
