"""When the kubelet's checkpoint is booked, and which of its entries: one rule, two moments.

The kubelet's checkpoint (`kubelet_checkpoint`) is its own record of who holds what. Every
entry of it is booked (`take_handed`: the host paths its answer handed out, held for its
IDs until the kubelet shows the pod gone or drops the entry, by the rules of any checkpoint
booking: a resource no runtime serves is retired, its IDs unlisted until an answer shows
them, `unlisted`), whatever `ownership.json` says (a union with what it holds), whenever
kdp-host may begin to advertise a node a pod was handed under a name it did not serve:

- at start (`book_handed`), before any resource publishes: every resource's entries, with
  the bookings kept or lost (a stale `ownership.json` restored from a backup looks kept; a
  resource renamed or removed while kdp-host was down, or another plugin's, holds nodes the
  config may reach now);
- when a reload or a node label change starts a resource or changes one (`book_before`,
  which the started runtimes wait for, so no first list goes out before it): the entries of
  every resource name but those the host served before and serves after (their entries are
  its own Allocates', booked already). A resource added by a reload may be one another
  plugin served (a migration from generic-device-plugin: its pods hold the nodes under that
  plugin's IDs), and a changed one may reach nodes another plugin's pods hold.

Each is one read off the loop, bounded by `READ_TIMEOUT`; a checkpoint that lists only
entries of the skipped names is not checked further (no checksum paid for a reload of a
host that is the only plugin). A missing, unreadable or bad file is logged, never fatal.

A read before kdp-host registers a name cannot see what the plugin still serving it (its
pod terminating) admits until the kubelet takes the name over (hostile12 L1). The kubelet
sends a name's calls to the newest registration from the moment it dials it back (before
Register returns, docs/kubelet-contract.md §1, §2), admits one pod at a time and writes its
checkpoint after each admission's Allocate answers (docs/kubelet-contract.md §6, §10): so
a read begun when the
first ListAndWatch call comes misses at most the one admission the other plugin was
answering then, and a read begun when the first Allocate comes misses none. Hence
`CheckpointReads`, for a name a reload adds (`before`): its first list waits for a read of
its entries begun after the ListAndWatch call (`listing`), and its Allocates wait for one
begun after each arrived until one succeeded (`allocating`). Either fails closed: the list
is not sent (retried with backoff, /readyz names the resource; a list of another resource
is sent again, so the kubelet writes the file anew) and the Allocate is refused, until
the file can be read (hostile12 L3: at a reload the host runs, and the file
is the only record of what the other plugin handed out). A held ID no device has
(`held_id_not_present`: an admission was missed, whatever the reason) arms the Allocates of
its resource again and reads the file again (`unplaced`, at most every `REREAD_EVERY`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from .backoff import Backoff
from .files import Offload
from .handed_entries import Handed as HandedUse
from .kubelet_checkpoint import (
    CHECKPOINT_FILE,
    READ_TIMEOUT,
    EntryOf,
    Gained,
    HandedClaims,
    as_recorded,
    read_handed,
)
from .logs import EventLogger
from .rules import HELD_SHOWN, SKIPPED_SHOWN

if TYPE_CHECKING:
    from .config import Config
    from .metrics import Metrics

WITHOUT_CHECKPOINT: Final = (
    "what the kubelet handed out is not known: an ID a pod holds without a booking (the "
    "state directory was lost) is booked from PodResources with what the ID names now"
)
T = TypeVar("T")

HELD_CLOSED: Final = (
    "what another plugin handed out under the name is not known: the resource's first list "
    "waits and its Allocates are refused until the file can be read"
)
UNREADABLE: Final = "the kubelet's checkpoint cannot be read (kubelet_checkpoint_unusable)"
"""/readyz's reason while a first list waits for the file (short, no path)."""
REREAD_EVERY: Final = 1.0
"""Seconds between two reads `held_id_not_present` asks for (`CheckpointReads.unplaced`)."""
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
"""Seconds before a held first list's read is tried again, doubling up to the second."""


class HandedBookings(Protocol):
    """Where what the kubelet handed out is booked (`OwnershipIndex.take_handed`)."""

    def take_handed(self, handed: Iterable[HandedClaims]) -> Gained: ...

    def serve(self, resources: Iterable[str]) -> None: ...

    def handed_out(self) -> dict[str, set[str]]: ...

    async def quiet(self) -> None: ...

    def tell_unplaced(self, unplaced: Callable[[str], None]) -> None: ...


class HandedRecords(Protocol):
    """`handed-out.json`'s entries (`HandedRecord`), what the start books with."""

    def entry(self, resource: str, device_id: str) -> HandedUse | None: ...


class Unlisted(Protocol):
    """Told the (resource, ID) pairs a reload's read booked (`unlisted.Unlisted`: held
    until an answer shows them)."""

    nudge: Callable[[], bool] | None
    """Makes the kubelet write its checkpoint (a list sent again), when the host set it."""

    def take(self, keys: Iterable[tuple[str, str]]) -> None: ...


