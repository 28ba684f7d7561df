"""The CDI spec file of a resource with `allocate.cdi`: written, kept current, removed.

Allocate answers with CDI device names `<kind>=<name>`; the container runtime resolves
them through spec files in its CDI directories (`/etc/cdi`, `/var/run/cdi`). For each such
resource the host keeps one JSON spec there, named after the resource
(`kdp-host_vendor.example_fpga.json`): resource names are unique in a config and the
kubelet takes one plugin per resource, so two resources never share a file, and a restarted
host overwrites its own file instead of leaving a second one. A CDI kind belongs to one
resource (config check) and `allocation.cdi_device_name` is one-to-one (one name per kubelet
device ID), so every `kind=name` the host publishes is unique.

Writes are atomic (temporary file in the same directory, then rename; the temporary name
does not end in .json, so CDI watchers ignore it), happen only when the content changed,
and are coalesced: a burst of device changes is written once. Rendering and file work run
through the host's offload (one call per read, write or removal). What goes into the spec is
`cdi_spec.py`; which instance may write the file, `file_lease.py`.

Names are unique to (resource, ID) (`allocation.cdi_device_name`); at each verify a kdp-host
file of its kind no live instance owns is removed, and a name of its own another file defines
(CDI drops it) holds the device Unhealthy; so too in the spec dirs a host on `stateDir` wrote
in and the runtime's dirs (`cdi_dirs`). A later runtime dir's file wins over this one: an
Allocate answer waits for it too (`cdi_resolution`, hostile20 F2).

A container that restarts resolves its CDI names again, without a new Allocate: so an ID
keeps its entry as its Allocate handed the device out while it is booked (the rule of booked
claims; the record is `handed_out`'s), also when another ID of the device (`replicas`) was
handed out otherwise since (hostile14 N6), and follows the driver's list once it is not. A
name an older version gave the device (`Handed.id_names`) is kept for its use while one of
its IDs is. An ID booked, or shown held by PodResources, whose device as handed out is not
known (the record was lost) has no entry: its name fails closed. A resource a reload removes
keeps its held entries, written by a writer of its own (`cdi_keeper`), until none is booked.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .allocation import cdi_device_name, has_cdi_edits
from .answer_needs import AnswerNeeds
from .atomic_files import link_count, read_or_none, unlink, write_atomic
from .cdi_clashes import SpecClashes
from .cdi_dirs import SpecDirRecord
from .cdi_disk import SpecOnDisk
from .cdi_files import is_spec_file
from .cdi_pins import HeldNames, HeldPaths, held_entries, held_only, render_with_held
from .cdi_resolution import follow_above
from .cdi_rules import cdi_kind_problem
from .cdi_spec import checked_paths
from .config import ResourceConfig
from .config.outputs import owner_path, spec_path
from .device_table import DeviceTable
from .devices import Device, Snapshot, replica_ids
from .file_lease import LEASE, VERIFY, OwnerLease
from .files import DaemonThreads, Offload
from .handed_out import HandedOut, in_memory
from .logs import EventLogger
from .watch import Watcher

DEBOUNCE = 0.05
"""Seconds to let a burst of device changes settle before writing."""
RETRY_INTERVAL = 5.0
"""Seconds before retrying a failed write when nothing changed meanwhile."""

CLASH_REASON = "CDI names defined by another spec file"
"""/readyz's reason while another file defines a name of the resource's (`cdi_dirs`)."""
UNOWNED_REASON = "CDI spec file owned by another instance, not as this one hands devices out"
"""/readyz's reason while another instance's file defines names of ours otherwise (`differing`)."""


@dataclass
class CdiSpecWriter:
    """Keeps one resource's CDI spec file equal to its device table, until cancelled.

    Runs as a task of the resource: waits for the driver's first list, writes, then wakes
    on every table change (coalescing bursts for `debounce` seconds) and rewrites when the
    content changed. Removes the file when cancelled (the resource stopped). Never raises:
    a failed write is logged, counted (`count_failure`), reported (`report`: the resource
    is then not ready) and retried.

    A device whose CDI name is not in the spec file on disk is held Unhealthy in the table
    (the runtime could not resolve the name Allocate would return): a new device until its
    spec is written, every device of a file that cannot be written.

    An ID an Allocate handed out keeps its entry as that Allocate handed it out while it is
    booked (`pinned`, `booked`): the spec never points a pod's CDI name at a node it was
    not allocated (the rule of the ownership index's booked claims).
    """

    resource: ResourceConfig
    table: DeviceTable
    log: EventLogger
    debounce: float = DEBOUNCE
    retry_interval: float = RETRY_INTERVAL
    verify_interval: float = VERIFY
    report: Callable[[str | None], None] = field(default=lambda reason: None)
    """Told a short reason (no path) while the file cannot be written, None once it is."""
    needs: AnswerNeeds | None = None
    """The resource's answer needs (`answer_needs`: `cdi`; None: its own, telling `report`)."""
    count_failure: Callable[[], None] = field(default=lambda: None)
    offload: Offload = field(default_factory=DaemonThreads)
    """Where rendering and file reads, writes and removals run (the host's)."""
    instance: str = field(default_factory=lambda: os.urandom(4).hex())
    """This host instance (its socket names carry it too): the owner of the file it writes."""
    watcher: Watcher | None = None
    """Watches the spec dir, so a file removed or replaced behind the writer's back is seen
    at once (without it, at the next verify)."""
    lease: float = LEASE
    spec_dirs: SpecDirRecord | None = None
    """The dirs also looked at for files left behind, and where the spec dir is recorded
    before the first write (`cdi_dirs`; None: the spec dir alone)."""
    booked: Callable[[str], bool] = field(default=lambda advertised_id: False)
    """Whether the kubelet has an advertised ID of the resource booked now (the host's
    ownership index): while it has, the device's entry keeps what was allocated."""
    pinned: HandedOut | None = None
    """What each Allocate of the resource handed out (the host's record, `handed_out`: kept
    across reloads and restarts); its changes wake the writer."""
    retired: bool = False
    """The resource left the config (`cdi_keeper`): the table lists nothing, and the writer
    ends (its file removed) once no held device is left to keep."""
    path: str = field(init=False)
    owner_file: str = field(init=False)
    writes: int = field(default=0, init=False)
    """Files written."""
    failures: int = field(default=0, init=False)
    """Failed attempts to write or remove the file (retried)."""
    synced_version: int = field(default=-1, init=False)
    """Version of the last snapshot the file on disk reflects."""
    _on_disk: bytes | None = field(default=None, init=False, repr=False)
    _resolvable: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    _clashes: SpecClashes = field(init=False, repr=False)
    """Names of the file that another spec file defines too (`cdi_clashes`)."""
    first_sync: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    """Set after the first attempt to write the driver's first list (success or not)."""
    _last_error: str | None = field(default=None, init=False, repr=False)
    _lease: OwnerLease = field(init=False, repr=False)
    _needs: AnswerNeeds = field(init=False, repr=False)
    _repinned: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    """Set by an Allocate, a booking gone, or a change at a path a held entry is checked at
    (`_held_paths`): the held entries are rendered again."""
    _held_paths: HeldPaths = field(init=False, repr=False)
    _keeping: bool = field(default=False, init=False, repr=False)
    """The last sync had held devices to keep (pinned or withheld)."""
    _names: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False)
    disk: SpecOnDisk = field(default_factory=SpecOnDisk, init=False)  # (`cdi_disk`)
    _astray: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    """Held devices left out at the last sync (`render_held`)."""
    _held: HeldNames = field(default_factory=dict, init=False, repr=False)
    """The held names as this host's file defines them (`cdi_pins.render_with_held`): a
    change has the spec dirs looked at again (`_clashes`: hostile21 F3)."""
    _others: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    """Names of ours another instance's file defines otherwise (`SpecOnDisk.differing`)."""

    def __post_init__(self) -> None:
        self.path = spec_path(self.resource)
        self.owner_file = owner_path(self.path)
        self._lease = OwnerLease(
            self.owner_file, self.path, self.instance, self.lease, self.offload, self.log
        )
        if self.pinned is None:
            self.pinned = in_memory(self.resource.name)
        self._held_paths = HeldPaths(self.watcher, self._repinned.set)
        kind = "" if (cdi := self.resource.allocate.cdi) is None else cdi.kind
        self._clashes = SpecClashes(
            self.path, kind, self.resource.name, self.lease, self.spec_dirs, self.offload,
            self.log, self._clashes_changed, self.debounce,
        )  # fmt: skip
        if self.needs is None:
            self.needs = AnswerNeeds(self.table, self.log, lambda _, why: self.report(why))
        self._needs = self.needs
        if self.resource.allocate.cdi is not None:
            self._needs.hold("cdi", self._unresolvable)

    def _unresolvable(self, device: Device) -> bool:
        """Whether an Allocate of it may name an ID no file (or two files) on disk define."""
        if not has_cdi_edits(device):
            return False
        if (names := self._names.get(device.id)) is None:  # (made once: asked at each list)
            ids = replica_ids(device.id, self.resource.replicas)
            names = self._names[device.id] = tuple(
                cdi_device_name(self.resource.name, i) for i in ids
            )
        resolvable, clashing, others = self._resolvable, self._clashes.names, self._others
        return any(n not in resolvable or n in clashing or n in others for n in names)

    def _set_on_disk(self, content: bytes | None) -> None:
        """Remember what the file holds; devices it does not name are held Unhealthy."""
        self._on_disk, cdi = content, self.resource.allocate.cdi
        self.disk.seen(content, "" if cdi is None else cdi.kind)  # (an Allocate waits on it)
        if (names := frozenset(self.disk.entries)) != self._resolvable:
            self._resolvable = names
            self._needs.refresh()

    async def run(self) -> None:
        cdi = self.resource.allocate.cdi
        if cdi is None:
            return
        if problem := cdi_kind_problem(cdi.kind):
            self.log.error("cdi_kind_invalid", kind=cdi.kind, reason=problem)
        changed_on_disk = asyncio.Event()
        names = {os.path.basename(self.path), os.path.basename(self.owner_file)}

        def on_event(name: str | None) -> None:
            if name is None or name in names:
                changed_on_disk.set()
            if name is None or (name not in names and is_spec_file(name)):
                self._clashes.heard()  # (another spec file: hostile27 F4)

        watcher, spec_dir = self.watcher, os.path.dirname(self.path)
        subscription = None if watcher is None else watcher.subscribe(spec_dir, on_event)
        assert self.pinned is not None
        unwatch = self.pinned.watch(self._repinned.set)  # an Allocate, a booking gone
        order = () if self.spec_dirs is None else self.spec_dirs.order
        above = asyncio.create_task(  # (the files that win over this one: `cdi_resolution`)
            follow_above(spec_dir, order, cdi.kind, self.disk, watcher, self.offload, self.log,
                         self.verify_interval, self._clashes.heard)
        )  # fmt: skip
        clashes = asyncio.create_task(
            self._clashes.follow(lambda: self._resolvable, lambda: self._held)
        )
        try:
            self._set_on_disk(await self._read())
            if self.spec_dirs is not None:  # (before anything is written there)
                await self.spec_dirs.add(os.path.dirname(self.path))
            await self._check_dir()
            await self.table.published.wait()
            await self._lease.take_over()
            snapshot = self.table.snapshot
            while True:
                synced = await self._sync(snapshot)
                self.first_sync.set()
                if self.retired and synced and not self._keeping:
                    break  # no held device left to keep
                timeout = self.retry_interval if not synced else self.verify_interval
                newer = asyncio.ensure_future(self.table.wait_newer(snapshot.version))
                on_disk = asyncio.ensure_future(changed_on_disk.wait())
                repinned = asyncio.ensure_future(self._repinned.wait())
                try:
                    done, _ = await asyncio.wait(
                        {newer, on_disk, repinned},
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    newer.cancel()
                    on_disk.cancel()
                    repinned.cancel()
                self._repinned.clear()
                if newer not in done and repinned not in done:
                    # The file changed behind our back (another instance, an operator) or
                    # the verify interval passed: look at what is on disk now (the sync
                    # below restores it if it is ours); as the owner, refresh the lease.
                    # A change from here on wakes the next wait (none is lost while the
                    # file is read and synced: another instance's write in that window
                    # was seen 10 s late, hostile20 F1; our own write wakes one read).
                    changed_on_disk.clear()
                    self._set_on_disk(await self._read())
                    if on_disk not in done:
                        await self._lease.refresh()
                        await self._check_dir()
                await asyncio.sleep(self.debounce)
                snapshot = self.table.snapshot
        finally:
            unwatch()
            self._held_paths.stop()
            above.cancel()
            clashes.cancel()
            if subscription is not None:
                subscription.cancel()
            await self._leave()

    async def _sync(self, snapshot: Snapshot) -> bool:
        try:
            assert self.pinned is not None
            held = held_entries(self.pinned, self.booked)
            self._held_paths.follow(checked_paths(held))  # (`cdi_pins`: hostile21 F2)
            listed = {device.id for device in snapshot.devices}
            self._names = {d: names for d, names in self._names.items() if d in listed}
            self._keeping = bool(held)
            content, astray, names = await self.offload.run(
                lambda: render_with_held(self.resource, snapshot, held)
            )
            if astray != self._astray:
                self._astray = astray
                if astray:
                    self.log.warning(
                        "cdi_held_entries_left_out",
                        ids=",".join(sorted(astray)),
                        reason="a host path as handed out reaches another node or file now",
                    )
            others: frozenset[str] = frozenset()
            if content != self._on_disk and await self._lease.may_write():
                if content is None:
                    await self._unlink()
                    self.log.info("cdi_spec_removed", path=self.path, reason="no_devices")
                else:
                    await self.offload.run(lambda: write_atomic(self.path, content))
                    self.writes += 1
                    self.log.info("cdi_spec_written", path=self.path, version=snapshot.version)
                self._set_on_disk(content)
            elif content != self._on_disk:
                others = self.disk.differing(content)
            if others != self._others:
                if others and not self._others:
                    owner = await self._lease.other_owner()
                    self.log.warning("cdi_spec_unowned", path=self.path, owner=owner)
                self._others = others
                self._needs.refresh()
                self._report()
        except OSError as exc:
            self._failed(f"{type(exc).__name__}: {exc}", short=type(exc).__name__)
            return False
        except Exception:
            # A bug here must not take the resource down: its other devices are still served.
            self.log.exception("cdi_spec_write_failed", path=self.path)
            self._failed("internal error", short="internal error", logged=True)
            return False
        if self._last_error is not None:
            self.log.info("cdi_spec_recovered", path=self.path)
            self._last_error = None
            self._report()
        self.synced_version = snapshot.version
        if names != self._held:
            self._held = names  # (what a dead owner's file defines for them may win now)
            await self._check_dir()
        return True

    async def _check_dir(self) -> None:
        await self._clashes.check(self._resolvable, self._held)

    def _clashes_changed(self) -> None:
        self._needs.refresh()
        self._report()

    def _report(self) -> None:
        """Tell /readyz what keeps our names from resolving now, if anything (not a failed
        write: `_failed` says so itself)."""
        if self._last_error is None:
            unowned = UNOWNED_REASON if self._others else None
            self._tell(CLASH_REASON if self._clashes.names else unowned)

    def _tell(self, reason: str | None) -> None:
        """The `cdi` need, unmet for `reason` (its own lines have said why) or met."""
        self._needs.set("cdi", reason, whole=False, logged=True)

    def _failed(self, message: str, *, short: str, logged: bool = False) -> None:
        self.failures += 1
        self.count_failure()
        if message != self._last_error:
            if not logged:
                self.log.warning("cdi_spec_write_failed", path=self.path, reason=message)
            self._tell(f"CDI spec file not written ({short})")
            self._last_error = message

    async def _leave(self) -> None:
        """At a stop, unless another instance owns the file now (it serves the same resource:
        during a rolling upgrade the old instance must leave the new one's file), keep in it
        the entries of the IDs a booking holds, only those, as a keeper does (`cdi_keeper`):
        a container of their pods that restarts before the next instance writes the file
        resolves its names still (hostile27 F5). The lease is left to run out: the next
        instance takes the file over, and in another spec dir the existing rules end it
        (`cdi_dirs`). With none held, the file and its owner file are removed."""
        assert self.pinned is not None
        held = held_entries(self.pinned, self.booked)
        try:
            if (owner := await self._lease.other_owner()) is not None:
                self.log.info("cdi_spec_left", path=self.path, owner=owner)
            elif (
                kept := await self.offload.run(functools.partial(held_only, self.resource, held))
            ) is not None:
                if kept != self._on_disk:
                    await self.offload.run(lambda: write_atomic(self.path, kept))
                await self._lease.refresh()
                self.log.info("cdi_spec_left_held", path=self.path, reason="resource_stopped")
            else:
                if await self._unlink():
                    self.log.info("cdi_spec_removed", path=self.path, reason="resource_stopped")
                await self._lease.give_up()
        except OSError as exc:
            self.failures += 1
            self.count_failure()
            self.log.warning("cdi_spec_remove_failed", path=self.path, reason=str(exc))
        self._on_disk = None

    async def _read(self) -> bytes | None:
        """What the file holds; None (so it is written again, as a fresh file) while it has
        another link: a write through a link made outside the spec dir reaches no watch."""
        content, links = await self.offload.run(
            lambda: (read_or_none(self.path), link_count(self.path))
        )
        if links > 1:
            self.log.warning("cdi_spec_linked", path=self.path, links=links)
            return None
        return content

    async def _unlink(self) -> bool:
        return await self.offload.run(lambda: unlink(self.path))
