"""One resource's runtime: driver, device table, the parts that follow it (health checks,
CDI spec, release, who holds what) and its socket (`serving.py`), run as a unit: one task
group, so a part that fails ends the resource and the supervisor restarts it."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from .answer_needs import AnswerNeeds
from .checkpoint_reads import CheckpointReads
from .config import ResourceConfig
from .container_paths import OwnCollisions
from .device_table import DeviceTable
from .devices import Snapshot, physical_id
from .drivers import DeviceReporter, Driver, DriverDeps, failure_threshold
from .drivers.carry import Carried, carry, left_by
from .features import (
    allocate_hook,
    cdi_writer,
    health_checker,
    needs_watch,
    pre_start_hook,
    release_tracker,
)
from .files import STOP_WAIT, OffloadScope
from .first_list import FirstList
from .held_replaced import Replaced
from .ownership import OwnedTable
from .ownership_elsewhere import Elsewhere
from .preferred_need import PreferredNeed
from .protocol.lists import ListAndWatchEncoder, Overflow
from .protocol.service import DevicePluginService
from .rules import LIST_AND_WATCH_MAX_BYTES
from .runtime_fence import RuntimeFence
from .services import HostServices
from .serving import ServingLoop
from .state_file import WRITE_LIMIT

if TYPE_CHECKING:  # the features' modules are imported where the config chooses them
    from .cdi import CdiSpecWriter
    from .holdings import Holder, Holdings


class ResourceRuntime:
    """One resource: its driver and device table, the parts that follow the table (health,
    CDI, release, who holds what), and its socket (`serving.ServingLoop`)."""

    def __init__(self, config: ResourceConfig, services: HostServices) -> None:
        self.config = config
        self._work = OffloadScope(services.offload)
        """What the runtime sends off the loop (its scans, its CDI spec, its socket): waited
        for when it stops, so the runtime a reload or a crash starts never overlaps it."""
        services = self._services = dataclasses.replace(services, offload=self._work)
        self.log = services.log.bind(resource=config.name)
        self.table = DeviceTable(replicas=config.replicas)
        self._held: dict[str, tuple[Holder, ...]] = {}
        """Physical devices a container holds (the last PodResources answer), and by whom."""
        self._held_ids: dict[str, tuple[str, ...]] = {}
        """The advertised IDs of each device of `_held` the containers hold."""
        self._held_missing: set[str] = set()
        self._held_replaced: set[str] = set()
        self.elsewhere = Elsewhere()
        """Held devices under another plugin's ID whose nodes are there (`ownership_elsewhere`)."""
        self.replaced = Replaced()
        """Held devices made anew at a path since handed out (`held_replaced`)."""
        self._encoder = ListAndWatchEncoder(
            on_overflow=self._on_list_overflow,
            held=functools.partial(services.ownership.is_booked, config.name),
        )
        self._handed = services.handed.of(config.name)
        self.needs = AnswerNeeds(
            self.table,
            self.log,
            lambda need, why: self.status.set_problem(need, why),
            services.metrics.answer_need_unmet,
            config.name,
        )
        """What the resource's answers need besides its devices (`answer_needs`)."""
        self._needs_watch = needs_watch(config, self.needs, services, self.table.published)
        watch = self._needs_watch  # (a refused Allocate has it look again: `source_clash`)
        spawn_failed, self._refused = (lambda: None, lambda: None) if watch is None else (
            watch.spawn_failed, watch.answer_refused)  # fmt: skip
        self._pre_start = pre_start_hook(
            config, self.table, services, self.log, self._handed, spawn_failed
        )
        self._allocate_hook = allocate_hook(config, services, self.log, spawn_failed)
        self.release = release_tracker(config, self.table, services, self.log, self._handed)
        self._cdi: CdiSpecWriter | None = None
        """The CDI spec writer of a resource with `allocate.cdi`, once it runs (told what
        each Allocate handed out)."""
        self._serving = ServingLoop(
            config.name, services, self.log, self._make_service, FirstList([self.table.published]),
            lambda: self.table.snapshot.healthy_count,
        )  # fmt: skip
        self.status = self._serving.status
        self.endpoint = self._serving.endpoint
        self.socket_path = self._serving.socket_path
        self.table.add_listener(self._on_devices_changed)
        self._service: DevicePluginService | None = None
        self._preferred = PreferredNeed(config, self.table)  # (every service's, following)
        self.table.follow_lists(self._preferred.follow)
        self._driver: Driver | None = None
        self.carried: Carried | None = None
        """What the runtime before it left (its devices missing: `drivers.carry`)."""

    def left(self) -> Carried | None:
        """What this runtime's driver, stopped, leaves the next runtime (`drivers.carry`);
        with no driver made yet, what it was left itself."""
        driver = self._driver
        return self.carried if driver is None else left_by(driver, self.config.driver)

    def resend(self) -> bool:
        """The list again on the open ListAndWatch stream (the kubelet then writes its
        checkpoint: `unlisted`); False when none is open."""
        return self._service is not None and self._service.resend()

    def _make_service(self, on_stream_lost: Callable[[], None]) -> DevicePluginService:
        """The DevicePlugin service of a new socket (the one served from now on)."""
        poller = self._services.pod_resources  # (told each Allocate: `unlisted`)
        reads = self._services.checkpoint
        self._service = DevicePluginService(
            self.config,
            self.table,
            self._encoder,
            self._services.metrics,
            self.log,
            on_stream_lost=on_stream_lost,
            on_listed=self.status.first_list_sent,
            pre_start=self._pre_start,
            allocate_hook=self._allocate_hook,
            release=self.release,
            bookings=self._services.ownership,
            handed=self._handed,
            allocated=None if poller is None else poller.allocated,
            fence=None if reads is None else self._fence(reads),
            cdi_written=None if self.config.allocate.cdi is None else self._cdi_written,
            preferred=self._preferred,
            offload=self._services.offload,
            place_refused=self._refused,
        )
        return self._service

    async def _cdi_written(self, snapshot: Snapshot, asked: Sequence[Sequence[str]]) -> str | None:
        """Until each name an answer carries resolves to what it hands out: as the CDI spec
        file on disk defines it, or a file that wins over it in the runtime's dirs (another
        live host's, `cdi_resolution`), at most `state_file.WRITE_LIMIT`; else why not."""
        from .cdi_disk import answered  # (a resource with `allocate.cdi` only)

        writer, named = self._cdi, answered(self.config.name, snapshot, asked)
        if writer is None or await writer.disk.until_holding(named, WRITE_LIMIT):
            return None
        late = sorted(
            name for name, device in named.items() if not writer.disk.holds({name: device})
        )
        return (
            f"the CDI spec files on disk do not resolve {','.join(late)} as handed out "
            f"(within {WRITE_LIMIT:g} s): a container would resolve them to other nodes; "
            "refused until they do"
        )

    def _on_list_overflow(self, overflow: Overflow | None) -> None:
        """The list became longer than one ListAndWatch message may be, or fits again (told
        once per change): an error line, the gauge, and /readyz names the resource."""
        name = self.config.name
        left_out = 0 if overflow is None else overflow.left_out
        self._services.metrics.list_and_watch_left_out.labels(name).set(left_out)
        if overflow is None:
            self.log.info("device_list_fits")
            self.status.set_problem("list", None)
            return
        self.log.error(
            "device_list_too_large",
            advertised=overflow.advertised,
            entries=overflow.entries,
            size=overflow.size,
            limit=LIST_AND_WATCH_MAX_BYTES,
        )
        self.status.set_problem(
            "list",
            f"device list over the kubelet's message limit: "
            f"{overflow.advertised} of {overflow.entries} advertised",
        )

    def _on_devices_changed(self, snapshot: Snapshot) -> None:
        self._services.metrics.set_device_counts(
            self.config.name, snapshot.healthy_count, snapshot.unhealthy_count
        )
        if self._services.node_features is not None:
            self._services.node_features.update(self.config.name, snapshot)
        if self._services.pod_resources is not None:  # (`kubeletAllocatable` asked again)
            self._services.pod_resources.lists_changed()
        if self._held:
            self._look_replaced(snapshot)
            self._check_held_devices(snapshot)

    async def run(self) -> None:
        """Run until cancelled; an exception means the resource crashed (the host restarts it)."""
        services = self._services
        deps = DriverDeps(
            self.log,
            services.watcher,
            offload=services.offload,
            commands=services.commands,
            safety_net=services.safety_net,
            local=services.ownership.local,
        )
        driver = self._driver = services.drivers(self.config.driver, deps)
        carry(self.carried, driver, self.config.driver, self.log)
        cdi = self.config.allocate.cdi
        detach = services.ownership.attach(
            self.config.name,
            self.table.publish,
            self.log,
            replicas=self.config.replicas,
            cdi_kind=None if cdi is None else cdi.kind,
        )
        services.ownership.share_mounts(
            self.config.name, (mount.host_path for mount in self.config.allocate.mounts)
        )
        try:
            await self._run(driver)
        finally:
            if services.held_missing is not None:
                services.held_missing.forget(self.config.name)
            self.elsewhere.stop()
            self.replaced.stop()
            detach()
            await self._work.close(STOP_WAIT, self.log)

    async def _run(self, driver: Driver) -> None:
        services = self._services
        reporter = DeviceReporter(
            OwnedTable(services.ownership, self.config.name, self.table),
            resource=self.config.name,
            log=self.log,
            metrics=services.metrics,
            failure_threshold=failure_threshold(self.config.driver),
            first_attempt_failed=self._serving.first_list.failed,
            own_collisions=OwnCollisions.of(self.config),
        )
        self._on_devices_changed(self.table.snapshot)
        if self.release is not None:
            # Before any news (subscribing hands over the last answer at once): the tracker
            # takes up the state kept for the resource first, owed releases included.
            self.release.start()
        elif services.release_state is not None:  # (its uses are not counted from now)
            services.release_state.untracked(self.config.name)
        poller = services.pod_resources
        unsubscribe = None if poller is None else poller.subscribe(self._on_holdings)
        fence = services.ownership.fence  # (its lock not taken in time: `fence_stuck`)
        unfollow = None if fence is None else fence.stuck.follow(self.needs)
        try:
            await self._run_parts(driver, reporter)
        finally:
            if unfollow is not None:
                unfollow()
            if unsubscribe is not None:
                unsubscribe()
            if self.release is not None:
                await self.release.close()

    def _on_holdings(self, holdings: Holdings) -> None:
        """A PodResources answer: the in-use count, and news for the release tracker."""
        held = holdings.of(self.config.name)
        by_device: dict[str, tuple[Holder, ...]] = {}
        ids: dict[str, tuple[str, ...]] = {}
        for advertised, holders in held.items():
            device = physical_id(advertised)
            by_device[device] = by_device.get(device, ()) + holders
            ids[device] = (*ids.get(device, ()), advertised)
        self._held, self._held_ids = by_device, ids
        metrics = self._services.metrics
        metrics.devices_in_use.labels(self.config.name).set(len(by_device))
        if metrics.holders_enabled:
            metrics.set_holders(
                self.config.name,
                {(a, h.namespace, h.pod, h.container) for a, hs in held.items() for h in hs},
            )
        checked = functools.partial(self._check_held_devices, self.table.snapshot)
        self.elsewhere.look(
            self._services.ownership, self.config.name, by_device, self._work, checked
        )
        self._look_replaced(self.table.snapshot)
        self._check_held_devices(self.table.snapshot)
        if self.release is not None:
            self.release.holdings(holdings)

    def check_held(self) -> None:
        """Check the held devices against the current list (`_check_held_devices`)."""
        self._check_held_devices(self.table.snapshot)

    def held_replaced(self, devices: Iterable[str]) -> set[str]:
        """Of `devices` (held), those a path of which reaches another node or file now than
        handed out (`held_replaced`): missing, for the held-missing check and `/devices`."""
        return self.replaced.of(devices, self._handed.entry)

    def _look_replaced(self, snapshot: Snapshot) -> None:
        self.replaced.look(
            snapshot.device, self._held, self._handed.entry, self._work, self.check_held
        )

    def _fence(self, reads: CheckpointReads) -> RuntimeFence:
        def refused(why: str) -> None:  # (the checkpoint cannot be read, or looked at)
            self._services.metrics.allocations.labels(name, "checkpoint_unreadable").inc()
            self.log.warning("allocate_refused", reason=why, result="checkpoint_unreadable")

        name, report = self.config.name, functools.partial(self.status.set_problem, "checkpoint")
        return RuntimeFence(name, reads, report, self.check_held, refused)

    def _check_held_devices(self, snapshot: Snapshot) -> None:
        """Devices a container holds that are gone or unhealthy (GDP#74: the stick was
        unplugged and the pod keeps running): a gauge, and one warning per device as it goes
        missing, naming its holders (the README's recipe acts on them): `unhealthy` while
        its driver lists it (advertised Unhealthy, or held: its node went before the driver
        saw it), `gone` once not; `replaced` while a path of it reaches another node or file
        than handed out (`held_replaced`: made anew, the pod has the old one). A held ID no
        device is advertised under whose node a listed device holds for it (a reload renamed
        it, hostile11 K6) is neither, nor a device held back by another's claim that its
        driver lists healthy (`held_in_place`), nor another plugin's ID whose nodes are there
        as it handed them out (hostile12 L2). Not before the driver's first list: a
        PodResources answer that comes first would call every held device gone; nor before
        the CDI spec's first write (until then every device is held Unhealthy, its name not
        on disk yet: hostile10 F4 saw `state=unhealthy` for devices healthy a few ms later);
        the write changes the snapshot, which checks again; nor while the first list waits
        for the kubelet's checkpoint (another plugin's IDs not booked yet:
        `CheckpointReads`), checked again once it may go out."""
        healthy = self.table.own_healthy(snapshot, self._held)  # (not withheld: `answer_needs`)
        if not self.table.published.is_set() and self._serving.first_list.failure is None:
            return  # no list yet (a start, a restart by a reload): nothing is known missing
        if self._cdi is not None and not self._cdi.first_sync.is_set():
            return  # (the spec not written yet: each device Unhealthy until it is)
        reads = self._services.checkpoint
        if reads is not None and reads.holds_list(self.config.name):
            return  # (the kubelet's checkpoint not read yet: what another plugin handed out)
        missing = {device for device in self._held if device not in healthy}
        ownership, name = self._services.ownership, self.config.name
        kept = {d: ownership.kept_for(name, self._held_ids.get(d, ())) for d in missing}
        missing -= {device for device, devices in kept.items() if any(d.healthy for d in devices)}
        missing -= {device for device in missing if ownership.held_in_place(name, device)}
        missing -= self.elsewhere.kept(missing)
        replaced = self.held_replaced(self._held)  # (listed: a node made anew, hostile14 N3)
        missing |= replaced
        self._services.metrics.devices_held_missing.labels(self.config.name).set(len(missing))

        def state(device: str) -> str:
            if device in replaced:
                return "replaced"
            present = snapshot.device(device) is not None or ownership.lists(name, device)
            present = present or bool(kept.get(device))
            return "unhealthy" if present else "gone"

        states = {device: state(device) for device in missing}
        for device in sorted((missing - self._held_missing) | (replaced - self._held_replaced)):
            self.log.warning(
                "held_device_missing",
                device=device,
                state=states[device],
                holders=",".join(h.shown() for h in self._held[device]),
            )
        self._held_missing, self._held_replaced = missing, replaced
        if (actions := self._services.held_missing) is not None:  # (`heldMissing`: opt-in)
            actions.update(name, states, self._held)

    async def _run_parts(self, driver: Driver, reporter: DeviceReporter) -> None:
        services, name = self._services, self.config.name
        async with asyncio.TaskGroup() as group:
            group.create_task(driver.run(reporter), name=f"{name}:driver")
            checker = health_checker(self.config, self.table, services, self.log)
            if checker is not None:
                group.create_task(checker.run(), name=f"{name}:health")
            writer = cdi_writer(
                self.config, self.table, services, self.log, needs=self.needs, handed=self._handed
            )
            if writer is not None:
                self._cdi = writer
                self._serving.first_list.ready.append(writer.first_sync)
                group.create_task(writer.run(), name=f"{name}:cdi")
            if (watch := self._needs_watch) is not None:
                self._serving.first_list.ready.append(watch.checked)
                group.create_task(watch.run(), name=f"{name}:needs")
            group.create_task(self._serving.run(), name=f"{name}:serve")
