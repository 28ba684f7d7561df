"""Allocate answers while another host runs on the state directory (issue 17, hostile22 F7).

Two hosts share `ownership.json` during a rolling update with `maxSurge` (the new config may
rename the resource, or give a node another ID). Each follows the other's bookings through
its watcher (`ownership_sync`), but between one host's booking write and the other's reading
of it lies the watcher's delay: the kubelet admits pods back to back, and the second host
answered an Allocate for the node the first had just handed out. So while another host runs
(`hosts/<instance>` locked: `state_lock.running`, followed through the watcher), an Allocate
is answered under the file's lock (`<stateDir>/ownership.json.lock`, the one every booking
write takes): the lock taken, the file read again (a content read before is not parsed
again: `state_document`), the answer refused when another running host's booking this host
has not taken in yet (`AllocateFence.took_in`) reaches what it hands out, and its booking
written before the lock goes (`StateFile.held_lock`: the write takes no lock of its own). The
lock serialises the hosts' Allocates: the second one reads the first one's booking.

Alone on the state directory an Allocate takes no lock (its cost is unchanged), and its
answer goes out when `ownership.json` cannot be written within `state_file.WRITE_LIMIT`
(`handed-out.json` is the authority across a restart; a lock kept by another process holds
the write: the need `lock`, and answers wait `STUCK_LIMIT` meanwhile, `fence_stuck`). With
another host running, a booking not on disk is one the other host cannot see: the answer is
refused (`Unfenced`), as it is when the lock is not taken within `FENCE_LIMIT` (a hung state
directory, a host stuck with it). One lock, taken in one order (`ownership.json.lock`, then
`handed-out.json.lock` by the write of the record), and every wait bounded: two hosts never
wait on each other for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

from .atomic_files import aside_logged, open_lock
from .fence_stuck import StuckLock
from .files import Offload
from .identity import DIRECTORY, Identity
from .lock_holders import lock_holder
from .logs import EventLogger
from .ownership_document import SavedBooking, checked_entries
from .ownership_shared import PlaceOwned
from .safety_net import SafetyNet
from .state_file import WRITE_LIMIT, StateFile
from .state_hosts import others_run
from .state_lock import HOSTS_DIR, running
from .watch import POLL, Subscription, Watcher

FENCE_LIMIT = WRITE_LIMIT
"""Seconds an Allocate waits for the lock while another host runs (then it is refused)."""
PEERS_INTERVAL = 5.0
"""Seconds between checks off the loop that the other hosts still run (one killed leaves
its lock file: no event tells)."""


class Unfenced(Exception):
    """The answer cannot be kept from another running host's: refused (UNAVAILABLE)."""


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def clash(
    booking: SavedBooking, reached: Mapping[str, Identity], real: Mapping[str, str]
) -> str | None:
    """What of an answer (its host paths' `reached` identities and `real` paths) `booking`
    holds: a claim of the same identity, one below a directory the answer hands out, or a
    directory claim above one of its paths. None: nothing."""
    for key, path, real_path in (*booking.claims, *booking.places):
        for handed, identity in reached.items():
            at = real.get(handed, handed)
            if identity == key or (
                real_path
                and (
                    (key[0] == DIRECTORY and _inside(at, real_path))
                    or (identity[0] == DIRECTORY and _inside(real_path, at))
                )
            ):
                return f"{handed} reaches {path}"
    return None


