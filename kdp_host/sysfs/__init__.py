"""The sysfs model: devices of USB, PCI, any bus or class, as the kernel describes them.

The package exports the plain data (`model.py`) only: the config's checks import it on every
run, so reading sysfs (`reader.SysfsReader`, `tree`, `nodes`, `index`) and `kdp-host
discover` (`discover`, `describe`, `ids`, `render`, `cli`) load only where they are used.
"""

from .model import (
    DEFAULT_SCAN_TIMEOUT,
    PCI,
    TEMPLATE_FIELDS,
    USB,
    NodeInfo,
    SysfsDevice,
    SysfsScan,
    UsbInterface,
    normalize_hex,
)

__all__ = [
    "DEFAULT_SCAN_TIMEOUT",
    "PCI",
    "TEMPLATE_FIELDS",
    "USB",
    "NodeInfo",
    "SysfsDevice",
    "SysfsScan",
    "UsbInterface",
    "normalize_hex",
]
