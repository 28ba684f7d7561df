"""The host: every configured resource on one event loop, until told to stop. It composes
the pieces that each own one idea: the supervisor (a task per resource, restarted with
backoff), the config reloader (a new file applied as a diff: new resources start, removed
ones stop, changed ones restart, unchanged ones are not touched), stale-socket cleanup, the
loop's answers behind /healthz, the state files behind /readyz, kubelet restarts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .cdi_lookup import CdiNames
from .checkpoint_bookings import book_handed
from .checkpoint_reads import CheckpointReads
from .commands import Commands
from .config import NODE_LABEL_SETTLE, Config, ConfigError, load_config, never_handed
from .drivers import DriverFactory, make_driver
from .features import forget_unconfigured, node_feature_file, pod_resources_poller, spec_dir_records
from .files import STOP_WAIT, DaemonThreads, Offload, OffloadScope
from .handed_out import HandedRecord
from .inotify_watch import make_watcher
from .kubelet_restarts import follow_kubelet_restarts
from .logs import EventLogger
from .metric_labels import ConfigReloadResult
from .metrics import Metrics
from .node import NodeInfo, NodeLabelSource, Selection, needs_labels, select_for_node, settled
from .ownership import OwnershipIndex
from .ownership_adopt import WITHOUT_POD_RESOURCES
from .ownership_sync import shared_bookings
from .probes import HealthState
from .recorded_bookings import unlist_recorded
from .release_state import ReleaseStateStore
from .reload import ConfigReloader, ReloadPlan, RestartRequired, plan_reload, restart_required
from .resource import ResourceRuntime
from .safety_net import SafetyNet
from .services import HostServices, RegistryWait
from .stale_sockets import clear_sockets
from .state_files import StateFiles
from .state_lock import Hold, holding
from .state_presence import KeptPresent
from .supervisor import RestartPolicy, Supervisor
from .timings import Timings
from .watch import Watcher, WatcherFactory

if TYPE_CHECKING:  # imported where the config chooses them (`features`)
    from .held_actions import HeldMissingActions
    from .podresources import PodResourcesPoller


@dataclass
class Host:
    """The resources of a config on one event loop (`run`), reloaded as a diff."""

    config: Config
    metrics: Metrics
    log: EventLogger
    watcher: Watcher | None = None
    watchers: WatcherFactory = make_watcher
    """Makes the watcher when none is given (tests pass one that never uses inotify)."""
    instance_id: str = field(default_factory=lambda: os.urandom(4).hex())
    config_path: Path | None = None
    """Watched for changes (and re-read on `request_reload`) when given."""
    health: HealthState = field(default_factory=HealthState)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    drivers: DriverFactory = make_driver
    """Makes each resource's driver (tests pass their own)."""
    registry_wait: RegistryWait = field(default_factory=RegistryWait)
    """With pluginsRegistry: how long to wait for the kubelet's verdict before a new socket."""
    load_config: Callable[[Path], Config] = load_config
    """Reads and validates a config file on reload (through `offload`); raises ConfigError."""
    offload: Offload = field(default_factory=DaemonThreads)
    """The one way off the event loop, for the host and every resource (through `_work`)."""
    offload_wait: float = STOP_WAIT
    """Seconds `run` waits, once stopped, for what it sent off the loop (`OffloadScope`)."""
    node: NodeInfo = field(default_factory=lambda: NodeInfo(""))
    """This node: its name, and its labels once read (entries select by them, `node`)."""
    node_labels: NodeLabelSource | None = None
    """Reads and follows the node's labels, from the moment an entry selects by label."""
    label_settle: float = NODE_LABEL_SETTLE
    """A label change is applied once it has settled this long (kdp_host.node.settled)."""
    timings: Timings = field(default_factory=Timings)
    """The waits on the kubelet's news (the product's defaults; tests pass shorter ones)."""
    held_missing: HeldMissingActions | None = None
    """`heldMissing`'s actions (made by `kdp-host run`, `features.held_missing_actions`)."""
    selection: Selection = field(init=False)
    """The entries this node serves (`config` is the whole file)."""
    ownership: OwnershipIndex = field(init=False)
    """One index of claimed nodes for every resource and every config version of this host."""
    state_files: StateFiles = field(init=False)
    _work: OffloadScope = field(init=False)
    _supervisor: Supervisor | None = field(default=None, init=False)
    _worst_lag: float = field(default=0.0, init=False)
    _reloader: ConfigReloader | None = field(default=None, init=False)
    _label_task: asyncio.Task[None] | None = field(default=None, init=False)
    pod_resources: PodResourcesPoller | None = field(default=None, init=False)  # or polling off

    def __post_init__(self) -> None:
        """Raises SelectionError (a ConfigError) if two entries of a name select this node."""
        self.selection = select_for_node(self.config, self.node)
        self._work = OffloadScope(self.offload)
        polling = self.config.kubelet.pod_resources_interval > 0
        self.ownership = OwnershipIndex(
            self.metrics, offload=self._work, pod_resources=polling, timings=self.timings
        )
        self.ownership.never_handed = never_handed(self.config, self.config_path)
        self.state_files = StateFiles(self.metrics.state_persist_failing, self._refresh_readiness)
        if self.config_path is not None:
            self._reloader = self._reloader_for(self.config_path)

    def _reloader_for(self, path: Path) -> ConfigReloader:
        return ConfigReloader(
            path, current=lambda: self.config, apply=self.apply, metrics=self.metrics,
            log=self.log, load_config=self.load_config, offload=self._work,
        )  # fmt: skip

    @property
    def resources(self) -> dict[str, ResourceRuntime]:
        return {} if self._supervisor is None else self._supervisor.resources

    def not_ready(self) -> dict[str, str]:
        """Resources not serving and registered, with a reason; `node`: waiting for labels."""
        out = {} if self._supervisor is None else self._supervisor.not_ready()
        out.update(self.state_files.not_ready())
        if self.selection.waiting:
            why = self.node_labels.problem if self.node_labels is not None else None
            waiting = ", ".join(self.selection.waiting)
            out["node"] = f"labels not read ({why or 'no Kubernetes API'}): {waiting} wait for them"
        return out

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every resource until `stop`, holding `stateDir`; what it sent off the loop
        ends (`offload_wait` at most) before the hold goes."""
        state_dir, instance = self.config.state_dir, self.instance_id
        async with holding(state_dir, self._work, self.log, instance) as hold:
            try:
                await self._serve(stop, hold)
            finally:
                await self._work.close(self.offload_wait, self.log)

    async def _serve(self, stop: asyncio.Event, hold: Hold) -> None:
        self.watcher = watcher = self.watcher or self.watchers(
            self.log.bind(component="watch"), offload=self._work
        )
        watcher.report_unwatched(self.metrics.watch_unwatched.set)
        hold.follow(watcher, self._work)  # taken again when what stateDir names changes
        self.ownership.watch(watcher, safety_net := SafetyNet(self._work))  # claims, trees
        kubelet = self.config.kubelet
        state_dir, instance = self.config.state_dir, self.instance_id
        handed = await HandedRecord.read(state_dir, self.log, self._work, instance)  # (first)
        release_state = await ReleaseStateStore.read(state_dir, self.log, self._work, instance)
        self.ownership.hold_while_releasing(release_state)
        sync = await shared_bookings(self.ownership, state_dir, instance, self._work, self.log)
        served = {r.name for r in self.selection.config.resources}
        unresolved = self.metrics.cdi_unresolved  # (a CDI name of the checkpoint: `cdi_lookup`)
        cdi = CdiNames(self.config.cdi_runtime_dirs, lambda name: unresolved.labels(name).inc())
        recorded = await book_handed(
            self.ownership, self.selection.config, self._work, self.log, handed, cdi
        )  # (what only handed-out.json keeps too: `recorded_bookings`)
        self.pod_resources = pod_resources_poller(  # (IDs handed out held until shown)
            self.selection.config, self.metrics, self.log, self._work,
            self.ownership.handed_out, self.timings, self.ownership.peer_booked)  # fmt: skip
        if self.pod_resources is not None:  # (lingering claims go once no pod holds them;
            self.pod_resources.subscribe(self.ownership.holdings)  # the kubelet writes its
            # checkpoint when a list is sent again: `unlisted`)
            self.pod_resources.nudge(lambda: any(r.resend() for r in list(self.resources.values())))
            unlist_recorded(self.pod_resources.unlisted, recorded)  # (held until shown)
        else:
            self.log.warning("pod_resources_off", consequence=WITHOUT_POD_RESOURCES)
        assert handed.file is not None  # (read from stateDir: written again if it goes)
        kept = KeptPresent(handed.file, handed.document, self._work, handed.peers_wrote)
        watches = [release_state.follow(watcher, self.ownership.booked_ids), kept.follow(watcher)]
        booked = self.ownership.handed_at_start(served)  # (CDI answers of the checkpoint too)
        handed.booked_at_start(booked, sync.file.found, served, self.ownership.is_booked)
        if self.pod_resources is not None:  # its entries go with their bookings
            self.pod_resources.subscribe(handed.after_answers(self.ownership))
        sync.follow(watcher, safety_net)
        self.state_files.add(sync.file, release_state.file, handed.file)
        commands = Commands(self.log)  # the process machinery made at the first command
        node_features = node_feature_file(self.config.node_features, self.log, self._work, instance)
        reads = CheckpointReads(self.ownership, kubelet.socket_dir, self._work, self.log,
                                self.pod_resources, self.metrics, cdi=cdi)  # fmt: skip
        reads.follow(watcher, lambda: [r.name for r in self.selection.config.resources],
                     self.ownership, self.ownership.local)  # fmt: skip
        services = HostServices(
            kubelet, self.instance_id, watcher, self.metrics, self.log, safety_net, self.drivers,
            commands=commands, pod_resources=self.pod_resources, release_state=release_state,
            ownership=self.ownership, status_changed=self._status_changed,
            registry_wait=self.registry_wait, offload=self._work, node_features=node_features,
            handed=handed, timings=self.timings, checkpoint=reads,
            held_missing=self.held_missing,
            cdi_dirs=spec_dir_records(self.config, self.log, self._work, self.state_files),
        )  # fmt: skip
        sync.host_ended = services.peer_sockets.host_ended  # (a SIGKILLed peer: `peer_sockets`)
        supervisor = Supervisor(services, self.restart_policy)
        self._supervisor = supervisor
        watch_task = asyncio.create_task(watcher.run(), name="watcher")
        kubelet_watch = follow_kubelet_restarts(watcher, kubelet.socket_dir,
            self.metrics.kubelet_restarts, self.log, self.pod_resources)  # fmt: skip
        self.log.info(
            "host_started",
            resources=len(self.selection.config.resources),
            socket_dir=kubelet.socket_dir,
            registration=kubelet.registration,
            serve_dir=kubelet.serve_dir,
            instance=self.instance_id,
            watcher=watcher.kind,
        )
        self._record_config(self.config)
        await self._work.run(lambda: clear_sockets(kubelet, state_dir, instance, self.log))
        self.health.attach(asyncio.get_running_loop(), self._loop_answered)
        internal = [watch_task]
        if self._reloader is not None:
            internal.append(asyncio.create_task(self._reloader.run(watcher), name="reload"))
        if self.pod_resources is not None:
            internal.append(asyncio.create_task(self.pod_resources.run(), name="podresources"))
        for part, name in ((node_features, "node-features"), (self.held_missing, "held-missing")):
            if part is not None:
                internal.append(asyncio.create_task(part.run(), name=name))
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        try:
            for resource in self.selection.config.resources:
                supervisor.start(resource)
            self._refresh_readiness()
            self._log_selection()
            self._follow_labels_if_needed()
            await asyncio.wait({stop_task, *internal}, return_when=asyncio.FIRST_COMPLETED)
            for task in internal:
                if task.done() and not task.cancelled():
                    error = task.exception()
                    self.log.error("host_task_died", task=task.get_name(), error=repr(error))
                    raise RuntimeError(f"host task {task.get_name()} died: {error!r}") from error
        finally:
            self.health.detach()
            stop_task.cancel()
            if self._label_task is not None:
                self._label_task.cancel()
                await asyncio.gather(self._label_task, return_exceptions=True)
            kubelet_watch()
            for watch in watches:
                watch.cancel()
            sync.close()
            await supervisor.stop_all()
            services.registrar.close()
            for task in internal:
                task.cancel()
            await asyncio.gather(*internal, return_exceptions=True)
            self.log.info("host_stopped")

    def _status_changed(self, name: str) -> None:  # /readyz: the resource's entry alone
        if (supervisor := self._supervisor) is not None:
            self.health.resource_readiness(name, *supervisor.readiness(name))
            if supervisor.gave_up(name) != (name in self.health.dead):
                self.health.dead = tuple(supervisor.dead_resources())

    def _refresh_readiness(self) -> None:  # each probe refreshes them too
        if self._supervisor is not None:
            self.health.report_not_ready(self.not_ready())
            self.health.dead = tuple(self._supervisor.dead_resources())

    def request_reload(self) -> None:
        """Re-read the config file now (SIGHUP); a host without a config file ignores it."""
        if self._reloader is not None:
            self._reloader.request()

    async def reload_from(self, path: Path) -> ConfigReloadResult:
        """Read, validate and apply `path` now; returns the counted result."""
        reloader = self._reloader
        if reloader is None or reloader.path != path:
            reloader = self._reloader_for(path)
        return await reloader.reload()

    def apply(self, new: Config) -> ReloadPlan:
        """Apply a validated config as a diff of the entries this node serves. Raises
        RestartRequired for what needs a restart, SelectionError (a ConfigError) when two
        entries of a name select this node."""
        if problems := restart_required(self.config, new):
            raise RestartRequired("; ".join(problems))
        self.ownership.never_handed = never_handed(new, self.config_path)
        plan = self._apply_selection(select_for_node(new, self.node))
        self.config = new
        self._record_config(new)
        self._follow_labels_if_needed()
        return plan

    def relabel(self, labels: Mapping[str, str]) -> ReloadPlan | None:
        """Apply the entries the node's `labels` select like a config edit (returns the
        plan); a selection that fails keeps the entries in force (logged)."""
        if labels == self.node.labels:
            return None
        self.node = dataclasses.replace(self.node, labels=dict(labels))
        try:
            selection = select_for_node(self.config, self.node)
        except ConfigError as exc:
            self.log.error("node_selection_failed", node=self.node.name, error=str(exc))
            return None
        plan = self._apply_selection(selection)
        self.log.info("node_labels_applied", node=self.node.name, added=",".join(plan.added),
                      removed=",".join(plan.removed), changed=",".join(plan.changed),
                      unchanged=len(plan.unchanged))  # fmt: skip
        self._log_selection()
        return plan

    def _apply_selection(self, selection: Selection) -> ReloadPlan:
        supervisor = self._supervisor
        if supervisor is None:
            raise RuntimeError("the host is not running")
        current, new = self.selection.config, selection.config
        plan = plan_reload(current, new)
        new_by_name = {r.name: r for r in new.resources}
        old_by_name = {r.name: r for r in current.resources}
        for name in plan.changed:
            if old_by_name[name].replicas != new_by_name[name].replicas:
                self.log.warning(
                    "replicas_changed",
                    resource=name,
                    detail="device IDs change: a device with a booked ID that is not among its "
                    "new IDs is held until PodResources shows no pod holding it",
                )
        stopping = {
            n: supervisor.stop_later(n, new_by_name.get(n)) for n in (*plan.removed, *plan.changed)
        }
        reads = supervisor.services.checkpoint  # (the checkpoint first; the added fenced)
        booked = None if reads is None or not (plan.changed or plan.added) else reads.before(
            (*plan.changed, *plan.unchanged), plan.added)  # fmt: skip
        for name in (*plan.changed, *plan.added):
            supervisor.start(new_by_name[name], after=stopping.get(name), booked=booked)
        for name in plan.removed:
            self.ownership.retire(name)
        self.selection = selection
        for name in (*plan.removed, *plan.changed):
            self._forget_when_stopped(name, stopping[name])
        self._refresh_readiness()
        return plan

    def _log_selection(self) -> None:
        names = [r.name for r in self.selection.config.resources]
        if len(names) < len(self.config.resources) or self.selection.waiting:
            self.log.info(
                "node_selection",
                node=self.node.name,
                serves=",".join(names) or "nothing",
                waiting_for_labels=",".join(self.selection.waiting),
            )

    def _follow_labels_if_needed(self) -> None:
        """Start reading the node's labels once an entry selects by label."""
        if self._label_task is None and self.node_labels is not None and needs_labels(self.config):
            self._label_task = asyncio.create_task(self._follow_labels(self.node_labels))

    async def _follow_labels(self, source: NodeLabelSource) -> None:
        try:
            changes = settled(source.updates(), self.label_settle)
            async with contextlib.aclosing(changes):
                async for labels in changes:
                    self.relabel(labels)
        except Exception as exc:  # the source retries on its own: this is a defect
            self.log.error("node_labels_stopped", node=self.node.name, error=repr(exc))
            raise

    def _forget_when_stopped(self, name: str, task: asyncio.Task[None] | None) -> None:
        """Once a stopped runtime is gone (it writes until then), drop the series its resource
        has no longer: all if it left the config, else the hooks' the config then lacks."""

        def forget(_: object = None) -> None:
            current = next((r for r in self.selection.config.resources if r.name == name), None)
            if current is not None:
                forget_unconfigured(self.metrics, current)
            elif self._supervisor is None or name not in self._supervisor.resources:
                self.metrics.forget_resource(name)
                if self._supervisor is not None:
                    features = self._supervisor.services.node_features
                    if features is not None:
                        features.forget(name)

        if task is None or task.done():
            forget()
        else:
            task.add_done_callback(forget)

    def _loop_answered(self, delay: float) -> None:
        """A probe or scrape asked the loop (/healthz, /metrics): how long the answer took
        is the loop's lag; readiness and the dead resources are refreshed with it."""
        self._worst_lag = max(self._worst_lag, delay)
        self.metrics.loop_lag.set(delay)
        self.metrics.loop_lag_max.set(self._worst_lag)
        self._refresh_readiness()

    def _record_config(self, config: Config) -> None:
        self.metrics.config_info.info({"sha256": config.sha256})
        self.metrics.config_timestamp.set(time.time())