class Poller(Protocol):
    """The host's PodResources poller (`podresources.PodResourcesPoller`)."""

    @property
    def unlisted(self) -> Unlisted | None: ...


async def book_handed(
    index: HandedBookings,
    config: Config,
    offload: Offload,
    log: EventLogger,
    record: HandedRecords | None = None,
) -> None:
    """At start, before any resource publishes: book every entry of the checkpoint in the
    kubelet's device-plugin directory (read off the loop, once), beside the bookings of
    `ownership.json`, with what its paths reached when `record` (`handed-out.json`) says
    this host handed them out (`as_recorded`; `take_handed` marks a node gone now whose
    number no booking knew as unknown, bookings lost or stale alike). A missing, unreadable
    or bad checkpoint is logged, and the start goes on without it. A number unknown of one
    of `config`'s resources may be any of theirs (`OwnershipIndex.serve`)."""
    index.serve(r.name for r in config.resources)
    entry_of = None if record is None else record.entry
    await _book(index, config.kubelet.socket_dir, offload, log, recorded=entry_of)


def book_before(
    index: HandedBookings,
    socket_dir: str,
    served: Collection[str],
    offload: Offload,
    log: EventLogger,
    poller: Poller | None = None,
) -> asyncio.Task[None]:
    """A reload (or a node label change) starts or changes resources: a task that books the
    checkpoint's entries of every resource but the `served` ones (served before it and
    after: their entries are this host's own), read off the loop, their IDs unlisted (the
    `poller`'s, when PodResources polling is on); the started runtimes wait for it
    (`Supervisor.start`). It never fails: a bad checkpoint is logged as at start."""

    async def book() -> None:
        handed = await _book(index, socket_dir, offload, log, skip=frozenset(served), new=True)
        _unlist(poller, handed)

    return asyncio.create_task(book(), name="kubelet-checkpoint")


def _unlist(poller: Poller | None, handed: list[HandedClaims] | None) -> None:
    """The booked IDs unlisted (held until an answer shows them), when polling is on."""
    unlisted = None if poller is None else poller.unlisted
    if unlisted is not None and handed:
        unlisted.take((h.handed.resource, i) for h in handed for i in h.handed.ids)


