"""What an Allocate answer's mounted trees share with the trees pods hold mounted (issue 17,
hostile19 F1, hostile18 F13).

Two directories reach one device when each holds a node of its number (two `mknod`, or a
hard link of one node), and one file when each holds a link of it. What is below a mounted
directory used to be compared with claims only: a node of a number no device claims, in two
group directories, was handed to two pods. Now an answer that mounts directories is refused
(`PlaceOwned`, naming both paths) when what is below them is also below a tree another ID's
booking holds mounted, alone or shared (`Ledger.held_trees`), outside the answer's own
directories and those its devices share (a mount every pod of a resource gets is shared by
design: `mounts_shared_by`):

- a device node by its number, among the nodes the watcher's reads of the trees found
  (`NodesFound`), a regular file by its inode among the files of more than one link they
  found (`LINKED`; a file of the answer's read kept, `KnownRead`, its st_nlink as it was
  then, by its inode too): looked up, nothing read, no hop off the loop. A file found with
  more than one link whose other links no read found has the trees pods hold read again by
  the watcher, once (`Watching._sharers_changed`: linked after those reads saw one link, a
  link changing no time of the other's directory), which puts it there. A tree the watcher
  does not follow in full is known as far as the safety net's reads go (every 30 s, up
  to `ownership_arrivals.RESCAN_LIMIT` entries): not read at the Allocate (a library mount
  beside it would be read, or refused, at every Allocate).

The index level: a device whose directory's tree shares so with a tree another ID's
booking holds is held while that booking lives (`elsewhere`, `Ledger.sharing`); refused
here, both paths are read again (`_found_shared`), so that the index knows it.

No booked tree of another ID, or no node and no file below the answer: nothing is looked up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TypeVar

from .devices import physical_id
from .identity import DIRECTORY, FILE
from .kept_reads import KnownRead, held_among
from .ownership_arrivals import INSIDE_LIMIT, Arrivals
from .ownership_claims import Claim, ClaimKey, Owner, Reached, Unresolvable
from .ownership_gate import AdmissionGate
from .ownership_reads import LINKED, Found, indexed, indexed_of
from .rules import below

if TYPE_CHECKING:
    from .watch import Watcher

T = TypeVar("T")
HANDED_TIMEOUT: Final = 10.0
"""Seconds an Allocate waits for its host paths to resolve off the loop before it is refused
(a path on a hung file system does not hold the admission)."""


class PlaceOwned(ValueError):
    """An Allocate answer would hand out, besides its devices, what another device of the
    host owns (the answer is refused); `owner`: that device (or booking), where one is."""

    def __init__(self, message: str, owner: Owner | None = None) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True, slots=True)
class AnswerOwners:
    """The owners an Allocate answer is, as the bookings of its devices: any ID of its
    resource naming one of the physical devices it hands out. Replicas of one device share
    all of it (its node, its directory, what it mounts), so a sibling replica's booking is
    no other owner (hostile24 F5: the second pod of `replicas: 2` on a device that is or
    mounts a directory was refused, the first one's booking of the directory taken for
    another device's)."""

    resource: str
    devices: frozenset[str]
    """The physical IDs (`physical_id`) of the answer's IDs."""

    @classmethod
    def of(cls, resource: str, ids: Iterable[str]) -> AnswerOwners:
        return cls(resource, frozenset(map(physical_id, ids)))

    def __contains__(self, owner: object) -> bool:
        return (
            isinstance(owner, Owner)
            and owner.resource == self.resource
            and physical_id(owner.device) in self.devices
        )


@dataclass(frozen=True)
class SourcesShared:
    """The configured mount sources an answer hands out, as the bookings of its resource
    hold them (`SharedTrees.mounts_shared_by`): an owner is in it when it is such a booking."""

    resource: str = ""
    placed: frozenset[Owner] = frozenset()
    """The bookings handed a source as a place (`Ledger.places` at its real path; of any
    resource: those of another are no sharers)."""
    keys: frozenset[ClaimKey] = frozenset()
    """What is at the sources now: holding one of them there is sharing it."""

    def __contains__(self, owner: object) -> bool:
        return owner in self.placed and isinstance(owner, Owner) and owner.resource == self.resource


class SharedTrees(AdmissionGate):
    """An answer's mounted trees against the trees pods hold mounted (the module's doc)."""

    _arrivals: Arrivals
    """What arrives in claimed directories (`NodesFound`, each tree's `tree_nodes`)."""
    _watcher: Watcher | None
    _sources_followers: Mapping[str, Callable[[], None]] = MappingProxyType({})
    """Resource -> what is told of a change below its configured sources (`follow_sources`)."""

    def share_mounts(self, resource: str, host_paths: Iterable[str]) -> None:
        """`resource`'s configured `allocate.mounts` sources (its runtime starts): every pod
        of the resource gets them, so they are shared by its devices (`mounts_shared_by`);
        their trees are followed (as named) from now on, as a claimed directory's are."""
        sources = frozenset(map(os.path.normpath, host_paths))
        self._mounts_configured = MappingProxyType({**self._mounts_configured, resource: sources})
        if self._watcher is not None:  # (a node renamed in is found there: `ownership_lingering`)
            log = self._state(resource).log
            for source in sorted(sources):
                self._arrivals.follow(self._watcher, source, log, place=True, booked=False)

    def mounts_shared_by(
        self, resource: str, reached: Mapping[str, Reached | None]
    ) -> SourcesShared:
        """The configured `allocate.mounts` sources of `resource` that an answer of it hands
        out (`reached`: host path -> what it reaches now), as its bookings share them: a
        source every pod of the resource gets is no clash among them, whatever inode it is
        now (issue 17, resready F2b: a source removed and made again while a pod held it
        refused every later Allocate of the resource). By real path: the place the config
        names. Still a clash: another resource's booking there, any device that claims it
        or what is below it, and what a tree another ID holds shares with it."""
        sources = self._mounts_configured.get(resource)
        now = {} if not sources else {r[1]: r[0] for p in sources if (r := reached.get(p))}
        if not now:
            return SourcesShared()  # (the common case: no configured source in the answer)
        if not now.keys() <= self._sources_real:  # (where a node below them may be reached)
            self._sources_real = self._sources_real.union(now)
        placed = frozenset().union(*(self._ledger.places.get(real, ()) for real in now))
        return SourcesShared(resource, placed, frozenset(now.values()))

    def _shares_nothing(
        self,
        resource: str,
        ids: Iterable[str],
        mounted: list[str],
        found: Found,
        kept: KnownRead | None = None,
    ) -> None:
        """PlaceOwned when a node or a file below `mounted` (the directories the answer
        mounts: `found` below them now, `kept` the read of it when kept, and the nodes their
        trees' reads found) is also below a tree another ID's booking holds mounted (looked
        up: the module's doc)."""
        ledger = self._ledger
        if not ledger.mounted and not ledger.shared_dirs:
            return  # (the common case)

        def outside(path: str) -> bool:
            return not any(path == d or below(path, d) for d in mounted)

        mine = AnswerOwners.of(resource, ids)
        sharing = {real for _, _, real in self._shared_claims(resource, ids)}
        booked = [t for t in ledger.held_trees(mine, sharing) if outside(t)]
        if not booked:
            return  # (only the answer's own trees, or its IDs': a mount every pod gets)
        arrivals = self._arrivals
        keys = indexed_of(found) if kept is None else kept.indexed
        if len(found) >= INSIDE_LIMIT:  # (the read may have stopped: what the trees' found)
            keys |= indexed_of(_in_trees(mounted, arrivals))
        if not keys:
            return  # (no node, no file below the answer)
        nodes = arrivals.nodes  # (what the trees' reads found: nothing read)
        shared = [
            (key, there)
            for key in held_among(keys, nodes.by_number)
            for there in nodes.of(key)
            if outside(there) and any(below(there, t) for t in booked)
        ]
        if shared:
            where = _answer_path(found, mounted, arrivals, shared[0][0])
            self._found_shared([where, shared[0][1]])  # (a file: with both links, at once)
            _refuse(resource, shared, where)

    def _other_holder(
        self,
        key: ClaimKey,
        mine: AnswerOwners,
        sharing: SourcesShared,
    ) -> Owner | None:
        """The device of another ID that owns `key` (advertised), else a booking of another
        ID that holds it (a pod has it: its device's, or a place of its answer), but one
        that holds it as a configured mount source it shares with the answer (`sharing`:
        `mounts_shared_by`). A replica of one of the answer's devices is none other
        (`AnswerOwners`)."""
        owner = self._exclusive.get(key)
        if owner is not None and owner not in mine:
            return owner
        ledger = self._ledger
        holders = (*ledger.booked.get(key, ()), *ledger.shared_booked.get(key, ()))
        shared = sharing if key in sharing.keys else ()
        return next((o for o in holders if o not in mine and o not in shared), None)

    def _found_shared(self, paths: list[str]) -> None:
        """Both paths of what an answer's tree shares with a booked tree: read again there
        (`Arrivals`: a file whose second link the reads did not see, its read kept), so that
        the index holds the device (`Ledger.sharing`)."""
        self._arrivals.remounted(paths)

    def follow_sources(self, resource: str, told: Callable[[], None]) -> Callable[[], None]:
        """`told` is called whenever what is below a configured source of `resource` may
        have changed (the index's arrivals there: `answer_checks`, hostile24 F1); returns
        what stops it."""
        self._sources_followers = {**self._sources_followers, resource: told}

        def stop() -> None:
            if self._sources_followers.get(resource) is told:
                self._sources_followers = {
                    r: f for r, f in self._sources_followers.items() if r != resource
                }

        return stop

    def _sources_changed(self, paths: Iterable[str]) -> None:
        """What arrived at (or went from) `paths`: the followers of the sources above."""
        paths = list(paths)
        self._tell_followers(
            lambda sources: any(p == s or below(p, s) for p in paths for s in sources)
        )

    def _claims_changed(self, claims: Iterable[Claim]) -> None:
        """Exclusive `claims` were made or let go of: the followers of the sources they may
        be reached from look again (`_from_sources`). A new device of another resource
        whose node is a hard link, or a link's target, below a source has every answer
        mounting it refused, while nothing below the source changed: its resource was
        Healthy, /readyz 200, until a pod was refused (issue 17, hostile26 N5); a claim
        below a source let go of may end such a clash (hostile26 N3)."""
        claims = list(claims)
        self._tell_followers(lambda sources: any(self._from_sources(c, sources) for c in claims))

    def _tell_followers(self, reached: Callable[[frozenset[str]], bool]) -> None:
        """Tell each follower (`follow_sources`) whose sources (as named, and as last
        handed out) are `reached` by what changed."""
        followers = self._sources_followers
        if not followers:
            return
        for resource, told in list(followers.items()):
            sources = self._mounts_configured.get(resource, frozenset()) | self._sources_real
            if sources and reached(sources):
                told()

    def _from_sources(self, claim: Claim, sources: frozenset[str]) -> bool:
        """Whether a source may reach `claim`: its real path is at or below one (a link's
        target), or above one (a directory), the reads of the followed trees found its node
        below one (by number: a second node, a hard link), or it is a regular file (a hard
        link of one below a source is not known unless its links were more than one when
        read: the look reads the sources)."""
        key, _, real = claim
        if key[0] == FILE:
            return True
        above = key[0] == DIRECTORY
        if any(real == s or below(real, s) or (above and below(s, real)) for s in sources):
            return True
        kept = indexed(key)
        found = () if kept is None else self._arrivals.nodes.of(kept)
        return any(below(there, s) for there in found for s in sources)

    async def _off_loop(self, work: Callable[[], T], what: str) -> T:
        """`work` off the loop (inline without an offload) within `HANDED_TIMEOUT`; raises
        Unresolvable, saying `what` happened, when it does not end in time."""
        offload = self._paths.offload
        if offload is None:
            return work()
        try:
            return await asyncio.wait_for(offload.run(work), HANDED_TIMEOUT)
        except TimeoutError:
            raise Unresolvable(f"{what} within {HANDED_TIMEOUT:g} s") from None

    def _shared_claims(self, resource: str, ids: Iterable[str]) -> Iterator[Claim]:
        """What the devices behind `ids` claim shared: what every pod of them gets (a booking
        of another ID that holds it shared is no clash with the answer: hostile21)."""
        state = self._resources.get(resource)
        if state is None:
            return
        owned = state.owned
        for kubelet_id in ids:
            if (claims := owned.get(physical_id(kubelet_id))) is not None:
                yield from claims.shared


def elsewhere(arrivals: Arrivals, directory: str) -> list[str]:
    """The paths outside `directory` (a followed tree's real path) of what the reads of its
    tree found: a node's number, a file of more than one link (`NodesFound`; a look-up per
    node of the tree, the paths walked only where there are more than one)."""
    by_number, inside = arrivals.nodes.by_number, directory.rstrip("/") + "/"
    return [
        there
        for key in arrivals.tree_nodes(directory).values()
        if len(paths := by_number.get(key, ())) > 1
        for there in sorted(paths)
        if not there.startswith(inside)
    ]


def _in_trees(mounted: list[str], arrivals: Arrivals) -> Iterator[tuple[ClaimKey, str]]:
    """The nodes (and `LINKED` files) the reads of the trees of `mounted` found."""
    for directory in mounted:
        for path, key in arrivals.tree_nodes(directory).items():
            yield key, path


def _answer_path(found: Found, mounted: list[str], arrivals: Arrivals, key: ClaimKey) -> str:
    """Where below the answer's directories what `NodesFound` keeps as `key` is (its read,
    or its trees' reads)."""
    for kind, path in (*found, *_in_trees(mounted, arrivals)):
        if indexed(kind) == key:
            return path
    return ", ".join(mounted)


def _refuse(resource: str, shared: Found, where: str) -> None:
    """PlaceOwned: what is `where` below the answer's directories is `shared`."""
    key, there = shared[0]
    what = "a link of the file" if key[0] == LINKED else "a node of the device number"
    raise PlaceOwned(
        f"{resource}: the answer mounts {where}, and {there}, below a directory a pod "
        f"holds mounted, is {what} (what one pod reaches the other would)"
    )
