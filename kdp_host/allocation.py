"""Allocation: preferred-allocation policies and AllocateResponse building.

Both run on the admission path of every pod (the kubelet calls them with no deadline), so
they do plain in-memory work on the current snapshot and nothing else.

Shared devices (`replicas: N`) are advertised as N IDs per physical device (`<id>::<k>`).
Everything a container receives is about *physical* devices: replicas of the same device
collapse into one DeviceSpec, one CDI name, one entry of `{ids}`.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .api.v1beta1 import CdiDevice, ContainerAllocateResponse, DeviceSpec, Mount
from .command_output import ContainerExtras
from .config import MountConfig, PreferredPolicy, ResourceConfig, render_template
from .devices import REPLICA_SEPARATOR, Advertised, Device, DeviceMount, DeviceNode, Snapshot
from .names import CDI_NAME, make_name
from .rules import LIST_SEPARATOR, join_list

ALLOCATION_DEPENDENT_FIELDS: Final = frozenset({"ids", "paths", "count"})
"""Template fields whose value depends on which devices a container got."""


class AllocationError(ValueError):
    """A request the plugin must refuse (unknown or unhealthy IDs, two different nodes or
    mounts for one container path): INVALID_ARGUMENT."""


def cdi_device_name(device_id: str) -> str:
    """The CDI device name of a physical device: one-to-one, so two devices of a resource
    never share a name (their resource owns its CDI kind: config check).

    CDI device names are `[A-Za-z0-9]`, then `[A-Za-z0-9_.:-]`, ending alphanumeric. An ID
    that is such a name and holds no `::` is its own name (glob IDs, most others). Any other
    ID (`dongle/1`, `_x`, `a::b`) is named `<readable>::<hex of the ID's UTF-8>`: the
    readable part has no `:`, so the first `::` starts the hex, which spells the whole ID --
    distinct from every other ID's name by construction, and never an ID's own name (those
    have no `::`): `names.CDI_NAME`. The Allocate response and the CDI spec file both name
    devices with this function.
    """
    return make_name(device_id, CDI_NAME)


def has_cdi_edits(device: Device) -> bool:
    """Whether a device has something CDI can inject on its own (a node or a mount).

    CDI rejects a spec device with empty edits, so devices without either are left out of
    the spec file and get no CDI name in Allocate (their env and annotations still come
    through the Allocate response).
    """
    return bool(device.nodes or device.mounts)


HOOK: Final = "allocate.command"
"""The owner named for what an `allocate.command` printed."""


class _ContainerPaths:
    """The device nodes and mounts of one container, by container path: the one place that
    refuses two different things for one container path.

    The kubelet keeps only one of them (docs/kubelet-contract.md §7), so the container would
    get fewer nodes or mounts than it was charged for, or a mount over a device node.
    Identical entries (a node every device shares, such as /dev/vfio/vfio) are kept once.
    """

    def __init__(self, resource: str, permissions: str) -> None:
        self._resource = resource
        self._permissions = permissions
        self.specs: dict[str, DeviceSpec] = {}
        self.mounts: dict[str, Mount] = {}
        self._owners: dict[str, str] = {}

    def add_node(self, owner: str, node: DeviceNode) -> DeviceSpec | None:
        """Claim `node`'s container path; the new DeviceSpec, or None if it was there."""
        path = node.container_path
        known = self.specs.get(path)
        if known is not None:
            if known.host_path != node.host_path:
                raise self._collision("device node", path, known.host_path, owner, node.host_path)
            return None
        if path in self.mounts:
            raise self._collision(
                "device node", path, self.mounts[path].host_path, owner, node.host_path
            )
        spec = DeviceSpec(
            container_path=path,
            host_path=node.host_path,
            permissions=node.permissions or self._permissions,
        )
        self.specs[path] = spec
        self._owners[path] = owner
        return spec

    def add_mount(self, owner: str, mount: MountConfig | DeviceMount) -> None:
        path = mount.container_path
        if path in self.specs:
            raise self._collision("mount", path, self.specs[path].host_path, owner, mount.host_path)
        known = self.mounts.get(path)
        if known is None:
            self.mounts[path] = Mount(
                container_path=path, host_path=mount.host_path, read_only=mount.read_only
            )
            self._owners[path] = owner
        elif (known.host_path, known.read_only) != (mount.host_path, mount.read_only):
            raise self._collision("mount", path, known.host_path, owner, mount.host_path)

    def _collision(
        self, what: str, path: str, first_host: str, owner: str, host: str
    ) -> AllocationError:
        return AllocationError(
            f"{self._resource}: cannot allocate: {what} container path {path} is claimed "
            f"twice, by {self._owners[path]} (host path {first_host}) and by {owner} (host "
            f"path {host}); the runtime would keep only one of them"
        )


