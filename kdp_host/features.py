"""The optional parts of a resource and of the host, made where the config chooses them.

Each feature's module is imported here, once its config section is there, and nowhere else
at run time: `preStart` and `allocate.command` (`hooks`), `release` (`release`), `health`
(`health`), `allocate.cdi` (`cdi`, `cdi_dirs`, and `cdi_keeper` for a resource a reload
removed); for the host, PodResources polling (`podresources`,
with the generated PodResources API), `nodeFeatures` (`nfd`), the node's labels from the
Kubernetes API (`kubeapi`, once an entry selects by label) and `heldMissing`
(`held_actions`, `pod_api`). A run imports only what
its config uses (start-up time and memory of every process, issue 19;
`tests/test_lazy_imports.py` keeps it so); a reload that turns a feature on imports its
module then. Everything else names these types under TYPE_CHECKING only; the drivers have
their own registry (`drivers.REGISTRY`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .answer_needs import WATCHED, AnswerNeeds, configured_needs
from .config import Config, ResourceConfig
from .config.model import NodeFeaturesConfig
from .device_table import DeviceTable
from .files import Offload
from .logs import EventLogger
from .metric_labels import ANSWER_NEEDS, HookName
from .metrics import Metrics
from .node import NodeLabelSource, NoLabels
from .services import HostServices

if TYPE_CHECKING:
    from .answer_checks import NeedsWatch
    from .cdi import CdiSpecWriter
    from .cdi_dirs import SpecDirRecord
    from .handed_out import HandedOut
    from .health import HealthChecker
    from .held_actions import HeldMissingActions
    from .hooks import AllocateHook, PreStartHook
    from .nfd import NodeFeatureFile
    from .ownership_bookings import BookedElsewhere
    from .podresources import PodResourcesPoller
    from .release import ReleaseTracker
    from .state_files import StateFiles
    from .timings import Timings


def forget_unconfigured(metrics: Metrics, config: ResourceConfig) -> None:
    """Drop the series of the hooks and answer needs a stopped runtime of the resource had
    and `config` (the one in force) lacks."""
    metrics.forget_hooks(config.name, keep=configured_hooks(config))
    for need in set(ANSWER_NEEDS) - configured_needs(config):
        with contextlib.suppress(KeyError):
            metrics.answer_need_unmet.remove(config.name, need)


def configured_hooks(config: ResourceConfig) -> frozenset[HookName]:
    """The hooks a resource's config has (their series exist only then)."""
    present: dict[HookName, object] = {
        "preStart": config.pre_start,
        "allocate.command": config.allocate.command,
        "release": config.release,
    }
    return frozenset(name for name, section in present.items() if section is not None)


def pre_start_hook(
    config: ResourceConfig,
    table: DeviceTable,
    services: HostServices,
    log: EventLogger,
    handed: HandedOut,
    spawn_failed: Callable[[], None],
) -> PreStartHook | None:
    """What answers the resource's PreStartContainer calls (None: no `preStart`)."""
    if config.pre_start is None:
        return None
    from .hooks import PreStartHook

    return PreStartHook(
        config.pre_start,
        config,
        table,
        services.commands,
        services.metrics,
        log,
        handed=handed,
        places=functools.partial(services.ownership.changed_places, config.name),
        spawn_failed=spawn_failed,
    )


def allocate_hook(
    config: ResourceConfig,
    services: HostServices,
    log: EventLogger,
    spawn_failed: Callable[[], None],
) -> AllocateHook | None:
    """What runs `allocate.command` for each container (None: the resource has none)."""
    command = config.allocate.command
    if command is None:
        return None
    from .hooks import AllocateHook

    return AllocateHook(
        command,
        config.allocate.timeout,
        config.name,
        services.commands,
        services.metrics,
        log,
        spawn_failed,
    )


