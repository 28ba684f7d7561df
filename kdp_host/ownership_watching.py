"""The ownership index following the host's watcher: a claim is resolved again when its
path changes (a node replaced by one with another device number must not keep the old
claim; a mount made or gone changes what every path reaches).

The directory of every claimed host path is followed (`_users`: the resources that claimed
through it, or hold a device there), for its entries made, removed or renamed (not their
attributes or contents, which change no claim); a change there forgets what was kept
resolved through it (`_forget_kept`) and, once the burst is over, the devices passing a
changed path, held or advertised (`PathIndex`: by lookup, not a walk of the list), are
admitted again, resolved anew (`_recheck`). No report is lost on the way (issue 17,
hostile19 F3): one that comes while an admission runs in turns is applied again to the list
it admitted (`_admit`), and an answer that may predate one (`Resolving._doubtful`) has the
devices claimed through it claimed anew once admitted (`_claim_anew`). A directory a device
mounts is followed in depth (`ownership_arrivals`: what is renamed or linked into it at any
depth checks the mounting device again, `_arrived`).
A change of the mount table forgets everything kept and rechecks every claim at its places
now (`_mounts_changed`); where a mount point was made or gone, the watches at and below it
are renewed and the mounted trees read there (a mount inside a tree: hostile18 F11).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Final

from .devices import Device
from .files import Offload
from .identity import DIRECTORY
from .metrics import Metrics
from .mount_table import MountMap, read_mounts
from .ownership_arrivals import Arrivals, Found
from .ownership_batches import RESOLVE_TIMEOUT
from .ownership_claims import SYSFS, ClaimKey, Claims, Owner, Resolver, ancestors, named_in, places
from .ownership_gate import ADMISSION_CHUNK
from .ownership_paths import PathIndex, host_paths
from .ownership_reach import by_directory
from .ownership_reads import INDEXED, LINKED
from .ownership_shared import elsewhere
from .ownership_spots import SpotsFollowed
from .ownership_table import Holding, ResourceState
from .rules import below, parent
from .turns import TURN_BUDGET, Pace

VANISH_GRACE: Final = 1.0
"""Seconds a path of an advertised device that went holds nothing (`_note_vanishing`)."""

if TYPE_CHECKING:
    from .safety_net import SafetyNet
    from .watch import Watcher


class Watching(SpotsFollowed):
    """The index's layer that follows the watcher (the module's rules)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        resolve: Resolver | None = None,
        offload: Offload | None = None,
        timeout: float = RESOLVE_TIMEOUT,
        chunk: int = ADMISSION_CHUNK,
        mounts: Callable[[], MountMap] = read_mounts,
        budget: float | None = TURN_BUDGET,
    ) -> None:
        """`mounts`: the mount table now (read again when it changes: a bind mount shows a
        path twice)."""
        super().__init__(clock, metrics, resolve, offload, timeout, chunk, budget)
        self._read_mounts = mounts
        self._within.remount(mounts())
        self._arrivals = Arrivals(self._arrived, offload, metrics, nodes_changed=self._nodes_in)
        self._ledger.trees = self._arrivals
        self._ledger.follow_mounted = self._follow_mounted
        self._ledger.let_go_mounted = self._arrivals.unbook
        self._ledger.places_of = self._within.places
        self._ledger.sharing = functools.partial(elsewhere, self._arrivals)
        self._within.inside = self._arrivals.nodes.of
        self._watcher: Watcher | None = None
        self._vanished: dict[tuple[str, str], float] = {}
        """(resource, device) -> when a path of the advertised device changed (`_vanishing`)."""
        self._keeps = False
        """What an Allocate hands out may be kept (`_follows`)."""
        self._followed: dict[str, dict[str, None]] = {}
        """Directory of a claimed host path -> the resources that claimed through it, or
        hold a device there, in the order they came (rechecked in that order)."""
        self._asked: set[tuple[ClaimKey, str]] = set()
        """Files of more than one link the trees pods hold were read again for
        (`_sharers_changed`)."""
        self._changed_paths: dict[str, set[str] | None] = {}
        """Names the watcher reported changed per directory since the last recheck (None:
        anything in it)."""
        self._during: dict[str, list[tuple[str, set[str] | None]]] = {}
        """Resource being admitted -> what the rechecks found changed meanwhile (`_admit`)."""

    def watch(self, watcher: Watcher, net: SafetyNet | None = None) -> None:
        """Follow the directories of claimed host paths through the host's watcher: a claim
        is resolved again when its path changes (a node replaced by one with another device
        number must not keep the old claim). Their subscriptions last as long as the host;
        a mounted tree it cannot follow in full is read by `net` (`Arrivals.rescan_with`)."""
        self._watcher = watcher
        self._arrivals.rescan_with(net)
        for real, owners in self._ledger.every_tree():  # (booked before: at start)
            self._follow_mounted(next(iter(owners)), real)
        # (a poll sees a change late; a mount over a path makes no directory event)
        self._keeps = watcher.kind != "poll" and watcher.follow_mounts(self._mounts_changed)
        self._reads_kept.follow(self._keeps, watcher)
        self._follow_links()  # (a place booked through a link: `ownership_spots`)

    def local(self, directories: Collection[str]) -> bool:
        """Whether a lookup in each of these real directories waits on nothing but this
        machine: the mount table is followed (a mount made over one is known at once) and
        shows only local file systems on the way (`MountMap.local`). A driver then looks
        at a path named there on the loop (`DriverDeps.local`)."""
        local = self._within.mounts.local
        return self._keeps and all(local(directory) for directory in directories)

    def _mounts_changed(self) -> None:
        """A watcher callback: the mount table changed: forget everything kept and recheck
        every claim, as after an overflow, each at its places now. Where a mount was made
        or gone, the watches at or below it are renewed (a watch on a covered directory
        hears nothing) and what the mounted trees show there is read (hostile18 F11)."""
        table = self._read_mounts()
        points = self._within.mounts.changed(table)
        self._within.remount(table)
        self._forget_kept(lambda _path: True)
        self._reads_kept.clear()
        for directory in list(self._followed):
            self._path_changed(directory, None)
        if points and self._watcher is not None:
            self._watcher.rewatch(points)
            self._arrivals.remounted(points)

    def _follow(self, resource: str, claims: Claims) -> None:
        for key, path, real in claims.all():
            if key[0] == SYSFS:
                continue  # (not resolved from its path: its driver follows the device)
            users = self._users(parent(path))
            if users is None:
                return
            users.setdefault(resource)
            if key[0] == DIRECTORY and self._watcher is not None:
                self._arrivals.follow(self._watcher, real, self._resources[resource].log)

    def _note_held(
        self,
        state: ResourceState,
        holding: dict[str, Holding],
        ids: Mapping[str, str],
        advertised: Collection[str],
    ) -> None:
        """`Admission._note_held`; the directories of a held device's paths are followed for
        its resource too, as a claim's are (`_follow`): a held device claims nothing, its
        resource maybe nothing there, and a change there must have it claimed anew too."""
        super()._note_held(state, holding, ids, advertised)
        if self._watcher is None:
            return
        for device_id in holding:  # (as `note_held`: O(held))
            if (device := state.reported.get(device_id)) is not None:
                for path in host_paths(device):
                    users = self._users(parent(path))
                    if users is not None:
                        users.setdefault(state.name)

    def _follow_mounted(self, owner: Owner, real: str) -> None:
        """A booking holds the directory `real` mounted (its device's, an answer's place,
        another plugin's mount from the kubelet's checkpoint): its tree is followed as a
        claimed directory's, for what arrives in it (hostile18 F2, F3)."""
        if self._watcher is not None:
            state = self._resources.get(owner.resource)
            log = None if state is None else state.log
            self._arrivals.follow(self._watcher, real, log, place=True)
        self._sharers_changed((key, path) for path, key in self._arrivals.tree_nodes(real).items())

    async def quiet(self, settled: bool = False) -> None:
        """Return once what arrived in claimed directories was read, and no admission runs,
        waits for its turn or for its paths; `settled`: until those started nothing more (a
        tree an admission follows read, the recheck a read calls for: `kdp-host check`)."""
        await self._arrivals.quiet()
        await super().quiet()
        while settled and (self._changed_paths or self.admitting or await self._arrivals.quiet()):
            await asyncio.sleep(0)  # (a recheck runs in a later turn: `_path_changed`)
            await super().quiet()

    def _arrived(self, found: Found, complete: Collection[str] = ()) -> None:
        """Claims renamed or linked into a claimed directory, or out of one (not found where
        they were found before, below `complete`): the devices that mount it, and theirs,
        are checked again (`ownership_arrivals`)."""
        ledger, within = self._ledger, self._within
        moved = complete and (within.found or within.spread)
        changed = within.gone_from(complete, found) if moved else set()
        for path in changed | within.found_at(found, ledger.booked.__contains__, ledger):
            self._path_changed(os.path.dirname(path), os.path.basename(path))
        self._sharers_changed(found)
        self._sources_changed([*complete, *(path for _, path in found)])

    def _sharers_changed(self, found: Iterable[tuple[ClaimKey, str]]) -> None:
        """What two trees hold now (a node's number, a file: `NodesFound`) while a pod holds
        a tree mounted: the devices whose directories hold some of its paths (not all) are
        checked again (one is held while a pod holds the other: `BookedClaims.sharing`). A
        file of more than one link whose other paths no read found, outside the trees pods
        hold (linked after their reads saw one link: a link changes no time of the other's
        directory), has those trees read again, once (`ownership_shared`)."""
        ledger = self._ledger
        if not (ledger.mounted or ledger.shared_dirs):
            return
        by_number, dirs = self._arrivals.nodes.by_number, self._within.dirs
        wanted: set[str] = set()
        lone: list[str] = []
        for key, path in found:
            if key[0] not in INDEXED:
                continue
            paths = by_number.get(key, ())
            if len(paths) > 1:
                above = [frozenset(d for d in ancestors(p) if d in dirs) for p in paths]
                wanted |= frozenset.union(*above) - frozenset.intersection(*above)
            elif (
                key[0] == LINKED
                and (key, path) not in self._asked
                and not ledger.holds_mounted(path)
            ):
                self._asked.add((key, path))
                lone.append(path)
        if lone:
            trees = [t for t, _ in ledger.every_tree() if not any(below(p, t) for p in lone)]
            self._arrivals.remounted(trees)
        for _, path, real in list(self._made()) if wanted else ():
            if real in wanted:
                self._path_changed(os.path.dirname(path), os.path.basename(path))

    def _nodes_in(self, trees: list[str]) -> None:
        """Whether device nodes may be below `trees` changed: while a booked node's number
        is not known (`ownership_unknown`), the devices that mount them or a directory above
        them are checked again."""
        if not self._ledger.unknown:
            return
        for key, path, real in list(self._made()):
            if key[0] == DIRECTORY and any(t == real or below(t, real) for t in trees):
                self._path_changed(os.path.dirname(path), os.path.basename(path))

    def _follows(self, path: str) -> bool:
        """Its directory (as for a claim: `_users`), every directory above it
        (`_follow_above`) and the mount table (`_keeps`)."""
        watcher = self._watcher
        directory = os.path.dirname(path)
        if watcher is None or not self._keeps or self._users(directory) is None:
            return False
        self._follow_above(watcher, directory)
        return True

    def _reported(self, path: str) -> bool:
        """Its directory is followed (`_users`) and the mount table too (`_keeps`)."""
        return self._keeps and os.path.dirname(path) in self._followed

    def _users(self, directory: str) -> dict[str, None] | None:
        """The resources that claimed through `directory` or hold a device there, the
        watcher following it from now on (None: no watcher)."""
        watcher = self._watcher
        if watcher is None:
            return None
        users = self._followed.get(directory)
        if users is None:
            users = self._followed[directory] = {}
            # What a path reaches changes with its entry (made, removed, renamed over), not
            # with its attributes or contents: a `touch` (made, then ATTRIB, CLOSE_WRITE in
            # a second read) rechecked its claims twice, a resolution each (issue 19).
            changed = functools.partial(self._path_changed, directory)
            watcher.subscribe(directory, changed, entries=True)
        return users

    def _path_changed(self, directory: str, name: str | None) -> None:
        """A watcher callback: forget the places kept there, note it, and recheck once the
        burst is over (soon)."""
        paths = None if name is None or not self._kept else {os.path.join(directory, name)}
        self._forget_kept(functools.partial(named_in, directory=directory, paths=paths))
        self._note_change(directory if name is None else os.path.join(directory, name))
        first = not self._changed_paths
        if name is None:
            self._changed_paths[directory] = None
        else:
            names = self._changed_paths.setdefault(directory, set())
            if names is not None:
                names.add(name)
        if first:
            asyncio.get_running_loop().call_soon(self._recheck)

    def _note_vanishing(self, state: ResourceState, devices: Collection[str]) -> None:
        """Advertised devices with a changed path: a path of theirs where nothing is now
        does not hold them for `VANISH_GRACE` (a driver that watches it lists them anew at
        once; the hold of hostile9 H5 withdrew a device for its optional member, or an
        unplugged one in its grace period, ~1 run in 10), then they are admitted again."""
        now, new = time.monotonic(), []
        for device_id in devices:
            if (state.name, device_id) not in self._vanished:
                self._vanished[state.name, device_id] = now
                new.append(device_id)
        if new:
            asyncio.get_running_loop().call_later(VANISH_GRACE, self._revisit, state.name, new)

    def _revisit(self, resource: str, devices: list[str]) -> None:
        """The grace of `devices` is over: they go from `_vanished` (which holds only devices
        in their grace) and are admitted again."""
        for device_id in devices:
            self._vanished.pop((resource, device_id), None)
        state = self._resources.get(resource)
        if state is None or state.publish is None or state.retired:
            return
        state.stale.update(d for d in devices if d in state.admitted_from)
        self._pending[resource] = None
        self._drain()

    def _vanishing(self, state: ResourceState, device_id: str) -> bool:
        since = self._vanished.get((state.name, device_id))
        return since is not None and time.monotonic() - since < VANISH_GRACE

    def _recheck(self) -> None:
        """Forget the claims of devices with a changed path, and admit their resources
        again (which resolves them anew): found by path (`PathIndex`), not by a walk."""
        changed, self._changed_paths = self._changed_paths, {}
        spots, by_dir = self._ledger.spots, None
        for directory, names in changed.items():
            paths = None if names is None else {os.path.join(directory, n) for n in names}
            if spots and self.local([directory]):  # (a booked spot's lookup, on the loop)
                if paths is None and by_dir is None:
                    by_dir = by_directory([*spots, *self._ledger.reach.ways])
                there = paths if paths is not None else by_dir.get(directory, ()) if by_dir else ()
                self._ledger.reach.changed_at(there, spots, self._spot_reaches)
            fresh, doubtful = self._fresh, self._doubtful
            if paths is not None:
                for path in paths:
                    fresh.pop(path, None)  # (resolved before it changed)
                    doubtful.discard(path)
            else:
                for path in [p for p in fresh if named_in(p, directory, paths)]:
                    del fresh[path]
                    doubtful.discard(path)
            for name in self._followed.get(directory, ()):
                state = self._resources[name]
                stale = self._stale_through(state, directory, paths)
                self._note_vanishing(state, stale - state.held.keys())
        self._drain()

    def _claim_anew(self, state: ResourceState, paths: Collection[str]) -> None:
        """Have `state`'s devices passing `paths` claimed anew: its admission claimed
        through answers that may predate a change reported (`_doubtful`). Only `state`'s:
        another resource did not read them (one that did has them in its own `_doubted`),
        and queueing it had two admissions that change nothing queue each other for ever
        (hostile22 F9)."""
        for path in paths:
            self._fresh.pop(path, None)
            self._doubtful.discard(path)
            self._stale_through(state, os.path.dirname(path), {path})

    def _stale_through(
        self, state: ResourceState, directory: str, paths: set[str] | None
    ) -> set[str]:
        """Forget the claims of the devices of `state.admitted_from` passing one of `paths`
        (None: any path in `directory`), held or advertised: each claims anew (`stale`);
        those of the list an admission of it runs on, once it is over (`_admit`)."""
        if (during := self._during.get(state.name)) is not None:
            during.append((directory, paths))
        if state.paths is None:
            state.paths = PathIndex.of_devices(state.admitted_from)
        stale = set(state.paths.through(directory, paths))
        for device_id in stale:  # (the index may be ahead of an admission running)
            if (device := state.admitted_from.get(device_id)) is not None:
                state.claims.pop(places(device), None)
        state.stale |= stale
        if stale and state.publish is not None and not state.retired:
            self._pending[state.name] = None
        return stale

    def _admit(
        self, state: ResourceState, pace: Pace
    ) -> Generator[None, None, Mapping[str, Device]]:
        """`Admission._admit`; a change the watcher reported while it ran in turns (after it
        may have claimed a device through that path, or for a device of the list it admits,
        not yet indexed) forgets those claims again once it is over, against the list it
        admitted (its own end would drop the mark: issue 17, hostile19 F3); so does a
        doubtful answer it claimed through (`Resolving._doubted`)."""
        during = self._during[state.name] = []
        try:
            admitted = yield from super()._admit(state, pace)
        finally:
            self._during.pop(state.name, None)
        for directory, paths in during:
            self._stale_through(state, directory, paths)
        doubted, self._doubted = self._doubted, set()
        self._claim_anew(state, doubted)
        return admitted
