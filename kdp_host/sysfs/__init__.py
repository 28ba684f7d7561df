"""The sysfs model: devices of USB, PCI, any bus or class, as the kernel describes them."""

from .model import (
    PCI,
    TEMPLATE_FIELDS,
    USB,
    NodeInfo,
    SysfsDevice,
    SysfsScan,
    UsbInterface,
    normalize_hex,
)
from .reader import DEFAULT_SCAN_TIMEOUT, SysfsReader
from .tree import read_text

__all__ = [
    "DEFAULT_SCAN_TIMEOUT",
    "PCI",
    "TEMPLATE_FIELDS",
    "USB",
    "NodeInfo",
    "SysfsDevice",
    "SysfsReader",
    "SysfsScan",
    "UsbInterface",
    "normalize_hex",
    "read_text",
]
