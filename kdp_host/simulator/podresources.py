"""The kubelet's PodResources v1 server (``pkg/kubelet/apis/podresources``, Kubernetes v1.32;
docs/kubelet-contract.md §15).

Served on ``<dir>/kubelet.sock`` when the simulator is given a PodResources directory, from
the device manager's own maps:

* ``List``: every pod with an allocation (the simulator's pods are its allocations), named
  by its UID in namespace ``default``; each container's devices as one entry per (device,
  NUMA node), or one entry without topology, like the kubelet's
  ``containerDevicesFromResourceDeviceInstances``; regular init containers left out, as
  ``server_v1.go`` does; while ``sources_ready`` is False only the pods in ``static_pods``
  (a kubelet restarted while the API server is away lists only its static pods: the file
  source is ready at once, the API source when the API server answers);
* ``GetAllocatableResources``: every healthy device (allocations do not reduce it);
* ``Get``: one pod, or UNKNOWN ``pod X in namespace Y not found``.

One token bucket (100 calls/s, burst 10) covers every client and method, as the kubelet's
``WithRateLimiter("podresources", ...)`` does; a call over it fails at once with
RESOURCE_EXHAUSTED ``rejected by rate limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from kdp_host.api.v1 import (
    AllocatableResourcesRequest,
    AllocatableResourcesResponse,
    ContainerDevices,
    ContainerResources,
    GetPodResourcesRequest,
    GetPodResourcesResponse,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
    NumaNode,
    PodResources,
    PodResourcesListerBase,
    TopologyInfo,
)

from .manager import DeviceManager
from .records import NODE_WITHOUT_TOPOLOGY
from .transport import STOP_WAIT, stopped_server_refuses_calls

RATE_LIMIT_QPS: Final = 100.0
RATE_LIMIT_BURST: Final = 10
RATE_LIMITED: Final = "rejected by rate limit"
NAMESPACE: Final = "default"
SOCKET_NAME: Final = "kubelet.sock"


@dataclass
class TokenBucket:
    """``golang.org/x/time/rate.Limiter.Allow``: `burst` tokens, refilled at `qps`."""

    qps: float = RATE_LIMIT_QPS
    burst: int = RATE_LIMIT_BURST
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(default=-1.0, init=False)
    _last: float = field(default=0.0, init=False)

    def exhaust(self) -> None:
        """Take every token now (another client's burst)."""
        self.allow()
        self._tokens = 0.0

    def allow(self) -> bool:
        now = self.clock()
        if self._tokens < 0:
            self._tokens = float(self.burst)
        else:
            elapsed = max(0.0, now - self._last)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass
class PodResourcesCalls:
    """What the server answered, for tests and benchmarks."""

    ok: int = 0
    rate_limited: int = 0
    times: list[float] = field(default_factory=list)
    """Monotonic time of every call, answered or refused."""


class _Lister(PodResourcesListerBase):
    def __init__(self, manager: DeviceManager, limiter: TokenBucket, calls: PodResourcesCalls):
        self._manager = manager
        self._limiter = limiter
        self._calls = calls
        self.sources_ready = True
        self.static_pods: set[str] = set()

    def _admit(self) -> None:
        self._calls.times.append(self._limiter.clock())
        if not self._limiter.allow():
            self._calls.rate_limited += 1
            raise GRPCError(Status.RESOURCE_EXHAUSTED, RATE_LIMITED)
        self._calls.ok += 1

    async def list(self, message: ListPodResourcesRequest) -> ListPodResourcesResponse:
        self._admit()
        pods = sorted({pod for pod, _, _ in self._manager.pod_devices})
        if not self.sources_ready:
            pods = [pod for pod in pods if pod in self.static_pods]
        return ListPodResourcesResponse(pod_resources=[self._pod(pod) for pod in pods])

    async def get_allocatable_resources(
        self, message: AllocatableResourcesRequest
    ) -> AllocatableResourcesResponse:
        self._admit()
        devices: list[ContainerDevices] = []
        for resource in sorted(self._manager.healthy):
            known = self._manager.all_devices.get(resource, {})
            for device_id in sorted(self._manager.healthy[resource]):
                view = known.get(device_id)
                devices += _entries(resource, device_id, view.numa if view is not None else ())
        return AllocatableResourcesResponse(devices=devices)

    async def get(self, message: GetPodResourcesRequest) -> GetPodResourcesResponse:
        self._admit()
        namespace = message.pod_namespace
        if namespace != NAMESPACE or not any(
            pod == message.pod_name for pod, _, _ in self._manager.pod_devices
        ):
            raise GRPCError(
                Status.UNKNOWN, f"pod {message.pod_name} in namespace {namespace} not found"
            )
        return GetPodResourcesResponse(pod_resources=self._pod(message.pod_name))

    def _pod(self, pod: str) -> PodResources:
        containers: dict[str, list[ContainerDevices]] = {}
        for (uid, container, resource), allocation in sorted(self._manager.pod_devices.items()):
            if uid != pod or (uid, container) in self._manager.init_containers:
                continue
            entries = containers.setdefault(container, [])
            for numa, ids in sorted(allocation.devices_per_numa.items()):
                nodes = () if numa == NODE_WITHOUT_TOPOLOGY else (numa,)
                for device_id in ids:
                    entries += _entries(resource, device_id, nodes)
        return PodResources(
            name=pod,
            namespace=NAMESPACE,
            containers=[
                ContainerResources(name=name, devices=devices)
                for name, devices in containers.items()
            ],
        )


def _entries(resource: str, device_id: str, numa: tuple[int, ...]) -> list[ContainerDevices]:
    """One entry per NUMA node of the device, or one without topology."""
    if not numa:
        return [ContainerDevices(resource_name=resource, device_ids=[device_id])]
    return [
        ContainerDevices(
            resource_name=resource,
            device_ids=[device_id],
            topology=TopologyInfo(nodes=[NumaNode(id=node)]),
        )
        for node in numa
    ]


class PodResourcesServer:
    """The PodResources service on ``<directory>/kubelet.sock``."""

    def __init__(
        self,
        manager: DeviceManager,
        directory: Path,
        *,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.socket_path = Path(directory) / SOCKET_NAME
        self.calls = PodResourcesCalls()
        self.limiter = limiter or TokenBucket()
        self._lister = _Lister(manager, self.limiter, self.calls)
        self._serving = False
        self._server = self._new_server()

    def _new_server(self) -> Server:
        """One server per start: a kubelet restart makes the socket anew
        (docs/kubelet-contract.md §15)."""
        server = Server([self._lister])
        stopped_server_refuses_calls(server, lambda: self._serving)
        return server

    @property
    def sources_ready(self) -> bool:
        """False: ``List`` shows only ``static_pods`` (a kubelet restarted while the API
        server is away: its pod manager holds no API pod; their containers run, their
        devices stay allocated, docs/kubelet-contract.md §15)."""
        return self._lister.sources_ready

    @sources_ready.setter
    def sources_ready(self, ready: bool) -> None:
        self._lister.sources_ready = ready

    @property
    def static_pods(self) -> set[str]:
        """Pod UIDs ``List`` shows also while ``sources_ready`` is False (static pods, from
        the kubelet's file source); kept across restarts."""
        return self._lister.static_pods

    async def start(self) -> None:
        self.socket_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._server = self._new_server()
        await self._server.start(path=str(self.socket_path))
        self._serving = True

    async def stop(self) -> None:
        if not self._serving:
            return
        self._serving = False
        self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_WAIT):  # a client keeping its connection open
                await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)
