"""Following `<stateDir>/ownership.json` while other hosts share the state directory.

During a rolling update with `maxSurge` the new host starts beside the old one, on the same
state directory, and either may answer an Allocate until the old one stops. Each writes its
own bookings into the one file (merged under its lock, `merged_with`); each follows it
through the host's watcher and reads it again when it changes (`BookingsSync`; its own last
write, read back unchanged, is known without reading its entries again, `ownership_document`):
another host's bookings hold what they reach at once (`OwnershipIndex.take_in`, every
resource admitted again), and this host's own are written back when the file lost them
(`ownership_state_lost`: not as written, or without this host's latest stamp). A running
host's bookings the file lacks stay as last read (`ownership_peers`): a host's end is told
by its lock only. While another host's bookings are held, a safety-net check
(`SAFETY_INTERVAL`) asks whether that host still runs (`state_lock.running`): the bookings of
one that ended, SIGKILL included, are taken over, so they end when their pods do.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple, Protocol

from .dir_signature import dir_signature
from .files import Offload
from .logs import EventLogger
from .ownership_bookings import StateSink
from .ownership_claims import Owner
from .ownership_document import (
    OWNERSHIP_FILE,
    Entry,
    Saved,
    SavedBooking,
    as_written,
    checked_entries,
    ownership_file,
    read_saved,
)
from .ownership_fence import AllocateFence
from .ownership_peers import WRITES, Peers, Stamp, own_lost, stamps_of
from .safety_net import SafetyNet
from .state_file import Merge, StateFile
from .state_lock import running
from .watch import Subscription, Watcher

SAFETY_INTERVAL = 5.0
"""Seconds between checks that the hosts whose bookings are held still run (and that the
file did not change unseen)."""
SAFETY_TIMEOUT = 10.0


class TakesBookings(Protocol):
    """The ownership index (`OwnershipIndex.keep_bookings_in`, `take_in`)."""

    def keep_bookings_in(
        self, sink: StateSink, saved: Saved | None, running: Collection[str], writer: str
    ) -> None: ...

    async def take_in(
        self, saved: Saved | None, running: Collection[str], ours: bool = False
    ) -> None: ...

    async def quiet(self, settled: bool = False) -> None: ...

    fence: AllocateFence | None


async def shared_bookings(
    index: TakesBookings, state_dir: str, writer: str, offload: Offload, log: EventLogger
) -> BookingsSync:
    """`<state_dir>/ownership.json` read back into `index` and kept by it from now on, as
    host `writer`; follow it with the returned `BookingsSync` (`follow`)."""
    file = ownership_file(state_dir, log, offload, merged_with(state_dir, writer))
    index.fence = fence = AllocateFence(file, state_dir, writer, offload, log)
    sync = BookingsSync(file, writer, index, offload, log, fence)
    saved, others = await sync.read()
    index.keep_bookings_in(file, saved, others, writer)
    fence.took_in(theirs(saved, writer))
    return sync


Kept = tuple[frozenset[SavedBooking], frozenset[SavedBooking]]
"""The fence's bookings taken in, and those of them a content read holds."""


def theirs(saved: Saved | None, writer: str) -> frozenset[SavedBooking]:
    """The other hosts' bookings of `saved` (blocking: O(entries))."""
    return frozenset(b for b in saved or () if b.writer != writer)


def merged_with(directory: str, writer: str, stamp: Stamp | None = None) -> Merge:
    """How host `writer` writes the file: its own entries replace those it wrote before,
    with a new `stamp` (`ownership_peers`); every other host's stay (and its stamp), except
    the entries of a host that no longer runs whose booked ID `writer` has booked itself (it
    took them over, `ownership_sync`). Blocking (the
    hosts' lock files are asked), run while the file is locked. Each entry is checked once
    (`checked_entries`), and the file's entries are grouped by writer once per content
    read (`state_document`): a write while the other hosts' entries are unchanged costs
    this host's own and the bytes, not another pass over every entry. The file holds each
    writer's entries in order, the other hosts' first."""
    last: list[tuple[object, dict[str | None, list[Entry]]]] = []
    """The entries last merged with (or written), by writer: the file read back as this
    host wrote it is that list again (`state_document`)."""

    def by_writer(current: Mapping[str, Any]) -> dict[str | None, list[Entry]]:
        if last and last[0][0] is current["bookings"]:
            return last[0][1]
        groups: dict[str | None, list[Entry]] = {}
        for entry in checked_entries(current):  # (raises when not of its shape: set aside)
            groups.setdefault(entry.value.writer, []).append(entry)
        last[:] = [(current["bookings"], groups)]
        return groups

    stamped = stamp or Stamp()

    def merge(mine: Mapping[str, Any], current: Mapping[str, Any] | None) -> Mapping[str, Any]:
        if current is None:
            return {**mine, WRITES: {writer: stamped.next()}}
        own: set[Owner] | None = None
        kept: dict[str | None, list[Entry]] = {}
        for other, entries in by_writer(current).items():
            if other == writer:
                continue
            if running(directory, other):
                kept[other] = entries
                continue
            if own is None:  # (a host that ended: kept unless `writer` took its ID)
                own = {e.value.owner for e in mine["bookings"]}
            if left := [e for e in entries if e.value.owner not in own]:
                kept[other] = left
        merged: list[Entry] = [entry for entries in kept.values() for entry in entries]
        merged += mine["bookings"]
        last[:] = [(merged, {**kept, writer: mine["bookings"]})]
        stamps = {
            w: s
            for w, s in stamps_of(current).items()
            if w != writer and (w in kept or running(directory, w))
        }
        return {"bookings": merged, WRITES: {**stamps, writer: stamped.next()}}

    return merge


