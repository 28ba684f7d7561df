"""Admitting a list once the paths it needs are resolved off the event loop.

`Resolving` (a base of the index) names what the next admission of a resource needs
resolved, has it resolved in one batch (`ownership_batches.PathResolver`: off the loop,
bounded by a timeout; inline without an offload), then admits: a device a path of which
did not answer in time (`HUNG`) is not advertised this time, and the next list asks again.
What an Allocate hands out is kept resolved where the watcher follows it (`ownership_kept`).
"""

from __future__ import annotations

import abc
import asyncio
import os
from collections.abc import Callable, Collection, Generator, Mapping
from typing import Final

from .device_changes import changed_among
from .devices import Device
from .files import Offload
from .identity import UNRESOLVABLE
from .metrics import Metrics
from .ownership_admission import cached_claims
from .ownership_batches import HUNG, PathResolver, Resolution, batch_reach
from .ownership_claims import (
    ClaimKey,
    Claims,
    Reached,
    Resolver,
    device_claims,
    places,
    reaches_else,
    still_reaches,
)
from .ownership_kept import KEPT_LIMIT, KeptAnswers, reached_only
from .ownership_paths import claimed_paths
from .ownership_table import ResourceState
from .turns import Pace

UNRESOLVED_REASON: Final = "read_timeout"
"""The `reason` of `kdp_driver_skipped_total` for a device left out because a path of it did
not resolve in time (a hung file system)."""
NOT_NAMED: Final = "its real path is not what it reaches (a magic link), or holds ','"
"""Why a device path is UNRESOLVABLE (`ownership_canonical.checked_reach`), as logged."""


