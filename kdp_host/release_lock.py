"""A device's release, one at a time across every host on a `stateDir` (a rolling update runs
the new host beside the old one, `release_state`): `<stateDir>/releases/<resource>,<device>`,
locked exclusively with `fcntl.flock` by a host while it decides or runs the device's release,
and by PreStartContainer while it decides what the device owes (`ReleaseTracker`).

The lock file also keeps the last release that succeeded (`Released`): the host that ran it
and `covers`, the Unix time before which every use the kubelet had recorded was seen gone (a
PodResources answer that showed the device free: when it was asked; or the Allocate that
handed an ID out again). A use the kubelet had recorded before then (its Allocate +
`Timings.allocation_settle`, or the last answer that listed it held: `DeviceUse.last_use`;
not one that only carried its holder, which each host does for its own while), by any
host, is released: a host that finds its owed release so covered skips it
(`done_elsewhere`; another host's release, or its own: one use it learnt was owed from two
sources, the state file taken up at its start and that use's ID allocated again, hostile23
F5), and such a use another host wrote into `release-state.json` counts as released
(`owed_by_peers`; an entry keeps its owed use's own time, `owedFor`, as the host that owed
it knew it, whichever host runs the release).

Under the lock, PreStartContainer reads the other hosts' entries of `release-state.json` fresh
(`ReleaseStateStore.peer_entries`): one that says a device owed, or used by IDs this container
was allocated again (the kubelet never gives one ID to two containers at once) before this
Allocate, is a use whose release is due, which this host then runs before it answers. A
release a host runs holds the lock, so a PreStartContainer on any host waits for it.

Waits are polls of a non-blocking `flock` through the host's offload (never a thread blocked
on a lock), and end with the caller (cancelled) or at `timeout` (`LockBusy`).

A lock file goes once nothing can need it (`DeviceLocks.drop`, `release_gone`: its device is no
longer listed, no use of it is known to any host): removed under its lock, so a host that
opened it before and took the lock after holds a file no longer at the path; every host of
this version checks, once it holds a lock, that the path still names the file it locked,
and opens the path again when not (`_take`). Before, one file stayed per device ID ever
released, and on a node whose IDs change (probes, serials) the directory grew for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

from .atomic_files import aside_logged, directory_at, open_lock
from .files import Offload
from .logs import EventLogger
from .names import QUOTED_FILE_NAME, make_name
from .timings import Timings

RELEASES_DIR = "releases"
POLL_FIRST = 0.01
POLL_MAX = 0.2
"""Seconds between two tries of a lock another host holds (doubling from the first)."""
MAX_RECORD = 4096


class LockBusy(RuntimeError):
    """The device's lock was not free within the wait given."""


@dataclass(frozen=True)
class Released:
    """The last release of a device that succeeded, as its lock file keeps it."""

    writer: str
    covers: float


def lock_name(resource: str, device: str) -> str:
    """The lock file's name (`,` and `/` are escaped in both parts: one name per pair; a
    pair too long for a file name is cut and hashed, `names.QUOTED_FILE_NAME`)."""
    return make_name(f"{quote(resource, safe='')},{quote(device, safe='')}", QUOTED_FILE_NAME)


