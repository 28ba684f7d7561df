"""Release commands, and the clean-device guarantee.

The kubelet never tells a plugin that a pod let go of a device. With `release.command`, a
resource's `ReleaseTracker` works it out, runs the command once per device whose users are
gone, and no container starts with that device until the command has succeeded. Per physical
device it keeps `used` (the advertised IDs handed to containers whose end it has not seen)
and `owed` (those users gone, no release succeeded since). What ends a use:

- **PodResources** (`podresources.py`): an answer that shows no ID of the device held (one
  asked before its last Allocate, or within `Timings.allocation_settle` after, is no news).
- **Allocate**: the kubelet never gives one ID to two containers at once, so an ID handed
  out again proves its earlier user gone; the release is owed once no earlier use is left.
  One handed out while another ID is in use joins that use, until the next answer (asked at
  once by its PreStartContainer) says whether a sharer still holds it (`release_join`).
- **A booking of another name** that held its node, its pod seen gone (`ownership_held`).

PreStartContainer waits for (or runs) the owed releases of the container's devices until the
kubelet's deadline (`start_budget`). A shared device is released once none of its IDs is held;
a container joining a live sharer is not held back (it never was free), but a node an earlier
use was handed and no use still holds (the device moved) goes to no container before that
release (`in_use_sharing`: refused meanwhile, hostile14 N6). `used` and `owed` are kept in
`<stateDir>/release-state.json` (`release_state.py`), written before PreStartContainer
answers (a use it had not taken at a kill is taken from the record: `release_recorded`);
the hosts on one stateDir run a device's release, and decide what it owes, one at a time
under its lock (`release_lock`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from .allocation import HookFailed
from .config import ReleaseConfig, ResourceConfig
from .device_table import DeviceTable
from .devices import physical_id
from .handed_entries import Uses, after_release, owed_but
from .handed_out import HandedOut, in_memory
from .hooks import Listed, PlaceCheck
from .logs import EventLogger
from .metrics import Metrics
from .process import CommandRunner
from .release_command import ReleaseCommand, acted_on, in_use_sharing, owed_left, owed_sharing
from .release_gone import GoneDevices
from .release_join import FreshAnswers, asked_for, decided
from .release_lock import DeviceLock, LockBusy, Released, owed_by_peers
from .release_recorded import recorded_uses
from .release_slots import Slots
from .release_state import ReleaseStateStore
from .release_use import (
    Checkpointed,
    DeviceUse,
    assume_used,
    holders_kept,
    kept_entries,
    not_released,
    owe_held_before,
    seen_free,
    start_failed,
    taken_up,
)
from .start_budget import StartBudget
from .timings import Timings

if TYPE_CHECKING:  # the poller is imported where the config chooses it (`features`)
    from .holdings import Holder, Holdings
    from .ownership_claims import Owner


class ReleaseTracker:
    """The release state of one resource's devices; see the module docstring."""

    def __init__(
        self,
        resource: ResourceConfig,
        table: DeviceTable,
        store: ReleaseStateStore,
        commands: CommandRunner,
        metrics: Metrics,
        log: EventLogger,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        handed: HandedOut | None = None,
        places: PlaceCheck | None = None,
        timings: Timings | None = None,
        checkpoint: Checkpointed | None = None,
        answers: FreshAnswers | None = None,
        listed: Listed | None = None,
    ) -> None:
        """`handed` (`handed_out`), else `checkpoint`'s: what a release acts on (a node
        `listed` elsewhere now: there) while `places` finds it; `answers`: `release_join`."""
        assert resource.release is not None
        self.config: ReleaseConfig = resource.release
        self._resource, self._table, self._store = resource, table, store
        self._commands, self._metrics, self._log = commands, metrics, log
        self._clock, self._wall = clock, wall
        self._slots = Slots(self.config.parallelism)  # (a container start's releases first)
        self._handed = handed or in_memory(resource.name)
        self._command = ReleaseCommand(
            resource.name, self.config, commands, table, log, places, checkpoint, listed
        )
        self._timings, self._answers, self._heard = timings or Timings(), answers, -math.inf
        self._assume_used = store.unknown
        if self._assume_used:
            store.assuming(resource.name)
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self.uses: dict[str, DeviceUse] = {}
        self.gone = GoneDevices(resource.name, table, store, self._handed, lambda: self.uses, log)
        self.changes = 0
        """Counts the changes of what `view` shows (`/devices` is built again after one)."""
        metrics.add_release(resource.name)
        self._closed = True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take up the state kept (by an earlier runtime, or before a restart): owed, run."""
        self._closed = False
        at, settle = (self._clock(), self._wall()), self._timings.allocation_settle
        self.uses = {
            device_id: taken_up(device_id, entry, self._handed, at, settle)
            for device_id, entry in self._store.entries(self._resource.name).items()
        }
        recorded_uses(self.uses, self._handed, at, settle, self._log)  # (the state behind)
        for writer, ids in self._store.begin(self._resource.name).items():  # (all, if it
            self.booked(ids, writer)  # begins now: ReleaseStateStore.begin)
        self._store.listen(self._resource.name, self)  # (another host's, from now)
        for advertised in sorted(self._handed.withheld):  # (booked; used, when so kept)
            if (device_id := physical_id(advertised)) in self.uses or self._assume_used:
                self.uses.setdefault(device_id, DeviceUse({advertised})).handed_unknown = True
        for device_id, use in self.uses.items():
            if use.owed:
                self._log.info("release_owed_from_before", device=device_id)
                self._start(device_id)
        self._publish()
        self.gone.start()  # (devices gone: their lock files and uses go, `release_gone`)

    async def close(self) -> None:
        """Stop: cancel retries and running releases (their devices stay owed)."""
        self._closed = True
        await self.gone.close()
        self._store.listen(self._resource.name, None)
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        tasks = [use.running for use in self.uses.values() if use.running is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._publish()
        await self._store.flush()

    # ------------------------------------------------------------------ news

    def allocated(self, advertised_ids: Sequence[str]) -> None:
        """Allocate handed these IDs to a container: `asked` and `taken` at once."""
        self.asked(advertised_ids)
        self.taken(advertised_ids)

    def booked(self, advertised_ids: Collection[str], writer: str | None = None) -> None:
        """Booked, its use not seen begin: when its tracking began (`ReleaseStateStore.begin`,
        hostile15 F1, F2), or by another host since (hostile13 M15). Used from now."""
        at = (self._clock(), self._wall())
        settle = self._timings.allocation_settle
        assume_used(self.uses, advertised_ids, at, settle, self._log, writer)
        self._publish()

    def held_before(self, devices: Mapping[str, Owner], taken: Collection[Owner]) -> None:
        """`ReleaseStateStore.held_before`: their release is owed now (`owe_held_before`)."""
        wall = self._wall()
        for device_id in owe_held_before(self.uses, devices, taken, wall, self._log):
            self._start(device_id)
        self._publish()

    def asked(self, advertised_ids: Sequence[str]) -> None:
        """An Allocate asks for these IDs (no I/O; told before the record takes what it hands
        out): an ID used before proves its earlier user gone, whether or not the answer goes
        out; one of a device in use joins it (`release_join.asked_for`)."""
        wall = self._wall()
        for advertised in advertised_ids:
            use = self.uses.setdefault(device_id := physical_id(advertised), DeviceUse())
            if (gone := asked_for(use, advertised, self._assume_used, wall)) is None:
                continue
            self._gone(device_id, gone[0])
            if not use.owed:
                use.owe(gone[1])
                self._log.info("release_owed", device=device_id, reason="allocated_again")
                self._start(device_id)
        self._publish()

    def taken(self, advertised_ids: Sequence[str]) -> None:
        """The Allocate's answer goes out, its record kept (`handed_out`): the devices are
        used from now, as that answer hands them out (a release acts on that)."""
        now, wall = self._clock(), self._wall()
        for advertised in advertised_ids:
            use = self.uses.setdefault(physical_id(advertised), DeviceUse())
            use.begun(advertised, (now, wall), self._timings.allocation_settle)
            use.handed_unknown = False
        self._publish()

    def holdings(self, answer: Holdings) -> None:
        """A PodResources answer: devices none of whose IDs is held are free. Ignored by a
        tracker not started (or closed): it has not taken up the kept state, and writing
        its own would wipe that state (owed releases) for the resource."""
        if self._closed:
            return
        asked_wall = self._wall() - self._clock() + answer.asked_at
        self._heard = max(self._heard, answer.asked_at)
        held: dict[str, dict[str, tuple[Holder, ...]]] = {}
        for advertised, holders in answer.of(self._resource.name).items():
            held.setdefault(physical_id(advertised), {})[advertised] = holders
        if self._assume_used and self._table.published.is_set():
            self._assume_used = False  # from now on the state is known
            self._store.known(self._resource.name)
            for device in self._table.snapshot.devices:
                if device.id not in held:
                    self.uses.setdefault(device.id, DeviceUse()).used.add(device.id)
        settle, asked = self._timings.allocation_settle, (answer.asked_at, asked_wall)
        listed, gone = partial(answer.shows, self._resource.name), self._gone  # (the kubelet's)
        for device_id in seen_free(self.uses, held, asked, settle, self._log, gone, listed):
            self._start(device_id)
        self._publish()

    async def before_start(
        self, advertised_ids: Sequence[str], budget: StartBudget | None = None
    ) -> None:
        """PreStartContainer: the owed releases of the container's devices, then (under each
        one's lock) another host's use's (`_after_peers`); HookFailed: one failed, or `budget`."""
        budget = budget or StartBudget.of_call(None)
        devices = list(dict.fromkeys(physical_id(a) for a in advertised_ids))
        joins, heard = (self.uses, devices, advertised_ids), lambda: self._heard  # (decided first)
        await decided(self._answers, joins, heard, budget, self._resource.name)
        sharing = owed_sharing(self.uses, self._handed, advertised_ids)
        await self._owed_done(devices + sharing, budget)
        if held := in_use_sharing(self.uses, self._handed, advertised_ids):
            raise not_released(self._resource.name, held)  # (its node's release: not yet)
        for device_id in devices:
            if (use := self.uses.get(device_id)) is not None and use.allocated_wall is not None:
                ids = [a for a in advertised_ids if physical_id(a) == device_id]
                await self._after_peers(device_id, use, use.allocated_wall, ids, budget)
                await self._owed_done([device_id], budget)  # (owed meanwhile: waited for)
        await self._store.flush()

    def _gone(self, device_id: str, kept: frozenset[str]) -> None:
        """Every use of the device is gone but those of `kept`'s IDs: released (`owed_but`)."""
        self._handed.change(device_id, partial(owed_but, kept=kept))

    async def _owed_done(self, devices: list[str], budget: StartBudget) -> None:
        name = self._resource.name
        while owed := [d for d in devices if (u := self.uses.get(d)) is not None and u.owed]:
            self._slots.hurry(owed)
            await budget.releases(name, {d: self._start(d) for d in owed})  # (running or now)
            for device_id in owed:
                if (use := self.uses[device_id]).owed and use.running is None:
                    raise start_failed(name, device_id, use)

    async def _after_peers(
        self, device_id: str, use: DeviceUse, at: float, ids: list[str], budget: StartBudget
    ) -> None:
        """Under the device's lock (another host's release ends first; waited for within `budget`),
        read fresh: run the release another host's use of it is due (`owed_by_peers`)."""
        name = self._resource.name
        try:
            async with self._store.locks.held(name, device_id, budget.left()) as lock:
                peers = await self._store.peer_entries(name, device_id)
                due = owed_by_peers(peers, ids, at, lock, use.used, self._timings, use.booked_by)
                if due is None or use.running is not None:
                    return
                use.owed, use.owed_for, use.owed_covers = True, due[1], at
                use.owed_holders = holders_kept(due[2])  # (as that host saw them)
                self._log.info("release_owed", device=device_id, reason="peer_use", peer=due[0])
                run = self._locked_release(device_id, use, acted_on(self._handed, device_id), lock)
                use.running = task = asyncio.create_task(run, name=f"release:{device_id}")
                self._slots.hurry([device_id])
                try:  # (ended with the RPC, or out of time: still owed, the next start runs it)
                    await budget.releases(name, {device_id: task})
                finally:  # (the lock is held until it ends)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    use.running = None
                    self._publish()
        except LockBusy:
            raise budget.lock_busy(name, device_id) from None
        if use.owed:
            raise start_failed(name, device_id, use)

    # ------------------------------------------------------------------ running

    def _start(self, device_id: str) -> asyncio.Task[None]:
        use = self.uses[device_id]
        if use.running is not None:
            return use.running
        if (retry := self._retries.pop(device_id, None)) is not None:
            retry.cancel()
        handed = acted_on(self._handed, device_id)  # each use as its Allocate handed it out
        task = asyncio.create_task(self._release(device_id, handed), name=f"release:{device_id}")
        use.running = task
        self.changes += 1
        return task

    async def _release(self, device_id: str, handed: Uses) -> None:
        use, ended = self.uses[device_id], False
        try:
            if not handed:
                await self._table.published.wait()  # acts on the device as listed: a list
            async with self._store.locks.held(self._resource.name, device_id) as lock:
                await self._locked_release(device_id, use, handed, lock)
                ended = True
        finally:
            use.running = None
            self._publish()
            if ended and use.owed and use.failure is None and not self._closed:  # (owed again
                self._start(device_id)  # once it succeeded: released now, hostile14 N6)

    async def _locked_release(
        self, device_id: str, use: DeviceUse, handed: Uses, lock: DeviceLock
    ) -> None:
        """The release, under the device's lock: not run when a release covers it."""
        if lock.done_elsewhere(use.owed_for):
            self._succeeded(device_id, use, 0.0, handed, by=lock.record)
            return
        name = self._resource.name
        async with self._slots.held(device_id):
            started = self._clock()
            error: HookFailed | None = None
            try:
                await self._command.run(device_id, use, handed)
            except HookFailed as exc:
                error = exc
            seconds = self._clock() - started
        self._metrics.release_seconds.labels(name).observe(seconds)
        self._metrics.release_runs.labels(name, "ok" if error is None else error.result).inc()
        if error is None:
            await lock.released(use.owed_covers)
            self._succeeded(device_id, use, seconds, handed)
            self._publish()  # (written before the lock goes: read fresh by the other hosts)
            await self._store.flush()
        elif error.result == "unknown":  # not run: nothing failed on the device
            use.failure = str(error)
            self._log.warning("release_skipped", device=device_id, reason=use.failure)
        else:
            self._failed(device_id, use, str(error))

    def _succeeded(
        self, device_id: str, use: DeviceUse, took: float, acted: Uses, by: Released | None = None
    ) -> None:
        """Released (`acted`: the uses it acted on go from the record, hostile14 N6)."""
        self._handed.change(device_id, lambda entry: after_release(entry, acted))
        use.released(self._wall(), again=owed_left(self._handed, device_id))
        if by is not None and by.writer == self._store.locks.writer:  # (this host's own
            self._log.info("release_done_already", device=device_id)  # covered it)
        elif by is not None:
            self._log.info("release_done_by_peer", device=device_id, peer=by.writer)
        else:
            self._log.info("release_ok", device=device_id, seconds=round(took, 3))
        if use.marked_unhealthy:
            use.marked_unhealthy = False
            if self._table.set_check_result(device_id, True):
                self._log.info("device_healthy_after_release", device=device_id)

    def _failed(self, device_id: str, use: DeviceUse, message: str) -> None:
        use.failure = message
        delay = use.retry_delay(self._timings)
        retry_in = round(delay, 3)
        self._log.warning("release_failed", device=device_id, error=message, retry_in=retry_in)
        if self.config.on_failure == "unhealthy" and not use.marked_unhealthy:
            use.marked_unhealthy = True  # (kept while it is gone: plugged in, still not clean)
            if self._table.set_check_result(device_id, False, keep=True):
                self._log.warning("device_unhealthy_after_release", device=device_id)
        if not self._closed:
            loop = asyncio.get_running_loop()
            self._retries[device_id] = loop.call_later(delay, self._retry, device_id)

    def _retry(self, device_id: str) -> None:
        self._retries.pop(device_id, None)
        use = self.uses.get(device_id)
        if use is not None and use.owed and use.running is None and not self._closed:
            self._start(device_id)

    # ------------------------------------------------------------------ views

    def _publish(self) -> None:
        self.changes += 1
        self.gone.retry()
        self._store.update(self._resource.name, kept_entries(self.uses))
        pending = sum(1 for use in self.uses.values() if use.owed)
        self._metrics.releases_pending.labels(self._resource.name).set(pending)

    def outstanding(self) -> set[str]:
        """The devices in use or owed a release (`/devices` shows them, listed or not)."""
        return {device_id for device_id, use in list(self.uses.items()) if use.used or use.owed}

    def view(self, device_id: str) -> dict[str, Any]:
        """The release part of a device in `/devices` (`DeviceUse.view`)."""
        return {"state": "clean"} if (use := self.uses.get(device_id)) is None else use.view()
