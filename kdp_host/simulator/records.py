"""The kubelet's fixed values and what the simulator records about what it saw and did.

Everything here is plain data: the device manager's view of a resource, and one record per
Register call, ListAndWatch message, GetPreferredAllocation, Allocate and PreStartContainer
call, in the order they happened, so tests and benchmarks can assert on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateResponse,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
)
from kdp_host.rules import KUBELET_MAX_RECEIVE_MESSAGE, KUBELET_PRE_START_DEADLINE

KUBELET_SOCKET_NAME: Final = "kubelet.sock"
CHECKPOINT_NAME: Final = "kubelet_internal_checkpoint"
HEALTHY: Final = "Healthy"
"""The one health string that counts as healthy (docs/kubelet-contract.md §4)."""
SUPPORTED_VERSIONS: Final = ("v1beta1",)
NODE_WITHOUT_TOPOLOGY: Final = -1
"""The checkpoint's NUMA key for a device without topology (docs/kubelet-contract.md §11)."""
DIAL_TIMEOUT: Final = 10.0
"""The kubelet's blocking dial of a registering plugin (docs/kubelet-contract.md §2)."""
ENDPOINT_STOP_GRACE_PERIOD: Final = 300.0
"""How long a stopped endpoint's resource is kept (docs/kubelet-contract.md §4)."""
PRE_START_TIMEOUT: Final = KUBELET_PRE_START_DEADLINE
"""KubeletPreStartContainerRPCTimeoutInSecs (docs/kubelet-contract.md §8)."""
MAX_RECEIVE_MESSAGE: Final = KUBELET_MAX_RECEIVE_MESSAGE
"""The largest message the kubelet's gRPC client takes: grpc-go's default, 4 MiB
(docs/kubelet-contract.md §4)."""


class SimulatorAllocationError(Exception):
    """An allocation or container start the kubelet would refuse; ``str()`` is its message."""


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the kubelet stored it from the last ListAndWatch message."""

    id: str
    health: str
    numa: tuple[int, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """The GetDevicePluginOptions answer the kubelet stored (only this copy counts,
    docs/kubelet-contract.md §3)."""

    pre_start_required: bool
    get_preferred_allocation_available: bool


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    """What the kubelet knows about one resource, plus cumulative counters."""

    name: str
    known: bool  # the device manager has the resource (healthy/unhealthy sets or endpoint)
    registrations: int  # successful registrations, cumulative across restarts
    options: PluginOptions | None
    devices: Mapping[str, DeviceView]
    healthy_ids: frozenset[str]
    unhealthy_ids: frozenset[str]
    allocated_ids: frozenset[str]
    list_and_watch_messages: int  # cumulative across registrations and restarts
    endpoint_stopped: bool
    stopped_at: float | None
    socket_path: Path | None

    @property
    def capacity(self) -> int:
        return len(self.healthy_ids) + len(self.unhealthy_ids)

    @property
    def allocatable(self) -> int:
        return len(self.healthy_ids)


@dataclass(frozen=True, slots=True)
class RegisterAttempt:
    """A Register call the simulator got, and its answer."""

    version: str
    resource: str
    endpoint: str
    error: str | None  # None: accepted
    received_at: float = 0.0  # the simulator's clock when the Register call arrived


@dataclass(frozen=True, slots=True)
class ListAndWatchUpdate:
    """One ListAndWatch message as it arrived (before the device manager applied it)."""

    resource: str
    client: int  # serial number of the registration whose stream carried it
    received_at: float
    total: int
    healthy: int


@dataclass(frozen=True, slots=True)
class StaleDisconnect:
    """The stale-stream bug of docs/kubelet-contract.md §9: an old client's stream ended and
    the current client was disconnected."""

    resource: str
    ended_socket: Path
    disconnected_socket: Path


@dataclass(frozen=True, slots=True)
class Allocation:
    """Devices the simulator allocated to a container."""

    pod_uid: str
    container: str
    resource: str
    device_ids: tuple[str, ...]
    devices_per_numa: Mapping[int, tuple[str, ...]]
    response: ContainerAllocateResponse


@dataclass(frozen=True, slots=True)
class PreferredAllocationCall:
    """A GetPreferredAllocation call the simulator made."""

    resource: str
    pod_uid: str
    container: str
    available: tuple[str, ...]
    must_include: tuple[str, ...]
    size: int
    request: PreferredAllocationRequest
    response_ids: tuple[str, ...] | None  # ContainerResponses[0].DeviceIDs, None on error
    error: str | None
    response: PreferredAllocationResponse | None = None


@dataclass(frozen=True, slots=True)
class AllocateCall:
    """An Allocate call the simulator made."""

    resource: str
    pod_uid: str
    container: str
    device_ids: tuple[str, ...]
    request: AllocateRequest
    response: AllocateResponse | None  # None on error
    error: str | None


@dataclass(frozen=True, slots=True)
class PreStartCall:
    """A PreStartContainer call the simulator made."""

    resource: str
    pod_uid: str
    container: str
    device_ids: tuple[str, ...]
    error: str | None
    timeout: float = PRE_START_TIMEOUT  # the deadline sent with the call, in seconds
