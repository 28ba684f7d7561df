"""What an Allocate answer hands out: the real path of each host path, checked, and nothing
another device owns below a directory it mounts.

Each host path of the answer (its devices' nodes and mounts, its places) is handed out as
its real path (`handed_reals`: it must name what the path reaches, a device's path what it
was claimed as), never one no container may be handed (`config.handed`), with what it
reaches (hostile8 N2); kept resolved where the watcher follows it, else resolved off the
loop within `HANDED_TIMEOUT`. Below a directory the answer mounts, what another device owns
moved there before the watcher reported it refuses the answer (`PlaceOwned`). Booking the
answer is `ownership_allocate`'s.

The other way round: a node linked into a directory a running pod mounts (its device's,
or a place of its answer: `Ledger.mounted`; one it holds through a shared claim:
`Ledger.shared_dirs`; followed) is found there by the watcher and held (`reason=booked`,
hostile8 N1, hostile18 F2, hostile21 F1). What the watcher cannot tell, a node linked
there before it was claimed (hostile18 F5) or below a tree not followed in full, is looked
for by `_not_linked_in`: a device node by its number among the nodes the trees' reads found
(`NodesFound`: nothing read), a file with a second link (`st_nlink`) by a read in full of
every tree another ID's booking holds mounted (one `lstat` off the loop, then the read);
found there, the answer is refused and the node counted there at once; past `RESCAN_LIMIT`
or `HANDED_TIMEOUT`, refused too (fail closed). What the answer's mounted trees share with
those trees (a node's number, a file) is `ownership_shared`'s.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import time
from collections.abc import Collection, Iterable, Mapping

from .config.handed_tree import Followed
from .devices import physical_id
from .identity import (
    DIRECTORY,
    NODES,
    Identity,
    Uncheckable,
    identity_of,
    names_it,
    nothing_or_raise,
    real_path,
)
from .kept_reads import KnownRead, held_among, read_or_recall
from .ownership_adopt import DeviceClaims
from .ownership_arrivals import INSIDE_LIMIT, RESCAN_LIMIT
from .ownership_batches import Resolution
from .ownership_claims import (
    NOTHING,
    PLACE,
    SYSFS,
    ClaimKey,
    Reached,
    Unresolvable,
    missing,
)
from .ownership_kept import reached_only
from .ownership_reads import Found, arrived, linked_below, more_than_one_link
from .ownership_shared import AnswerOwners, PlaceOwned, SharedTrees
from .rules import below


class HandingOut(SharedTrees):
    """What an answer hands out (the ownership index's layer under booking it)."""

    _protected: Followed | None = None
    """What vouches for the protected places' stats (`places_followed`), where the watcher can."""

    async def hand_out(
        self, resource: str, ids: Iterable[str], paths: Collection[str]
    ) -> dict[str, str]:
        return (await self.hand_out_reaching(resource, ids, paths))[0]

    async def hand_out_reaching(
        self,
        resource: str,
        ids: Iterable[str],
        paths: Collection[str],
        read_only: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, str], dict[str, Identity]]:
        """The real path to hand out for each host path of an answer for `ids`, and what
        each reaches (`Handed.reached`, hostile8 N2), checked (`handed_reals`: it names what
        the path reaches and, for the devices' paths, what was claimed). A path kept
        resolved (`_resolve_keeping`) is taken as kept, the others resolved off the loop
        within `HANDED_TIMEOUT`. Raises Unresolvable (a claimed path reaching something
        else now is claimed anew; a real path no container may be handed: `config.handed`).
        A node kdp-host sees elsewhere (`DeviceNode.seen_path`, hostile9 L1) is checked
        where it sees it and handed out as the host spells it. `read_only`: the paths the
        answer mounts read-only only (where what kdp-host runs may be: `config.handed`)."""
        ids = list(ids)
        seen = self._seen_at(resource, ids)
        if not seen:
            return await self._hand_out_seen(resource, ids, paths, read_only)
        seen_paths = {seen.get(p, p) for p in paths}
        real, reached = await self._hand_out_seen(resource, ids, seen_paths, read_only)
        return (
            {p: p if p in seen else real[p] for p in paths},
            {p: reached[seen.get(p, p)] for p in paths if seen.get(p, p) in reached},
        )

    def _seen_at(self, resource: str, ids: Iterable[str]) -> dict[str, str]:
        """Host path -> where kdp-host sees it, of the nodes of the devices behind `ids` that
        it sees elsewhere (`DeviceNode.seen_path`; none in the common case)."""
        state = self._resources.get(resource)
        if state is None:
            return {}
        found: dict[str, str] = {}
        for kubelet_id in ids:
            device = state.admitted.get(physical_id(kubelet_id))
            if device is None or device.sysfs_path is None:
                continue  # (only a sysfs device's nodes are seen elsewhere)
            for node in device.nodes:
                if node.seen_path is not None:
                    found[node.host_path] = node.seen_path
        return found

    async def _hand_out_seen(
        self, resource: str, ids: list[str], paths: Collection[str], read_only: frozenset[str]
    ) -> tuple[dict[str, str], dict[str, Identity]]:
        """`hand_out_reaching` for the paths where kdp-host sees them."""
        kept = self._kept
        known: dict[str, Resolution] = {path: kept[path] for path in paths if path in kept}
        todo = sorted(path for path in paths if path not in known)
        try:
            if todo:
                known.update(await self._resolve_keeping(todo, self._handed))
            reached = reached_only(paths, known)
            real = handed_reals(paths, self._claimed(resource, ids), reached)
            mounts, since = self._within.mounts, time.monotonic()  # (one stat of each
            # protected place for the whole answer, taken at its first path's check)
            for path in sorted(paths):
                found = reached.get(path)
                key = None if found is None else found[0]
                writable = path not in read_only
                why = self.never_handed.problem(
                    real[path], key, mounts, fresh=True, since=since, writable=writable,
                    followed=self._protected,
                )  # fmt: skip
                if why is not None:
                    raise Unresolvable(f"{path}: its real path {real[path]} {why}")
        except Unresolvable as exc:
            if exc.stale is not None:
                self._path_changed(os.path.dirname(exc.stale), os.path.basename(exc.stale))
            raise
        mounted = [r[1] for r in reached.values() if r is not None and r[0][0] == DIRECTORY]
        if mounted:
            below_them, read = await self._nothing_moved_in(resource, ids, sorted(mounted), reached)
            self._shares_nothing(resource, ids, sorted(mounted), below_them, read)
        await self._not_linked_in(resource, ids, reached)
        return real, {p: r[0] for p, r in reached.items() if r is not None and r[0][0] != NOTHING}

    async def _nothing_moved_in(
        self,
        resource: str,
        ids: Iterable[str],
        mounted: list[str],
        reached: Mapping[str, Reached | None],
    ) -> tuple[Found, KnownRead | None]:
        """Raise PlaceOwned when what another device owns is below a directory an answer
        mounts (renamed or linked there since the watcher last reported: the window before
        the index holds the mounting device), counting it there at once (`_arrived`). Read
        off the loop up to `INSIDE_LIMIT` entries (a bigger tree is left to the watcher);
        a tree the watcher does not follow in full (`mount_tree_unfollowed`: the safety net
        would see a move there within its interval only) is read in full, up to
        `RESCAN_LIMIT` entries (hostile8 N4). Raises Unresolvable when that is past the
        limit, or when the read does not end within `HANDED_TIMEOUT`. A booking of the
        resource that holds a configured mount source the answer hands out (`reached`) holds
        it for every pod of it (`mounts_shared_by`). Returns what it found, and the read kept
        when it is all of it (`_shares_nothing`)."""
        whole, bounded = self._arrivals.left_to_net(mounted)
        followed = tuple(d for d in mounted if d not in whole)
        found, more, kept = await self._read_below(followed, whole, mounted)
        if more and bounded:
            raise Unresolvable(
                f"{', '.join(bounded)}: its tree is not followed in full "
                f"(mount_tree_unfollowed) and holds more than {RESCAN_LIMIT:,} entries: what "
                "is below it is not known"
            )
        # (by claim held, not by entry: a library's 128 entries at every Allocate, issue 19)
        keys = frozenset(key for key, _ in found) if kept is None else kept.keys
        ledger = self._ledger
        held = held_among(keys, self._exclusive) | held_among(keys, ledger.booked)
        if shared := held_among(keys, ledger.shared_booked):  # (not the answer's own)
            held |= shared - {key for key, _, _ in self._shared_claims(resource, ids)}
        mine, sharing = AnswerOwners.of(resource, ids), self.mounts_shared_by(resource, reached)
        owners = {k: o for k in held if (o := self._other_holder(k, mine, sharing)) is not None}
        if not owners:
            return found, kept  # (the answer's own: its mount booked, say)
        foreign = [(key, path, owners[key]) for key, path in found if key in owners]
        self._arrived([(key, path) for key, path, _ in foreign])
        _, path, owner = foreign[0]
        raise PlaceOwned(
            f"{resource}: the answer mounts {path}, which device {owner.device} of "
            f"{owner.resource} owns or a pod holds (found there now: the mounting device is "
            "checked again)",
            owner,
        )

    async def _read_below(
        self, followed: tuple[str, ...], whole: list[str], mounted: list[str]
    ) -> tuple[Found, bool, KnownRead | None]:
        """`_read_inside`, the read of `followed` kept (`KeptReads`): a kept read of
        directories on local file systems (`MountMap.local`: no server to wait for) is
        checked on the loop, with no thread hop; any other off it. With what was found, and
        the read kept when it is all of it (its identities: `KnownRead.keys`)."""
        reads = self._reads_kept
        known = reads.get(followed)
        if known is not None and known.local and not whole:
            if reads.holds(followed, known, time.monotonic()):
                return known.answer[0], False, known
            known = None
        since = reads.generation
        work = functools.partial(_read_inside, followed, whole, known)
        what = f"what is below {', '.join(mounted)} was not read"
        answer, kept = await self._off_loop(work, what)
        if kept is not None and kept is not known:  # (a new read: where it lies is asked once)
            local = self._within.mounts.local
            kept = dataclasses.replace(kept, local=all(local(p) for p, _ in kept.listed))
        reads.keep(followed, kept, since)
        return answer[0], answer[1], kept if not whole else None

    async def _not_linked_in(
        self, resource: str, ids: Iterable[str], reached: Mapping[str, Reached | None]
    ) -> None:
        """PlaceOwned when a node of `reached` (as the answer hands it out) is also below a
        tree another ID's booking holds mounted; Unresolvable when such a tree could not be
        read in full in time (the module's doc)."""
        ledger = self._ledger
        if not ledger.mounted and not ledger.shared_dirs:
            return  # (the common case)
        mine = AnswerOwners.of(resource, ids)
        booked = ledger.held_trees(mine, {r for _, _, r in self._shared_claims(resource, ids)})
        skip = (NOTHING, DIRECTORY)
        nodes = {r[1]: r[0] for r in reached.values() if r is not None and r[0][0] not in skip}
        if not booked or not nodes:
            return
        if self._arrivals.known_in_full(booked):  # (a node's number: found by their reads)
            numbers = {key for key in nodes.values() if key[0] in NODES}
            found = [
                (key, path)
                for key in numbers
                for path in self._arrivals.nodes.of(key)
                if any(below(path, tree) for tree in booked)
            ]
            self._linked(resource, found, nodes)
            nodes = {real: key for real, key in nodes.items() if key not in numbers}
            if not nodes:
                return  # (no file to look for: no read, no hop off the loop)
        local = self._reads_kept.following_mounts and all(map(self._local, nodes))
        linked = more_than_one_link(nodes) if local else None  # (else asked off the loop)
        if linked is not None and not linked:
            return  # (files of one link in local directories: an lstat each here, no hop)
        found, more = await self._off_loop(
            functools.partial(linked_below, booked, nodes, RESCAN_LIMIT, arrived, linked),
            f"{', '.join(booked)}: trees pods hold mounted were not read",
        )
        self._linked(resource, found, nodes)
        if more:
            raise Unresolvable(
                f"{', '.join(booked)}: trees pods hold mounted hold more than "
                f"{RESCAN_LIMIT:,} entries: whether a node handed out is linked below them "
                "is not known"
            )

    def _local(self, real: str) -> bool:
        return self._within.mounts.local(os.path.dirname(real))

    def _linked(self, resource: str, found: Found, nodes: Mapping[str, ClaimKey]) -> None:
        """PlaceOwned when a node handed out (`nodes`) was `found` below a booked tree."""
        if found:
            self._arrived(found)
            node = next(real for real, k in nodes.items() if k == found[0][0])
            raise PlaceOwned(
                f"{resource}: {node} is also at {found[0][1]}, below a directory a pod holds "
                "mounted (found there now: its device is held while that pod holds it)"
            )

    async def _handed(self, paths: list[str]) -> dict[str, Resolution]:
        """What each path an answer hands out reaches (`handed_real`), off the loop (inline
        without an offload). Raises Unresolvable (a magic link; no answer within
        `HANDED_TIMEOUT`)."""

        def work() -> dict[str, Resolution]:
            return {path: handed_real(path) for path in paths}

        return await self._off_loop(work, "its host paths did not resolve")

    @abc.abstractmethod
    def _arrived(self, found: Found) -> None:
        """Claims found at new real paths (`ownership_arrivals`): counted there, and the
        devices that mount a directory above them checked again."""

    @abc.abstractmethod
    def _path_changed(self, directory: str, name: str | None) -> None:
        """A path changed (the watcher saw it, or an Allocate found it reaching something
        else than its claim): resolve the claims through it anew."""

    def _claimed(self, resource: str, ids: Iterable[str]) -> dict[str, ClaimKey]:
        """What each host path of the devices behind `ids` was claimed as (host path, and
        its real path, which the device is advertised with, to claim key)."""
        state = self._resources.get(resource)
        if state is None:
            return {}
        devices = DeviceClaims(state, self._exclusive)
        found: dict[str, ClaimKey] = {}
        for kubelet_id in ids:
            device = physical_id(kubelet_id)
            owned = state.owned.get(device)
            claims = devices.of(device) if owned is None else owned.all()
            for key, path, real in claims:
                found.setdefault(path, key)
                found.setdefault(real, key)  # (the device's host path: `canonical`)
        return found


