"""`kdp-host check`'s warnings about container paths: two resources that hand out one, two
devices of one resource that place different things at one or things that nest (the rule
of `container_paths`), and such a pair on one NUMA node, where the kubelet's topology
manager may hand it out without asking GetPreferredAllocation."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from .check import CheckRow
from .config import Config
from .container_path_lists import SharedPath, shared_paths
from .container_paths import Placement, ancestors, device_placements, mount_placement, nests
from .devices import Device
from .logs import quote_text

CONTAINER_PATHS_SHOWN = 5
"""Container paths a `container_path_warnings` line names (then how many more)."""


def container_path_warnings(rows: Iterable[CheckRow], config: Config) -> list[str]:
    """One line per pair of resources whose devices' nodes or `allocate.mounts` land on
    one container path: a container asking for both gets only one of each such path (the
    kubelet keeps one DeviceSpec and one mount per container path), charged for both. Two
    resources' Allocates are separate calls: kdp-host cannot refuse it, only warn."""
    placed: dict[str, dict[tuple[str, Placement], None]] = {}
    for row in rows:
        if row.device is not None:
            for path, placement in device_placements(row.device):
                placed.setdefault(path, {})[row.resource, placement] = None
    for resource in config.resources:
        for configured in resource.allocate.mounts:
            placement = mount_placement(configured.host_path, configured.read_only)
            placed.setdefault(configured.container_path, {})[resource.name, placement] = None
    pairs: dict[tuple[str, str], list[str]] = {}
    for path, here in placed.items():
        for pair in itertools.combinations(sorted({name for name, _ in here}), 2):
            pairs.setdefault(pair, []).append(path)
    lines = []
    for (one, other), paths in sorted(pairs.items()):
        paths.sort()
        shown = ", ".join(quote_text(p) for p in paths[:CONTAINER_PATHS_SHOWN])
        more = len(paths) - CONTAINER_PATHS_SHOWN
        lines.append(
            f"warning: {one} and {other} hand out {shown}"
            + (f" and {more} more container path(s)" if more > 0 else "")
            + ": a container that asks for both gets only one of each (the kubelet keeps one "
            "device node and one mount per container path), charged for both"
        )
    return lines + _nested_across(placed)


def _nested_across(placed: dict[str, dict[tuple[str, Placement], None]]) -> list[str]:
    """One line per pair of resources one of whose container paths is below the other's,
    where they collide by the rule (`container_paths.nests`: a node below a mount is made
    inside the mount's host directory; hostile28 G5)."""
    nested: dict[tuple[str, str], list[str]] = {}
    for path, here in placed.items():
        for above in ancestors(path):
            for outer_name, outer in placed.get(above, {}):
                for name, placement in here:
                    if name != outer_name and nests(outer, placement):
                        where = f"{name}'s {quote_text(path)} below {quote_text(above)}"
                        nested.setdefault((outer_name, name), []).append(where)
    lines = []
    for (outer_name, name), places in sorted(nested.items()):
        found = sorted(set(places))
        more = len(found) - CONTAINER_PATHS_SHOWN
        lines.append(
            f"warning: {outer_name} and {name} nest: "
            + ", ".join(found[:CONTAINER_PATHS_SHOWN])
            + (f" and {more} more" if more > 0 else "")
            + f" of {outer_name}: a container that asks for both has a device node made "
            "inside a mount's host directory (the runtime mounts first): keep them out of "
            "one container (two Allocates: kdp-host cannot refuse it, only warn)"
        )
    return lines