@dataclass(frozen=True)
class AllocationBuilder:
    """Turns requested device IDs into the container options the kubelet passes on."""

    resource: ResourceConfig

    def container_response(
        self,
        snapshot: Snapshot,
        requested_ids: Sequence[str],
        extras: ContainerExtras | None = None,
    ) -> ContainerAllocateResponse:
        """The options for one container, with what its `allocate.command` printed (`extras`,
        whose keys and names the response has already are left out); raises AllocationError
        for unknown/unhealthy IDs and for two different nodes or mounts on one container path.

        The result depends only on the *set* of physical devices behind the requested IDs
        (the kubelet sends IDs in Go map order): devices are taken in ID order.
        """
        entries = self._resolve(snapshot, requested_ids)
        allocate = self.resource.allocate
        name = self.resource.name
        physical = sorted({e.device.id: e.device for e in entries}.values(), key=_device_id)
        paths = _ContainerPaths(name, allocate.permissions)
        for device in physical:
            for node in device.nodes:
                paths.add_node(device.id, node)
        device_specs = list(paths.specs.values())
        values = template_values(name, physical, paths.specs)
        envs = {key: render_template(text, values) for key, text in allocate.env.items()}
        annotations = {
            key: render_template(text, values) for key, text in allocate.annotations.items()
        }
        _merge_device_maps(name, "env", envs, ((d.id, d.env) for d in physical))
        _merge_device_maps(
            name, "annotation", annotations, ((d.id, d.annotations) for d in physical)
        )
        for configured in allocate.mounts:
            paths.add_mount("allocate.mounts", configured)
        for device in physical:
            for device_mount in device.mounts:
                paths.add_mount(device.id, device_mount)
        cdi = allocate.cdi
        specs = device_specs if cdi is None or cdi.also_device_specs else []
        cdi_names = (
            []
            if cdi is None
            else [f"{cdi.kind}={cdi_device_name(d.id)}" for d in physical if has_cdi_edits(d)]
        )
        if extras is not None:
            for key, value in extras.env.items():
                envs.setdefault(key, value)
            for key, value in extras.annotations.items():
                annotations.setdefault(key, value)
            specs += [spec for node in extras.nodes if (spec := paths.add_node(HOOK, node))]
            for printed in extras.mounts:
                paths.add_mount(HOOK, printed)
            cdi_names = list(dict.fromkeys([*cdi_names, *extras.cdi_devices]))
        return ContainerAllocateResponse(
            envs=envs,
            mounts=list(paths.mounts.values()),
            devices=specs,
            annotations=annotations,
            cdi_devices=[CdiDevice(name=cdi_name) for cdi_name in cdi_names],
        )

    def physical_devices(
        self, snapshot: Snapshot, requested_ids: Sequence[str], *, healthy_only: bool = True
    ) -> list[Device]:
        """The physical devices behind `requested_ids`, in ID order; raises AllocationError
        for unknown IDs (and, with `healthy_only`, for unhealthy ones)."""
        entries = self._resolve(snapshot, requested_ids, healthy_only=healthy_only)
        return sorted({e.device.id: e.device for e in entries}.values(), key=_device_id)

    def _resolve(
        self, snapshot: Snapshot, requested_ids: Sequence[str], *, healthy_only: bool = True
    ) -> list[Advertised]:
        if not requested_ids:
            raise AllocationError(f"{self.resource.name}: no device IDs in the container request")
        found: list[Advertised] = []
        unknown: list[str] = []
        unhealthy: list[str] = []
        for device_id in dict.fromkeys(requested_ids):
            entry = snapshot.by_advertised_id.get(device_id)
            if entry is None:
                unknown.append(device_id)
            elif healthy_only and not entry.healthy:
                unhealthy.append(device_id)
            else:
                found.append(entry)
        problems = []
        if unknown:
            problems.append(f"unknown device ID(s) {', '.join(sorted(unknown))}")
        if unhealthy:
            problems.append(f"unhealthy device ID(s) {', '.join(sorted(unhealthy))}")
        if problems:
            raise AllocationError(f"{self.resource.name}: cannot allocate: {'; '.join(problems)}")
        return found


