"""The kubelet's checkpoint read again while the host runs (`checkpoint_bookings` says what
a read books): for a name a reload adds, and as the kubelet writes it (`follow`:
`checkpoint_follow`, another plugin's pods booked before an Allocate that came after their
admission is answered).

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
import math
import time
from collections.abc import Callable, Collection, Coroutine
from typing import TYPE_CHECKING, Final, TypeVar

from .backoff import Backoff
from .cdi_lookup import CdiNames
from .cdi_spec_looks import CdiSpecLooks
from .checkpoint_bookings import (
    HandedBookings,
    Poller,
    book_before,
    book_entries,
    book_others,
    unlist,
)
from .checkpoint_follow import ANSWER_WAIT, CheckpointFollower, Learnt, Local
from .files import Offload
from .logs import EventLogger

if TYPE_CHECKING:
    from .metrics import Metrics
    from .watch import Watcher

T = TypeVar("T")

HELD_CLOSED: Final = (
    "what another plugin handed out under the name is not known: the resource's first list "
    "waits and its Allocates are refused until the file can be read"
)
UNLOOKED: Final = (
    f"the kubelet's checkpoint, written before this Allocate, was not looked at within "
    f"{ANSWER_WAIT:g} s"
)
UNREADABLE: Final = "the kubelet's checkpoint cannot be read (kubelet_checkpoint_unusable)"
"""/readyz's reason while a first list waits for the file (short, no path)."""
REREAD_EVERY: Final = 1.0
"""Seconds between two reads `held_id_not_present` asks for (`CheckpointReads.unplaced`)."""
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
"""Seconds before a held first list's read is tried again, doubling up to the second."""


class CheckpointReads:
    """The checkpoint read again for the names whose first answers must not miss an
    admission of the plugin that served them before (the module's rules), and followed
    while the host runs (`follow`): one per host; reads off the loop, one at a time, each
    shared by every caller that came before it began."""

    def __init__(
        self,
        index: HandedBookings,
        socket_dir: str,
        offload: Offload,
        log: EventLogger,
        poller: Poller | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        cdi: CdiNames | None = None,
    ) -> None:
        self._index, self._dir, self._offload, self._log = index, socket_dir, offload, log
        self._poller, self._metrics, self._clock, self._cdi = poller, metrics, clock, cdi
        self._spec_looks: CdiSpecLooks | None = None
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
        self.follower: CheckpointFollower | None = None
        index.tell_unplaced(self.unplaced)

    def before(self, served: Collection[str], added: Collection[str]) -> asyncio.Task[None]:
        """A reload (or a label change) starts or changes resources: `book_before` (the
        entries of every name but `served`'s), and the `added` names are fenced: their
        first list and first answered Allocate wait for reads begun after the kubelet
        called (`listing`, `allocating`)."""
        for name in added:
            self._lists.add(name)
            self._arm(name)
        index, directory, work, log = self._index, self._dir, self._offload, self._log
        task = book_before(index, directory, served, work, log, self._poller, self._cdi)
        task.add_done_callback(lambda _: self._cdi_read())
        return task

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
        """Before an Allocate of `resource` is answered: the follower's look at every write
        made before it came (`CheckpointFollower.looked`), and while it is fenced, a read of
        its entries begun now (the fence goes once one succeeds); why to refuse it when the
        look does not end within `ANSWER_WAIT` or the file cannot be used, else None."""
        follower = self.follower
        if follower is not None and not await follower.looked():
            return f"{resource}: {UNLOOKED}: {HELD_CLOSED}"
        armed = self._allocates.get(resource)
        if armed is None:
            return None
        if not await self._fresh(resource):
            return f"{resource}: {UNREADABLE}: {HELD_CLOSED}"
        self._disarm(resource, armed)
        return None

    def follow(
        self,
        watcher: Watcher,
        served: Callable[[], Collection[str]],
        learnt: Learnt | None = None,
        local: Local | None = None,
    ) -> None:
        """While the host runs: the entries of every name but `served`'s (the names the host
        serves now) booked, and admitted against, before an Allocate that came after the
        kubelet's write is answered, and the bookings from the file alone of those names
        (`learnt`'s) ended once it no longer lists them (`checkpoint_follow`; `local`: where
        a look may be on the loop)."""
        self.follower = CheckpointFollower(
            self._dir, self._offload, self._log, served, self._book_others, learnt, local
        )
        self.follower.follow(watcher)
        if self._cdi is not None:  # (a name resolved again when a spec file changes)
            self._spec_looks = CdiSpecLooks(
                self._cdi, self._offload, self._book_again, served, self._log
            )
            self._spec_looks.follow(watcher)

    async def _book_others(self, served: frozenset[str], again: bool = False) -> bool:
        index, directory, work, log = self._index, self._dir, self._offload, self._log
        used = await book_others(
            index, directory, served, work, log, self._poller, self._cdi, again
        )
        self._cdi_read()
        await self._index.quiet()  # (admitted again against them: the table is current)
        return used

    def _cdi_read(self) -> None:
        if self._spec_looks is not None:  # (the dirs followed once a read needs them)
            self._spec_looks.wanted()

    async def _book_again(self, served: frozenset[str]) -> None:
        await self._book_others(served, again=True)

    def close(self) -> None:
        """The host stops: the reads and waits going on end, and the following."""
        if self.follower is not None:
            self.follower.cancel()
        if self._spec_looks is not None:
            self._spec_looks.cancel()
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
        handed = await book_entries(
            index, directory, work, log, new=True, only=names, consequence=HELD_CLOSED,
            cdi=self._cdi,
        )  # fmt: skip
        self._cdi_read()
        if handed is None:
            if self._metrics is not None:
                self._metrics.checkpoint_unusable.inc()
            return False
        unlist(self._poller, handed)
        await index.quiet()  # (admitted again against them: the table is current)
        return True

    def _spawn(self, work: Coroutine[object, None, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name="kubelet-checkpoint-again")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