def _read(fd: int) -> Released | None:
    """The record of the lock file `fd` (None: none, or not of its shape). Blocking."""
    try:
        found = json.loads(os.pread(fd, MAX_RECORD, 0) or b"null")
        writer, covers = found["writer"], found["covers"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(writer, str) or isinstance(covers, bool):
        return None
    return Released(writer, float(covers)) if isinstance(covers, (int, float)) else None


def _write(fd: int, record: Released) -> None:
    """Keep `record` in the lock file (in place: the lock is on its inode). Blocking; a
    record lost (a crash mid-write) only makes the next host run the release again."""
    data = json.dumps({"writer": record.writer, "covers": record.covers}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@dataclass
class DeviceLock:
    """A device's lock, held (`DeviceLocks.held`)."""

    fd: int
    writer: str
    offload: Offload
    record: Released | None

    def done_elsewhere(self, owed_for: float | None) -> bool:
        """Whether a release succeeded after the use recorded by `owed_for` (Unix time;
        None: not known) was seen gone: another host's, or this host's own, that one use
        owed again from another source (the state file, another host's entry, an ID of it
        the kubelet's checkpoint still listed and allocated again: hostile23 F5)."""
        record = self.record
        return record is not None and owed_for is not None and record.covers > owed_for

    async def released(self, covers: float | None) -> None:
        """A release succeeded: every use recorded before `covers` is released (None: not
        known, nothing is kept). Errors are the next host's extra release, not raised."""
        if covers is None or self.fd < 0:
            return
        record = Released(self.writer, max(covers, self.record.covers if self.record else covers))
        with contextlib.suppress(OSError):
            await self.offload.run(lambda: _write(self.fd, record))
        self.record = record


@dataclass
class DeviceLocks:
    """One host's locks of the devices' releases under `<directory>/releases/`."""

    directory: str
    writer: str
    offload: Offload
    log: EventLogger
    _local: dict[str, tuple[asyncio.Lock, list[int]]] = field(default_factory=dict)
    """Per lock file: the host's own waiters queue here first (a flock is per open file:
    two of one process would not exclude each other), and how many of them there are (the
    entry goes with the last: no entry per device ever locked)."""

    @contextlib.asynccontextmanager
    async def held(
        self, resource: str, device: str, timeout: float | None = None
    ) -> AsyncIterator[DeviceLock]:
        """The device's lock while the block runs; raises LockBusy after `timeout` seconds
        (None: waits until cancelled), OSError when the lock file cannot be made."""
        name = lock_name(resource, device)
        deadline = None if timeout is None else time.monotonic() + timeout
        local, users = self._local.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await local.acquire()
            except TimeoutError:
                raise LockBusy(name) from None
            try:
                async with self._locked(name, deadline) as lock:
                    yield lock
            finally:
                local.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._local[name]

    @contextlib.asynccontextmanager
    async def _locked(self, name: str, deadline: float | None) -> AsyncIterator[DeviceLock]:
        try:
            fd, record = await self._take(name, deadline)
        except OSError as exc:  # (a read-only stateDir: as before, one host's alone)
            self.log.warning(
                "release_lock_failed",
                path=self.path(name),
                reason=str(exc),
                consequence="this release and PreStartContainer are not serialised with "
                "another host's on the state directory",
            )
            yield DeviceLock(-1, self.writer, self.offload, None)
            return
        try:
            yield DeviceLock(fd, self.writer, self.offload, record)
        finally:
            os.close(fd)  # (the flock goes with it)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, RELEASES_DIR, name)

    def _open(self, name: str) -> int:
        aside = aside_logged(self.log)
        directory_at(os.path.join(self.directory, RELEASES_DIR), aside)
        return open_lock(self.path(name), aside)

    async def _take(self, name: str, deadline: float | None) -> tuple[int, Released | None]:
        """The lock file opened and locked, still the file at its path (one removed by
        `drop` while this host waited for it is opened again): its descriptor and record."""
        delay = POLL_FIRST
        while True:
            fd = await self.offload.run(lambda: self._open(name))
            try:
                while not await self.offload.run(partial(_try_lock, fd)):
                    if deadline is not None and time.monotonic() + delay > deadline:
                        raise LockBusy(name)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, POLL_MAX)
                if await self.offload.run(partial(_at_path, fd, self.path(name))):
                    return fd, await self.offload.run(partial(_read, fd))
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    async def drop(
        self, resource: str, device: str, unneeded: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Remove the device's lock file if it is free now and `unneeded()` (asked under
        the lock) says nothing can need its record: True once no file is there (none was:
        True, `unneeded` not asked). Removed while held, so a host that takes the old
        file's lock after finds it gone from the path (`_take`) and opens a new one."""
        path = self.path(lock_name(resource, device))
        if not await self.offload.run(lambda: os.path.lexists(path)):
            return True
        try:
            async with self.held(resource, device, timeout=0.0) as lock:
                if lock.fd < 0 or not await unneeded():
                    return False
                await self.offload.run(lambda: _unlink_held(lock.fd, path))
                return True
        except (LockBusy, OSError):
            return False


def through(recorded: float) -> float:
    """The `Released.covers` of a release that covers the use recorded at `recorded` (Unix
    time) and every use recorded before it, when nothing says when it was seen gone (a use
    `handed-out.json` alone keeps owed, `release_recorded`): the next time after it (`covers`
    is exclusive), so every host that knows that use by that time sees it released."""
    return math.nextafter(recorded, math.inf)


def _at_path(fd: int, path: str) -> bool:
    """Whether `path` still names the open file `fd` (not removed, nor made anew)."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _unlink_held(fd: int, path: str) -> None:
    """Remove `path` if it is still the locked file `fd`. Blocking."""
    if _at_path(fd, path):
        os.unlink(path)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _loop_time(deadline: float | None) -> float | None:
    """A `time.monotonic` deadline on the running loop's clock."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def owed_by_peers(
    peers: Iterable[tuple[str, Mapping[str, Any]]],
    started: Iterable[str],
    allocated: float,
    lock: DeviceLock,
    held: Iterable[str],
    timings: Timings,
    booked_by: str | None = None,
) -> tuple[str, float, Mapping[str, Any]] | None:
    """Of the other hosts' entries of a device (`ReleaseStateStore.peer_entries`): the host,
    the `DeviceUse.last_use` (its Allocate + `allocation_settle`; -inf: not known) and the
    entry of the latest use whose release is due when a
    container starts with the IDs `started` allocated at `allocated` (Unix time): an entry
    owed, or used only by IDs allocated again since; not one the release the `lock` keeps
    covers, nor one taken from this host's own booking (`bookedBy`: its own use), nor,
    where this host took the starting use from host `booked_by`'s booking (dated when it
    saw it, after that Allocate: `DeviceUse.booked_by`), that host's entry not owed: it is
    that use (the kubelet's Allocate went to that host, PreStartContainer to this one), not
    an earlier one. None while another ID of the device is in use (this host's `held`, or a
    peer's): a shared device is released once none of its IDs is held, as on one host."""
    record = lock.record
    ids, covers = set(started), float("-inf") if record is None else record.covers
    if set(held) - ids:
        return None
    due: tuple[str, float, Mapping[str, Any]] | None = None
    for writer, entry in peers:
        at = entry.get("allocatedAt")
        at = float("-inf") if at is None else float(at)
        recorded = at + timings.allocation_settle
        if recorded < covers or entry.get("bookedBy") == lock.writer:
            continue  # released since, or this host's own use seen by that host
        owed = entry.get("owed") and not entry.get("owedFor", recorded) < covers  # (as
        used = set(entry.get("used", ()))  # `done_elsewhere`: that use released since)
        if used - ids:
            return None  # (another ID of a shared device in use)
        if at >= allocated or (writer == booked_by and not owed):
            continue  # a later use of these IDs (not proven gone), or the one starting
        if (owed or used) and (due is None or recorded > due[1]):
            due = (writer, recorded, entry)
    return due
