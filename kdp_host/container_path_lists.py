"""Container paths of a device list: whether two devices of a list collide by the one rule
(`container_paths`: the same path, or nested where one is a node), followed list by list at
the cost of what changed (`SharedPathIndex`: a run then announces GetPreferredAllocation and
steers), those pairs named (`shared_paths`, for `kdp-host check`), and whether a config may
have any (`may_share_paths`: else a run never looks).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from .config import GlobDriverConfig, ResourceConfig, SysfsDriverConfig
from .container_paths import PathClaims, Placement, device_placements, placed_host
from .device_changes import changed_between
from .devices import Device
from .rules import GLOB_MAGIC


@dataclass(frozen=True)
class SharedPath:
    """Two devices of one list that place different things at one container path, or
    things that nest (`nests`): no container can be given both."""

    container_path: str
    """The second device's container path."""
    first: str
    """The device listed first there (by ID)."""
    first_host: str
    second: str
    second_host: str
    first_path: str
    """The first device's container path: `container_path`, or above or below it."""


def shared_paths(devices: Iterable[Device]) -> Iterator[SharedPath]:
    """Each device that collides with a device before it (`devices` in order) at a container
    path, with the first device there."""
    claims = PathClaims()
    for device in devices:
        for path, placed in device_placements(device):
            clash = claims.clash(path, placed)
            if clash is None:
                claims.claim(device.id, path, placed)
            elif clash.owner != device.id:
                first_host = placed_host(clash.placement)
                yield SharedPath(
                    path, clash.owner, first_host, device.id, placed_host(placed), clash.path
                )


class SharedPathIndex:
    """Whether two devices of a list place different things at one container path, or
    things that nest (`nests`), kept from one list to the next by what changed
    (`device_changes.changed_between`): a device that comes or goes costs its own entries,
    not a walk of the list (a probe of 120,000 devices: a walk is ~0.1 s of the loop per
    change). A list that does not say what changed (a glob scan) is walked.

    Container path -> the one device there (no object made per path), or, once several are,
    what each places there: placement -> device ID -> entries; the paths with two placements
    are the shared ones, the devices there `colliding`. Which paths have anything, or a
    node, below them (`_propagate`: a path that comes or goes
    costs its parent's count); the paths holding what nests with something below them (a
    node and anything, a mount and a node) are the nested ones.
    """

    def __init__(self) -> None:
        self._list: Mapping[str, Device] | None = None
        self._at: dict[str, Device | dict[Placement, Counter[str]]] = {}
        self._shared: set[str] = set()
        self._below_any: dict[str, int] = {}
        self._below_node: dict[str, int] = {}
        self._nested: set[str] = set()
        self._colliding: frozenset[str] | None = frozenset()

    def update(self, devices: Mapping[str, Device]) -> bool:
        """Follow `devices` (the driver's list as reported); whether it shares a path."""
        before = self._list
        if devices is before:
            return bool(self._shared or self._nested)
        changed = None if before is None else changed_between(before, devices)
        if before is None or changed is None:
            self._at, self._shared, self._nested = {}, set(), set()
            self._below_any, self._below_node, self._colliding = {}, {}, None
            for device in devices.values():
                self._count(device, 1)
        else:
            for device_id in changed:
                old, new = before.get(device_id), devices.get(device_id)
                if old is not new:
                    if old is not None:
                        self._count(old, -1)
                    if new is not None:
                        self._count(new, 1)
        self._list = devices
        return bool(self._shared or self._nested)

    def colliding(self) -> frozenset[str] | None:
        """The IDs of the devices (as `update` last followed) at a shared container path: two
        devices collide only if both are among them. None while entries nest (`nests`): the
        devices below a path are not kept, so any two may. Made from the shared paths alone,
        once per change of them."""
        if self._nested:
            return None
        if self._colliding is None:
            self._colliding = frozenset(
                device_id
                for path in self._shared
                for ids in self._many(path).values()
                for device_id in ids
            )
        return self._colliding

    def _many(self, path: str) -> dict[Placement, Counter[str]]:
        known = self._at[path]
        assert not isinstance(known, Device)  # (a shared path has several)
        return known

    def _kinds(self, path: str) -> tuple[bool, bool]:
        """Whether a path holds a node, and whether it holds a mount (of any device)."""
        known = self._at.get(path)
        if known is None:
            return _NOTHING
        if isinstance(known, Device):
            return _kind(_placement_at(known, path))
        return any(isinstance(p, str) for p in known), any(not isinstance(p, str) for p in known)

    def _count(self, device: Device, step: int) -> None:
        at = self._at
        for path, placed in device_placements(device):
            before = self._kinds(path) if path in at else _NOTHING
            after = self._count_at(device, path, placed, step)
            if after == before:  # (one more or one less of what is there: the common case)
                continue
            flipped: list[str] = []
            if any(after) != any(before) and path not in self._below_any:
                _propagate(self._below_any, self._holds_any, path, any(after), flipped)
            if after[0] != before[0] and path not in self._below_node:
                _propagate(self._below_node, self._holds_node, path, after[0], flipped)
            self._check_nested(path, after)
            for above in flipped:
                if above in at or above in self._nested:
                    self._check_nested(above)

    def _holds_any(self, path: str) -> bool:
        return path in self._at

    def _holds_node(self, path: str) -> bool:
        return self._kinds(path)[0]

    def _check_nested(self, path: str, kinds: tuple[bool, bool] | None = None) -> None:
        """Note whether what is at `path` (`kinds`, when known) nests with something below
        it."""
        node_at, mount_at = self._kinds(path) if kinds is None else kinds
        if (node_at and path in self._below_any) or (mount_at and path in self._below_node):
            self._nested.add(path)
        else:
            self._nested.discard(path)

    def _count_at(
        self, device: Device, path: str, placed: Placement, step: int
    ) -> tuple[bool, bool]:
        """Count `device`'s entry at `path` in (`step` 1) or out (-1); what the path holds
        then (`_kinds`)."""
        at = self._at
        known = at.get(path)
        if known is None:  # (step 1: a device removed was counted)
            at[path] = device
            return _kind(placed)
        if isinstance(known, Device):
            if step < 0:  # (the one device there goes)
                del at[path]
                return _NOTHING
            at[path] = known = {_placement_at(known, path): Counter({known.id: 1})}
        ids = known.setdefault(placed, Counter())
        ids[device.id] += step
        if ids[device.id] <= 0:
            del ids[device.id]
            if not ids:
                del known[placed]
        if path in self._shared or len(known) > 1:
            self._colliding = None  # (made again when asked)
        if len(known) > 1:
            self._shared.add(path)
        else:
            self._shared.discard(path)
            if not known:
                del at[path]
        return self._kinds(path)


