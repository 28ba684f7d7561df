"""The kubelet's checkpoint followed while the host runs: what another plugin's pods are
handed is booked before kdp-host answers an Allocate the kubelet sends after writing it
(issue 17, hostile22 F4, hostile23 F1).

The start books every entry of `kubelet_internal_checkpoint`, and a reload the entries of
every name it did not serve before and after (`checkpoint_bookings`). Between those,
another plugin that serves a node kdp-host serves under another name (generic-device-plugin
kept beside kdp-host during a migration that renames the resource, or left on the node)
hands the node to a pod, and kdp-host, still advertising it, would hand it to a second pod.
So the host follows the file (the watcher, one name of the device-plugin directory: the
kubelet writes it anew, by a rename, after every admission and device-list update) and
books the entries of every name it does not serve now as a reload books them
(`checkpoint_bookings.book_others`, one code path: their IDs unlisted, held until an answer
shows them; a device reaching one of their nodes is held `reason=booked`, as after a start,
until PodResources shows no pod holding the ID or the checkpoint no longer lists it).

The kubelet rewrites the file at every admission, this host's own too, so a write is first
looked at cheaply (`others_entries`), off the loop, one look at a time, the writes that come
meanwhile coalesced into the next look: the names of its entries, found without parsing it
(the compact JSON Go writes, with no escape in it); a file whose entries are all of served
names ends there (a host that is the only plugin pays that for each write, and nothing
else). Otherwise its other names' entries are parsed out and compared with those the last
booking read saw: only an entry not seen then has the file read and booked
(`book_others`: the checksum, each answer decoded, its paths resolved).

The kubelet writes the file before the admission that wrote it returns, and sends the next
pod's Allocate at once (a burst of pods: hostile23 F1, the next Allocate came before the
look in 2-4 rounds of 8). So an Allocate waits until every write made before it came was
looked at and what it showed booked (`CheckpointFollower.looked`): at no cost where the
watcher vouches that it told every write (`Vouching.untold`: no event unread, one poll; the
directory watched) and no look is due; the running or due look where one is (a write with
another name's entry: ~0.15 ms at 1,000 entries, off the loop); a look begun then where
the watcher cannot vouch (polling, the directory not watched, the events still unread
after a few turns of the loop). Past `ANSWER_WAIT` the Allocate is refused (UNAVAILABLE),
not answered blind.

The write that ends this host's own admission (the kubelet's, before it sends the next
pod's Allocate) was the look most Allocates waited for (issue 19: a thread hop and back,
0.1-0.5 ms on a busy machine). A local directory (`Local`: no server to wait for, as a glob
scan on the loop) and a small file holding only served names' entries (`served_only`: a
read of at most `ON_LOOP_BYTES` and one scan) are looked at on the loop the moment the
watcher tells the write (`_on_loop`), where no booking from the file alone is left to end
(below); anything else goes off it as above.

A booking of an entry of another name ends once the file no longer lists it (hostile23 F6:
with PodResources polling off nothing else ends it; the kubelet drops an entry only once its
pod is gone, `ownership_learnt`): a look whose entries lack the (resource, ID) of a booking
from the checkpoint alone of a name not served (`Learnt.unvouched`; also the first look,
after a start that took such a booking from `ownership.json`) has the file read again in
full, its checksum checked also when it lists nothing (`vouched_ids`), and ends those it does
not list that were booked before that read began (`Learnt.end_unvouched`), once the look's
bookings are done (no Allocate waits for it). A missing or unusable file ends nothing; a
look whose entries and such bookings are those of the last full read reads nothing again.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Collection, Container
from typing import Final, Protocol

from .checkpoint_entries import Entries, Listed, entry_ids, listed_in, others_entries, served_only
from .files import Offload
from .kubelet_checkpoint import CHECKPOINT_FILE, READ_TIMEOUT
from .logs import EventLogger
from .ownership_claims import Owner
from .places_followed import Vouching
from .watch import Subscription, Watcher

BookOthers = Callable[[frozenset[str]], Awaitable[bool]]
"""Books the checkpoint's entries of every name but the given ones; whether the file could
be used (`checkpoint_bookings.book_others`)."""
ANSWER_WAIT: Final = 5.0
"""Seconds an Allocate waits at most for the look at the writes made before it came
(`CheckpointFollower.looked`); past them it is refused."""
TURNS: Final = 3
"""Turns of the loop an Allocate gives the watcher to read the events it holds before a
look is begun for it instead (events keep coming elsewhere)."""
Local = Callable[[Collection[str]], bool]
"""Whether a lookup in each of these real directories waits on nothing but this machine
(`OwnershipIndex.local`, the mount table followed)."""


class Learnt(Protocol):
    """The bookings from the kubelet's checkpoint alone (`OwnershipIndex`, `ownership_learnt`)."""

    def unvouched(
        self, listed: Container[tuple[str, str]], covered: Callable[[str], bool]
    ) -> list[tuple[Owner, float]]: ...

    def vouch_began(self) -> float: ...

    def end_unvouched(
        self, listed: Container[tuple[str, str]], covered: Callable[[str], bool], began: float
    ) -> list[Owner]: ...


