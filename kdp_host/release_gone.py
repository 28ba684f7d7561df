"""The devices a release tracker forgets: gone from the resource's list with nothing owed,
so neither their lock file under `<stateDir>/releases/` (`release_lock`) nor their
`DeviceUse` stays for ever on a node whose device IDs change (probe IDs, serials: one file
and one entry per ID ever released, before).

A device is forgettable while the resource does not list it, its use is clean (nothing in
use, owed or running) and `handed-out.json` keeps no entry of it. Its lock file then goes,
under its lock (`DeviceLocks.drop`), once this host's `release-state.json` and
`handed-out.json` are written and no other host's entry of the state file names the device:
the file's record (which uses a release covered) can then save no host a release. A device
listed again, or used again, keeps its file. Tried when the list changes, after a release,
at each PodResources answer, and at the tracker's start for the files already there (an
older version's); one device at a time, by one task the tracker owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import unquote

from .device_changes import changed_between
from .device_table import DeviceTable
from .devices import Device
from .handed_out import HandedOut
from .logs import EventLogger
from .release_lock import RELEASES_DIR, lock_name
from .release_state import ReleaseStateStore
from .release_use import DeviceUse


class GoneDevices:
    """One tracker's devices to forget (`pending`: unlisted, maybe not forgettable yet)."""

    def __init__(
        self,
        resource: str,
        table: DeviceTable,
        store: ReleaseStateStore,
        handed: HandedOut,
        uses: Callable[[], dict[str, DeviceUse]],
        log: EventLogger,
    ) -> None:
        self._resource, self._table, self._store, self._handed = resource, table, store, handed
        self._uses, self._log = uses, log
        self.pending: set[str] = set()
        self._before: Mapping[str, Device] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = True
        table.follow_lists(self.listed)

    def start(self) -> None:
        """From now (the tracker took up its state): the files already there are looked at."""
        self._closed = False
        self._task = asyncio.create_task(self._run(on_disk=True), name="release-gone")

    async def close(self) -> None:
        self._closed = True
        if (task := self._task) is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def listed(self, reported: Mapping[str, Device]) -> None:
        """A list reported (`DeviceTable.follow_lists`): its devices are not gone; the
        known devices it lacks are (only those that changed, where the list says which)."""
        before, self._before = self._before, reported
        changed = None if before is None else changed_between(before, reported)
        uses = self._uses()
        known: Iterable[str] = uses if changed is None else (d for d in changed if d in uses)
        self.pending.update(d for d in list(known) if d not in reported)
        self.pending.difference_update([d for d in self.pending if d in reported])
        self.retry()

    def retry(self) -> None:
        """Forget what can be forgotten now (one task; it runs until none is left)."""
        if self._closed or not self.pending or (self._task and not self._task.done()):
            return
        self._task = asyncio.create_task(self._run(), name="release-gone")

    def forgettable(self, device_id: str) -> bool:
        use = self._uses().get(device_id)
        return (
            self._table.published.is_set()
            and device_id not in self._table.reported
            and (use is None or not (use.used or use.owed or use.running is not None))
            and self._handed.entry(device_id) is None
        )

    async def _run(self, on_disk: bool = False) -> None:
        try:
            if on_disk:
                await self._table.published.wait()
                self.pending.update(await self._on_disk())
            tried: set[str] = set()
            while todo := sorted(d for d in self.pending - tried if self.forgettable(d)):
                tried.update(todo)
                for device_id in todo:
                    await self._forget(device_id)
        except Exception as exc:  # (tried again at the next news)
            self._log.warning("release_forget_failed", reason=str(exc))

    async def _forget(self, device_id: str) -> None:
        async def unneeded() -> bool:
            if not (self.forgettable(device_id) and await self._store.flush()):
                return False  # (what this host keeps of it must be on disk first)
            if await self._handed.record.written() is not None:
                return False
            peers = await self._store.peer_entries(self._resource, device_id)
            return not peers and self.forgettable(device_id)

        dropped = await self._store.locks.drop(self._resource, device_id, unneeded)
        if dropped and self.forgettable(device_id):
            self.pending.discard(device_id)
            self._uses().pop(device_id, None)

    async def _on_disk(self) -> set[str]:
        """The devices of this resource with a lock file and not listed now."""
        directory = os.path.join(self._store.locks.directory, RELEASES_DIR)
        names: list[str] = []
        with contextlib.suppress(OSError):
            names = await self._store.locks.offload.run(lambda: os.listdir(directory))
        found = set()
        for name in names:
            resource, comma, device = name.partition(",")
            resource, device = unquote(resource), unquote(device)
            if comma and resource == self._resource and lock_name(resource, device) == name:
                found.add(device)
        return {d for d in found if d not in self._table.reported}
