"""Which devices a sysfs resource advertises out of one read, and under which ID.

- Each physical device once: a matched device inside another matched one (a drm card or a
  partition below a matched device) is part of the outermost, whose nodes hold its nodes
  already; a bus device of its own (a GPU behind a matched PCIe bridge, a USB device behind
  a matched hub) never is. Decided over the whole set (`advertised_devices`).
- Each IOMMU group once (see `advertised_devices`).
- One device per ID: of devices with one ID (two USB sticks with one serial) the one listed
  under it now, else the first by kernel name (`identify`).

`Advertising` keeps the answer of the last read and brings it up to date from the devices
that changed (a hot-plug: what was read again, what appeared, what vanished), so a hot-plug
costs the devices it touches and those nested below them, not every device present; a read
with an IOMMU group, or too many changes, is decided again over the whole set.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

from ..config import SysfsDriverConfig
from ..device_changes import Derived
from ..devices import Device
from ..logs import quote_text
from ..sysfs.model import PCI, USB, VFIO_PCI_DRIVER, SysfsDevice
from ..sysfs.tree import enclosing_device
from .base import Skipped
from .sysfs_match import matches

VFIO_GROUP_PEER_DRIVERS = frozenset({VFIO_PCI_DRIVER, "pci-stub", "pcieport"})
"""Drivers a function may be bound to for its IOMMU group to be assignable (the kernel's
rule for opening `/dev/vfio/<group>`; a function with no driver counts too)."""
MAX_UPDATE = 64
"""Changed devices up to which the last answer is updated rather than decided again."""
Matcher = Callable[[SysfsDevice], bool]


def advertised_devices(
    config: SysfsDriverConfig, devices: Sequence[SysfsDevice], is_match: Matcher | None = None
) -> tuple[list[SysfsDevice], tuple[Skipped, ...]]:
    """The devices a resource advertises out of one read, and what it refuses.

    Nesting: see the module docstring. IOMMU groups: functions bound to vfio-pci are
    assigned by group (they all pass the same `/dev/vfio/<group>`), so the matched functions
    of a group are one device, named by the first of them, with the nodes of every vfio-pci
    function of the group. A group with a function bound to a host driver cannot be
    assigned: its matched functions are refused (`incomplete_group`).

    `is_match` answers `matches(config, device)` (a caller may remember the answers).
    """
    if is_match is None:
        is_match = functools.partial(matches, config)
    found = {device.path: device for device in devices if is_match(device)}
    outer: list[SysfsDevice] = []
    above: list[str] = []
    """The matched directories above the current one (sorted by `path + "/"`, a directory's
    subtree directly follows it)."""
    for path in sorted(found, key=lambda path: path + "/"):
        while above and not path.startswith(above[-1] + "/"):
            above.pop()
        if not above or enclosing_device(path, found) is None:
            outer.append(found[path])
        above.append(path)
    kept: list[SysfsDevice] = []
    groups: dict[str, list[SysfsDevice]] = {}
    for device in outer:
        if in_group(device):
            groups.setdefault(device.iommu_group or "", []).append(device)
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


def in_group(device: SysfsDevice) -> bool:
    """A function assigned with its IOMMU group (bound to vfio-pci, in a group)."""
    return device.source == PCI and device.driver == VFIO_PCI_DRIVER and bool(device.iommu_group)


def identify(
    found: Sequence[SysfsDevice], places: Mapping[str, str], id_of: Callable[[SysfsDevice], str]
) -> tuple[dict[str, SysfsDevice], dict[str, tuple[Skipped, ...]]]:
    """The device advertised under each ID, and per ID the devices left out under it.

    Of present devices with one ID only one is advertised: the one listed under it now
    (`places`: where each present device of the last scan was), else the first by kernel
    name. The others are left out, not given another ID: a device that carried two IDs over
    time (its serial now, its port after a restart) could be handed to two pods.
    """
    groups: dict[str, list[SysfsDevice]] = {}
    for device in found:
        groups.setdefault(id_of(device), []).append(device)
    chosen: dict[str, SysfsDevice] = {}
    skipped: dict[str, tuple[Skipped, ...]] = {}
    for did, group in groups.items():
        chosen[did], left_out = _keeper(did, group, places)
        if left_out:
            skipped[did] = left_out
    return chosen, skipped


def _keeper(
    did: str, group: list[SysfsDevice], places: Mapping[str, str]
) -> tuple[SysfsDevice, tuple[Skipped, ...]]:
    if len(group) == 1:
        return group[0], ()
    group = sorted(group, key=lambda d: (d.name, d.path))
    holder = places.get(did)
    keeper = next((d for d in group if d.path == holder), group[0])
    return keeper, tuple(
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


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a resource advertises out of one read."""

    devices: dict[str, Device]
    """By ID (a new dict each time: the loop publishes it as is)."""
    places: dict[str, str]
    """ID -> the sysfs directory of its device."""
    skipped: tuple[Skipped, ...]
    """Refused IOMMU groups, then devices left out of an ID."""