def needs_watch(
    config: ResourceConfig,
    needs: AnswerNeeds,
    services: HostServices,
    published: asyncio.Event | None = None,
) -> NeedsWatch | None:
    """What keeps the resource's `mounts` and `command` needs current (None: it has no
    `allocate.mounts` and no command on the allocation path); with `allocate.mounts`, it
    asks the index whether the sources clash for every answer (`source_clash`) once the
    table first `published`."""
    if not configured_needs(config) & WATCHED:
        return None
    from .answer_checks import NeedsWatch

    ownership = services.ownership
    watch = NeedsWatch(
        config, needs, lambda: ownership.never_handed, services.offload, services.watcher
    )
    if mounts := config.allocate.mounts:
        from .source_clash import source_clash

        sources = sorted({os.path.normpath(m.host_path) for m in mounts})
        read_only = frozenset(s for s in sources if all(
            m.read_only for m in mounts if os.path.normpath(m.host_path) == s
        ))  # fmt: skip
        watch.clash = functools.partial(source_clash, ownership, config.name, sources, read_only)
        watch.follow = functools.partial(ownership.follow_sources, config.name)
        watch.published = published
    return watch


def release_tracker(
    config: ResourceConfig,
    table: DeviceTable,
    services: HostServices,
    log: EventLogger,
    handed: HandedOut,
) -> ReleaseTracker | None:
    """The resource's release tracker (None: no `release`, or no state to keep it in)."""
    if config.release is None or services.release_state is None:
        return None
    from .release import ReleaseTracker

    return ReleaseTracker(
        config,
        table,
        services.release_state,
        services.commands,
        services.metrics,
        log,
        handed=handed,
        places=functools.partial(services.ownership.changed_places, config.name),
        timings=services.timings,
        checkpoint=functools.partial(services.ownership.checkpoint_handed, config.name),
        answers=services.pod_resources,
        listed=functools.partial(services.ownership.listed_at, config.name),
    )


def health_checker(
    config: ResourceConfig, table: DeviceTable, services: HostServices, log: EventLogger
) -> HealthChecker | None:
    """The resource's per-device health checks (None: no `health`)."""
    if config.health is None:
        return None
    from .health import HealthChecker

    return HealthChecker(
        config.health,
        table,
        resource=config.name,
        log=log,
        metrics=services.metrics,
        commands=services.commands,
    )


def cdi_writer(
    config: ResourceConfig,
    table: DeviceTable,
    services: HostServices,
    log: EventLogger,
    *,
    needs: AnswerNeeds,
    handed: HandedOut,
) -> CdiSpecWriter | None:
    """The writer of the resource's CDI spec file (None: no `allocate.cdi`); the `cdi` need
    of the resource's `needs` is its."""
    if config.allocate.cdi is None:
        return None
    from .cdi import CdiSpecWriter

    return CdiSpecWriter(
        config,
        table,
        log,
        needs=needs,
        count_failure=services.metrics.cdi_spec_failures.labels(config.name).inc,
        instance=services.instance_id,
        watcher=services.watcher,
        offload=services.offload,
        booked=functools.partial(services.ownership.is_booked, config.name),
        pinned=handed,
        spec_dirs=None if services.cdi_dirs is None else services.cdi_dirs(),
    )


def spec_dir_records(
    config: Config, log: EventLogger, offload: Offload, files: StateFiles
) -> Callable[[], SpecDirRecord]:
    """The spec dirs the host's CDI spec writers look at (`cdi_dirs`), made at the first
    call (by the first resource with `allocate.cdi`: a run without imports nothing)."""

    @functools.cache
    def record() -> SpecDirRecord:
        from .cdi_dirs import SpecDirRecord

        bound = log.bind(component="cdi-dirs")
        return SpecDirRecord(config.state_dir, bound, offload, config.cdi_runtime_dirs, files)

    return record


def cdi_goes(old: ResourceConfig, new: ResourceConfig | None) -> bool:
    """Whether a reload ends `old`'s CDI spec file for good: the resource removed (`new`
    None), or its `allocate.cdi` turned off (hostile20 F4); its held entries are then kept
    by a keeper (`cdi_keeper`) while their pods hold them."""
    return old.allocate.cdi is not None and (new is None or new.allocate.cdi is None)


