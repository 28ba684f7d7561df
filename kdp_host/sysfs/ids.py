"""Names of PCI and USB IDs from the `pci.ids` / `usb.ids` databases (hwdata, pciutils,
usbutils), so `kdp-host discover` can say "Virtio block device" rather than a class code.

Optional: without a database, names come from the device's own strings and a short table of
class names. A database is read once, whole, and bounded (DATABASE_LIMIT bytes).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DATABASE_LIMIT = 16 * 1024 * 1024
"""Bytes read from a database at most (pci.ids is about 1.4 MB)."""

_VENDOR = re.compile(r"([0-9a-fA-F]{4})\s+(.+)")
_ITEM = re.compile(r"\t([0-9a-fA-F]{2,4})\s+(.+)")
_CLASS = re.compile(r"C ([0-9a-fA-F]{2})\s+(.+)")
_SUBCLASS = re.compile(r"\t([0-9a-fA-F]{2})\s+(.+)")
_PROG_IF = re.compile(r"\t\t([0-9a-fA-F]{2})\s+(.+)")

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return _EMPTY


class IdsError(Exception):
    """A database that was named but cannot be read."""


@dataclass(frozen=True)
class IdsDatabase:
    """Vendor, device (or product) and class names by lower-case hex ID."""

    vendors: Mapping[str, str] = field(default_factory=_empty)
    devices: Mapping[str, str] = field(default_factory=_empty)
    """`vendor:device` -> name."""
    classes: Mapping[str, str] = field(default_factory=_empty)
    """`03`, `0300`, `030000` (class, subclass, programming interface) -> name."""

    def vendor(self, vendor: str | None) -> str | None:
        return self.vendors.get(vendor.lower()) if vendor else None

    def device(self, vendor: str | None, device: str | None) -> str | None:
        if not vendor or not device:
            return None
        return self.devices.get(f"{vendor.lower()}:{device.lower()}")

    def class_name(self, code: str) -> str | None:
        """The name of a class code (`0c0330`): its subclass's (`USB controller`, as lspci
        says it), else its programming interface's (`XHCI`), else its class's."""
        code = code.lower()
        for length in (4, 6, 2):
            if len(code) >= length and (name := self.classes.get(code[:length])):
                return name
        return None

    def product_text(self, vendor: str | None, device: str | None) -> str | None:
        """`Red Hat, Inc. Virtio block device`, the way lspci and lsusb say it; the vendor
        alone when the device is not listed; None when neither is."""
        names = [n for n in (self.vendor(vendor), self.device(vendor, device)) if n]
        return " ".join(names) or None


NO_DATABASE = IdsDatabase()


def parse_ids(lines: Iterable[str]) -> IdsDatabase:
    """The pci.ids / usb.ids format: `vvvv  name` vendors with tab-indented `dddd  name`
    devices, `C cc  name` classes with `\tss` subclasses and `\t\tpp` interfaces; other
    sections (usb.ids' HID, language tables...) and comments are skipped."""
    vendors: dict[str, str] = {}
    devices: dict[str, str] = {}
    classes: dict[str, str] = {}
    vendor: str | None = None
    klass: str | None = None
    subclass: str | None = None
    for line in lines:
        line = line.rstrip("\r\n")
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            vendor = klass = subclass = None
            if found := _VENDOR.fullmatch(line):
                vendor = found[1].lower()
                vendors[vendor] = found[2].strip()
            elif found := _CLASS.fullmatch(line):
                klass = found[1].lower()
                classes[klass] = found[2].strip()
            continue
        if vendor is not None and (found := _ITEM.fullmatch(line)):
            devices[f"{vendor}:{found[1].lower()}"] = found[2].strip()
        elif klass is not None and (found := _SUBCLASS.fullmatch(line)):
            subclass = klass + found[1].lower()
            classes[subclass] = found[2].strip()
        elif subclass is not None and (found := _PROG_IF.fullmatch(line)):
            classes[subclass + found[1].lower()] = found[2].strip()
    return IdsDatabase(
        MappingProxyType(vendors), MappingProxyType(devices), MappingProxyType(classes)
    )


def read_ids(path: str) -> IdsDatabase:
    """One database file. Raises IdsError when it cannot be read."""
    try:
        # Non-blocking, regular files only: a FIFO named by mistake cannot hang discover.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IdsError(f"cannot read {path}: not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(DATABASE_LIMIT)
        finally:
            os.close(fd)
    except OSError as exc:
        raise IdsError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_ids(data.decode("utf-8", "replace").splitlines())


def find_ids(path: str | None, defaults: Iterable[str]) -> IdsDatabase:
    """The database at `path` (IdsError if unreadable; `""` means none), or the first of
    `defaults` that exists (none at all is fine: NO_DATABASE)."""
    if path is not None:
        return read_ids(path) if path else NO_DATABASE
    for candidate in defaults:
        if os.path.isfile(candidate):
            try:
                return read_ids(candidate)
            except IdsError:
                continue
    return NO_DATABASE