class Advertising:
    """The answer for the last read, updated from what changed (see the module docstring).

    `matches` and `id_of` are the driver's rules, `build` makes the Device to advertise of
    a SysfsDevice and its ID; each is asked again only for a device object not seen before
    at its path (unchanged devices are the same objects from read to read).
    """

    def __init__(
        self,
        config: SysfsDriverConfig,
        matches: Matcher,
        id_of: Callable[[SysfsDevice], str],
        build: Callable[[SysfsDevice, str], Device],
    ) -> None:
        self._config = config
        self._matches = matches
        self._id_of = id_of
        self._build = build
        self._seen: dict[str, tuple[SysfsDevice, bool, str]] = {}
        """Path -> the device read there last, whether it matches, its ID."""
        self._built: dict[str, tuple[SysfsDevice, str, Device]] = {}
        """Path -> the device advertised from there, its ID and the Device made of it."""
        self._answer: Answer | None = None
        """The last answer, when `update` may start from it."""
        self._found: dict[str, SysfsDevice] = {}
        """Path -> the matched device there."""
        self._keys: list[str] = []
        """The matched paths, each + "/", sorted (a directory's subtree follows it)."""
        self._outer: dict[str, str] = {}
        """Path of each matched device that is not nested -> its ID."""
        self._by_id: dict[str, list[SysfsDevice]] = {}
        self._left_out: dict[str, tuple[Skipped, ...]] = {}

    def decide(self, devices: Sequence[SysfsDevice], places: Mapping[str, str]) -> Answer:
        """Decided over the whole read."""
        seen_before, self._seen = self._seen, {}
        for device in devices:
            self._learn(device, seen_before.get(device.path))
        kept, refused = advertised_devices(self._config, devices, self._is_match)
        chosen, self._left_out = identify(kept, places, self._id)
        built_before, self._built = self._built, {}
        answer = Answer(
            Derived(
                None,
                (),
                {did: self._device(device, did, built_before) for did, device in chosen.items()},
            ),
            {did: device.path for did, device in chosen.items()},
            (*refused, *(item for items in self._left_out.values() for item in items)),
        )
        self._answer = None
        if not refused and not any(in_group(d) for d in kept):
            self._found = {d.path: d for d in devices if self._is_match(d)}
            self._keys = sorted(path + "/" for path in self._found)
            self._outer = {d.path: self._id(d) for d in kept}
            self._by_id = {}
            for device in kept:
                self._by_id.setdefault(self._outer[device.path], []).append(device)
            self._answer = answer
        return answer

    def update(
        self, changed: Mapping[str, SysfsDevice | None], places: Mapping[str, str]
    ) -> Answer | None:
        """The last answer after the devices at `changed` (path -> the device there now,
        None: gone) changed; None when it must be decided again (`decide`)."""
        answer = self._answer
        if answer is None or len(changed) > MAX_UPDATE:
            return None
        if not changed:
            return answer  # the same answer (what follows compares it by identity)
        self._answer = None  # until this update is complete
        found, keys = self._found, self._keys
        affected: set[str] = set()
        for path, device in changed.items():
            if path in found:
                del found[path]
                del keys[bisect.bisect_left(keys, path + "/")]
            if device is None:
                self._seen.pop(path, None)
            else:
                self._learn(device, self._seen.get(path))
                if self._is_match(device):
                    if in_group(device):
                        return None
                    found[path] = device
                    bisect.insort(keys, path + "/")
            affected.add(path)
            # what is nested below it may be advertised or folded now
            prefix = path + "/"
            for key in keys[bisect.bisect_left(keys, prefix) :]:
                if not key.startswith(prefix):
                    break
                affected.add(key[:-1])
        ids: set[str] = set()
        for path in affected:
            before = self._outer.pop(path, None)
            if before is not None:
                ids.add(before)
                self._by_id[before] = [d for d in self._by_id[before] if d.path != path]
            device = found.get(path)
            if device is not None and enclosing_device(path, found) is None:
                if in_group(device):
                    return None  # an IOMMU group is decided over the whole read
                did = self._id(device)
                self._outer[path] = did
                self._by_id.setdefault(did, []).append(device)
                ids.add(did)
        devices, where = Derived(answer.devices, ids, answer.devices), dict(answer.places)
        built = self._built
        for did in ids:
            devices.pop(did, None)
            old_place = where.pop(did, None)
            self._left_out.pop(did, None)
            group = self._by_id.get(did)
            place = None
            if group:
                keeper, left_out = _keeper(did, group, places)
                if left_out:
                    self._left_out[did] = left_out
                devices[did] = self._device(keeper, did, built)
                where[did] = place = keeper.path
            else:
                self._by_id.pop(did, None)
            if old_place is not None and old_place != place:
                cached = built.get(old_place)
                if cached is not None and cached[1] == did:
                    del built[old_place]  # no longer advertised from there
        self._answer = Answer(
            devices, where, tuple(item for items in self._left_out.values() for item in items)
        )
        return self._answer

    def _learn(self, device: SysfsDevice, before: tuple[SysfsDevice, bool, str] | None) -> None:
        if before is None or before[0] is not device:
            before = (device, self._matches(device), "")
        self._seen[device.path] = before

    def _is_match(self, device: SysfsDevice) -> bool:
        seen = self._seen.get(device.path)
        if seen is None or seen[0] is not device:
            return self._matches(device)  # a group's merged copy: asked as it is
        return seen[1]

    def _id(self, device: SysfsDevice) -> str:
        seen = self._seen.get(device.path)
        if seen is None or seen[0] is not device:
            return self._id_of(device)
        if not seen[2]:
            seen = self._seen[device.path] = (device, seen[1], self._id_of(device))
        return seen[2]

    def _device(
        self,
        found: SysfsDevice,
        did: str,
        before: dict[str, tuple[SysfsDevice, str, Device]],
    ) -> Device:
        cached = before.get(found.path)
        if cached is not None and cached[0] is found and cached[1] == did:
            device = cached[2]
        else:
            device = self._build(found, did)
        self._built[found.path] = (found, did, device)
        return device
