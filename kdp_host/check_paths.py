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
from .devices import Device
from .logs import quote_text

CONTAINER_PATHS_SHOWN = 5
"""Container paths a `container_path_warnings` line names (then how many more)."""


def container_path_warnings(rows: Iterable[CheckRow], config: Config) -> list[str]:
    """One line per pair of resources whose devices' nodes or `allocate.mounts` land on
    one container path: a container asking for both gets only one of each such path (the
    kubelet keeps one DeviceSpec and one mount per container path), charged for both. Two
    resources' Allocates are separate calls: kdp-host cannot refuse it, only warn."""
    users: dict[str, set[str]] = {}
    for row in rows:
        if row.device is not None:
            for node in row.device.nodes:
                users.setdefault(node.container_path, set()).add(row.resource)
            for mount in row.device.mounts:
                users.setdefault(mount.container_path, set()).add(row.resource)
    for resource in config.resources:
        for configured in resource.allocate.mounts:
            users.setdefault(configured.container_path, set()).add(resource.name)
    pairs: dict[tuple[str, str], list[str]] = {}
    for path, names in users.items():
        for pair in itertools.combinations(sorted(names), 2):
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