class AllocateFence:
    """The fence of host `writer`'s Allocate answers on `file` (`ownership.json`)."""

    def __init__(
        self, file: StateFile, directory: str, writer: str, offload: Offload, log: EventLogger
    ) -> None:
        self._file, self._directory, self._writer = file, directory, writer
        self._offload = offload
        self._log = log.bind(component="allocate-fence")
        self._aside = aside_logged(log)
        self.live = True
        """Another host runs on the state directory (True until first looked at)."""
        self.taken_in: frozenset[SavedBooking] = frozenset()
        """The other hosts' bookings the index holds what they reach for (`took_in`)."""
        self.narrowed = 0
        """Times `taken_in` lost bookings (`taking_in`): an answer checked before, whose
        booking is not made yet, is checked again."""
        self._new: tuple[object, frozenset[SavedBooking], list[SavedBooking]] | None = None
        """The other hosts' entries of a content not taken in (per content and taken_in)."""
        self._turn = asyncio.Lock()  # (this host's fenced answers, one at a time)
        self._held: int | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None
        self._leave: Callable[[], None] | None = None
        self._look: asyncio.Task[bool] | None = None
        self._prompt: Callable[[], bool] = lambda: True
        """Whether the watcher tells a change of `hosts/` at once (not a poll)."""
        self.stuck = StuckLock(str(file.lock_path), offload, self._log, self._aside)
        """Whether answers are refused for want of the lock (every resource's need `lock`),
        also a booking's write alone on the directory (`state_file_lock.LockWatch`)."""
        file.lock.watch = self.stuck
        self._holder: str | None = None
        """Who held the lock while the last answer waited long for it (`lock_holders`)."""

    def took_in(self, taken: frozenset[SavedBooking]) -> None:
        """The index holds what these bookings of the other hosts reach (admitted)."""
        self.taken_in = taken

    def taking_in(
        self,
        theirs: frozenset[SavedBooking],
        before: frozenset[SavedBooking],
        kept: frozenset[SavedBooking],
    ) -> None:
        """The index is about to take in a content whose other hosts' bookings are `theirs`:
        those taken in that it lacks, the index lets go (their pods ended), so they are not
        taken in from now on: the same entry written again later is a new booking, which the
        index does not hold until it has taken that in and admitted against it (hostile22
        F7). `kept`: the bookings of `taken_in` (as it was: `before`) in `theirs`, worked out
        off the loop."""
        taken = self.taken_in
        if taken is not before:  # (`took_in` since: rare)
            kept = taken & theirs
        if len(kept) != len(taken):
            self.taken_in = kept
            self.narrowed += 1

    def follow(self, watcher: Watcher, net: SafetyNet) -> None:
        """Follow `hosts/`: whether another host runs, looked at now and at every change."""
        hosts = os.path.join(self._directory, HOSTS_DIR)
        self._subscription = watcher.subscribe(hosts, self._changed)
        self._prompt = lambda: watcher.kind != POLL and watcher.refused(hosts) is None
        look = functools.partial(others_run, self._directory, self._writer)
        self._leave = net.join(
            PEERS_INTERVAL, lambda: look() == self.live, self._checked, timeout=PEERS_INTERVAL
        )
        self._changed(None)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._leave is not None:
            self._leave()
            self._leave = None
        if self._look is not None:
            self._look.cancel()
        self.stuck.close()

    def _checked(self, unchanged: bool) -> None:
        if not unchanged:
            self._changed(None)

    @property
    def needed(self) -> bool:
        """Whether an answer goes through `held`: another host runs, or may have started
        unseen (a watcher that polls tells a new host up to its interval late: `held` lists
        `hosts/` first)."""
        return self.live or not self._prompt()

    def _changed(self, _name: str | None) -> None:
        if self._look is None or self._look.done():
            self._look = asyncio.get_running_loop().create_task(self._look_again())

    async def _look_again(self) -> bool:
        """Whether another host runs, looked at now (off the loop); `live` set."""
        try:
            live = await self._offload.run(
                functools.partial(others_run, self._directory, self._writer)
            )
        except Exception as exc:  # (fail closed: the fence stays up)
            self._log.warning("state_dir_hosts_unread", reason=str(exc))
            live = True
        if live != self.live:
            self._log.info("allocate_fence", up=live)
        self.live = live  # (alone, a lock kept still holds the bookings' writes: `fence_stuck`)
        return live

    @contextlib.asynccontextmanager
    async def held(
        self, resource: str, ids: Collection[str], reached: Mapping[str, Identity],
        real: Mapping[str, str],
    ) -> AsyncIterator[None]:  # fmt: skip
        """While the block answers an Allocate of `ids` of `resource` handing out `reached`:
        alone, nothing; with another host running, the lock held (raises PlaceOwned when
        another host's booking not taken in yet reaches what the answer hands out, Unfenced
        when the lock is not taken in time), and the booking written when the block ends
        (raises Unfenced when it is not). Alone, with a watcher that polls, `hosts/` is
        listed first (one hop off the loop): a host started since the last poll fences it."""
        if not self.live and (self._prompt() or not await self._look_again()):
            yield
            return
        if self.stuck.trying:  # (refused at once: `fence_stuck`)
            raise Unfenced(f"{self.stuck.why}; its try has not returned: stateDir does not answer")
        limit = self.stuck.limit(FENCE_LIMIT)
        deadline = asyncio.get_running_loop().time() + limit
        try:
            async with asyncio.timeout_at(deadline):
                await self._turn.acquire()
        except TimeoutError:
            raise Unfenced(self._late()) from None
        try:
            check = functools.partial(self._clash, resource, frozenset(ids), reached, real)
            narrowed = await self._lock(deadline, check)
            try:
                yield
                if self.narrowed != narrowed:  # (since checked: `taking_in`)
                    await self._check_again(check)
                if not self._file.holds_changes:
                    raise Unfenced(
                        f"{self._file.path.name} {self._file.unwritten or 'not written'}: "
                        "another host runs on stateDir and would not see the booking"
                    )
            finally:
                self._release()
        finally:
            self._turn.release()

    def _late(self) -> str:
        if self.stuck.why is not None:  # (its devices Unhealthy meanwhile: `fence_stuck`)
            return f"{self.stuck.why}; tried again for {self.stuck.limit(FENCE_LIMIT):g} s"
        return (
            f"{self._file.lock_path.name} not taken within {FENCE_LIMIT:g} s (held by "
            f"{self._holder or 'another process'}) while another host runs on stateDir (an "
            "answer is kept from its answers under it)"
        )

    def _stuck(self) -> Unfenced:
        """The lock not taken in time: the cause of every answer's refusal (`fence_stuck`)."""
        late = self._late()
        self.stuck.refused(
            f"{self._file.lock_path.name} not taken within {FENCE_LIMIT:g} s (held by "
            f"{self._holder or 'another process'}): every Allocate refused while another host "
            "runs on stateDir"
        )
        return Unfenced(late)

    async def _check_again(self, check: Callable[..., str | None]) -> None:
        """(The lock held) The file read and `check`ed again against `taken_in` as it is now:
        the index let go of bookings since the answer was checked (while the check ran off
        the loop, or during an await of the answer), and a booking of the same entry written
        since is not one it holds. Raises PlaceOwned on a clash; the booking the answer made
        stays until PodResources ends it (fails safe)."""
        checked = functools.partial(check, self.taken_in)
        why = await self._offload.run(functools.partial(self._checked_now, checked))
        if why is not None:
            raise PlaceOwned(why)

    async def _lock(self, deadline: float, check: Callable[..., str | None]) -> int:
        """Take the file's lock (this host's writes waited for), read the file, refuse the
        answer on a clash; `held_lock` set. Returns `narrowed` as it was when checked."""
        loop, file = asyncio.get_running_loop(), self._file
        try:
            async with asyncio.timeout_at(deadline):
                await file.writing.acquire()
        except TimeoutError:
            raise self._stuck() from None
        fd: int | None = None
        attempt: asyncio.Future[tuple[int, bool, Any]] | None = None
        try:
            self._drop()  # (an earlier answer's, whose release waited for a write)
            delay, narrowed = 0.0005, self.narrowed
            checked, self._holder = functools.partial(check, self.taken_in), None
            while True:
                name = delay >= 0.02 and self._holder is None  # (a wait longer than an answer)
                attempt = asyncio.ensure_future(
                    self._offload.run(functools.partial(self._try, fd, checked, name))
                )
                done, _ = await asyncio.wait({attempt}, timeout=max(deadline - loop.time(), 0))
                if not done:
                    raise self._stuck()
                fd = None  # (the attempt's now)
                try:
                    fd, locked, why = attempt.result()
                except OSError as exc:
                    raise Unfenced(f"{file.lock_path.name}: {exc}") from None
                if locked:
                    self.stuck.taken()
                    break
                self._holder = why or self._holder
                if loop.time() + delay > deadline:
                    raise self._stuck()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
            if why is not None:
                raise PlaceOwned(why)
            self._held, file.held_lock, fd = fd, fd, None
            return narrowed
        finally:
            file.writing.release()
            if attempt is not None and not attempt.done():  # (a hung state directory)
                attempt.add_done_callback(_close_taken)
            elif fd is not None:
                os.close(fd)

    def _try(
        self, fd: int | None, check: Callable[[Any], str | None], name: bool
    ) -> tuple[int, bool, Any]:
        """(Blocking) The lock tried once (the descriptor opened first), and once it is
        held, the file as it is now checked; not held, its holder with `name`."""
        if fd is None:
            fd = open_lock(str(self._file.lock_path), self._aside)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False, lock_holder(str(self._file.lock_path)) if name else None
        except BaseException:
            os.close(fd)
            raise
        return fd, True, self._checked_now(check)

    def _checked_now(self, check: Callable[[Any], str | None]) -> str | None:
        """(Blocking, the lock held) `check` of the file as it is now."""
        try:
            return check(self._file.document_now())
        except Exception as exc:  # (a clash not ruled out: refused)
            return f"{self._file.path.name} not read ({exc})"

    def _clash(
        self,
        resource: str,
        ids: frozenset[str],
        reached: Mapping[str, Identity],
        real: Mapping[str, str],
        taken: frozenset[SavedBooking],
        document: Mapping[str, Any] | None,
    ) -> str | None:
        """(Blocking) Why the answer clashes with another running host's booking in
        `document` that is not in `taken` (`taken_in`); None: it does not. The same ID of
        the same resource is no clash: the kubelet allocated it again (its earlier user is
        gone)."""
        if document is None:
            return None
        new = self._new
        if new is None or new[0] is not document or new[1] is not taken:
            writer = self._writer
            fresh = [
                e.value
                for e in checked_entries(document)
                if e.value.writer not in (None, writer) and e.value not in taken
            ]
            self._new = new = (document, taken, fresh)
        alive: dict[str, bool] = {}
        for booking in new[2]:
            owner, host = booking.owner, booking.writer
            if host is None or (owner.resource == resource and owner.device in ids):
                continue
            if host not in alive:
                alive[host] = running(self._directory, host)
            if alive[host] and (why := clash(booking, reached, real)) is not None:
                return (
                    f"{why}, booked by host {host} for {owner.resource} {owner.device} "
                    "(not taken in here yet)"
                )
        return None

    def _release(self) -> None:
        """The lock goes once no write of this host runs (at once, usually)."""
        if not self._file.writing.locked():
            self._drop()
            return
        task = asyncio.get_running_loop().create_task(self._release_after_write())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_after_write(self) -> None:
        async with self._turn, self._file.writing:
            self._drop()

    def _drop(self) -> None:
        """(No write of this host runs, and no fenced answer.)"""
        if self._held is not None:
            self._file.held_lock = None
            os.close(self._held)
            self._held = None


def _close_taken(attempt: asyncio.Future[tuple[int, bool, Any]]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        os.close(attempt.result()[0])