def template_values(
    resource: str, physical: Sequence[Device], container_paths: Iterable[str]
) -> dict[str, str]:
    """The values of the allocate templates: `{ids}`, `{paths}`, `{count}`, `{resource}`.

    Lists are rendered by rules.join_list, whose separator no ID or device path contains,
    so they split back into exactly the devices of the container."""
    return {
        "ids": join_list(device.id for device in physical),
        "paths": join_list(container_paths),
        "count": str(len(physical)),
        "resource": resource,
    }


def hook_values(resource: str, physical: Sequence[Device]) -> dict[str, str]:
    """The templates of the preStart and allocate commands: the allocate ones (container
    paths as Allocate passes them, one per container path) plus `{hostPaths}`."""
    nodes = {n.container_path: n for device in physical for n in device.nodes}
    values = template_values(resource, physical, nodes)
    values["hostPaths"] = join_list(dict.fromkeys(n.host_path for n in nodes.values()))
    return values


def device_env(resource: str, physical: Iterable[Device]) -> dict[str, str]:
    """The devices' own env entries, distinct values joined like Allocate joins them;
    raises AllocationError like Allocate."""
    env: dict[str, str] = {}
    _merge_device_maps(resource, "env", env, ((device.id, device.env) for device in physical))
    return env


def _device_id(device: Device) -> str:
    return device.id


def _merge_device_maps(
    resource: str,
    what: str,
    target: dict[str, str],
    sources: Iterable[tuple[str, Mapping[str, str]]],
) -> None:
    """Per-device entries join the resource-level ones; configured keys win.

    When several devices set the same key, their distinct values are a list, rendered by
    rules.join_list in device order (one `FPGA_SLOT` per device becomes `FPGA_SLOT=0,1`).
    A value holding the separator could not be told apart from two values there (a USB
    serial `A,B` would name another stick's serial `B`), so such a list is refused
    (AllocationError); alone, a value is passed as it is.
    """
    collected: dict[str, dict[str, str]] = defaultdict(dict)
    for device_id, source in sources:
        for key, value in source.items():
            if key not in target:
                collected[key].setdefault(value, device_id)
    for key, values in collected.items():
        if len(values) > 1:
            for value, device_id in values.items():
                if LIST_SEPARATOR in value:
                    raise AllocationError(
                        f"{resource}: cannot allocate: {what} {key} of device {device_id} is "
                        f"{value!r}, which holds {LIST_SEPARATOR!r}: joined with the other "
                        "devices' values it would not split back into one value per device"
                    )
        target[key] = join_list(values)


# --------------------------------------------------------------------------- preferred


_NO_NODE = 1 << 62
"""Sort key of "no NUMA information": after every real node."""

_Group = tuple[bool, int, bool, int, str, "int | None", list[str]]
"""The candidate replicas of one physical device, as a tuple whose natural order is the
packed fill order: (not on a NUMA node of must_include, node number, not a device of
must_include, free replicas, physical ID, NUMA node, candidate IDs in replica order).
Plain tuples sort at C speed; this keeps a 1,000-device answer well under a millisecond."""
_OFF_DEVICE: Final = 2
_FREE: Final = 3
_PHYSICAL: Final = 4
_NUMA: Final = 5
_IDS: Final = 6


