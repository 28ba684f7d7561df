"""`kdp-host discover`: what this machine has, the way an operator thinks about it, with a
ready-to-paste `sysfs` resource entry for each device: the narrowest entry that advertises
the device alone (checked through the driver's own matching), under a resource name that
says what it is. What a device is called comes from `describe.py`; printing is `render.py`.

Only reads sysfs (through the same reader as the driver) and prints; it never fails on an
unreadable attribute: the reason is shown next to the device.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..k8s_names import MAX_QUALIFIED_NAME_LENGTH, extended_resource_name_problem
from .describe import BUILT_IN_NAMES, Names, describe, is_infrastructure
from .match import exact_pattern
from .model import PCI, USB, SysfsDevice, device_id, normalize_hex

if TYPE_CHECKING:
    from .rootdisk import RootDisk

_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")


class HexId(str):
    """A hex ID, always written quoted in YAML: `vendor: "0403"` (unquoted, YAML would read
    0403 as an octal number, and kdp-host refuses numbers there)."""


@dataclass(frozen=True)
class Discovered:
    """A device `discover` found, with a config entry for it."""

    device: SysfsDevice
    suggested_id: str
    resource: dict[str, Any] | None
    """A resource entry for the config, as data (dumped as YAML or JSON); None when the
    device's IDs could not be read (an entry without them would match every device)."""
    serial_hint: str | None
    """The serial, as an exact pattern, to add to pin the entry to this one device (a USB
    device whose entry does not hold it yet), or None."""
    description: str = ""
    matches: tuple[str, ...] = field(default=())
    """The kernel names of the devices the entry advertises on this machine (through the
    driver's own matching): just this device's name, or plainly several, or others."""
    root_disk: tuple[str, ...] = ()
    """The nodes of the root filesystem's disk the entry would hand out (`rootdisk`): a
    container given one can read and write every file of the host."""

    @property
    def exact(self) -> bool:
        """Whether the entry advertises this one device and nothing else."""
        return self.matches == (self.device.name,)

    def as_dict(self) -> dict[str, Any]:
        device = self.device
        data: dict[str, Any] = {
            "source": device.source,
            "address": device.name,
            "id": self.suggested_id,
            "vendor": device.vendor,
            "product": device.product,
            "description": self.description,
            "serial": device.serial,
            "numa": device.numa,
            "driver": device.driver,
            "path": device.path,
            "nodes": [
                {"path": node.host_path, "subsystem": node.subsystem, "present": node.present}
                for node in device.nodes
            ],
        }
        if device.source == PCI:
            data["class"] = normalize_hex(device.attributes.get("class", ""))
            data["iommuGroup"] = device.iommu_group
        if device.interfaces:
            data["interfaces"] = [
                {"name": i.name, "class": i.interface_class, "driver": i.driver}
                for i in device.interfaces
            ]
        if device.errors:
            data["errors"] = dict(device.errors)
        data["resource"] = self.resource
        data["matches"] = list(self.matches)
        data["rootDisk"] = list(self.root_disk)
        return data


def _slug(text: str, length: int = 40) -> str:
    return _SLUG_UNSAFE.sub("-", text.lower()).strip("-")[:length].strip("-")


def resource_name(domain: str, device: SysfsDevice, description: str) -> str:
    """A valid extended resource name that says what the device is."""
    candidates = []
    if device.source == USB and device.attributes.get("product"):
        candidates.append(device.attributes["product"])
    if device.driver:
        candidates.append(device.driver)
    if description:
        candidates.append(description)
    if device.source not in (USB, PCI):
        candidates.append(f"{device.source.rpartition('/')[2]} {device.name}")
    ids = [part for part in (device.vendor, device.product) if part]
    candidates.append("-".join([device.source.replace("/", "-"), *ids]))
    for text in candidates:
        slug = _slug(text)
        name = f"{domain}/{slug}"
        if slug and extended_resource_name_problem(name) is None:
            return name
    return f"{domain}/device"


def unique_name(name: str, device: SysfsDevice, taken: set[str]) -> str:
    """`name`, or `name` told apart by the device's IDs, or by a number: never one in `taken`
    (two entries with one name would be one resource, refused by the config)."""
    domain, _, base = name.rpartition("/")
    ids = "-".join(_slug(part, 8) for part in (device.vendor, device.product) if part)
    suffixes = [""] + ([f"-{ids}"] if ids else []) + [f"-{n}" for n in range(2, len(taken) + 3)]
    for suffix in suffixes:
        head = base[: MAX_QUALIFIED_NAME_LENGTH - len(suffix)].rstrip("-")
        candidate = f"{domain}/{head}{suffix}"
        if candidate not in taken and extended_resource_name_problem(candidate) is None:
            return candidate
    raise AssertionError("unreachable: a numbered name is always free")


def candidate_entries(domain: str, device: SysfsDevice, description: str) -> list[dict[str, Any]]:
    """Resource entries for this device, each narrower than the one before: its kind
    (vendor and product...), then with what tells it from others of its kind (a USB serial,
    PCI subsystem IDs, a kernel name). Empty when its IDs are unread (an entry without
    them would match every device). Every text is written as an exact pattern."""
    name = resource_name(domain, device, description)
    ids: dict[str, Any] = {}
    if device.vendor:
        ids["vendor"] = HexId(device.vendor)
    if device.product:
        ids["product" if device.source == USB else "device"] = HexId(device.product)
    if device.source in (USB, PCI) and not ids:
        return []
    narrower: dict[str, Any] = {}
    if device.source == USB:
        if device.serial:
            narrower["serial"] = exact_pattern(device.serial)
        kind = "usb"
    elif device.source == PCI:
        if device.driver:
            ids["driver"] = exact_pattern(device.driver)
        for attribute, key in (
            ("subsystem_vendor", "subsystemVendor"),
            ("subsystem_device", "subsystemDevice"),
        ):
            if value := device.attributes.get(attribute):
                narrower[key] = HexId(normalize_hex(value))
        kind = "pci"
    else:
        source, _, class_name = device.source.partition("/")
        ids = {"class": class_name} if source == "class" else {"bus": device.source}
        if device.attributes.get("name"):
            ids["attributes"] = {"name": exact_pattern(device.attributes["name"])}
        elif device.driver:
            ids["driver"] = exact_pattern(device.driver)
        narrower["name"] = exact_pattern(device.name)
        kind = "devices"
    matches = [ids] + ([{**ids, **narrower}] if narrower else [])
    return [{"name": name, "sysfs": {kind: [match]}} for match in matches]


