"""Whether a sysfs device belongs to a resource: its `usb`, `pci` and `devices` entries
(vendor, product, serial, class, driver, attributes), any entry of any section."""

from __future__ import annotations

from ..config import PciMatchConfig, SysfsDriverConfig, SysfsMatchConfig, UsbMatchConfig
from ..sysfs.match import class_matches, hex_matches, text_matches
from ..sysfs.model import PCI, USB, SysfsDevice


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