async def _book(
    index: HandedBookings,
    directory: str,
    offload: Offload,
    log: EventLogger,
    skip: frozenset[str] = frozenset(),
    new: bool = False,
    only: frozenset[str] | None = None,
    consequence: str = WITHOUT_CHECKPOINT,
    recorded: EntryOf | None = None,
) -> list[HandedClaims] | None:
    """Read the checkpoint's entries (of `only`, None: all) but `skip`'s, book them (`new`:
    only those with an ID not booked yet, sorted out off the loop, so a reload's work on it
    is what the kubelet admitted since, not the whole file) and log what was booked; returns
    what was booked, None when the file cannot be used (logged with `consequence`)."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    known = index.handed_out() if new else None
    work = functools.partial(_read, directory, skip, known, only)
    try:
        handed = await asyncio.wait_for(offload.run(work), READ_TIMEOUT)
    except TimeoutError:
        log.warning(
            "kubelet_checkpoint_unusable",
            path=path,
            error=f"not read within {READ_TIMEOUT:g} s",
            consequence=consequence,
        )
        return None
    except Exception as exc:  # (the kubelet's file: whatever is wrong with it, never fatal)
        log.warning(
            "kubelet_checkpoint_unusable", path=path, error=str(exc), consequence=consequence
        )
        return None
    if handed is None:
        log.info("kubelet_checkpoint_absent", path=path)
        return []
    if recorded is not None:
        handed = as_recorded(handed, recorded)
    by_resource: dict[str, Gained] = {}
    for gained in index.take_handed(handed):
        by_resource.setdefault(gained[0].resource, []).append(gained)
    for resource, booked in by_resource.items():
        bound = log.bind(resource=resource)
        if len(booked) > SKIPPED_SHOWN:  # (one line: another plugin's thousands of entries)
            first = sorted(owner.device for owner, _ in booked)[:HELD_SHOWN]
            bound.info("kubelet_checkpoint_booked", count=len(booked), devices=",".join(first))
            continue
        for owner, claims in booked:
            paths = ",".join(path for _, path, _ in claims)
            bound.info("kubelet_checkpoint_booked", device=owner.device, paths=paths)
    return handed


def _read(
    directory: str,
    skip: frozenset[str],
    booked: Mapping[str, set[str]] | None,
    only: frozenset[str] | None = None,
) -> list[HandedClaims] | None:
    """`read_handed` of every resource of `only` (None: all) but `skip`'s, less the entries
    whose IDs are all `booked` (resource -> IDs, a copy; None: none left out). Blocking."""
    handed = read_handed(directory, only, skip=skip)
    if handed is None or booked is None:
        return handed
    none: set[str] = set()
    return [h for h in handed if not booked.get(h.handed.resource, none).issuperset(h.handed.ids)]


class CheckpointReads:
    """The checkpoint read again for the names whose first answers must not miss an
    admission of the plugin that served them before (the module's last rules): one per
    host; reads off the loop, one at a time, each shared by every caller that came before
    it began."""

    def __init__(
        self,
        index: HandedBookings,
        socket_dir: str,
        offload: Offload,
        log: EventLogger,
        poller: Poller | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index, self._dir, self._offload, self._log = index, socket_dir, offload, log
        self._poller, self._metrics, self._clock = poller, metrics, clock
        self._lists: set[str] = set()
        """Names whose first list waits for a read begun after ListAndWatch was called."""
        self._allocates: dict[str, int] = {}
        """Names whose Allocates wait for a read begun after they came -> when armed."""
        self._armed = 0
        self._wanted: set[str] = set()
        """The names the next read books the entries of."""
        self._current: asyncio.Task[bool] | None = None
        self._next: asyncio.Task[bool] | None = None
        """The read that begins once `_current` ended (every caller since joins it)."""
        self._tasks: set[asyncio.Task[object]] = set()
        self._unplaced_at = -math.inf
        index.tell_unplaced(self.unplaced)

    def before(self, served: Collection[str], added: Collection[str]) -> asyncio.Task[None]:
        """A reload (or a label change) starts or changes resources: `book_before` (the
        entries of every name but `served`'s), and the `added` names are fenced: their
        first list and first answered Allocate wait for reads begun after the kubelet
        called (`listing`, `allocating`)."""
        for name in added:
            self._lists.add(name)
            self._arm(name)
        return book_before(self._index, self._dir, served, self._offload, self._log, self._poller)

    def unplaced(self, resource: str) -> None:
        """A PodResources answer shows a pod holding an ID of `resource` that no device has
        (`held_id_not_present`): an admission may have been missed; the resource's
        Allocates wait for a read begun after this, and one is made (at most every
        `REREAD_EVERY` seconds)."""
        armed = self._arm(resource)
        now = self._clock()
        delay = max(0.0, self._unplaced_at + REREAD_EVERY - now)
        self._unplaced_at = now + delay
        self._spawn(self._read_later(resource, armed, delay))

    async def listing(self, resource: str, report: Callable[[str | None], None]) -> None:
        """Before `resource`'s first list goes out: while it is fenced, a read of its entries
        begun now; while the file cannot be used, `report`ed (/readyz) and tried again
        with backoff (the list is held: fail closed)."""
        retry = Backoff(RETRY_FIRST, RETRY_MAX)
        while resource in self._lists:
            if await self._fresh(resource):
                self._lists.discard(resource)
                report(None)
                return
            delay = retry.next_delay()
            report(UNREADABLE)
            unlisted = None if self._poller is None else self._poller.unlisted
            if unlisted is not None and unlisted.nudge is not None:
                unlisted.nudge()  # (the kubelet writes its file anew at a list sent again)
            self._log.warning("first_list_held", resource=resource, retry_in=delay)
            await asyncio.sleep(delay)

    def holds_list(self, resource: str) -> bool:
        return resource in self._lists  # (its first list waits for a read)

    async def allocating(self, resource: str) -> str | None:
        """Before an Allocate of `resource` is answered: while it is fenced, a read of its
        entries begun now (the fence goes once one succeeds); why to refuse it when the file
        cannot be used, else None."""
        armed = self._allocates.get(resource)
        if armed is None:
            return None
        if not await self._fresh(resource):
            return f"{resource}: {UNREADABLE}: {HELD_CLOSED}"
        self._disarm(resource, armed)
        return None

    def close(self) -> None:
        """The host stops: the reads and waits going on end."""
        for task in list(self._tasks):
            task.cancel()

    def _arm(self, resource: str) -> int:
        self._armed += 1
        self._allocates[resource] = self._armed
        return self._armed

    def _disarm(self, resource: str, armed: int) -> None:
        """A read begun after the fence of `armed` succeeded (not armed again since)."""
        if self._allocates.get(resource) == armed:
            del self._allocates[resource]

    async def _read_later(self, resource: str, armed: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if await self._fresh(resource):
            self._disarm(resource, armed)

    async def _fresh(self, resource: str) -> bool:
        """A read of the entries of `resource` begun after this call, booked and admitted;
        whether the file could be used."""
        self._wanted.add(resource)
        if self._next is None:
            self._next = self._spawn(self._read_after(self._current))
        return await asyncio.shield(self._next)

    async def _read_after(self, before: asyncio.Task[bool] | None) -> bool:
        if before is not None and not before.done():
            await asyncio.wait({before})
        self._current, self._next = self._next, None
        names, self._wanted = frozenset(self._wanted), set()
        index = self._index
        directory, work, log = self._dir, self._offload, self._log
        handed = await _book(
            index, directory, work, log, new=True, only=names, consequence=HELD_CLOSED
        )
        if handed is None:
            if self._metrics is not None:
                self._metrics.checkpoint_unusable.inc()
            return False
        _unlist(self._poller, handed)
        await index.quiet()  # (admitted again against them: the table is current)
        return True

    def _spawn(self, work: Coroutine[object, None, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name="kubelet-checkpoint-again")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
