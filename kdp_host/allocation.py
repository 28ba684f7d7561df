"""Allocation: preferred-allocation policies and AllocateResponse building.

Both run on the admission path of every pod (the kubelet calls them with no deadline), so
they do plain in-memory work on the current snapshot and nothing else.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .api.v1beta1 import CdiDevice, ContainerAllocateResponse, DeviceSpec, Mount
from .config import PreferredPolicy, ResourceConfig
from .devices import AdvertisedDevice, Snapshot

_TEMPLATE_FIELD = re.compile(r"\{(ids|paths|count|resource)\}")


class AllocationError(ValueError):
    """A request the plugin must refuse (unknown or unhealthy IDs): INVALID_ARGUMENT."""


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute `{ids}` `{paths}` `{count}` `{resource}`; any other brace text stays as is."""
    return _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], text)


@dataclass(frozen=True)
class AllocationBuilder:
    """Turns requested device IDs into the container options the kubelet passes on."""

    resource: ResourceConfig

    def container_response(
        self, snapshot: Snapshot, requested_ids: Sequence[str]
    ) -> ContainerAllocateResponse:
        entries = self._resolve(snapshot, requested_ids)
        allocate = self.resource.allocate
        physical = list({entry.device.id: entry.device for entry in entries}.values())
        specs: dict[str, DeviceSpec] = {}
        for device in physical:
            for node in device.nodes:
                specs.setdefault(
                    node.container_path,
                    DeviceSpec(
                        container_path=node.container_path,
                        host_path=node.host_path,
                        permissions=allocate.permissions,
                    ),
                )
        values = {
            "ids": ",".join(sorted(entry.id for entry in entries)),
            "paths": ",".join(specs),
            "count": str(len(entries)),
            "resource": self.resource.name,
        }
        envs = {key: render_template(text, values) for key, text in allocate.env.items()}
        annotations = {
            key: render_template(text, values) for key, text in allocate.annotations.items()
        }
        _merge_device_maps(envs, (device.env for device in physical))
        _merge_device_maps(annotations, (device.annotations for device in physical))
        mounts: dict[str, Mount] = {}
        for mount in allocate.mounts:
            mounts.setdefault(
                mount.container_path,
                Mount(mount.container_path, mount.host_path, mount.read_only),
            )
        for device in physical:
            for device_mount in device.mounts:
                mounts.setdefault(
                    device_mount.container_path,
                    Mount(
                        device_mount.container_path,
                        device_mount.host_path,
                        device_mount.read_only,
                    ),
                )
        cdi = allocate.cdi
        response = ContainerAllocateResponse(
            envs=envs,
            mounts=list(mounts.values()),
            annotations=annotations,
        )
        if cdi is None or cdi.also_device_specs:
            response.devices = list(specs.values())
        if cdi is not None:
            response.cdi_devices = [CdiDevice(name=f"{cdi.kind}={d.id}") for d in physical]
        return response

    def _resolve(self, snapshot: Snapshot, requested_ids: Sequence[str]) -> list[AdvertisedDevice]:
        if not requested_ids:
            raise AllocationError("no device IDs in the container request")
        found: list[AdvertisedDevice] = []
        unknown: list[str] = []
        unhealthy: list[str] = []
        for device_id in dict.fromkeys(requested_ids):
            entry = snapshot.by_advertised_id.get(device_id)
            if entry is None:
                unknown.append(device_id)
            elif not entry.healthy:
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


def _merge_device_maps(target: dict[str, str], sources: Iterable[Mapping[str, str]]) -> None:
    """Per-device entries join the resource-level ones; configured keys win.

    When several devices set the same key, their distinct values are joined with commas
    in device order (e.g. one `FPGA_SLOT` per device becomes `FPGA_SLOT=0,1`).
    """
    collected: dict[str, list[str]] = defaultdict(list)
    for source in sources:
        for key, value in source.items():
            if key not in target and value not in collected[key]:
                collected[key].append(value)
    for key, values in collected.items():
        target[key] = ",".join(values)


