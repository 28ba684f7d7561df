"""When GetPreferredAllocation is advertised, and what each of its answers needs: the
policy's ranking, the steering clear of shared container paths, or nothing (the kubelet
picks as it would alone).

Every admission of an advertising resource pays the call, and its request names every free
device (a probe of 20,000 devices: ~150 KB). So what is decided per call looks at what the
request asks for and at the few devices that collide (`SharedPathIndex.colliding`, kept as
the lists change), never at the whole list: the answers that need the whole list are the
policy's ranking and the steering of a container that may be given a colliding pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import GlobDriverConfig, PreferredPolicy, ResourceConfig
from .container_path_lists import SharedPathIndex, may_share_paths
from .container_paths import PathClaims
from .device_table import DeviceTable
from .devices import Device, Snapshot, physical_id, replica_ids


def preferred_can_matter(policy: PreferredPolicy, replicas: int, numa: bool) -> bool:
    """Whether a policy can choose better than the kubelet alone (`numa`: the devices carry,
    or may carry, a NUMA node).

    The policies rank the free IDs by nothing but their physical device (the replicas of one
    device, `replicas` > 1) and its NUMA node. Without either, every policy answers "the
    first free IDs", which is as good as the kubelet's own pick.
    """
    return policy != "none" and (replicas > 1 or numa)


def may_report_numa(resource: ResourceConfig) -> bool:
    """Whether a device of the resource may come with a NUMA node: a glob's only through
    `numaNode` or `numaNodeFile`; a sysfs device reads its `numa_node`, a probe may print one."""
    driver = resource.driver
    if isinstance(driver, GlobDriverConfig):
        return driver.numa_node is not None or driver.numa_node_file is not None
    return True


class PreferredNeed:
    """Whether a resource advertises GetPreferredAllocation, and what its answers need.

    The kubelet takes the option at registration only, and registering again marks every
    device of the resource unhealthy until the new registration is in (every admission in
    that window is refused for good: docs/kubelet-contract.md §4, §9; over the ~2 s of a
    plugin-manager reconcile with `pluginsRegistry`). So the option is decided by the config
    alone, from the first registration, and no device list ever calls for a registration:
    - whatever the policy (`none` too), where two devices may place different things at one
      container path (`container_path_lists.may_share_paths`): while the list holds such a pair
      the answers steer the kubelet clear of it (Allocate must refuse such a set);
    - where a policy can choose better than the kubelet: `replicas` > 1, or devices that may
      come with a NUMA node (`may_report_numa`).
    Each advertised call is one more RPC per container admitted. While nothing the policy
    ranks by is in the list and the container cannot be given a colliding pair (`steers`),
    the answer is "no preference" (empty: the kubelet picks as it would alone), made without
    looking at the request's every ID.
    """

    def __init__(self, config: ResourceConfig, table: DeviceTable) -> None:
        self._policy = config.preferred
        self._replicas = config.replicas
        self._table = table
        self._index = SharedPathIndex() if may_share_paths(config) else None
        self.announced = self._index is not None or preferred_can_matter(
            self._policy, self._replicas, may_report_numa(config)
        )
        """Advertised (`get_preferred_allocation_available`), from the first registration."""

    def follow(self, devices: Mapping[str, Device]) -> None:
        """Take each list the table is given (`DeviceTable.follow_lists`: the resource's one
        PreferredNeed), so a list costs what changed; unfollowed, `shared` looks at the
        table's list when asked (a walk where the lists in between are gone)."""
        if self._index is not None:
            self._index.update(devices)

    def shared(self) -> bool:
        """Whether two devices of the list place different things at one container path
        (never looked at where the config rules it out)."""
        return self._index is not None and self._index.update(self._table.reported)

    def policy_matters(self, snapshot: Snapshot) -> bool:
        """Whether the policy's answer for `snapshot` can differ from the kubelet's own pick
        (`preferred_can_matter`; whether a device carries a NUMA node: once per snapshot)."""
        return preferred_can_matter(self._policy, self._replicas, snapshot.has_numa)

    def steers(
        self, snapshot: Snapshot, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> bool:
        """Whether the answer to one container's request must steer it clear of a collision:
        a set the kubelet could pick alone (`must_include`, then from `available`) may hold
        two devices that place different things at one container path.

        Two devices collide only if both are `colliding` ones, so it never may where the
        list holds no pair, where the container is given one device besides what it has and
        that holds none of them (a one-device pod: nothing looked at), or where the colliding
        devices it may be given fit side by side (`PathClaims`, the one rule). Only then are
        the request's IDs looked at: as a set, for the colliding devices' IDs. While entries
        of the list nest (the colliding devices not named), it may wherever the container is
        given more than one device, or one besides what it has.
        """
        if not self.shared():
            return False
        must = dict.fromkeys(must_include)
        wanted = size - len(must)
        if wanted <= 0:
            return False  # (the answer is what the container has)
        assert self._index is not None  # (shared)
        colliding = self._index.colliding()
        if wanted == 1 and not must:
            return False  # (one device: it never collides with itself, `OwnCollisions`)
        if colliding is None:
            return True
        if wanted == 1 and not any(physical_id(i) in colliding for i in must):
            return False
        offered = must.keys() | set(available)
        claims = PathClaims()
        for device_id in colliding:
            ids = replica_ids(device_id, self._replicas)
            device = snapshot.device(device_id)
            if device is None or offered.isdisjoint(ids):
                continue
            if not claims.fits(device):
                return True
            claims.add(device)
        return False