def preferred_can_matter(policy: PreferredPolicy, replicas: int, devices: Iterable[Device]) -> bool:
    """Whether GetPreferredAllocation can choose better than the kubelet alone, so whether
    the resource advertises it (each advertised call is one more RPC per container admitted).

    The policies rank the free IDs by nothing but their physical device (the replicas of one
    device, `replicas` > 1) and its NUMA node. Without either, every policy answers "the
    first free IDs", which is as good as the kubelet's own pick. A resource whose answer
    changes (a device with a NUMA node appears) registers again (`serving.py`).
    """
    return policy != "none" and (replicas > 1 or any(device.numa is not None for device in devices))


def preferred_allocation(
    policy: PreferredPolicy,
    snapshot: Snapshot,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """A deterministic choice of up to `size` IDs, always containing `must_include`.

    The answer is `must_include` (deduplicated, in request order; kept even when not in
    `available`, since the kubelet already gave those to the container) followed by
    candidates from `available`. Candidates are only IDs of the current snapshot that are
    Healthy: proposing an ID the plugin does not know or holds Unhealthy would make the
    following Allocate fail, while returning fewer is allowed (the kubelet fills the rest
    itself). So the length is `min(size, len(must_include) + usable candidates)`, or
    `len(must_include)` when that alone exceeds `size` (the kubelet never asks that).

    Which IDs are chosen depends only on the snapshot and on the sets passed, not on the
    order or duplicates of the lists. It raises only on a bug: the plugin catches that,
    logs and counts it, and answers with a plain valid subset.
    """
    chosen = list(dict.fromkeys(must_include))
    wanted = size - len(chosen)
    if wanted <= 0:
        return chosen
    offered = set(available).difference(chosen)
    if not offered:
        return chosen
    used_physical: dict[str, int] = defaultdict(int)
    used_numa: set[int] = set()
    lookup = snapshot.by_advertised_id
    for device_id in chosen:
        entry = lookup.get(device_id)
        if entry is not None:
            used_physical[entry.device.id] += 1
            if entry.device.numa is not None:
                used_numa.add(entry.device.numa)
    groups = _candidate_groups(snapshot, offered, used_physical, used_numa)
    if policy == "spread":
        picked = _spread(groups, used_physical, wanted)
    elif policy == "numa":
        picked = _numa(groups, used_numa, wanted)
    else:
        groups.sort()
        picked = _take_packed(groups, wanted)
    return chosen + picked


def _candidate_groups(
    snapshot: Snapshot,
    offered: set[str],
    used_physical: Mapping[str, int],
    used_numa: set[int],
) -> list[_Group]:
    """The offered IDs the snapshot holds Healthy, grouped by physical device.

    Walks the snapshot (physical devices by ID, replicas in order) rather than sorting the
    request, unless the request is much smaller than the snapshot.
    """
    entries: list[Advertised]
    if len(offered) * 8 < len(snapshot.advertised):
        lookup = snapshot.by_advertised_id
        entries = [e for e in map(lookup.get, offered) if e is not None and e.healthy]
        entries.sort(key=_advertised_order)
    else:
        entries = [e for e in snapshot.advertised if e.healthy and e.id in offered]
    groups: list[_Group] = []
    ids: list[str] = []
    device: Device | None = None
    for entry in entries:
        current = entry.device
        if current is not device and (device is None or current.id != device.id):
            if device is not None:
                groups.append(_group(device, ids, used_physical, used_numa))
            device, ids = current, []
        ids.append(entry.id)
    if device is not None:
        groups.append(_group(device, ids, used_physical, used_numa))
    return groups


def _group(
    device: Device, ids: list[str], used_physical: Mapping[str, int], used_numa: set[int]
) -> _Group:
    numa = device.numa
    return (
        numa not in used_numa,
        _NO_NODE if numa is None else numa,
        device.id not in used_physical,
        len(ids),
        device.id,
        numa,
        ids,
    )


def _advertised_order(entry: Advertised) -> tuple[str, int, str]:
    """The snapshot's own order: physical ID, then replica number (`::2` before `::10`)."""
    physical = entry.device.id
    suffix = entry.id[len(physical) + len(REPLICA_SEPARATOR) :]
    return physical, int(suffix) if suffix.isdigit() else 0, entry.id


def _take_packed(groups: list[_Group], wanted: int) -> list[str]:
    """Take from groups in packed order, spreading the container over few physical devices.

    First the devices the container already has (must_include): they add no device. Then,
    if one more device can hold the rest, the first such in packed order (on must_include's
    or the lowest NUMA node, the fullest that fits); otherwise fill devices fullest first.
    """
    picked: list[str] = []
    others: list[_Group] = []
    for group in groups:
        if group[_OFF_DEVICE]:
            others.append(group)
        elif len(picked) < wanted:
            picked.extend(group[_IDS][: wanted - len(picked)])
    need = wanted - len(picked)
    if need <= 0:
        return picked
    for group in others:
        if group[_FREE] >= need:
            return picked + group[_IDS][:need]
    return picked + _take(others, need)


def _take(groups: Iterable[_Group], wanted: int) -> list[str]:
    picked: list[str] = []
    for group in groups:
        picked.extend(group[_IDS][: wanted - len(picked)])
        if len(picked) >= wanted:
            break
    return picked


def _spread(groups: list[_Group], used_physical: Mapping[str, int], wanted: int) -> list[str]:
    """One replica per physical device in turn, the least loaded device first.

    Load is what this container already holds on the device (must_include, then each pick),
    then how many replicas others hold (fewest first = most free), then the NUMA nodes of
    must_include first, then node number and ID.
    """
    heap = [
        (used_physical.get(g[_PHYSICAL], 0), -g[_FREE], g[0], g[1], g[_PHYSICAL], index)
        for index, g in enumerate(groups)
    ]
    heapq.heapify(heap)
    picked: list[str] = []
    cursor = [0] * len(groups)
    while heap and len(picked) < wanted:
        load, neg_free, off_node, node, physical, index = heapq.heappop(heap)
        ids = groups[index][_IDS]
        picked.append(ids[cursor[index]])
        cursor[index] += 1
        if cursor[index] < len(ids):
            heapq.heappush(heap, (load + 1, neg_free + 1, off_node, node, physical, index))
    return picked


def _numa(groups: list[_Group], used_numa: set[int], wanted: int) -> list[str]:
    """All from one NUMA node when one can hold the request, else from the fewest nodes.

    A single node: one of must_include's nodes if it fits, else the node with the fewest
    free devices that still fits (best fit keeps big nodes for big requests). Otherwise:
    must_include's nodes first (they are spanned already), then the largest nodes, the last
    one best fit; devices without NUMA information last. Inside a node, packed order.
    """
    groups.sort()
    by_node: dict[int | None, list[_Group]] = defaultdict(list)
    free: dict[int | None, int] = defaultdict(int)
    for group in groups:
        by_node[group[_NUMA]].append(group)
        free[group[_NUMA]] += group[_FREE]
    real_nodes = [n for n in by_node if n is not None]
    if not real_nodes:
        return _take_packed(groups, wanted)
    fitting = [n for n in real_nodes if free[n] >= wanted]
    if fitting:
        best = min(fitting, key=lambda n: (n not in used_numa, free[n], n))
        return _take_packed(by_node[best], wanted)
    order = sorted(n for n in real_nodes if n in used_numa)
    others = sorted((n for n in real_nodes if n not in used_numa), key=lambda n: (-free[n], n))
    need = wanted - sum(free[n] for n in order)
    while need > 0 and others:
        fits = [n for n in others if free[n] >= need]
        node = min(fits, key=lambda n: (free[n], n)) if fits else others[0]
        others.remove(node)
        order.append(node)
        need -= free[node]
    return _take((g for node in [*order, None] for g in by_node.get(node, ())), wanted)
