"""One admission at a time, in bounded turns of the event loop.

An admission walks a resource's list (claims, IDs, conflicts): a probe that renames 12,000
devices at once costs tens of milliseconds of Python, and the event loop serves every
resource's gRPC. So an admission works in turns of at most `chunk` devices (a later turn
also of at most `budget` seconds: `turns.Pace`) and yields to the loop between two turns:
its first turn runs where the list arrived (a small change is admitted at once, as it
always was), the rest in a task.

The index admits one list at a time (the gate): while an admission runs, a list of any
resource, a released claim or a changed path only queues its resource, which is admitted
(with its newest list) once the running admission is done. Between two turns the table is
consistent device by device (every advertised ID owns its claims, or they linger with it),
so what reads or trims it meanwhile never waits for an admission: an Allocate's booking
(`book`), a PodResources answer (`holdings`), a retire, `owners_of`. An admission whose
runtime stopped, or whose resource was retired, stops at its next turn; its resource's next
list is then admitted in full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from .device_changes import healthy_count
from .devices import Device
from .files import Offload
from .metrics import Metrics
from .ownership_canonical import canonical
from .ownership_claims import ClaimKey, Claims, Owner, Resolver
from .ownership_held import HandOver
from .ownership_lost import Found as LostFound
from .ownership_lost import above
from .ownership_resolve import Resolving
from .ownership_rounds import Rounds
from .ownership_table import ResourceState
from .turns import TURN_BUDGET, Pace, to_the_end


@dataclass(frozen=True, slots=True)
class _View:
    """The admitted devices with real paths (`AdmissionGate._canonical`), and what they were
    made from: device ID -> (the admitted device, its claims, the device with real paths)."""

    admitted: Mapping[str, Device]
    made: dict[str, tuple[Device, Claims, Device]]
    view: dict[str, Device]


ADMISSION_CHUNK: Final = 200
"""Devices an admission works on per turn of the event loop (about a millisecond)."""


class AdmissionGate(Resolving):
    """Admissions one at a time (queued behind the one running), each in bounded turns."""

    def __init__(
        self,
        clock: Callable[[], float],
        metrics: Metrics | None,
        resolve: Resolver | None,
        offload: Offload | None,
        timeout: float,
        chunk: int,
        budget: float | None = TURN_BUDGET,
    ) -> None:
        super().__init__(clock, metrics, resolve, offload, timeout)
        self._chunk = max(1, chunk)
        self._budget = budget
        self._pending: dict[str, None] = {}
        """Resources to admit again once no admission runs (in this order)."""
        self._draining = False
        self._running: asyncio.Task[None] | None = None
        """The admission that continues in turns of the loop (the gate is closed)."""
        self._views: dict[str, _View] = {}
        """Per resource: the last admitted mapping with real paths (`_canonical`)."""
        self._handover = HandOver()
        self._next: asyncio.Task[None] | None = None
        """The next round of admissions (`_drain`): those queued again after their own."""
        self._rounds = Rounds(metrics)

    def _admit_or_defer(self, state: ResourceState) -> bool:
        """Admit `state`: its first turn now, the rest (if any) in later turns of the loop;
        after the running admission if one runs. Returns whether its table changed now."""
        if self._running is not None:
            self._pending[state.name] = None
            return False
        steps = self._admission(state, Pace(self._chunk, self._budget))
        try:
            next(steps)
        except StopIteration as done:
            changed: bool = done.value
            return changed
        loop = _running_loop()
        if loop is None:  # no event loop to yield to (nothing else waits): go on here
            return to_the_end(steps)
        self._running = loop.create_task(
            self._turns(state, steps, state.publish), name=f"admission {state.name}"
        )
        return False

    def _admission(self, state: ResourceState, pace: Pace) -> Generator[None, None, bool]:
        """Admit `state` once the paths it needs are resolved (inline without an offload,
        else off the loop, and admitted then) and give its table the result; whether the
        table changed. Yields when `pace` says."""
        known = state.known
        wanted = yield from self._wanted(state, pace)
        wanted |= self._look_above(state)
        if wanted:
            if self._paths.offload is not None:
                self._defer(state, wanted)
                return False
            self._take(state, self._paths.inline(wanted))
            while above_too := self._look_above(state):  # (above real paths resolved now)
                self._take(state, self._paths.inline(above_too))
        self._admitting = state.name
        admitted = yield from self._admit(state, pace)
        if self._admit_again(state):
            admitted = yield from self._admit(state, pace)
        changed = self._give(state, admitted)
        state.needs = {}  # (kept only until admitted: a list can be long)
        if state.known is known:  # (not a newer list's, which waits for its admission)
            state.known = {}
        late, self._late = self._late, {}
        for path, names in late.items():
            for name in names:
                self._defer(self._resources[name], {path})
        return changed

    def _look_above(self, state: ResourceState) -> set[str]:
        """While a booked directory is lost (`_lost`), the directories above what `state`'s
        admission claims that are still to resolve; a lost one found among those resolved
        is reported where it is (`ownership_lost`)."""
        lost = self._lost() if state.needs else ()
        if not lost:
            return set()
        todo, found = above(state.needs, self._fresh, lost)
        if found:
            self._found_lost(found)
        return todo

    def _lost(self) -> Collection[ClaimKey]:
        """The booked directories not known where they are now (none: no watcher)."""
        return ()

    def _found_lost(self, found: LostFound) -> None:
        """Lost booked directories found at these real paths (no watcher: not followed)."""

    def _admit_again(self, state: ResourceState) -> bool:
        """`state` was admitted, its table not given the result yet: True to admit it again
        at once (the index books what its pods hold, `ownership_adopt`)."""
        return False

    def _give(self, state: ResourceState, admitted: Mapping[str, Device]) -> bool:
        if state.publish is None:
            return False
        advertised = self._canonical(state, admitted)
        changed = False
        if advertised is not state.sent:
            state.sent = advertised
            changed = state.publish(advertised)
        self._handover.published(state.name)
        return changed

    def _canonical(
        self, state: ResourceState, admitted: Mapping[str, Device]
    ) -> Mapping[str, Device]:
        """What the table gets: the admitted devices, each with the real paths its claims
        resolved (`ownership_canonical.canonical`; the same mapping when none has a path that is
        not its real path). A device is made again only when it or its claims changed (an
        unchanged one keeps its entry: ListAndWatch writes no entry it wrote already)."""
        if not state.renamed:
            return admitted
        last = self._views.get(state.name)
        before = {} if last is None else last.made
        made: dict[str, tuple[Device, Claims, Device]] = {}
        changed = last is None or last.admitted is not admitted
        for device_id in state.renamed:
            source = admitted.get(device_id)
            if source is None:
                continue
            claims = state.owned[device_id]
            known = before.get(device_id)
            if known is None or known[0] is not source or known[1] is not claims:
                known = (source, claims, canonical(source, claims))
                changed = True
            made[device_id] = known
        if last is not None and not changed and len(made) == len(before):
            return last.view
        view = dict(admitted)
        view.update((device_id, entry[2]) for device_id, entry in made.items())
        self._views[state.name] = _View(admitted, made, view)
        return view

    async def _turns(
        self,
        state: ResourceState,
        steps: Generator[None, None, bool],
        publish: Callable[[Mapping[str, Device]], bool] | None,
    ) -> None:
        """The rest of an admission, a turn of the loop at a time; then the queued ones."""
        changed = False
        try:
            while True:
                await asyncio.sleep(0)
                if state.publish is not publish or state.retired:
                    steps.close()  # its runtime stopped: the next list is admitted in full
                    state.settled = state.plain = False
                    self._wake_waiting(state.name)
                    break
                try:
                    next(steps)
                except StopIteration as done:
                    changed = done.value
                    break
        finally:
            self._running = None
        if changed:
            self._changed(state)
        self._drain()

    @property
    def admitting(self) -> bool:
        """An admission runs, waits for its paths or its round (what `quiet` waits for)."""
        resolving = any(s.resolving is not None for s in self._resolving.values())
        return self._running is not None or self._next is not None or resolving

    async def quiet(self) -> None:
        """Return once no admission runs, waits for its turn or for its paths."""
        while True:
            busy = {s.resolving for s in self._resolving.values() if s.resolving is not None}
            busy.update(task for task in (self._running, self._next) if task is not None)
            if not busy:
                return
            await asyncio.wait(busy)

    def _drain(self) -> None:
        """Admit again the resources that wait (for a released claim, or for the admission
        that ran): one at a time, never nested (a publish that releases more only queues),
        in a round: those queued again after their admission in it wait for the next round,
        in a later turn of the loop (`ownership_rounds`: a chain of them never holds it)."""
        if self._ledger.unheld:
            self._examine_unheld()
        if reached := self._ledger.reach.changed:  # (a spot reaches another identity)
            self._ledger.reach.changed = []
            self._examine(reached)
        if self._draining:
            return
        self._draining, loop = True, _running_loop()
        admitted: set[str] = set()
        try:
            while (admitted := self._round()) and loop is None:
                pass  # (no event loop to yield to: nothing else waits)
        finally:
            self._draining = False
            if self._running is None and not self._resolving and not self._pending:
                self._fresh.clear()  # (kept while paths resolve: they add to what is fresh)
                self._doubtful.clear()
        if not self._pending:
            self._rounds.over()
        elif self._running is None and self._next is None and loop is not None:
            storm = admitted.union(self._pending)  # (what a storm names: `Rounds.again`)
            self._rounds.again(self._resources[name] for name in sorted(storm))
            self._next = loop.create_task(self._next_round(), name="admissions again")

    def _round(self) -> set[str]:
        """Admit each resource that waits once (one queued meanwhile too); those it admitted
        while some of them wait again (queued after their admission: for the next round),
        else none."""
        admitted: set[str] = set()
        while self._running is None:
            name = next((n for n in self._pending if n not in admitted), None)
            if name is None:
                return admitted if self._pending else set()
            del self._pending[name]
            admitted.add(name)
            state = self._resources[name]
            live = state.publish is not None and not state.retired
            if live and self._admit_or_defer(state):
                self._changed(state)
        return set()

    async def _next_round(self) -> None:
        """The next round of `_drain`, in a later turn of the loop."""
        try:
            await asyncio.sleep(0)
        finally:
            self._next = None
        self._drain()

    def _admit_all_again(self) -> None:
        """Bookings came that the live resources were not admitted against (another host's,
        the kubelet's checkpoint read for a reload): each is admitted again in full."""
        for state in self._resources.values():
            if state.publish is not None and not state.retired:
                state.settled = state.plain = False
                self._pending[state.name] = None
        self._drain()

    def _readmit(self, state: ResourceState) -> None:
        if state.publish is not None and not state.retired:
            state.settled = state.plain = False
            self._pending[state.name] = None

    def _wake_waiting(self, releaser: str) -> None:
        for name, other in self._resources.items():
            if name != releaser and other.held and other.publish is not None:
                self._pending[name] = None

    def _expire(
        self, asked_at: float, after: float, held: Callable[[str], Collection[str]]
    ) -> bool:
        """`Ledger.expire`; a resource with a device under an ID a booking that went kept (not
        `plain`) is admitted again in full, so the device takes its own ID at once."""
        ledger = self._ledger
        before = set(ledger.bookings)
        if not ledger.expire(asked_at, after, held):
            return False
        self._bookings_ended(before - ledger.bookings.keys())
        return True

    def _bookings_ended(self, gone: Iterable[Owner]) -> None:
        """The bookings of `gone` ended (their pods seen gone): what they held back is kept
        for its resource's next admission (`HandOver.ended`), and a resource with a device
        under one of their IDs kept (not `plain`) is admitted again in full."""
        self._handover.ended(self._ledger.ended, self._resources.values())
        self._examine_unheld()
        for name in {owner.resource for owner in gone}:
            state = self._resources.get(name)
            if state is not None and not state.plain:
                state.settled = False
                self._pending[name] = None

    def _examine_unheld(self) -> None:
        """The nodes whose last booking ended while a number is not known (`Ledger.unheld`,
        taken): the advertised devices that make them passed that rule for them (a booking
        held them: `ownership_unknown`) and are examined again, each claimed anew (`stale`;
        a resource that is not `plain` in full). In O(what those bookings held): an
        unchanged list examines only what is held or stale (`Admission._admit`), and the
        device would stay advertised with the number a pod's container may reach
        (hostile19 F2)."""
        ledger = self._ledger
        keys, ledger.unheld = ledger.unheld, []
        if not ledger.unknown:
            return
        self._examine(key for key in keys if key not in ledger.own)  # (not booked again)

    def _examine(self, keys: Iterable[ClaimKey]) -> None:
        """The advertised devices that claim `keys` are examined again, each claimed anew
        (`stale`; a resource that is not `plain` in full)."""
        for key in keys:
            exclusive = self._exclusive.get(key)
            for owner in (*(() if exclusive is None else (exclusive,)), *self._shared.get(key, ())):
                state = self._resources.get(owner.resource)
                if state is None or owner.device not in state.owned or state.publish is None:
                    continue  # (a lingering claim: no device advertised with it)
                if state.plain and owner.device in state.admitted_from:
                    state.stale.add(owner.device)
                else:
                    state.settled = False
                self._pending[owner.resource] = None

    def _changed(self, state: ResourceState) -> None:
        if state.log is not None:  # (as the reporter logs a list it gave)
            healthy = healthy_count(state.reported)
            unhealthy = len(state.reported) - healthy
            state.log.info("devices_changed", healthy=healthy, unhealthy=unhealthy)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running this (None: none; work then runs to its end where it is)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
