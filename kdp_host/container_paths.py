"""Container paths: what one container path of a container may hold, the one rule.

The kubelet keeps one DeviceSpec and one mount per container path
(docs/kubelet-contract.md §7), so a container given two different things at one path would
get fewer nodes or mounts than it was charged for, or a mount over a device node. What an
entry places at its path is its `Placement`; two entries at one path are one when their
placements are equal (the same node, or the same mount with the same read-only flag:
`/dev/vfio/vfio`, which every device passes, or the replicas of one device), and any other
pair collides. Nothing else decides.

`PathClaims` applies the rule to one container: Allocate refuses a set of devices with a
collision (`allocation`), GetPreferredAllocation steers the kubelet to a set without one
(`preferred`), and a device that collides with itself or with the config's
`allocate.mounts` (`OwnCollisions`) is never listed (`drivers.reporting`): no container
could be given it. `SharedPathIndex` says whether two devices of a list collide (a run then
announces GetPreferredAllocation), where the config allows it at all (`may_share_paths`);
`shared_paths` names those pairs (`kdp-host check`).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .config import GlobDriverConfig, MountConfig, ResourceConfig, SysfsDriverConfig
from .device_changes import changed_between
from .devices import Advertised, Device
from .rules import GLOB_MAGIC

Placement = str | tuple[str, bool]
"""What an entry places at its container path: a device node's host path, or a mount's
(host path, read-only). Equal placements are one entry; unequal ones collide (a node never
equals a mount). A node's is the host path string itself: no object made per node."""


def node_placement(host_path: str) -> Placement:
    return host_path


def mount_placement(host_path: str, read_only: bool) -> Placement:
    return (host_path, read_only)


def placed_host(placement: Placement) -> str:
    """The host path a placement places."""
    return placement if isinstance(placement, str) else placement[0]


def device_placements(device: Device) -> Iterator[tuple[str, Placement]]:
    """(container path, placement) of each node, then each mount, of a device."""
    for host, container in device.node_places():
        yield container, host
    for mount in device.mounts:
        yield mount.container_path, (mount.host_path, mount.read_only)


@dataclass(frozen=True)
class Clash:
    """Something else already at a container path: who put it there, and what."""

    owner: str
    placement: Placement


class PathClaims:
    """The container paths of one container, as claimed so far (by a device ID, or by the
    config or a command: `owner`)."""

    def __init__(self) -> None:
        self._claimed: dict[str, tuple[Placement, str]] = {}

    def __len__(self) -> int:
        return len(self._claimed)

    def clash(self, path: str, placement: Placement) -> Clash | None:
        """What collides with `placement` at `path`, or None (free, or the same thing)."""
        known = self._claimed.get(path)
        if known is None or known[0] == placement:
            return None
        return Clash(known[1], known[0])

    def claim(self, owner: str, path: str, placement: Placement) -> bool:
        """Claim `path` for `placement` (the caller checked `clash`); False: it was there."""
        if path in self._claimed:
            return False
        self._claimed[path] = (placement, owner)
        return True

    def copy(self) -> PathClaims:
        claims = PathClaims()
        claims._claimed = dict(self._claimed)
        return claims

    def unclaim(self, path: str) -> None:
        """Undo a `claim` that returned True (a search trying sets)."""
        del self._claimed[path]

    def fits(self, device: Device) -> bool:
        """Whether the device's nodes and mounts collide with nothing claimed."""
        return all(self.clash(path, placed) is None for path, placed in device_placements(device))

    def add(self, device: Device) -> None:
        """Claim the device's nodes and mounts (those that collide keep the first claim)."""
        for path, placed in device_placements(device):
            self.claim(device.id, path, placed)


PATH_COLLISION = "path_collision"
"""The skip reason of a device no container can be given: two different things of it (or of
it and the config) at one container path; the runtime would keep only one of them."""
CONFIG_MOUNTS = "allocate.mounts"
"""The owner named for the config's mounts (Allocate's refusals, `OwnCollisions`)."""


