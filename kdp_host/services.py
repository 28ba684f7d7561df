"""What the host and its resources share: what it lends every resource (`HostServices`,
made once by the host) and what it reads back of each (`ResourceStatus`, for /readyz)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backoff import Retry
from .checkpoint_reads import CheckpointReads
from .commands import Commands
from .config import KubeletConfig
from .drivers import DriverFactory, make_driver
from .files import DaemonThreads, Offload
from .handed_out import HandedRecord
from .logs import EventLogger
from .metric_series import GaugeSeries
from .metrics import Metrics
from .ownership import OwnershipIndex
from .peer_sockets import PeerSocketIndex
from .protocol.registration import Registrar
from .release_state import ReleaseStateStore
from .safety_net import SafetyNet
from .stream_losses import LOST_STREAMS
from .timings import Timings
from .watch import Watcher

if TYPE_CHECKING:  # imported where the config chooses them (`features`)
    from .cdi_dirs import SpecDirRecord
    from .held_actions import HeldMissingActions
    from .nfd import NodeFeatureFile
    from .podresources import PodResourcesPoller
    from .process import CommandRunner


@dataclass(frozen=True)
class RegistryWait:
    """The waits around registering. With `registration: pluginsRegistry`: how long a
    resource waits for the kubelet's verdict (after creating its socket, or after the kubelet
    ended its stream) before it creates its socket again; doubled on each wait in a row that
    ends with nothing. In both modes: the back-off while the kubelet keeps ending the
    resource's stream (`lost`)."""

    first: float = 5.0
    maximum: float = 300.0
    lost: Retry = LOST_STREAMS


@dataclass(frozen=True)
class HostServices:
    """What the host lends every resource."""

    kubelet: KubeletConfig
    """The kubelet's directories and the registration mode."""
    instance_id: str
    watcher: Watcher
    metrics: Metrics
    log: EventLogger
    safety_net: SafetyNet
    """The host's one periodic-check timer, shared by every resource (its scan loop, its
    socket checks)."""
    drivers: DriverFactory = make_driver
    """Makes each resource's driver (tests pass their own)."""
    offload: Offload = field(default_factory=DaemonThreads)
    """The host's one way off the event loop (scans, CDI writes), shared by every resource."""
    commands: CommandRunner = field(default_factory=Commands)
    """Runs every command of the resources: probes, health checks, preStart, allocate and
    release."""
    pod_resources: PodResourcesPoller | None = None
    """Who holds each device (None: PodResources polling is off)."""
    release_state: ReleaseStateStore | None = None
    """What the release trackers keep across restarts (None: `release` cannot run)."""
    ownership: OwnershipIndex = field(default_factory=OwnershipIndex)
    """The host's one index of claimed nodes and mount sources, shared by every resource."""
    status_changed: Callable[[str], None] = lambda name: None
    """Called with its name whenever a resource's `ResourceStatus` changes (the host updates
    its entry of /readyz)."""
    registry_wait: RegistryWait = field(default_factory=RegistryWait)
    node_features: NodeFeatureFile | None = None
    """The NFD feature file every resource's device counts go to (None: `nodeFeatures` off)."""
    registrar: Registrar = field(default_factory=Registrar)
    """Every resource's Register calls, over one connection to kubelet.sock (the owner
    closes it)."""
    handed: HandedRecord = field(default_factory=HandedRecord)
    timings: Timings = field(default_factory=Timings)
    """The waits on the kubelet's news (`Host.timings`): the release trackers read theirs."""
    checkpoint: CheckpointReads | None = None
    """The kubelet's checkpoint read again before a fenced resource's first list and
    Allocate answers (`checkpoint_reads.CheckpointReads`)."""
    held_missing: HeldMissingActions | None = None
    """Told what each resource's held-missing check finds (None: `heldMissing` off)."""
    peer_sockets: PeerSocketIndex = field(default_factory=PeerSocketIndex)
    """Every resource's other instances' sockets, one subscription per socket directory."""
    cdi_dirs: Callable[[], SpecDirRecord] | None = None
    """The spec dirs a host on `stateDir` wrote CDI spec files in (`cdi_dirs`, made at the
    first call: by the first resource with `allocate.cdi`); None: each writer's own alone."""
    """What each Allocate handed out, while one of its IDs is booked (`handed_out`, kept in
    `<stateDir>/handed-out.json` by the host): what preStart acts on, a held CDI entry keeps
    (also of a resource a reload removed: `cdi_keeper`) and a release acts on."""


@dataclass
class ResourceStatus:
    """What /readyz says about a resource. Reasons are short and fixed (no host paths, no
    probe output): the endpoint is reachable from the pod network."""

    changed: Callable[[], None] = lambda: None
    """Told after every change (the host's readiness follows it)."""
    registered_series: GaugeSeries | None = None
    """`kdp_registered` of the resource."""
    serving: bool = False
    registered: bool = False
    listed: bool = False
    """A ListAndWatch stream has sent the kubelet a list (the first one: the start is over)."""
    last_error: str | None = None
    problems: dict[str, str] = field(default_factory=dict)
    """Parts of the resource that keep it from being ready (e.g. `cdi`), with a short reason."""

    def mark(
        self,
        *,
        serving: bool | None = None,
        registered: bool | None = None,
        error: str | None = None,
    ) -> None:
        """Serving, registered (a registration clears the last error), or an error."""
        if serving is not None:
            self.serving = serving
        if registered is not None:
            self.registered = registered
            if self.registered_series is not None:
                self.registered_series.set(int(registered))
            if registered:
                self.last_error = None
        if error is not None:
            self.last_error = error
        self.changed()

    def first_list_sent(self) -> None:
        if not self.listed:
            self.listed = True
            self.changed()

    def set_problem(self, part: str, reason: str | None) -> None:
        """A part of the resource keeps it from being ready (reason), or no longer (None)."""
        if reason is None:
            self.problems.pop(part, None)
        else:
            self.problems[part] = reason
        self.changed()

    @property
    def ready(self) -> bool:
        return self.serving and self.registered and not self.problems

    def not_ready_reason(self) -> str:
        if self.problems:
            return "; ".join(self.problems[part] for part in sorted(self.problems))
        return self.last_error or ("not serving" if not self.serving else "not registered")
