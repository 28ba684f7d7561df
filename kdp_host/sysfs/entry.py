"""What a sysfs entry of the config names, checked when the config loads: the buses known
by name (`USB`, `PCI`), the fields a device's env and annotation templates may use, the
read timeout's default, and how a hex ID is written (`normalize_hex`).

The config's checks import this and `match.py` only, so a run with no sysfs entry loads
neither the model nor the reader (issue 19: memory). The model (`model.py`) builds its
devices on these names; `SysfsDevice.template_values` gives exactly `TEMPLATE_FIELDS`
(`tests/test_sysfs_model.py`).
"""

from __future__ import annotations

USB = "usb"
PCI = "pci"

DEFAULT_SCAN_TIMEOUT = 10.0
"""Seconds a sysfs read may take before it counts as hung (`scanTimeout`, `discover --timeout`)."""

TEMPLATE_FIELDS = frozenset(
    {
        "name",
        "address",
        "bus",
        "vendor",
        "product",
        "serial",
        "manufacturer",
        "productName",
        "driver",
        "numa",
        "nodes",
        "subsystemVendor",
        "subsystemDevice",
        "class",
        "iommuGroup",
        "busnum",
        "devnum",
    }
)
"""Every field a sysfs device template may use (checked when the config loads)."""


def normalize_hex(value: str) -> str:
    """`0x10C4` / `10c4` / `0X10c4` -> `10c4`: how kdp-host compares and prints hex IDs."""
    text = value.strip().lower()
    return text[2:] if text.startswith("0x") else text
