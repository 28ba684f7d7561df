"""GetPreferredAllocation: the `preferred` policies (packed, spread, numa) and the steering
clear of shared container paths (when they are asked for at all: `preferred_need`).

They run on the admission path of every pod (the kubelet calls them with no deadline), so
they do plain in-memory work on the current snapshot and nothing else. Shared devices
(`replicas: N`) are advertised as N IDs per physical device (`<id>::<k>`); the policies
rank IDs by their physical device and its NUMA node.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from .config import PreferredPolicy
from .container_paths import FITTING_SET_WIDTH, PathClaims, fitting_set
from .devices import REPLICA_SEPARATOR, Advertised, Device, Snapshot

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


def preferred_allocation(
    policy: PreferredPolicy,
    snapshot: Snapshot,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    *,
    steer: bool = False,
) -> list[str]:
    """A deterministic choice of up to `size` IDs, always containing `must_include`.

    The answer is `must_include` (deduplicated, in request order; kept even when not in
    `available`, since the kubelet already gave those to the container) followed by
    candidates from `available`. Candidates are only IDs of the current snapshot that are
    Healthy: proposing an ID the plugin does not know or holds Unhealthy would make the
    following Allocate fail, while returning fewer is allowed (the kubelet fills the rest
    itself). So the length is `min(size, len(must_include) + usable candidates)`, or
    `len(must_include)` when that alone exceeds `size` (the kubelet never asks that).

    With `steer` (the list holds devices that share a container path: `PreferredNeed`),
    no candidate places something else at a container path the answer's devices already
    use (`container_paths.PathClaims`, the rule Allocate refuses by): the policy chooses
    among the candidates that fit what is chosen, and again for the rest while two of its
    picks collide (each round keeps its first pick, so at most `size` rounds). Where those
    rounds come up short (a device first chosen collides with every one left, while others
    fit side by side: d1 at /dev/x and /dev/y, d2 at /dev/x, d3 at /dev/y), a bounded
    search (`container_paths.fitting_set`) looks for a full set in the policy's order. The answer is
    shorter only where none is found.

    Which IDs are chosen depends only on the snapshot and on the sets passed, not on the
    order or duplicates of the lists. It raises only on a bug: the plugin catches that,
    logs and counts it, and answers with a plain valid subset.
    """
    chosen = list(dict.fromkeys(must_include))
    wanted = size - len(chosen)
    offered = set(available).difference(chosen)
    if wanted <= 0 or not offered:
        return chosen
    if not steer:
        return chosen + _pick(policy, snapshot, offered, chosen, wanted)
    lookup = snapshot.by_advertised_id
    base = PathClaims()  # (what the container has)
    for entry in filter(None, map(lookup.get, chosen)):
        base.add(entry.device)
    if len(snapshot.advertised) == len(snapshot.devices) and not snapshot.has_numa:
        # Every policy ranks by ID alone (one ID a device, no NUMA node): the rounds below
        # come to the first IDs in the snapshot's order that fit, found without ranking all.
        found = _fitting_in_order(snapshot, offered, base.copy(), wanted)
        if found is not None:
            return chosen + found
    if base:
        offered = {i for i in offered if (e := lookup.get(i)) and base.fits(e.device)}
    candidates, first, claims = set(offered), len(chosen), base.copy()
    while wanted > 0:
        if claims:  # (nothing claimed yet: every candidate fits)
            offered = {i for i in offered if (e := lookup.get(i)) and claims.fits(e.device)}
        picked = _pick(policy, snapshot, offered, chosen, wanted) if offered else []
        if not picked:
            break
        for device_id in picked:
            device = lookup[device_id].device
            if claims.fits(device):
                claims.add(device)
                chosen.append(device_id)
                wanted -= 1
            offered.discard(device_id)
    if wanted > 0 and len(candidates) > len(chosen) - first:
        order = _pick(policy, snapshot, candidates, chosen[:first], FITTING_SET_WIDTH)
        found = fitting_set(order, snapshot.by_advertised_id, base.copy(), size - first)
        if found is not None:
            return chosen[:first] + found
    return chosen


def first_healthy(
    snapshot: Snapshot, available: Sequence[str], must_include: Sequence[str], size: int
) -> list[str]:
    """What the container has, then the first healthy of `available` up to `size`: the
    answer when the policy failed (`preferred_allocation_failed`)."""
    ids = list(dict.fromkeys(must_include))
    for device_id in available:
        if len(ids) >= size:
            break
        entry = snapshot.by_advertised_id.get(device_id)
        if entry is not None and entry.healthy and device_id not in ids:
            ids.append(device_id)
    return ids


def _fitting_in_order(
    snapshot: Snapshot, offered: set[str], claims: PathClaims, wanted: int
) -> list[str] | None:
    """The first `wanted` healthy IDs of `offered`, in the snapshot's order, each fitting
    `claims` and those before it (claimed in `claims`), or None where fewer do."""
    entries: Iterable[Advertised] = snapshot.advertised
    if len(offered) * 8 < len(snapshot.advertised):  # (a short offer: sorted, not walked)
        lookup = snapshot.by_advertised_id
        entries = sorted(filter(None, map(lookup.get, offered)), key=_advertised_order)
    picked: list[str] = []
    for entry in entries:
        if entry.healthy and entry.id in offered and claims.fits(entry.device):
            claims.add(entry.device)
            picked.append(entry.id)
            if len(picked) == wanted:
                return picked
    return None


def _pick(
    policy: PreferredPolicy, snapshot: Snapshot, offered: set[str], chosen: list[str], wanted: int
) -> list[str]:
    """The policy's `wanted` IDs of `offered`, next to `chosen` (the container's)."""
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
        return _spread(groups, used_physical, wanted)
    if policy == "numa":
        return _numa(groups, used_numa, wanted)
    groups.sort()
    return _take_packed(groups, wanted)


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
