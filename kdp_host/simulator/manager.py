"""The device manager's state and its transitions, as the kubelet keeps them.

No I/O here: plugin connected or disconnected, a ListAndWatch message applied, resources
expired by ``GetCapacity``, the checkpoint restored, a pod released. The kubelet simulator
drives these from the network; admission reads and changes the allocation part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checkpoint import CheckpointContents, CheckpointEncoder
from .records import Allocation, DeviceView, ResourceSnapshot
from .transport import Endpoint

PodContainerResource = tuple[str, str, str]


@dataclass(slots=True)
class Capacity:
    """What ``GetCapacity`` returns: per resource, and the resources it deleted."""

    capacity: dict[str, int]
    allocatable: dict[str, int]
    deleted: list[str]


@dataclass(slots=True)
class DeviceManager:
    """``ManagerImpl``'s maps: endpoints, healthy/unhealthy device sets, the stored devices,
    allocated devices and the allocations per (pod, container, resource). A resource's
    healthy set is replaced when it changes, never changed in place (the checkpoint encoder
    relies on that)."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    healthy: dict[str, set[str]] = field(default_factory=dict)
    unhealthy: dict[str, set[str]] = field(default_factory=dict)
    all_devices: dict[str, dict[str, DeviceView]] = field(default_factory=dict)
    allocated: dict[str, set[str]] = field(default_factory=dict)
    pod_devices: dict[PodContainerResource, Allocation] = field(default_factory=dict)
    init_containers: set[tuple[str, str]] = field(default_factory=set)
    """(pod, container) of the regular (non-restartable) init containers admitted: part of
    the pods' specs, not of the device manager, so kept across a restart; PodResources
    leaves them out (docs/kubelet-contract.md §15)."""
    # counters for the simulator's whole life, kept across restarts
    registrations: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    encoder: CheckpointEncoder = field(default_factory=CheckpointEncoder)

    def reset(self) -> None:
        """A kubelet start begins with nothing (then reads the checkpoint)."""
        self.endpoints.clear()
        self.healthy.clear()
        self.unhealthy.clear()
        self.all_devices.clear()
        self.allocated.clear()
        self.pod_devices.clear()

    # ------------------------------------------------------------------ node status

    def knows(self, resource: str) -> bool:
        return resource in self.healthy or resource in self.unhealthy or resource in self.endpoints

    def capacity(self, resource: str) -> int:
        """Healthy + unhealthy devices (docs/kubelet-contract.md §4)."""
        return len(self.healthy.get(resource, ())) + len(self.unhealthy.get(resource, ()))

    def allocatable(self, resource: str) -> int:
        """Healthy devices only; allocated ones are not subtracted."""
        return len(self.healthy.get(resource, ()))

    def has_topology(self, resource: str) -> bool:
        """Any device with NUMA nodes makes the resource aligned (docs/kubelet-contract.md §11)."""
        return any(dev.numa for dev in self.all_devices.get(resource, {}).values())

    def get_capacity(self, now: float, grace_period: float) -> Capacity:
        """``GetCapacity``: deletes resources whose endpoint stopped more than
        ``grace_period`` ago, or that have no endpoint (docs/kubelet-contract.md §4)."""
        result = Capacity({}, {}, [])
        deleted: set[str] = set()

        def expired(name: str) -> bool:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                return True
            return endpoint.stopped_at is not None and now - endpoint.stopped_at > grace_period

        for name, devices in list(self.healthy.items()):
            if expired(name):
                self.endpoints.pop(name, None)
                del self.healthy[name]
                deleted.add(name)
            else:
                result.capacity[name] = len(devices)
                result.allocatable[name] = len(devices)
        for name, devices in list(self.unhealthy.items()):
            if expired(name):
                self.endpoints.pop(name, None)
                del self.unhealthy[name]
                deleted.add(name)
            else:
                result.capacity[name] = result.capacity.get(name, 0) + len(devices)
        result.deleted = sorted(deleted)
        return result

    # ------------------------------------------------------------------ plugins

    def plugin_connected(self, endpoint: Endpoint) -> None:
        """``PluginConnected``: a fresh, running endpoint replaces any previous one."""
        self.endpoints[endpoint.resource] = endpoint
        self.registrations[endpoint.resource] = self.registrations.get(endpoint.resource, 0) + 1

    def plugin_disconnected(self, resource: str, now: float) -> None:
        """``PluginDisconnected``: healthy devices become unhealthy (capacity stays,
        allocatable drops to 0) and the endpoint is stopped (docs/kubelet-contract.md §4)."""
        endpoint = self.endpoints.get(resource)
        if endpoint is None:
            return
        healthy = self.healthy.get(resource, set())
        self.healthy[resource] = set()
        self.unhealthy[resource] = self.unhealthy.get(resource, set()) | healthy
        endpoint.stopped_at = now

    def apply_list(self, resource: str, devices_in_message: list[DeviceView]) -> int:
        """``genericDeviceUpdateCallback``: the message is the complete list; only the exact
        string ``Healthy`` is healthy (docs/kubelet-contract.md §4). Returns healthy count."""
        healthy: set[str] = set()
        unhealthy: set[str] = set()
        devices: dict[str, DeviceView] = {}
        for view in devices_in_message:
            devices[view.id] = view
            (healthy if view.healthy else unhealthy).add(view.id)
        self.healthy[resource] = healthy
        self.unhealthy[resource] = unhealthy
        self.all_devices[resource] = devices
        self.messages[resource] = self.messages.get(resource, 0) + 1
        return len(healthy)

    # ------------------------------------------------------------------ allocations

    def recompute_allocated(self) -> None:
        """``allocatedDevices`` rebuilt from ``podDevices``."""
        allocated: dict[str, set[str]] = {}
        for alloc in self.pod_devices.values():
            allocated.setdefault(alloc.resource, set()).update(alloc.device_ids)
        self.allocated = allocated

    def record_allocation(self, allocation: Allocation) -> None:
        key = (allocation.pod_uid, allocation.container, allocation.resource)
        self.pod_devices[key] = allocation

    def release(self, pod_uid: str) -> int:
        """``UpdateAllocatedDevices`` for a pod that is gone: returns the devices freed."""
        keys = [key for key in self.pod_devices if key[0] == pod_uid]
        self.init_containers = {(p, c) for p, c in self.init_containers if p != pod_uid}
        freed = sum(len(self.pod_devices.pop(key).device_ids) for key in keys)
        self.recompute_allocated()
        return freed

    # ------------------------------------------------------------------ checkpoint

    def checkpoint_data(self) -> str:
        """The checkpoint's ``Data``, canonical JSON (docs/kubelet-contract.md §10)."""
        return self.encoder.data_text(self.pod_devices.values(), self.healthy)

    def restore(self, contents: CheckpointContents, now: float) -> None:
        """``readCheckpoint``: allocations come back; registered resources get empty device
        sets and a stopped endpoint until their plugin registers (docs/kubelet-contract.md §9)."""
        for alloc in contents.allocations:
            self.record_allocation(alloc)
        self.recompute_allocated()
        for name in contents.registered:
            self.healthy[name] = set()
            self.unhealthy[name] = set()
            self.endpoints[name] = Endpoint(name, None, None, None, stopped_at=now)

    # ------------------------------------------------------------------ views

    def names(self) -> list[str]:
        """Every resource the simulator has heard of, sorted."""
        known = set(self.healthy) | set(self.unhealthy) | set(self.endpoints)
        return sorted(known | set(self.registrations) | set(self.messages))

    def snapshot(self, name: str) -> ResourceSnapshot:
        """KeyError if the simulator never heard of ``name``."""
        known = self.knows(name)
        if not known and name not in self.registrations and name not in self.messages:
            raise KeyError(name)
        endpoint = self.endpoints.get(name)
        return ResourceSnapshot(
            name=name,
            known=known,
            registrations=self.registrations.get(name, 0),
            options=endpoint.options if endpoint is not None else None,
            devices=dict(self.all_devices.get(name, {})),
            healthy_ids=frozenset(self.healthy.get(name, ())),
            unhealthy_ids=frozenset(self.unhealthy.get(name, ())),
            allocated_ids=frozenset(self.allocated.get(name, ())),
            list_and_watch_messages=self.messages.get(name, 0),
            endpoint_stopped=endpoint is None or endpoint.stopped,
            stopped_at=endpoint.stopped_at if endpoint is not None else None,
            socket_path=endpoint.socket_path if endpoint is not None else None,
        )


def describe(snap: ResourceSnapshot) -> str:
    """One human line: what the kubelet sees of a resource."""
    state = "stopped" if snap.endpoint_stopped else "running"
    if not snap.known:
        state = "deleted"
    unhealthy = ",".join(sorted(snap.unhealthy_ids))
    return (
        f"resource={snap.name} capacity={snap.capacity} allocatable={snap.allocatable}"
        f" unhealthy=[{unhealthy}] allocated={len(snap.allocated_ids)}"
        f" endpoint={state} registrations={snap.registrations}"
    )