@dataclass(frozen=True)
class OwnCollisions:
    """Devices that no container can be given even alone: two of a device's own nodes and
    mounts, or one of them and a mount of `allocate.mounts`, at one container path (hostile25
    F8: such a device was advertised Healthy and every pod given it refused, while others
    were free). The driver's report leaves them out (`path_collision`), for every driver."""

    mounts: tuple[tuple[str, Placement], ...] = ()
    """(container path, placement) of each of the config's mounts."""

    @classmethod
    def of(cls, resource: ResourceConfig) -> OwnCollisions:
        return cls(tuple(_config_placement(m) for m in resource.allocate.mounts))

    def collision(self, device: Device) -> str | None:
        """Why no container can be given `device`, or None."""
        if not self.mounts and len(device.nodes) + len(device.mounts) < 2:
            return None  # (one node and nothing configured: the common case, no claims)
        claims = PathClaims()
        for path, placed in self.mounts:
            claims.claim(CONFIG_MOUNTS, path, placed)
        for path, placed in device_placements(device):
            clash = claims.clash(path, placed)
            if clash is not None:
                return (
                    f"device {device.id}: container path {path} is claimed twice, by "
                    f"{clash.owner} (host path {placed_host(clash.placement)}) and by "
                    f"{device.id} (host path {placed_host(placed)}); no container can be given it"
                )
            claims.claim(device.id, path, placed)
        return None


NO_CONFIG_MOUNTS = OwnCollisions()
"""A device's own collisions only (a resource without `allocate.mounts`)."""


def _config_placement(mount: MountConfig) -> tuple[str, Placement]:
    return mount.container_path, mount_placement(mount.host_path, mount.read_only)


FITTING_SET_STEPS: Final = 256
"""The devices `fitting_set` tries at most, among the first FITTING_SET_WIDTH: the
kubelet waits for the answer with no deadline, and a list where no set fits pays the search
on every admission (~0.2 ms at most)."""
FITTING_SET_WIDTH: Final = 64


def fitting_set(
    order: Sequence[str], lookup: Mapping[str, Advertised], claims: PathClaims, wanted: int
) -> list[str] | None:
    """`wanted` IDs of `order` (a GetPreferredAllocation policy's ranking) that fit
    `claims` and each other: the first such set in that order (depth first), or None (none,
    or none within FITTING_SET_STEPS). It claims in `claims` (give it a copy)."""
    places: dict[int, tuple[tuple[str, Placement], ...]] = {}
    picked: list[str] = []
    steps = 0

    def extend(start: int) -> bool:
        nonlocal steps
        if len(picked) == wanted:
            return True
        for index in range(start, len(order) - (wanted - len(picked)) + 1):
            steps += 1
            if steps > FITTING_SET_STEPS:
                return False
            own = places.get(index)
            if own is None:
                own = places[index] = tuple(device_placements(lookup[order[index]].device))
            if any(claims.clash(path, placed) is not None for path, placed in own):
                continue
            device_id = order[index]
            claimed = [path for path, placed in own if claims.claim(device_id, path, placed)]
            picked.append(device_id)
            if extend(index + 1):
                return True
            picked.pop()
            for path in claimed:
                claims.unclaim(path)
        return False

    return picked if extend(0) else None


@dataclass(frozen=True)
class SharedPath:
    """Two devices of one list that place different things at one container path: no
    container can be given both."""

    container_path: str
    first: str
    """The device listed first there (by ID)."""
    first_host: str
    second: str
    second_host: str


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
                yield SharedPath(path, clash.owner, first_host, device.id, placed_host(placed))


class SharedPathIndex:
    """Whether two devices of a list place different things at one container path, kept
    from one list to the next by what changed (`device_changes.changed_between`): a device
    that comes or goes costs its own entries, not a walk of the list (a probe of 120,000
    devices: a walk is ~0.1 s of the loop per change). A list that does not say what changed
    (a glob scan) is walked.

    Container path -> its placement (one device there), or how many devices place each
    placement there (several: a Counter); the paths with two placements are the shared ones.
    """

    def __init__(self) -> None:
        self._list: Mapping[str, Device] | None = None
        self._at: dict[str, Placement | Counter[Placement]] = {}
        self._shared: set[str] = set()

    def update(self, devices: Mapping[str, Device]) -> bool:
        """Follow `devices` (the driver's list as reported); whether it shares a path."""
        before = self._list
        if devices is before:
            return bool(self._shared)
        changed = None if before is None else changed_between(before, devices)
        if before is None or changed is None:
            self._at, self._shared = {}, set()
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
        return bool(self._shared)

    def _count(self, device: Device, step: int) -> None:
        at = self._at
        for path, placed in device_placements(device):
            known = at.get(path)
            if known is None:  # (step 1: a device removed was counted)
                at[path] = placed
                continue
            if not isinstance(known, Counter):
                if step > 0:
                    at[path] = known = Counter({known: 1})
                else:  # (the one device there goes)
                    del at[path]
                    continue
            known[placed] += step
            if known[placed] <= 0:
                del known[placed]
            if len(known) > 1:
                self._shared.add(path)
            else:
                self._shared.discard(path)
                if not known:
                    del at[path]


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
