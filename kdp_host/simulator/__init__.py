"""A kubelet device-manager simulator that follows docs/kubelet-contract.md (Kubernetes v1.32).

It plays the kubelet side of the device plugin API v1beta1 on a socket directory of our
choosing: it serves ``Registration`` on ``<dir>/kubelet.sock``, dials every registering plugin
back *inside* the Register call, reads ListAndWatch, keeps capacity and allocatable the way
the device manager does, admits containers with the kubelet's device choice
(GetPreferredAllocation, Allocate), starts them (PreStartContainer) and writes
``kubelet_internal_checkpoint``. It is the one kubelet fake of the tests, the benchmarks and
``make demo``, and shares no code with kdp-host's server.

Modules, one idea each:

- ``records``: the kubelet's constants and the records of what it saw and did;
- ``gotext``: every text the kubelet prints, with Go quoting and grpc-go status format;
- ``transport``: the Registration server and the client of each plugin (its endpoint);
- ``listwire``: ListAndWatch messages decoded straight into the device manager's view;
- ``manager``: the device manager's state and transitions (no I/O);
- ``plugins``: Register with dial-back, the ListAndWatch readers, disconnection;
- ``admission``: device choice, Allocate and PreStartContainer;
- ``checkpoint``: the checkpoint file;
- ``directory``: the socket directory's clean-up at start;
- ``changes``: the change counter that waits are built on; ``log``: structured log lines;
- ``view``: ``KubeletView``, what the kubelet shows a test (records, node status, waits);
- ``kubelet``: ``KubeletSimulator``, the view wired to the rest (lifecycle, pods);
- ``cli``: ``kdp-host simulate-kubelet``.
"""

from .checkpoint import checkpoint_checksum
from .cli import run_simulator
from .gotext import go_quote
from .kubelet import KubeletSimulator
from .records import (
    CHECKPOINT_NAME,
    HEALTHY,
    KUBELET_SOCKET_NAME,
    SUPPORTED_VERSIONS,
    AllocateCall,
    Allocation,
    DeviceView,
    ListAndWatchUpdate,
    PluginOptions,
    PreferredAllocationCall,
    PreStartCall,
    RegisterAttempt,
    ResourceSnapshot,
    SimulatorAllocationError,
    StaleDisconnect,
)

__all__ = [
    "CHECKPOINT_NAME",
    "HEALTHY",
    "KUBELET_SOCKET_NAME",
    "SUPPORTED_VERSIONS",
    "AllocateCall",
    "Allocation",
    "DeviceView",
    "KubeletSimulator",
    "ListAndWatchUpdate",
    "PluginOptions",
    "PreStartCall",
    "PreferredAllocationCall",
    "RegisterAttempt",
    "ResourceSnapshot",
    "SimulatorAllocationError",
    "StaleDisconnect",
    "checkpoint_checksum",
    "go_quote",
    "run_simulator",
]