def advertised_by(entry: dict[str, Any], devices: Sequence[SysfsDevice]) -> tuple[str, ...] | None:
    """The kernel names of the devices `entry` would advertise among `devices`: the entry
    read by the config loader and matched by the driver, as if pasted into a config; None
    when the loader refuses it (a serial with a control character: hostile13 M10)."""
    from ..config import ConfigError, SysfsDriverConfig, load_config_text
    from ..drivers.sysfs_advertised import advertised_devices

    try:
        config = load_config_text(json.dumps({"resources": [entry]}))
    except ConfigError:
        return None
    driver = config.resources[0].driver
    assert isinstance(driver, SysfsDriverConfig)
    return tuple(device.name for device in advertised_devices(driver, devices)[0])


class _Pool:
    """The devices an entry made for one device could match, so that checking the entries
    of many devices is not quadratic: the driver's matching decides, on the devices of the
    same source and vendor (an entry holds the device's exact IDs, serial and name), plus
    the PCI devices sharing an IOMMU group with them (a group is assigned whole)."""

    def __init__(self, devices: Sequence[SysfsDevice]) -> None:
        self._kind: dict[tuple[str, str | None], list[SysfsDevice]] = {}
        self._source: dict[str, list[SysfsDevice]] = {}
        self._groups: dict[str, list[SysfsDevice]] = {}
        for device in devices:
            self._kind.setdefault((device.source, device.vendor), []).append(device)
            self._source.setdefault(device.source, []).append(device)
            if device.source == PCI and device.iommu_group:
                self._groups.setdefault(device.iommu_group, []).append(device)

    def could_match(self, device: SysfsDevice, entry: dict[str, Any]) -> list[SysfsDevice]:
        [match] = next(iter(entry["sysfs"].values()))
        if "vendor" in match:
            pool = self._kind.get((device.source, device.vendor), [])
        else:
            pool = self._source.get(device.source, [])
        if "serial" in match:
            pool = [d for d in pool if d.serial == device.serial]
        if "name" in match:
            pool = [d for d in pool if d.name == device.name]
        groups = {d.iommu_group for d in pool if d.source == PCI and d.iommu_group}
        inside = {id(d) for d in pool}
        peers = [d for group in sorted(groups) for d in self._groups[group] if id(d) not in inside]
        return [*pool, *peers]


def discover(
    devices: Sequence[SysfsDevice],
    *,
    domain: str,
    include_all: bool = False,
    names: Names = BUILT_IN_NAMES,
    root: RootDisk | None = None,
) -> list[Discovered]:
    """Each device worth an entry (with `include_all`, also infrastructure and devices
    without nodes), with the narrowest entry that advertises it alone, or, when none
    does, the narrowest one and what it advertises. `domain` prefixes the resource names
    (the command checked it: `cli.domain_problem`). With `root`, each says which nodes of the
    root filesystem's disk its entry would hand out (`check` warns about the same)."""
    found = []
    taken: set[str] = set()
    pool = _Pool(devices)
    by_name = {(d.source, d.name): d for d in devices}
    advertised: dict[str, tuple[str, ...] | None] = {}
    """Entry (its `sysfs` part as JSON) -> what it advertises: entries repeat."""
    for device in devices:
        if not include_all and (is_infrastructure(device) or not device.nodes):
            continue
        description = describe(device, names)
        entry: dict[str, Any] | None = None
        matches: tuple[str, ...] = ()
        refused = False
        """A narrower entry the config loader refuses (it cannot be written in a config)."""
        for candidate in candidate_entries(domain, device, description):
            key = json.dumps(candidate["sysfs"], sort_keys=True)
            if key not in advertised:
                advertised[key] = advertised_by(candidate, pool.could_match(device, candidate))
            if (matched := advertised[key]) is None:
                refused = True
                continue
            entry, matches = candidate, matched
            if matches == (device.name,):
                break
        serial_hint = None
        if entry is not None:
            entry["name"] = unique_name(entry["name"], device, taken)
            taken.add(entry["name"])
            usb = entry["sysfs"].get("usb", [{}])[0]
            if device.source == USB and device.serial and "serial" not in usb and not refused:
                serial_hint = exact_pattern(device.serial)
        found.append(
            Discovered(
                device=device,
                suggested_id=device_id(device),
                resource=entry,
                serial_hint=serial_hint,
                description=description,
                matches=matches,
                root_disk=_root_disk_nodes(device, matches, by_name, root),
            )
        )
    return found


def _root_disk_nodes(
    device: SysfsDevice,
    matches: Sequence[str],
    by_name: dict[tuple[str, str], SysfsDevice],
    root: RootDisk | None,
) -> tuple[str, ...]:
    """The nodes of the root disk among those of the devices the entry advertises."""
    if root is None:
        return ()
    advertised = [by_name[(device.source, name)] for name in matches] or [device]
    paths = dict.fromkeys(node.host_path for d in advertised for node in d.nodes)
    return tuple(path for path in paths if root.holds(path))