def cdi_keeper(
    config: ResourceConfig, services: HostServices, after: asyncio.Task[None] | None
) -> asyncio.Task[None] | None:
    """The keeper of a removed resource's held CDI entries, started once `after` (its
    runtime) ended (`cdi_keeper`); None when it has no `allocate.cdi` or nothing held."""
    if config.allocate.cdi is None:
        return None
    from .cdi_keeper import keep_held_entries

    return keep_held_entries(config, services, after)


def pod_resources_poller(
    config: Config,
    metrics: Metrics,
    log: EventLogger,
    offload: Offload,
    booked: Callable[[], Mapping[str, Collection[str]]],
    timings: Timings,
    peer_booked: Callable[[BookedElsewhere], None],
) -> PodResourcesPoller | None:
    """The host's one PodResources poller (None: `podResourcesInterval: 0s`, polling off),
    which holds the IDs handed out that no answer showed (`unlisted`: reading the kubelet's
    checkpoint in its `socketDir` through `offload`; at start every ID it lists, of every
    resource, as the start books them all, `checkpoint_bookings.book_handed`; every ID
    `booked` when it cannot be read; those another host on the state directory books,
    from when `peer_booked` tells them, `OwnershipIndex.peer_booked`)."""
    kubelet = config.kubelet
    if kubelet.pod_resources_interval <= 0:
        return None
    from .podresources import PodResourcesPoller
    from .unlisted import Unlisted

    unlisted = Unlisted(
        kubelet.socket_dir, offload, log.bind(component="podresources"), timings=timings
    )
    unlisted.seed(None, booked)
    peer_booked(unlisted.booked_elsewhere)
    return PodResourcesPoller(
        kubelet.pod_resources_socket,
        kubelet.pod_resources_interval,
        metrics,
        log,
        unlisted=unlisted,
        timings=timings,
        offload=offload,
    )


def node_feature_file(
    config: NodeFeaturesConfig | None, log: EventLogger, offload: Offload, instance: str
) -> NodeFeatureFile | None:
    """The NFD feature file every resource's device counts go to (None: no `nodeFeatures`)."""
    if config is None:
        return None
    from .nfd import NodeFeatureFile

    return NodeFeatureFile(config, log, offload, instance)


def held_missing_actions(
    config: Config, node: str, offload: Offload, metrics: Metrics, log: EventLogger
) -> HeldMissingActions | None:
    """The actions of `heldMissing` against the in-cluster API server (None: off); without
    one they log why and count each action `unreachable`."""
    held = config.held_missing
    if not held.events and held.delete_pods is None:
        return None
    from .held_actions import HeldMissingActions
    from .kubeapi import ApiError, ApiServer
    from .pod_api import PodApi

    log = log.bind(component="held-missing")
    try:
        api = ApiServer.in_cluster(os.environ)
    except ApiError as exc:
        return HeldMissingActions(held, None, node, metrics, log, problem=str(exc))
    return HeldMissingActions(held, PodApi(api, offload), node, metrics, log)


@dataclass
class KubernetesLabels:
    """The node's labels from the Kubernetes API (in-cluster), or why they cannot be read:
    the API is looked for (`kubeapi` imported) only when the host first asks, once an entry
    selects by label."""

    node: str
    offload: Offload
    log: EventLogger
    _source: NodeLabelSource | None = None

    def _reached(self) -> NodeLabelSource:
        if self._source is None:
            from .kubeapi import ApiError, ApiServer, NodeLabelWatch

            try:
                api = ApiServer.in_cluster(os.environ)
            except ApiError as exc:
                self._source = NoLabels(str(exc))
            else:
                self._source = NodeLabelWatch(api, self.node, self.log, self.offload)
        return self._source

    @property
    def problem(self) -> str | None:
        return self._reached().problem

    def updates(self) -> AsyncIterator[Mapping[str, str]]:
        return self._reached().updates()