def _propagate(
    below: dict[str, int], holds: Callable[[str], bool], path: str, now: bool, flipped: list[str]
) -> None:
    """`path` now counts (`now`) or no longer counts as something `below` its parent: `below`
    maps a path to how many paths right below it count (hold something, or have something
    below: a path is in `below` while anything is). Up the tree while a parent's count turns
    1 or 0 and the parent holds nothing itself; the paths that turned are added to
    `flipped`. A path then costs its parent's count, not a walk of its ancestors."""
    step = 1 if now else -1
    while path != "/":
        above = path[: path.rfind("/")] or "/"
        count = below.get(above, 0) + step
        if count:
            below[above] = count
        else:
            del below[above]
        if count != (1 if now else 0):
            return  # (the parent had something else below it, and still has)
        flipped.append(above)
        if holds(above):
            return  # (it counts for its own parent by what it holds, as before)
        path = above


_NOTHING = (False, False)


def _kind(placed: Placement) -> tuple[bool, bool]:
    """(a node, a mount): what one placement is."""
    node = isinstance(placed, str)
    return node, not node


def _placement_at(device: Device, path: str) -> Placement:
    """What `device` places at `path` (its first entry there)."""
    return next(placed for at, placed in device_placements(device) if at == path)


def may_share_paths(resource: ResourceConfig) -> bool:
    """Whether two devices of the resource may place different things at one container path.
    False only where the config rules it out, so a run never follows its lists for it:
    - a sysfs device's nodes are at their own /dev path in the container;
    - glob `paths` with the matched path as container path, or a `containerPath` with
      `{path}`: one matched path, one container path;
    - glob `paths` with `{name}` only, all in one directory without wildcards: one name
      per matched path there.
    A `{name}` across directories (`/dev/bus/usb/*/*`, two patterns), glob groups and shell
    probes may place two devices at one container path."""
    driver = resource.driver
    if isinstance(driver, SysfsDriverConfig):
        return False
    if not isinstance(driver, GlobDriverConfig) or not driver.paths:
        return True
    template = driver.container_path
    if template is None or "{path}" in template:
        return False
    directories = {posixpath.dirname(pattern) for pattern in driver.paths}
    return len(directories) > 1 or any(GLOB_MAGIC.search(d) for d in directories)
