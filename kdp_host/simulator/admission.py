"""Pod admission and container start, as the kubelet's device manager does them.

``devicesToAllocate`` with GetPreferredAllocation, one Allocate per resource per container,
and PreStartContainer at every container start when the plugin asked for it
(docs/kubelet-contract.md §5, §6, §8). Devices are chosen in sorted order where the kubelet's
order is random (docs/kubelet-contract.md §13).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    ContainerAllocateRequest,
    ContainerAllocateResponse,
    ContainerPreferredAllocationRequest,
    PreferredAllocationRequest,
    PreStartContainerRequest,
)

from . import gotext
from .log import log_event
from .manager import DeviceManager
from .records import (
    NODE_WITHOUT_TOPOLOGY,
    AllocateCall,
    Allocation,
    PreferredAllocationCall,
    PreStartCall,
    SimulatorAllocationError,
)
from .transport import Endpoint, RpcFailed, sent_timeout

Notify = Callable[[], Awaitable[None]]


class Admission:
    """Allocations and container starts against one device manager; records every call."""

    def __init__(
        self,
        manager: DeviceManager,
        *,
        write_checkpoint: Notify,
        notify: Notify,
        rpc_timeout: float | None,
        pre_start_timeout: float,
    ) -> None:
        self._manager = manager
        self._write_checkpoint = write_checkpoint
        self._notify = notify
        self.rpc_timeout = rpc_timeout
        self.pre_start_timeout = pre_start_timeout
        self._lock = asyncio.Lock()  # the kubelet admits pods one at a time
        self.preferred_allocation_calls: list[PreferredAllocationCall] = []
        self.allocate_calls: list[AllocateCall] = []
        self.pre_start_calls: list[PreStartCall] = []

    async def allocate(
        self,
        resource: str,
        count: int,
        *,
        pod_uid: str,
        container: str,
        numa_affinity: Collection[int] | None,
        pre_start: bool,
        init_container: bool = False,
    ) -> ContainerAllocateResponse | None:
        """Admit ``count`` devices for one container (``init_container``: a regular init
        container, docs/kubelet-contract.md §6), then (``pre_start``) start it."""
        if init_container:
            self._manager.init_containers.add((pod_uid, container))
        async with self._lock:
            affinity = frozenset(numa_affinity) if numa_affinity is not None else None
            devs = await self._devices_to_allocate(pod_uid, container, resource, count, affinity)
            if devs:
                response: ContainerAllocateResponse | None = await self._allocate_rpc(
                    pod_uid, container, resource, devs
                )
            else:
                existing = self._manager.pod_devices.get((pod_uid, container, resource))
                response = existing.response if existing is not None else None
        if pre_start:
            await self.pre_start_container(pod_uid, container, resource)
        return response

    # ------------------------------------------------------------------ choosing devices

    def _filter_by_affinity(
        self, resource: str, available: set[str], affinity: frozenset[int] | None
    ) -> tuple[set[str], set[str], set[str]]:
        """``filterByAffinity``: aligned / unaligned / no-topology split
        (docs/kubelet-contract.md §5, §11)."""
        if affinity is None or not self._manager.has_topology(resource):
            return set(), set(), set(available)
        all_devices = self._manager.all_devices.get(resource, {})
        per_node: dict[int, set[str]] = {}
        for dev_id in available:
            dev = all_devices.get(dev_id)
            nodes = dev.numa if dev is not None else ()
            for node in nodes or (NODE_WITHOUT_TOPOLOGY,):
                per_node.setdefault(node, set()).add(dev_id)

        def rank(node: int) -> tuple[int, int, int]:
            if node >= 0 and node in affinity:
                group = 0
            elif node == NODE_WITHOUT_TOPOLOGY:
                group = 2
            else:
                group = 1
            return group, len(per_node[node]), node

        order = sorted(per_node, key=rank)
        aligned: set[str] = set()
        unaligned: set[str] = set()
        without: set[str] = set()
        for dev_id in available:
            for node in order:
                if dev_id in per_node[node]:
                    if node == NODE_WITHOUT_TOPOLOGY:
                        without.add(dev_id)
                    elif node in affinity:
                        aligned.add(dev_id)
                    else:
                        unaligned.add(dev_id)
                    break
        return aligned, unaligned, without

    async def _devices_to_allocate(
        self,
        pod_uid: str,
        container: str,
        resource: str,
        required: int,
        affinity: frozenset[int] | None,
    ) -> list[str]:
        """``devicesToAllocate``; an empty list means no Allocate RPC
        (docs/kubelet-contract.md §6)."""
        manager = self._manager
        needed = required
        existing = manager.pod_devices.get((pod_uid, container, resource))
        if existing is not None:
            needed -= len(existing.device_ids)
            if needed != 0:
                raise SimulatorAllocationError(
                    gotext.changed_request(
                        pod_uid, container, resource, len(existing.device_ids), required
                    )
                )
        healthy = manager.healthy.get(resource)
        if healthy is None:
            raise SimulatorAllocationError(gotext.unregistered_device(resource))
        if not healthy:
            raise SimulatorAllocationError(gotext.no_healthy_devices(resource))
        if existing is not None and not healthy.issuperset(existing.device_ids):
            raise SimulatorAllocationError(gotext.previously_allocated_unhealthy(resource))
        if needed == 0:
            return []

        allocated: list[str] = []
        in_use = manager.allocated.setdefault(resource, set())

        def take(devices: set[str]) -> bool:
            nonlocal needed
            for dev_id in sorted(devices.difference(allocated)):
                in_use.add(dev_id)
                allocated.append(dev_id)
                needed -= 1
                if needed == 0:
                    return True
            return False

        available = healthy - in_use
        if len(available) < needed:
            raise SimulatorAllocationError(
                gotext.devices_unavailable(resource, needed, len(available))
            )
        aligned, unaligned, no_affinity = self._filter_by_affinity(resource, available, affinity)

        if needed < len(aligned):
            preferred = await self._preferred_if_available(
                pod_uid, container, resource, aligned | set(allocated), allocated, required
            )
            if take(preferred & aligned) or take(aligned):
                return allocated
            raise SimulatorAllocationError(gotext.allocated_too_few(required, required - needed))
        if take(aligned):
            return allocated
        preferred = await self._preferred_if_available(
            pod_uid, container, resource, available | set(allocated), allocated, required
        )
        if take(preferred & available) or take(unaligned) or take(no_affinity):
            return allocated
        raise SimulatorAllocationError(gotext.allocated_too_few(required, required - needed))

    def _endpoint(self, resource: str) -> Endpoint:
        endpoint = self._manager.endpoints.get(resource)
        if endpoint is None:
            raise SimulatorAllocationError(gotext.endpoint_not_found(resource))
        return endpoint

    # ------------------------------------------------------------------ the RPCs

    async def _preferred_if_available(
        self,
        pod_uid: str,
        container: str,
        resource: str,
        available: set[str],
        must_include: list[str],
        size: int,
    ) -> set[str]:
        """``callGetPreferredAllocationIfAvailable`` (docs/kubelet-contract.md §5)."""
        endpoint = self._endpoint(resource)
        if endpoint.options is None or not endpoint.options.get_preferred_allocation_available:
            return set()
        available_ids = tuple(sorted(available))
        must_ids = tuple(must_include)
        request = PreferredAllocationRequest(
            container_requests=[
                ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available_ids),
                    must_include_deviceIDs=list(must_ids),
                    allocation_size=size,
                )
            ]
        )

        def record(ids: tuple[str, ...] | None, error: str | None, response: object) -> None:
            self.preferred_allocation_calls.append(
                PreferredAllocationCall(
                    resource, pod_uid, container, available_ids, must_ids, size, request,
                    ids, error, response,  # type: ignore[arg-type]
                )
            )  # fmt: skip

        try:
            response = await endpoint.call(
                lambda stub: stub.get_preferred_allocation(request), self.rpc_timeout
            )
        except RpcFailed as exc:
            record(None, str(exc), None)
            await self._notify()
            raise SimulatorAllocationError(gotext.preferred_allocation_failed(str(exc))) from exc
        ids: tuple[str, ...] = ()
        if response.container_responses:
            ids = tuple(str(i) for i in response.container_responses[0].device_i_ds)
        record(ids, None, response)
        log_event(
            logging.INFO,
            "preferred_allocation",
            resource=resource,
            pod=pod_uid,
            container=container,
            size=size,
            available=len(available_ids),
            preferred=",".join(ids) or "-",
        )
        return set(ids)

    async def _allocate_rpc(
        self, pod_uid: str, container: str, resource: str, devs: list[str]
    ) -> ContainerAllocateResponse:
        """The Allocate part of ``allocateContainerResources`` (docs/kubelet-contract.md §6)."""
        manager = self._manager
        endpoint = manager.endpoints.get(resource)
        if endpoint is None:
            manager.recompute_allocated()
            raise SimulatorAllocationError(gotext.unknown_device_plugin(resource))
        request = AllocateRequest(container_requests=[ContainerAllocateRequest(devices_ids=devs)])
        try:
            response = await endpoint.call(lambda stub: stub.allocate(request), self.rpc_timeout)
        except RpcFailed as exc:
            text = str(exc)
            self.allocate_calls.append(
                AllocateCall(resource, pod_uid, container, tuple(devs), request, None, text)
            )
            manager.recompute_allocated()  # restore allocatedDevices from podDevices
            await self._notify()
            raise SimulatorAllocationError(text) from exc
        self.allocate_calls.append(
            AllocateCall(resource, pod_uid, container, tuple(devs), request, response, None)
        )
        if not response.container_responses:
            # The kubelet does not restore allocatedDevices here: the devices stay taken.
            await self._notify()
            raise SimulatorAllocationError(gotext.no_container_responses())
        per_numa: dict[int, list[str]] = {}
        all_devices = manager.all_devices.get(resource, {})
        for dev_id in devs:
            dev = all_devices.get(dev_id)
            for node in (dev.numa if dev is not None else ()) or (NODE_WITHOUT_TOPOLOGY,):
                per_numa.setdefault(node, []).append(dev_id)
        allocation = Allocation(
            pod_uid=pod_uid,
            container=container,
            resource=resource,
            device_ids=tuple(devs),
            devices_per_numa={k: tuple(v) for k, v in per_numa.items()},
            response=response.container_responses[0],
        )
        manager.record_allocation(allocation)
        log_event(
            logging.INFO,
            "allocated",
            resource=resource,
            pod=pod_uid,
            container=container,
            devices=",".join(devs),
        )
        await self._write_checkpoint()
        await self._notify()
        return allocation.response

    async def pre_start_container(self, pod_uid: str, container: str, resource: str) -> None:
        """``callPreStartContainerIfNeeded`` at a container (re)start
        (docs/kubelet-contract.md §8): only if the plugin asked for it, with every device of
        that container for the resource, under the kubelet's deadline (sent with the call);
        the response is ignored."""
        endpoint = self._endpoint(resource)
        if endpoint.options is None or not endpoint.options.pre_start_required:
            return
        allocation = self._manager.pod_devices.get((pod_uid, container, resource))
        if allocation is None:
            raise SimulatorAllocationError(
                gotext.no_devices_allocated(pod_uid, container, resource)
            )
        devs = list(allocation.device_ids)
        request = PreStartContainerRequest(devices_ids=devs)
        timeout = self.pre_start_timeout
        try:
            await endpoint.call(
                lambda stub: stub.pre_start_container(request, timeout=sent_timeout(timeout)),
                timeout,
            )
        except RpcFailed as exc:
            text = str(exc)
            self.pre_start_calls.append(
                PreStartCall(resource, pod_uid, container, tuple(devs), text, timeout)
            )
            log_event(logging.INFO, "pre_start_failed", resource=resource, pod=pod_uid, error=text)
            await self._notify()
            raise SimulatorAllocationError(gotext.pre_start_failed(text)) from exc
        self.pre_start_calls.append(
            PreStartCall(resource, pod_uid, container, tuple(devs), None, timeout)
        )
        await self._notify()