class SharedRead(NamedTuple):
    """`ownership.json` as a following host reads it (`read_shared`)."""

    saved: Saved | None
    """Its bookings (None: it could not be read, and was set aside); another host's as
    last read where the file lacks its latest write (`ownership_peers`)."""
    others: frozenset[str]
    """The other hosts whose bookings are held and that run."""
    ours: bool
    """It is this host's last write (then `saved` holds only the other hosts' entries, none
    read again: `ownership_document`)."""
    kept: frozenset[str] = frozenset()
    """Running hosts whose entries the file lacks: their bookings as last read stay."""
    ended: frozenset[str] = frozenset()
    """Hosts named that no longer run (their bookings are taken over)."""
    lost: str | None = None
    """Why the file does not hold this host's last write (None: it does)."""


def read_shared(file: StateFile, writer: str, peers: Peers | None = None) -> SharedRead:
    """The file as host `writer` follows it (`peers`: the other hosts' entries as last
    read, which it believes over a file that lacks their latest write). Blocking."""
    before, ours, stamps = file.set_aside, False, None
    wrote = file.last_written  # (before the read: see `own_lost`)

    def parse(document: Mapping[str, Any]) -> Saved:
        nonlocal ours, stamps
        ours = document is file.last_written
        stamps = stamps_of(document) if WRITES in document else None
        saved = read_saved(document, as_written)
        return [b for b in saved if b.writer != writer] if ours else saved

    loaded = file.load(parse)
    if file.set_aside != before:
        return SharedRead(None, frozenset(), False)
    directory = str(file.path.parent)
    believed = (peers or Peers(writer)).believe(
        loaded or [], stamps or {}, functools.partial(running, directory)
    )
    held = frozenset(w for b in believed.saved if (w := b.writer) in believed.running and w)
    lost = None if ours else own_lost(stamps, loaded or [], wrote, writer)
    return SharedRead(believed.saved, held, ours, believed.kept, believed.ended, lost)


def same_bookings(saved: Saved, last: Saved | None) -> bool:
    """Whether `saved` are the very entries `last` were (a content read once is not read
    again, `state_document`: its entries are the same objects). Blocking: O(entries)."""
    return last is not None and len(saved) == len(last) and all(map(operator.is_, saved, last))