def _read_inside(
    followed: tuple[str, ...], whole: list[str], known: KnownRead | None
) -> tuple[tuple[Found, bool], KnownRead | None]:
    """What is below `followed` (up to `INSIDE_LIMIT` entries, answered from `known` while
    it holds) and all of `whole` (up to `RESCAN_LIMIT`: True when there is more), with what
    to keep of the read of `followed` (`read_or_recall`)."""
    found: Found = []
    kept = None
    if followed:
        (found, _), kept = read_or_recall(followed, INSIDE_LIMIT, known)
    if not whole:
        return (found, False), kept
    inside, more = arrived(whole, RESCAN_LIMIT)
    return (found + inside, more), kept


def handed_real(path: str) -> Reached | None:
    """What a host path an answer hands out reaches, with the real path handed instead of
    the text (a link re-pointed later does not change what the container gets); where
    nothing is, its place (`missing`: a mount source the runtime creates is made there).
    The real path counts only when it names what the path reaches: where it differs from
    the text, its (st_dev, st_ino) must be those reached through the text, else
    Unresolvable (one stat more, only where the text is no real path), as is an Uncheckable."""
    try:
        st = os.stat(path)
        real = real_path(path)
    except (OSError, ValueError) as exc:
        try:
            nothing_or_raise(path, exc)  # (a NUL: no path; nothing there: its place)
            return None if isinstance(exc, ValueError) else missing(path)
        except Uncheckable as why:
            raise Unresolvable(f"{path}: {why}: what it reaches is not known") from None
    if real != path and not names_it(st, real):
        raise Unresolvable(
            f"{path}: its real path {real} is not what the path reaches (a magic link, or "
            "changed while it was resolved)"
        )
    return identity_of(st), real


