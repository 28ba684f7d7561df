"""IDs an Allocate handed out that no PodResources answer has shown since: held, not free.

An Allocate of this host's (`allocated`), or of another host on the state directory, whose
booking this host sees in `ownership.json` after its start (`booked_elsewhere`: a rolling
update's two hosts, one rule; hostile14 N4: the other host's booking, counted as a use of the
device, was released on the answers' silence while a regular init container held it).

The kubelet's PodResources `List` leaves regular (non-restartable) init containers out,
although its device manager allocates them devices and keeps those for the pod's lifetime
(docs/kubelet-contract.md §6, §15); and a pod whose admission failed after our Allocate
holds its IDs until the kubelet frees them. So an ID that no answer has shown since its
Allocate is not free because an answer lacks it: the poller publishes it as held by an
unlisted holder (`holdings.with_unlisted`: its booking lives, no release is owed, `/devices`
shows it held) until

- an answer asked after the Allocate shows it: from then on the usual rule (`Settle`);
- the kubelet allocates it again: its earlier user is gone (the new one is unlisted in turn
  until an answer shows it, and its release is owed: `release.py`);
- the kubelet's checkpoint (docs/kubelet-contract.md §10), written at least
  `Timings.allocation_settle` after the Allocate, no longer lists it: the kubelet freed it (an ended
  pod, a failed admission). The kubelet rewrites the file at its next ListAndWatch message
  or Allocate, not when it frees a pod, so this comes that much later: a cost in time only
  (a container given the ID meanwhile waits for its release in PreStartContainer).

The checkpoint is read off the loop (the host's offload), only while such an ID exists or
the restart rule needs it (`Settle`), and only when the file changed (inode, size, mtime).
The kubelet frees an ended pod's devices when asked for its `List` (our poll), and writes
the file at its next ListAndWatch message: while the file, written before the last answer,
still lists an unlisted ID, or lacks one but was written too soon after its Allocate to
count (a pod that ended within `allocation_settle` of it, the file written meanwhile: no
other write may ever come), or the restart rule asks what it lists, the host sends a
resource's list again (`nudge`) so the kubelet writes it, at most every
`Timings.nudge_first` seconds, doubling up to `nudge_max` while no ID goes and none comes
(a pod whose init container holds a device for hours costs the kubelet a write every 5 min;
an ID freed, or one handed out or booked from the checkpoint since, by this host or
another plugin, starts over at `nudge_first`: a run of another plugin's pods no longer
waits longer each time, followburst's 7, 17, 33, 64 s), up to
`nudge_restart_max` while
a kubelet restart's holders are carried (`holdings.Settle`: the kubelet frees their pods
only once its API source is back, which nothing else shows).
A checkpoint that cannot be used (missing, unreadable, bad checksum) frees nothing: the IDs
stay held until allocated again (logged once, `kubelet_checkpoint_unusable`).

At start (`seed`) every ID the checkpoint lists (every resource's, as the start books them
all: `checkpoint_bookings.book_handed`, a retired or another plugin's included) is unlisted
until an answer shows it (the IDs of a running init container are among them; a pod that
ended while kdp-host was down keeps its IDs until the kubelet writes the file without
them); a checkpoint that cannot be used then makes every booked ID unlisted (fail closed).
So are the IDs a reload's read of it books (`take`, `checkpoint_bookings.book_before`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from .backoff import Backoff
from .files import FileReadError, Offload, read_attribute
from .holdings import Holdings
from .kubelet_checkpoint import (
    CHECKPOINT_FILE,
    MAX_CHECKPOINT_BYTES,
    READ_TIMEOUT,
    CheckpointError,
    listed_ids,
)
from .logs import EventLogger
from .timings import Timings

Stamp = tuple[int, int, int]
"""A file's inode, size and mtime (ns): it changed when this did."""
FREE_WHEN_UNUSABLE = (
    "the IDs handed out that no PodResources answer showed stay held until allocated again"
)


@dataclass(frozen=True)
class Handout:
    """When a device was handed out (`Unlisted`)."""

    at: float
    """Monotonic time of the Allocate (-inf: taken up at start)."""
    wall: float
    """Its Unix time (0: taken up at start)."""
    late: float = 0.0
    """How long after `wall` its answer may have reached the kubelet (a use booked from
    `handed-out.json` alone, whose answer may have waited for the state files after its
    record: `recorded_bookings.ANSWERED_WITHIN`): a checkpoint counts from then on."""

    @property
    def counts_from(self) -> float:
        """Unix time from which a checkpoint that lacks the ID frees it."""
        return self.wall + self.late