def shared_path_warnings(rows: Iterable[CheckRow]) -> list[str]:
    """One line per container path two devices of one resource place different things at,
    and per two devices whose paths nest (`container_path_lists.shared_paths`, the rule
    Allocate refuses by): no container can be given both, and a run steers the kubelet's
    pick clear of such pairs."""
    lines = []
    for resource, devices in _listed(rows).items():
        at, nested = _sharing(devices)
        for path, named in at.items():
            lines.append(
                f"warning: {resource}: devices {_names(named)} share container path "
                f"{quote_text(path)}: never both in one container (the runtime keeps one node "
                "or mount per container path, so Allocate refuses such a pair); a run "
                "announces GetPreferredAllocation and steers the kubelet clear of such "
                "pairs, so a pod is refused only when no free set fits side by side (a "
                "containerPath with {path} gives each device its own)"
            )
        for shared in nested:
            lines.append(
                f"warning: {resource}: devices {_nesting(shared)} nest: never both in one "
                "container (a device node below a mount would be made inside the mount's "
                "host directory, and nothing can be placed below a device node, so Allocate "
                "refuses such a pair); a run announces GetPreferredAllocation and steers the "
                "kubelet clear of such pairs"
            )
    return lines


def numa_pair_warnings(rows: Iterable[CheckRow]) -> list[str]:
    """One line per container path two devices of one NUMA node place different things at,
    and per two of them whose paths nest (hostile25 F2): where the kubelet's topology
    manager aligns devices and the node it chose has exactly as many free devices as a
    container asks for, the kubelet takes them itself, without GetPreferredAllocation, and
    Allocate refuses the pair though another node's set may fit. The pairs are those of
    `shared_paths` among one node's devices."""
    lines = []
    for resource, devices in _listed(rows).items():
        nodes: dict[int, list[Device]] = {}
        for device in devices:
            if device.numa is not None:
                nodes.setdefault(device.numa, []).append(device)
        for numa, on_node in sorted(nodes.items()):
            at, nested = _sharing(on_node)
            pairs = [
                *(
                    f"{_names(named)} share container path {quote_text(p)}"
                    for p, named in at.items()
                ),
                *(f"{_nesting(shared)} nest" for shared in nested),
            ]
            for pair in pairs:
                lines.append(
                    f"warning: {resource}: devices {pair} and sit on NUMA node {numa}: with "
                    "the topology manager aligning devices (a policy but none), a container "
                    f"given node {numa} when its free devices are exactly as many as asked "
                    "gets them from the kubelet without GetPreferredAllocation, and such a "
                    "pair is refused; keep colliding devices on different NUMA nodes (or give "
                    "each its own containerPath)"
                )
    return lines


def _listed(rows: Iterable[CheckRow]) -> dict[str, list[Device]]:
    """The devices of each resource, in the table's order."""
    listed: dict[str, list[Device]] = {}
    for row in rows:
        if row.device is not None:
            listed.setdefault(row.resource, []).append(row.device)
    return listed


def _sharing(devices: Sequence[Device]) -> tuple[dict[str, dict[str, str]], list[SharedPath]]:
    """By `shared_paths`: container path -> each device placing something different there
    (with the first one there) -> its host path there; and the pairs whose paths nest."""
    at: dict[str, dict[str, str]] = {}
    nested: list[SharedPath] = []
    for shared in shared_paths(devices):
        if shared.first_path != shared.container_path:
            nested.append(shared)
            continue
        users = at.setdefault(shared.container_path, {shared.first: shared.first_host})
        users.setdefault(shared.second, shared.second_host)
    return at, nested


def _names(users: dict[str, str]) -> str:
    """`a (host), b (host) and c (host)`: the devices and host paths, quoted."""
    named = [f"{quote_text(device)} ({quote_text(host)})" for device, host in users.items()]
    return f"{', '.join(named[:-1])} and {named[-1]}"


def _nesting(shared: SharedPath) -> str:
    """`a (host) at /p and b (host) at /p/q`: two devices whose container paths nest."""
    first = f"{quote_text(shared.first)} ({quote_text(shared.first_host)})"
    second = f"{quote_text(shared.second)} ({quote_text(shared.second_host)})"
    return (
        f"{first} at {quote_text(shared.first_path)} and {second} at "
        f"{quote_text(shared.container_path)}"
    )