def handed_reals(
    paths: Iterable[str],
    claimed: Mapping[str, ClaimKey],
    known: Mapping[str, Reached | None] | None = None,
) -> dict[str, str]:
    """The real path to hand out for each host path (`handed_real`; a path where nothing
    is, as its place). `known`: what paths were resolved to already (the index's kept
    resolutions, `Resolving._resolve_keeping`); the others are resolved here. A path whose
    device claimed it (`claimed`: host path to claim key) must still reach that claim: else
    it changed since it was claimed (a link or an ancestor directory swapped behind an
    unchanged list, or a node that appeared where nothing was) and is refused
    (Unresolvable)."""
    found: dict[str, str] = {}
    for path in paths:
        reached = known[path] if known is not None and path in known else handed_real(path)
        key = claimed.get(path)
        if key is not None and key[0] not in (SYSFS, PLACE) and _changed(key, reached):
            raise Unresolvable(
                f"{path} no longer reaches what was claimed for it (a link, an ancestor "
                "directory or the entry changed since): refused until it is claimed anew",
                stale=path,
            )
        found[path] = path if reached is None else reached[1]
    return found


def _changed(key: ClaimKey, reached: Reached | None) -> bool:
    """Whether a path reaches something else now than what was claimed for it: another
    node or file, or nothing; for a path claimed where nothing was (by its text), anything
    (whose it is was never asked: it is claimed anew first), or another place (a link on
    the way re-pointed: `missing`)."""
    if key[0] == NOTHING:
        return reached is not None and reached[0] != key
    return reached is None or reached[0] != key
