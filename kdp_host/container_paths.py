"""Container paths: what one container path of a container may hold, the one rule.

The kubelet keeps one DeviceSpec and one mount per container path
(docs/kubelet-contract.md §7), so a container given two different things at one path would
get fewer nodes or mounts than it was charged for, or a mount over a device node. What an
entry places at its path is its `Placement`; two entries at one path are one when their
placements are equal (the same node, or the same mount with the same read-only flag:
`/dev/vfio/vfio`, which every device passes, or the replicas of one device), and any other
pair collides. Two entries at different paths, one strictly below the other, collide unless
both are mounts (`nests`): the runtime mounts every mount first, parents before children,
then makes each device node at its path, so a node below a mount is made inside the mount's
host directory (a writable source gets a real node on the host, a read-only one fails every
start), and nothing can be made below a device node. Mounts nested in mounts stay allowed: OCI
allows them, the runtime orders them by depth (as for a Kubernetes volume mounted inside
another), and what the inner one needs of the outer's source is a directory (made empty there
if missing), never a device node. Nothing else decides.

`PathClaims` applies the rule to one container: Allocate refuses a set of devices with a
collision (`allocation`), GetPreferredAllocation steers the kubelet to a set without one
(`preferred`), and a device that collides with itself or with the config's
`allocate.mounts` (`OwnCollisions`) is never listed (`drivers.reporting`): no container
could be given it. Whether two devices of a list collide: `container_path_lists`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .config import MountConfig, ResourceConfig
from .devices import Advertised, Device
from .rules import below

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


def nests(outer: Placement, inner: Placement) -> bool:
    """Whether `inner`, at a container path strictly below `outer`'s, collides with it: unless
    both are mounts (the module's docstring says why)."""
    return isinstance(outer, str) or isinstance(inner, str)


def ancestors(path: str) -> Iterator[str]:
    """The container paths strictly above `path` (in normal form), nearest first."""
    end = len(path)
    while (end := path.rfind("/", 0, end)) > 0:
        yield path[:end]
    if path != "/":
        yield "/"


def collides(path: str, placed: Placement, other_path: str, other: Placement) -> bool:
    """Whether two entries collide, by the rule (the module's docstring): at one path unless
    equal, else one below the other unless both are mounts (`nests`). `PathClaims` finds the
    entries to ask about among many; a device's few entries are compared pairwise."""
    if path == other_path:
        return placed != other
    if below(path, other_path):
        return nests(other, placed)
    return below(other_path, path) and nests(placed, other)


def device_placements(device: Device) -> Iterator[tuple[str, Placement]]:
    """(container path, placement) of each node, then each mount, of a device."""
    for host, container in device.node_places():
        yield container, host
    for mount in device.mounts:
        yield mount.container_path, (mount.host_path, mount.read_only)


@dataclass(frozen=True)
class Clash:
    """Something else already at a container path, or above or below it (`nests`): who put
    it there, what, and where."""

    owner: str
    placement: Placement
    path: str

    def describe(self, owner: str, path: str, placement: Placement) -> str:
        """The collision of `owner`'s `placement` at `path` with this, both named."""
        theirs = f"{self.owner} (host path {placed_host(self.placement)})"
        ours = f"{owner} (host path {placed_host(placement)})"
        if self.path == path:
            return (
                f"container path {path} is claimed twice, by {theirs} and by {ours}; the "
                "runtime would keep only one of them"
            )
        outer, inner = (self.path, path) if below(path, self.path) else (path, self.path)
        outer_by, inner_by = (theirs, ours) if outer == self.path else (ours, theirs)
        outer_placed = self.placement if outer == self.path else placement
        if isinstance(outer_placed, str):
            what, why = "a device node", "nothing can be placed below a device node"
        else:
            what, why = (
                "a mount",
                (
                    "the runtime mounts first, then makes the device node inside the mount's "
                    "host directory"
                ),
            )
        return f"container path {inner} of {inner_by} is below {outer}, {what} of {outer_by}: {why}"


class PathClaims:
    """The container paths of one container, as claimed so far (by a device ID, or by the
    config or a command: `owner`)."""

    def __init__(self) -> None:
        self._claimed: dict[str, tuple[Placement, str]] = {}
        self._below: dict[str, list[str]] = {}
        """A container path -> the claimed paths strictly below it."""

    def __len__(self) -> int:
        return len(self._claimed)

    def clash(self, path: str, placement: Placement) -> Clash | None:
        """What collides with `placement` at `path`, or None (free, or the same thing): at
        `path`, or above or below it (`nests`)."""
        claimed = self._claimed
        known = claimed.get(path)
        if known is not None:
            return None if known[0] == placement else Clash(known[1], known[0], path)
        if not claimed:
            return None
        for above in ancestors(path):
            if (outer := claimed.get(above)) is not None and nests(outer[0], placement):
                return Clash(outer[1], outer[0], above)
        for inner_path in self._below.get(path, ()):
            inner = claimed[inner_path]
            if nests(placement, inner[0]):
                return Clash(inner[1], inner[0], inner_path)
        return None

    def claim(self, owner: str, path: str, placement: Placement) -> bool:
        """Claim `path` for `placement` (the caller checked `clash`); False: it was there."""
        if path in self._claimed:
            return False
        self._claimed[path] = (placement, owner)
        for above in ancestors(path):
            self._below.setdefault(above, []).append(path)
        return True

    def copy(self) -> PathClaims:
        claims = PathClaims()
        claims._claimed = dict(self._claimed)
        claims._below = {path: list(inner) for path, inner in self._below.items()}
        return claims

    def unclaim(self, path: str) -> None:
        """Undo a `claim` that returned True (a search trying sets)."""
        del self._claimed[path]
        for above in ancestors(path):
            inner = self._below[above]
            inner.remove(path)
            if not inner:
                del self._below[above]

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
        entries = len(device.nodes) + len(device.mounts)
        if not self.mounts and entries < 2:
            return None  # (one node and nothing configured: the common case, no claims)
        if len(self.mounts) + entries <= PAIRWISE_AT_MOST:
            return self._pairwise(device)
        claims = PathClaims()
        for path, placed in self.mounts:
            claims.claim(CONFIG_MOUNTS, path, placed)
        for path, placed in device_placements(device):
            clash = claims.clash(path, placed)
            if clash is not None:
                return _unplaceable(device.id, clash, path, placed)
            claims.claim(device.id, path, placed)
        return None

    def _pairwise(self, device: Device) -> str | None:
        """`collision` for a few entries (a node and /dev/vfio/vfio: no claims built)."""
        seen = [(path, placed, CONFIG_MOUNTS) for path, placed in self.mounts]
        for path, placed in device_placements(device):
            for other_path, other, owner in seen:
                if collides(path, placed, other_path, other):
                    return _unplaceable(device.id, Clash(owner, other, other_path), path, placed)
            seen.append((path, placed, device.id))
        return None


PAIRWISE_AT_MOST: Final = 8
"""The config's mounts and a device's entries `OwnCollisions` compares pair by pair (claims
cost more up to about this many: every device of a 120,000-device list is checked)."""


def _unplaceable(device_id: str, clash: Clash, path: str, placed: Placement) -> str:
    why = clash.describe(device_id, path, placed)
    return f"device {device_id}: {why}; no container can be given it"


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