class BookingsSync:
    """Reads `ownership.json` again whenever it changes, for host `writer`."""

    def __init__(
        self,
        file: StateFile,
        writer: str,
        index: TakesBookings,
        offload: Offload,
        log: EventLogger,
        fence: AllocateFence,
    ) -> None:
        self._file, self._fence = file, fence
        self._peers = Peers(writer)
        """The other hosts' entries as last read (`ownership_peers`)."""
        self._kept: frozenset[str] = frozenset()
        """Running hosts whose bookings as last read stay: the file lacks their latest write."""
        self._writer = writer
        self._index = index
        self._offload = offload
        self._log = log.bind(component="ownership-sync", path=str(file.path))
        self._others: frozenset[str] = frozenset()
        """The other hosts whose bookings are held."""
        self._seen: tuple[int, int, int] | None = None
        self._taken: Saved | None = None
        """The other hosts' entries of this host's last write, all taken in since."""
        self._task: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[None] | None = None
        self._again = False
        self._subscription: Subscription | None = None
        self._leave: Callable[[], None] | None = None
        self._net: SafetyNet | None = None
        self.host_ended: Callable[[str], None] = lambda _host: None
        """Told each other host seen ended (its resources' instances register again where
        the kubelet's client was theirs: `peer_sockets`)."""

    @property
    def file(self) -> StateFile:
        return self._file

    async def read(self) -> tuple[Saved | None, frozenset[str]]:
        """The file at start: its bookings, and the other hosts that run (their bookings
        stay theirs)."""
        saved, others, *_ = await self._offload.run(
            functools.partial(read_shared, self._file, self._writer, self._peers)
        )
        self._others = others
        if others:
            self._log.info("state_dir_shared", hosts=",".join(sorted(others)))
        return saved, others

    def follow(self, watcher: Watcher, net: SafetyNet) -> None:
        """Read the file again whenever it changes, from now on (and once now: what was
        written since `read`)."""
        self._net = net
        self._fence.follow(watcher, net)
        directory, name = os.path.split(self._file.path)
        self._subscription = watcher.subscribe(directory, self.changed, names=[name])
        self.changed(None)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self._watch_others(frozenset())
        self._fence.close()
        self._net = None
        for task in (self._task, self._settling):
            if task is not None:
                task.cancel()

    def changed(self, _name: str | None) -> None:
        """A watcher callback (and the safety net's): read the file soon, once per burst."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._sync(), name=OWNERSHIP_FILE)

    async def _sync(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                read, same, theirs, kept = await self._offload.run(
                    functools.partial(self._read, self._taken, self._fence.taken_in)
                )
            except OSError as exc:
                self._log.error("ownership_sync_failed", reason=str(exc))
                return
            saved, others, ours = read.saved, read.others, read.ours
            if saved is None:  # set aside (logged): what is held stays, this host's are written
                self._taken = None
                await self._index.take_in(None, self._others)
                continue
            if read.lost is not None:  # (its part is written again: not ready until it is)
                self._file.write_again(None, read.lost)
            self._tell_kept(read.kept)
            if same and others == self._others:
                continue  # (this host's own write of what it took in last: nothing to do)
            for gone in sorted((self._others - others) & read.ended):
                self._log.info("bookings_taken_over", host=gone, detail="that host ended")
                self.host_ended(gone)
            for new in sorted(others - self._others):
                self._log.info("state_dir_shared", hosts=new)
            self._taken = None
            if self._settling is not None:  # (what it would say is no longer held)
                self._settling.cancel()
            self._fence.taking_in(theirs, *kept)
            await self._index.take_in(saved, others, ours)
            self._taken = saved if ours else None
            self._watch_others(others)
            self._settle(theirs)

    def _settle(self, theirs: frozenset[SavedBooking]) -> None:
        """Once the resources are admitted against the bookings taken in, the fence leaves
        them to the index (`AllocateFence.took_in`); never holding up the next read."""
        if self._settling is not None:
            self._settling.cancel()
        self._settling = asyncio.get_running_loop().create_task(self._settled(theirs))

    async def _settled(self, theirs: frozenset[SavedBooking]) -> None:
        await self._index.quiet()
        self._fence.took_in(theirs)

    def _read(
        self, last: Saved | None, taken: frozenset[SavedBooking]
    ) -> tuple[SharedRead, bool, frozenset[SavedBooking], Kept]:
        """`read_shared`, whether it is this host's own write of the very entries `last`
        (blocking), the other hosts' bookings read, and those of them among `taken` (the
        fence's, `AllocateFence.taking_in`). Another content with the same other entries is
        no such write: this host's own may be missing from it."""
        read = read_shared(self._file, self._writer, self._peers)
        same = read.ours and read.saved is not None and same_bookings(read.saved, last)
        found = theirs(read.saved, self._writer)
        return read, same, found, (taken, taken & found if taken else taken)

    def _tell_kept(self, kept: frozenset[str]) -> None:
        """One line when a running host's entries go missing from the file (its bookings
        stay in force) and one when it has written them again."""
        for host in sorted(kept - self._kept):
            self._log.warning(
                "bookings_kept",
                host=host,
                reason="ownership.json lacks the latest write of a host that runs (its lock "
                "is held)",
                action="its bookings as last read stay in force until it writes them again "
                "or its lock is free",
            )
        for host in sorted(self._kept - kept):
            self._log.info("bookings_kept_ended", host=host)
        self._kept = kept

    def _watch_others(self, others: frozenset[str]) -> None:
        """Check on the other hosts while their bookings are held (and only then)."""
        self._others = others
        if others and self._leave is None and self._net is not None:
            self._leave = self._net.join(
                SAFETY_INTERVAL, self._unchanged, self._checked, timeout=SAFETY_TIMEOUT
            )
        elif not others and self._leave is not None:
            self._leave()
            self._leave = None

    def _unchanged(self) -> bool:
        """Off the loop: every other host still runs and the file is the one last seen."""
        directory = str(self._file.path.parent)
        signature = dir_signature(str(self._file.path))
        if signature != self._seen:
            self._seen = signature
            return False
        return all(running(directory, other) for other in self._others)

    def _checked(self, unchanged: bool) -> None:
        if not unchanged:
            self.changed(None)