class Resolving(KeptAnswers):
    """Admitting a list once the paths it needs are resolved (inline without an offload,
    else off the loop); the gate (`ownership_gate`) admits, publishes and drains."""

    def __init__(
        self,
        clock: Callable[[], float],
        metrics: Metrics | None,
        resolve: Resolver | None,
        offload: Offload | None,
        timeout: float,
    ) -> None:
        super().__init__(clock)
        self._metrics = metrics
        self._paths = PathResolver(
            (lambda: resolve) if resolve is not None else batch_reach, offload, timeout
        )
        self._fresh: dict[str, Resolution] = {}
        """Paths resolved for the admissions running now (emptied once they ran)."""
        self._late: dict[str, set[str]] = {}
        """Paths of lingering claims an admission met unresolved -> the resources to admit
        again once they are (with an offload: the claim held meanwhile)."""
        self._admitting = ""
        """The resource being admitted."""
        self._reports: dict[str, int] = {}
        """Path (a directory: anything in it) -> `_path_news` at its last reported change:
        whether an answer may predate it (`_raced`; issue 17, hostile19 F3)."""
        self._reports_floor = 0
        """`_path_news` when `_reports` was last cut (a change before then may be lost)."""
        self._lists: dict[str, tuple[int, int]] = {}
        """Resource -> `_path_news` when its list before the last one, and its last one,
        came: its last scan began once the list before was given, and may have looked at a
        path before a change reported since."""
        self._doubtful: set[str] = set()
        """Paths of `_fresh` whose answer may predate a change reported since (a batch that
        raced it, a scan that may have looked before it): taken, as an admission waits for
        no path that keeps changing, and a hot-plug is advertised with what its scan saw."""
        self._doubted: set[str] = set()
        """The doubtful paths the running admission claimed through: the devices passing
        them are claimed anew once it is over (`Watching._admit`)."""
        self._resolving: dict[int, ResourceState] = {}
        """The states whose `resolving` is set (by id): whether any is, without a walk of
        every resource after each admission (`_drain`)."""

    @abc.abstractmethod
    def _admit_or_defer(self, state: ResourceState) -> bool:
        """Admit `state` (now, in turns of the loop, or once its paths are resolved);
        whether its table changed now."""

    @abc.abstractmethod
    def _reported(self, path: str) -> bool:
        """Whether the watcher reports at once, from now on, a change in the directory of
        the normalised `path` (a claim's directory, followed since it was claimed)."""

    @abc.abstractmethod
    def _drain(self) -> None:
        """Admit the resources waiting to be admitted again."""

    @abc.abstractmethod
    def _changed(self, state: ResourceState) -> None:
        """`state`'s table changed outside a publish of its driver (logged as the reporter
        logs a list it gave)."""

    def _defer(self, state: ResourceState, paths: set[str]) -> None:
        """Resolve `paths` off the loop, then admit `state` again."""
        state.wanted |= paths
        if state.resolving is None:
            state.resolving = asyncio.get_running_loop().create_task(
                self._resolve_for(state), name=f"claims {state.name}"
            )
            self._resolving[id(state)] = state

    async def _resolve_for(self, state: ResourceState) -> None:
        """Resolve what `state` waits for off the loop, then admit it."""
        try:
            while state.wanted:
                paths, state.wanted = state.wanted, set()
                news = self._path_news
                resolved = await self._paths.resolve(paths)
                raced: list[str] = []
                if news != self._path_news:
                    raced = [path for path in resolved if self._raced(path, news)]
                elif state.wanted:
                    state.wanted -= self._unchanged(state.wanted, resolved)
                if state.retired or state.publish is None:
                    state.known = {}  # (no admission follows to drop it)
                    continue
                self._take(state, resolved, raced)
                if self._admit_or_defer(state):
                    self._changed(state)
                self._drain()
        finally:
            state.resolving = None
            self._resolving.pop(id(state), None)
        self._drain()  # (what was resolved is fresh no longer once nothing resolves)

    def _unchanged(self, again: set[str], resolved: Mapping[str, Resolution]) -> set[str]:
        """Of the paths a newer list asked for while a batch resolved them (`again`), those
        the batch answers as well as a new one would: no change was reported since it
        began, and the watcher reports one in the path's directory (`_reported`), the path
        being its own real path (or nothing). Not resolving them twice halves the path
        resolutions of a hot-plug, whose change starts one (`_recheck`) before the
        scan's list asks for the same path (issue 19: an unplug waited for two in turn)."""
        unchanged = set()
        for path in again:
            found = resolved.get(path, HUNG)
            if found is not None and (isinstance(found, str) or found[1] != path):
                continue  # (a link: where its target lies is not followed; or no answer)
            if os.path.normpath(path) == path and self._reported(path):
                unchanged.add(path)
        return unchanged

    def _take(
        self,
        state: ResourceState,
        resolved: Mapping[str, Resolution],
        raced: Collection[str] = (),
    ) -> None:
        """Resolutions for the admissions to come (`raced`: those that may predate a change
        reported meanwhile, `_doubtful`); a device a path of which did not answer in time is
        left out (logged and counted once), until a later list tries again."""
        self._fresh.update(resolved)
        if self._doubtful:
            self._doubtful.difference_update(resolved)
        self._doubtful.update(raced)
        unresolved: dict[str, str] = {}
        failed = {p for p, found in resolved.items() if found in (HUNG, UNRESOLVABLE)}
        for device_id, paths in state.needs.items() if failed else ():  # (usually none)
            bad = next((p for p in paths if p in failed), None)
            if bad is not None:
                unresolved[device_id] = bad
        for device_id in unresolved.keys() - state.unresolved.keys():
            path = unresolved[device_id]
            hung = resolved[path] == HUNG
            if self._metrics is not None:
                reason = UNRESOLVED_REASON if hung else UNRESOLVABLE
                self._metrics.driver_skipped.labels(state.name, reason).inc()
            if state.log is not None:
                why = {"timeout": self._paths.timeout} if hung else {"reason": NOT_NAMED}
                state.log.warning(
                    "device_path_unresolved" if hung else "device_path_unresolvable",
                    device=device_id,
                    path=path,
                    **why,
                    action="not advertised; tried again with the next list",
                )
        state.unresolved = unresolved

    def _wanted(self, state: ResourceState, pace: Pace) -> Generator[None, None, set[str]]:
        """The paths the next admission of `state` must have resolved: those of devices whose
        claims are not known (those the list says changed, else a walk of a changed list),
        its lingering claims (gone?), and the lingering claims its held devices wait for."""
        devices, needs = state.reported, dict[str, tuple[str, ...]]()
        cache, before, stale, known = state.claims, state.admitted_from, state.stale, state.known
        for device_id in changed_among(before, devices, stale, equal_is_same=state.settled):
            if pace.due():
                yield
            device = devices.get(device_id)
            if device is None or (before.get(device_id) is device and device_id not in stale):
                continue
            cached = None if device_id in stale else cached_claims(cache, device)
            if cached is not None and known and reaches_else(cached, known):
                del cache[places(device)]  # (what its paths reach changed)
                cached = None
            if cached is None:
                needs[device_id] = claimed_paths(device)
        for device_id in list(state.held):  # (one waiting for a path: resolved off the loop)
            if pace.due():
                yield
            device = devices.get(device_id)
            if device and device_id not in needs and cached_claims(cache, device) is None:
                needs[device_id] = claimed_paths(device)
        state.needs = needs
        state.unresolved = {d: p for d, p in state.unresolved.items() if d in needs}
        wanted = {path for paths in needs.values() for path in paths}
        booked = self._ledger.booked  # (held while booked, gone or not)
        for k, (_, c) in list(state.lingering.items()):  # (10,000 unplugged: as many)
            if pace.due():
                yield
            if k not in booked:
                wanted.add(c[1])
        for why in state.held.values():
            owner = None if why.key is None else self._exclusive.get(why.key)
            if owner is not None and why.key is not None:
                lingering = self._resources[owner.resource].lingering.get(why.key)
                if lingering is not None:
                    wanted.add(lingering[1][1])
        fresh = self._fresh
        if known:  # what the scan learnt is as fresh as the list it made
            found = known.keys() & wanted  # (no walk of either in Python)
            todo = {path for path in wanted if path not in fresh and path not in found}
            if todo and self._paths.offload is not None:
                return todo  # (taken once those are resolved off the loop: `_take_known`)
            self._take_known(state, found)
        return {path for path in wanted if path not in fresh}  # (`- keys()` walks all)

    def _take_known(self, state: ResourceState, found: set[str]) -> None:
        """What `state`'s scan learnt `found` reach, for its admission about to run: not
        before (one that waits for other paths off the loop leaves the answers every
        admission reads as they are: a doubtful one it put there each time it was admitted
        again was read by another resource, whose doubt queued both again, for ever:
        hostile22 F9), nor over an answer that is not doubtful (resolved since no change
        was reported: as new as the scan's, or newer)."""
        fresh, doubtful = self._fresh, self._doubtful
        if fresh:
            found = {path for path in found if path not in fresh or path in doubtful}
        fresh.update(zip(found, map(state.known.__getitem__, found), strict=True))
        if doubtful:
            doubtful.difference_update(found)
        if self._reports:  # (but may predate a change reported since the list before)
            since = self._lists.get(state.name, (0, 0))[0]
            doubtful.update(p for p in found if self._raced(p, since))

    async def _reach_all(self, paths: Collection[str]) -> dict[str, Reached | None]:
        """What each path reaches, resolved off the loop (inline without an offload); None
        where nothing is there or the path did not answer in time."""
        return reached_only(paths, await self._resolve_all(paths))

    async def _resolve_all(self, paths: Collection[str]) -> dict[str, Resolution]:
        if self._paths.offload is not None:
            return await self._paths.resolve(paths)
        return self._paths.inline(paths)

    def _note_change(self, path: str) -> None:
        """The watcher reported `path` changed (a directory: anything in it), as change
        number `_path_news`."""
        if len(self._reports) >= KEPT_LIMIT:
            self._reports.clear()
            self._reports_floor = self._path_news
        self._reports[path] = self._path_news

    def _listed(self, resource: str) -> None:
        """A list of `resource` came (`_lists`)."""
        self._lists[resource] = (self._lists.get(resource, (0, 0))[1], self._path_news)

    def _raced(self, path: str, news: int) -> bool:
        """Whether a change of `path` (or of anything in its directory) was reported after
        change number `news`: what was looked up before may predate it."""
        reports = self._reports
        return (
            news < self._reports_floor
            or reports.get(path, 0) > news
            or reports.get(os.path.dirname(path), 0) > news
        )

    def _lookup(self, path: str) -> Reached | None:
        """A path's claim, as resolved for this admission (`_wanted` named every one; a
        path it did not name, which should not happen, is resolved here)."""
        if path not in self._fresh:
            self._fresh.update(self._paths.inline([path]))
            self._doubtful.discard(path)
        elif path in self._doubtful:
            self._doubted.add(path)
        resolved = self._fresh[path]
        return None if isinstance(resolved, str) else resolved

    def _resolved(self, device: Device, known: Claims | None) -> Claims:
        """The device's claims (`known`: kept, else as resolved for this admission); a
        booked spot one passes reaches its identity now (`SpotsReached.note`, hostile19
        F9: a device examined, whether its claims were kept or not)."""
        claims = device_claims(device, self._lookup) if known is None else known
        if spots := self._ledger.spots:
            self._ledger.reach.note(claims, spots)
        return claims

    def _still_there(self, key: ClaimKey, path: str) -> bool:
        """Whether a lingering claim's path still reaches it, as resolved for this
        admission; a path not resolved yet holds (with an offload: it is resolved, and the
        resource admitted again), as does one that did not answer in time."""
        if path not in self._fresh:
            if self._paths.offload is not None:
                self._late.setdefault(path, set()).add(self._admitting)
                return True
            self._fresh.update(self._paths.inline([path]))
            self._doubtful.discard(path)
        reached = self._fresh[path]
        return isinstance(reached, str) or still_reaches(key, reached)