@dataclass(frozen=True)
class CheckpointRead:
    """The kubelet's checkpoint as last read."""

    stamp: Stamp | None
    """None: no file."""
    written: float
    """Unix time it was written (its mtime)."""
    ids: frozenset[tuple[str, str]] | None
    """(resource, ID) it lists; None: it cannot be used (`problem`)."""
    problem: str | None = None


def read_checkpoint(path: str, before: CheckpointRead | None) -> CheckpointRead:
    """The checkpoint at `path`, `before` itself when the file did not change. Blocking."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return CheckpointRead(None, 0.0, None, "no such file")
    except OSError as exc:
        return CheckpointRead(None, 0.0, None, f"cannot stat it: {exc.strerror}")
    stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
    if before is not None and before.stamp == stamp:
        return before
    try:
        blob = read_attribute(path, MAX_CHECKPOINT_BYTES)
        ids = None if blob is None else listed_ids(blob)
    except (FileReadError, CheckpointError) as exc:
        return CheckpointRead(stamp, info.st_mtime, None, str(exc))
    problem = "no such file" if ids is None else None
    return CheckpointRead(stamp, info.st_mtime, ids, problem)


@dataclass
class Unlisted:
    """The host's handed-out IDs no answer has shown since their Allocate (module doc)."""

    socket_dir: str
    offload: Offload
    log: EventLogger
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    handed: dict[tuple[str, str], Handout] = field(default_factory=dict)
    """(resource, ID) -> its Allocate."""
    checkpoint: CheckpointRead | None = None
    _seeding: bool = False
    _seeded: Collection[str] | None = None
    _booked: Callable[[], Mapping[str, Collection[str]]] | None = None
    _reading: asyncio.Future[CheckpointRead] | None = None
    _told: str | None = None
    nudge: Callable[[], bool] | None = None
    """Makes the kubelet write its checkpoint (a resource's list sent again); False when no
    resource has a stream open."""
    timings: Timings = field(default_factory=Timings)
    """How long after an Allocate a checkpoint counts, and how often the kubelet is asked to
    write it again."""
    _nudged: float = float("-inf")
    _asked: float = float("-inf")
    _backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self._backoff = Backoff(self.timings.nudge_first, self.timings.nudge_max)

    @property
    def path(self) -> str:
        return os.path.join(self.socket_dir, CHECKPOINT_FILE)

    def seed(
        self,
        resources: Collection[str] | None,
        booked: Callable[[], Mapping[str, Collection[str]]],
    ) -> None:
        """At start: the IDs of `resources` (None: of every resource, as the start books
        them all: `checkpoint_bookings.book_handed`) the checkpoint lists are unlisted
        (`booked`, resource -> the IDs this host booked, when it cannot be used), from the
        first `refresh` on."""
        self._seeding, self._seeded, self._booked = True, resources, booked

    def take(self, keys: Iterable[tuple[str, str]], wall: float = 0.0, late: float = 0.0) -> None:
        """(resource, ID) pairs a read of the checkpoint booked (a reload started a resource:
        `checkpoint_bookings.book_before`; another plugin's pod, `checkpoint_follow`), or
        the start booked from `handed-out.json` alone (`recorded_bookings`: `wall`, the Unix
        time of its Allocate, `late`, how long its answer may have taken after it):
        unlisted as those of the start are. Each is booked anew (another pod's, maybe under
        an ID still held here: the last one's ended at a write this host did not read): the
        asks for a write start over."""
        taken = Handout(float("-inf"), wall, late)
        for key in keys:
            self.handed.setdefault(key, taken)
            self._afresh()  # (booked anew: another pod's, maybe under an ID held unlisted still)

    def allocated(self, resource: str, ids: Collection[str]) -> None:
        """An Allocate handed these IDs out (again: their earlier user is gone)."""
        handout = Handout(self.clock(), self.wall())
        self._afresh()
        for device_id in ids:
            self.handed[(resource, device_id)] = handout

    def booked_elsewhere(self, resource: str, ids: Collection[str], _writer: str) -> None:
        """Another host on the state directory (a rolling update's) booked these IDs, seen in
        `ownership.json` since this host's start: its Allocate, held as this host's own are
        (`allocated`: one rule, whoever handed them out) from now, when it was seen (an
        answer asked before, or a checkpoint written within `allocation_settle` after, is no
        news of it)."""
        self.allocated(resource, ids)

    def shown(self, answer: Holdings) -> None:
        """An answer (as the kubelet gave it): the IDs it shows held since their Allocate
        are listed from now on."""
        for key, handout in list(self.handed.items()):
            if handout.at <= answer.asked_at and key[1] in answer.of(key[0]):
                del self.handed[key]

    def by_resource(self) -> dict[str, dict[str, float]]:
        """resource -> unlisted ID -> Unix time of its Allocate (`with_unlisted`)."""
        out: dict[str, dict[str, float]] = {}
        for (resource, device_id), handout in self.handed.items():
            out.setdefault(resource, {})[device_id] = handout.wall
        return out

    def listed(self, resource: str, device_id: str) -> bool:
        """Whether the checkpoint as last read lists the ID (True: it cannot be used)."""
        read = self.checkpoint
        return read is None or read.ids is None or (resource, device_id) in read.ids

    @property
    def wanted(self) -> bool:
        return bool(self.handed) or self._seeding

    async def refresh(self, answered: float = float("inf"), doubted: bool = False) -> None:
        """Read the checkpoint again if it changed (bounded by READ_TIMEOUT; a read that
        hangs is waited for by the next refresh, never started twice), then free the IDs it
        no longer lists; `answered`: Unix time of the last answer (the kubelet freed what it
        had to when asked), a file written before it that still holds one is asked for
        again, as is one written before it while `doubted` (the restart rule asks what it
        lists). An ID held after `_free` is one the file lists, or one it lacks but was
        written too soon after its Allocate to count (`allocation_settle`): either way only
        a later write tells, and a write the kubelet made before that Allocate counted, for
        a pod that ended at once, is the last it makes unasked."""
        if self._reading is None:
            work = functools.partial(read_checkpoint, self.path, self.checkpoint)
            self._reading = asyncio.ensure_future(self.offload.run(work))
        try:
            read = await asyncio.wait_for(asyncio.shield(self._reading), READ_TIMEOUT)
        except TimeoutError:
            self._unusable(f"not read within {READ_TIMEOUT:g} s")
            return
        finally:
            if self._reading.done():
                self._reading = None
        self.checkpoint = read
        if self._seeding:
            self._seed(read)
        if read.ids is None and (self.handed or read.stamp is not None):
            self._unusable(read.problem or "cannot be used")  # (none yet at start: no news)
        elif read.ids is not None and self._told is not None:
            self._told = None
            self.log.info("kubelet_checkpoint_usable", path=self.path)
        if read.ids is not None:
            self._free(read.ids, read.written)
            if read.written < answered and (
                doubted
                or any(
                    handout.counts_from + self.timings.allocation_settle <= answered
                    for handout in self.handed.values()
                )
            ):
                self._ask_write(doubted)

    def _afresh(self) -> None:
        """An ID came or went: the kubelet is asked to write at the first pace again
        (`nudge_first` after the last ask), the wait doubling from there."""
        self._backoff.reset()
        self._nudged = min(self._nudged, self._asked + self.timings.nudge_first)

    def _ask_write(self, doubted: bool) -> None:
        now = self.clock()
        if self.nudge is None or now < self._nudged:
            return
        if self.nudge():
            self._asked = now
            delay = self._backoff.next_delay()
            self._nudged = now + (min(delay, self.timings.nudge_restart_max) if doubted else delay)

    def _seed(self, read: CheckpointRead) -> None:
        resources, self._seeding = self._seeded, False
        taken = Handout(float("-inf"), 0.0)
        if read.ids is not None:
            for resource, device_id in read.ids:
                if resources is None or resource in resources:
                    self.handed.setdefault((resource, device_id), taken)
        elif read.stamp is not None and self._booked is not None:
            for resource, ids in self._booked().items():
                for device_id in ids:
                    self.handed.setdefault((resource, device_id), taken)

    def _free(self, ids: frozenset[tuple[str, str]], written: float) -> None:
        for key, handout in list(self.handed.items()):
            if key not in ids and written >= handout.counts_from + self.timings.allocation_settle:
                del self.handed[key]
                self._afresh()
                self.log.bind(resource=key[0]).info(
                    "handed_id_freed",
                    device=key[1],
                    reason="the kubelet's checkpoint no longer lists it, and no PodResources "
                    "answer showed it since its Allocate",
                )

    def _unusable(self, problem: str) -> None:
        if problem != self._told:
            self._told = problem
            self.log.warning(
                "kubelet_checkpoint_unusable",
                path=self.path,
                error=problem,
                consequence=FREE_WHEN_UNUSABLE,
            )