def _not_served(served: frozenset[str], resource: str) -> bool:
    return resource not in served


def _look_off(path: str, served: frozenset[str]) -> tuple[Entries | None, str]:
    """A look off the loop: `others_entries`, and the real path of the file's directory
    (where a look on the loop may be, `CheckpointFollower._on_loop`)."""
    return others_entries(path, served), os.path.realpath(os.path.dirname(path))


class CheckpointFollower:
    """Follows the checkpoint in `socket_dir` (the module's rules): `follow` starts,
    `cancel` ends it and what it runs."""

    def __init__(
        self,
        socket_dir: str,
        offload: Offload,
        log: EventLogger,
        served: Callable[[], Collection[str]],
        book: BookOthers,
        learnt: Learnt | None = None,
        local: Local | None = None,
    ) -> None:
        self._path = os.path.join(socket_dir, CHECKPOINT_FILE)
        self._local = local
        self._real_dir: str | None = None
        """The directory's real path, as the last look off the loop found it (None: none
        yet, no look on the loop)."""
        self._dir, self._offload, self._log = socket_dir, offload, log
        self._served, self._book, self._learnt = served, book, learnt
        self._ids: dict[bytes, Listed] = {}
        """The entries of the last look whose IDs were asked for -> their IDs."""
        self._vouched: tuple[Entries, tuple[tuple[Owner, float], ...]] | None = None
        """The entries and unvouched bookings (each with when it was booked) of the last
        full read (`_end_unlisted`): the same again reads nothing."""
        self._seen: Entries = frozenset()
        """Other names' entries a booking read has covered (the last look's, if fewer)."""
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._looking: asyncio.Future[tuple[Entries | None, str]] | None = None
        """A look still running (one that hangs is waited for again, never started twice)."""
        self._subscription: Subscription | None = None
        self._told: str | None = None
        self._vouching: Vouching | None = None
        self._heard = self._looked = 0
        """Writes told (and looks asked for) so far; of those, the ones a finished look began
        after (its booking done)."""
        self._looking_after = 0
        """`_heard` when the running look's read began."""
        self._progress: asyncio.Future[None] | None = None
        """Set when a look finishes (`looked` waits on it)."""
        self.looks = self.bookings = self.unbooked = self.on_loop = 0
        """Looks at a write, booking reads they led to, bookings ended, and looks done on
        the loop (tests, benchmarks)."""

    def follow(self, watcher: Watcher) -> CheckpointFollower:
        """Follow the file from now on, with a look now (a write since the start's read)."""
        self._subscription = watcher.subscribe(self._dir, self._written, names=[CHECKPOINT_FILE])
        self._vouching = watcher if isinstance(watcher, Vouching) else None
        self._written(None)
        return self

    async def looked(self, bound: float = ANSWER_WAIT) -> bool:
        """Whether every write of the file made before this call was looked at, and what it
        showed booked, within `bound` seconds (the module's rules; True while not following:
        the start's and reloads' rules hold then)."""
        if self._subscription is None:
            return True
        if not await self._all_heard() or (self._looked < self._heard and self._task is None):
            self._written(None)  # (a look begun after now: it sees every write made before)
        after = self._heard
        if self._looked >= after:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while self._looked < after:
            if self._progress is None:
                self._progress = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._progress), deadline - loop.time())
            except TimeoutError:
                return False
        return True

    async def _all_heard(self) -> bool:
        """Whether the watcher told every write made before now: it holds no event unread
        (after at most `TURNS` turns of the loop, whose reader dispatches them) and watches
        the directory."""
        vouching = self._vouching
        if vouching is None or vouching.watching(self._dir) is not True:
            return False
        for turn in range(TURNS + 1):
            if vouching.untold() is False:
                return True
            if turn < TURNS:
                await asyncio.sleep(0)
        return False

    def cancel(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._task is not None:
            self._task.cancel()

    def _written(self, _name: str | None) -> None:
        self._heard += 1
        self._dirty = True
        if self._task is None and self._subscription is not None and not self._on_loop():
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name="kubelet-checkpoint-follow"
            )

    def _on_loop(self) -> bool:
        """A look done now, on the loop, with no thread hop and no turn of the loop (issue
        19: the kubelet's own write after this host's previous admission, looked at before
        its next Allocate comes): where no look runs, the directory is on a local file
        system (`Local`, its real path as the last look off the loop found it), the file
        small with only served names' entries (`served_only`) and no booking from the file
        alone left to end (`_ending_due`). True when it was: every write heard so far is
        looked at, and nothing was to be booked or ended; else the look goes off the loop,
        as any other."""
        real, local = self._real_dir, self._local
        if self._looking is not None or real is None or local is None or not local((real,)):
            return False
        after, served = self._heard, frozenset(self._served())
        if not served_only(self._path, served) or self._ending_due(frozenset(), served):
            return False
        self.looks += 1
        self.on_loop += 1
        self._dirty = False
        self._seen = frozenset()  # (entries gone: their bookings end by their own rules)
        self._looked_after(after)
        return True

    async def _follow(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                await self._look()
        except Exception as exc:  # (a defect: logged, and the next write looks again)
            self._log.error("kubelet_checkpoint_follow_failed", error=repr(exc))
        finally:
            self._task = None

    async def _look(self) -> None:
        served = frozenset(self._served())
        self.looks += 1
        if self._looking is None:
            work = functools.partial(_look_off, self._path, served)
            self._looking_after = self._heard
            self._looking = asyncio.ensure_future(self._offload.run(work))
        after = self._looking_after
        try:
            entries, self._real_dir = await asyncio.wait_for(
                asyncio.shield(self._looking), READ_TIMEOUT
            )
        except TimeoutError:
            self._tell(f"not read within {READ_TIMEOUT:g} s")
            return
        finally:
            if self._looking.done():
                self._looking = None
        if entries is not None and entries <= self._seen:
            self._seen = entries  # (entries gone: their bookings end below, or by PodResources)
        else:
            self.bookings += 1
            if await self._book(served):  # (a file that cannot be used: logged by the read)
                self._seen = frozenset() if entries is None else entries
                self._tell(None)
        self._looked_after(after)
        if entries is not None and self._learnt is not None:  # (no Allocate waits for it)
            await self._end_unlisted(self._learnt, entries, served)

    def _looked_after(self, after: int) -> None:
        """A look begun after `after` writes finished (its booking done): told to `looked`."""
        self._looked = max(self._looked, after)
        progress, self._progress = self._progress, None
        if progress is not None and not progress.done():
            progress.set_result(None)

    def _ending_due(self, entries: Entries, served: frozenset[str]) -> bool:
        """Whether a look that found `entries` has bookings from the file alone to end (a
        full read of it: `_end_unlisted`)."""
        learnt = self._learnt
        return learnt is not None and self._unvouched(learnt, entries, served) is not None

    def _unvouched(
        self, learnt: Learnt, entries: Entries, served: frozenset[str]
    ) -> tuple[tuple[Owner, float], ...] | None:
        """The bookings from the checkpoint alone of names not `served` that `entries` do
        not list, where a full read is due (None: none, or those of the last full read)."""
        ids = self._ids = {text: self._ids.get(text) or entry_ids(text) for text in entries}
        listed = frozenset().union(*ids.values())
        unvouched = tuple(learnt.unvouched(listed, functools.partial(_not_served, served)))
        if not unvouched or self._vouched == (entries, unvouched):
            return None
        return unvouched

    async def _end_unlisted(self, learnt: Learnt, entries: Entries, served: frozenset[str]) -> None:
        """End the bookings from the checkpoint alone of names not `served` that the file
        no longer lists (the module's rules): asked of the look's `entries`, then of a full
        read begun after now."""
        unvouched = self._unvouched(learnt, entries, served)
        if unvouched is None:
            return
        covered = functools.partial(_not_served, served)
        began = learnt.vouch_began()
        reading = self._offload.run(functools.partial(listed_in, self._path))
        try:
            full = await asyncio.wait_for(reading, READ_TIMEOUT)
        except TimeoutError:
            return
        if full is None:  # (no file, or one that cannot be used: it ends nothing)
            return
        self._vouched = (entries, unvouched)
        for owner in learnt.end_unvouched(full, covered, began):
            self.unbooked += 1
            self._log.bind(resource=owner.resource).info(
                "kubelet_checkpoint_unbooked",
                device=owner.device,
                reason="the kubelet's checkpoint no longer lists it: its pod is gone",
            )

    def _tell(self, problem: str | None) -> None:
        """A look that hangs is logged once (a file that cannot be used: by the read)."""
        if problem != self._told:
            self._told = problem
            if problem is not None:
                self._log.warning(
                    "kubelet_checkpoint_unusable",
                    path=self._path,
                    error=problem,
                    consequence="another plugin's pods admitted meanwhile are not booked "
                    "until the file can be read",
                )