@dataclass(frozen=True)
class _Candidate:
    id: str
    physical: str
    numa: int | None


def preferred_allocation(
    policy: PreferredPolicy,
    snapshot: Snapshot,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """A deterministic choice of `size` IDs from `available`, always containing `must_include`.

    IDs the plugin does not know or that are unhealthy are never proposed (must_include
    ones excepted: the kubelet already gave those to the container).
    """
    chosen = list(dict.fromkeys(must_include))
    if size <= len(chosen):
        return chosen
    taken = set(chosen)
    candidates: list[_Candidate] = []
    for device_id in sorted(set(available) - taken):
        entry = snapshot.by_advertised_id.get(device_id)
        if entry is not None and entry.healthy:
            candidates.append(_Candidate(device_id, entry.device.id, entry.device.numa))
    chosen_entries = [snapshot.by_advertised_id.get(device_id) for device_id in chosen]
    chosen_physical = [e.device.id for e in chosen_entries if e is not None]
    chosen_numa = {e.device.numa for e in chosen_entries if e is not None}
    wanted = size - len(chosen)
    if policy == "spread":
        picked = _spread(candidates, chosen_physical, wanted)
    elif policy == "numa":
        picked = _numa(candidates, chosen_numa, wanted)
    else:
        picked = _packed(candidates, chosen_physical, chosen_numa)[:wanted]
    return chosen + [c.id for c in picked]


def _numa_key(numa: int | None) -> int:
    return 1 << 30 if numa is None else numa


def _packed(
    candidates: list[_Candidate], used_physical: Iterable[str], used_numa: set[int | None]
) -> list[_Candidate]:
    """Fill the physical devices (and NUMA nodes) already in use, then the fullest next."""
    used = set(used_physical)
    free_per_physical: dict[str, int] = defaultdict(int)
    for c in candidates:
        free_per_physical[c.physical] += 1
    return sorted(
        candidates,
        key=lambda c: (
            c.numa not in used_numa,
            _numa_key(c.numa),
            c.physical not in used,
            free_per_physical[c.physical],
            c.physical,
            c.id,
        ),
    )


def _spread(
    candidates: list[_Candidate], used_physical: Iterable[str], wanted: int
) -> list[_Candidate]:
    """One replica per physical device in turn, least loaded device first."""
    by_physical: dict[str, list[_Candidate]] = defaultdict(list)
    for c in candidates:
        by_physical[c.physical].append(c)
    load: dict[str, int] = defaultdict(int)
    for physical in used_physical:
        load[physical] += 1
    heap = [(load[p], -len(items), p) for p, items in by_physical.items()]
    heapq.heapify(heap)
    picked: list[_Candidate] = []
    cursor: dict[str, int] = defaultdict(int)
    while heap and len(picked) < wanted:
        count, neg_free, physical = heapq.heappop(heap)
        items = by_physical[physical]
        picked.append(items[cursor[physical]])
        cursor[physical] += 1
        if cursor[physical] < len(items):
            heapq.heappush(heap, (count + 1, neg_free + 1, physical))
    return picked


def _numa(
    candidates: list[_Candidate], used_numa: set[int | None], wanted: int
) -> list[_Candidate]:
    """All from one NUMA node when one can hold the request, else from the fewest nodes."""
    by_node: dict[int | None, list[_Candidate]] = defaultdict(list)
    for c in _packed(candidates, (), used_numa):
        by_node[c.numa].append(c)
    nodes = sorted(
        by_node,
        key=lambda n: (n is None, n not in used_numa, -len(by_node[n]), _numa_key(n)),
    )
    fitting = [n for n in nodes if n is not None and len(by_node[n]) >= wanted]
    if fitting:
        best = min(fitting, key=lambda n: (n not in used_numa, len(by_node[n]), _numa_key(n)))
        return by_node[best][:wanted]
    picked: list[_Candidate] = []
    for node in nodes:
        picked.extend(by_node[node][: wanted - len(picked)])
        if len(picked) >= wanted:
            break
    return picked
