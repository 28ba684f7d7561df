"""What an Allocate answer's mounted trees share with the trees pods hold mounted (issue 17,
hostile19 F1, hostile18 F13).

Two directories reach one device when each holds a node of its number (two `mknod`, or a
hard link of one node), and one file when each holds a link of it. What is below a mounted
directory used to be compared with claims only: a node of a number no device claims, in two
group directories, was handed to two pods. Now an answer that mounts directories is refused
(`PlaceOwned`, naming both paths) when what is below them is also below a tree another ID's
booking holds mounted (`Ledger.mounted`), outside the answer's own directories (a mount
every pod of a resource gets is shared by design):

- a device node by its number, among the nodes the reads of the booked trees found
  (`NodesFound`): nothing read, no hop off the loop, where those trees are known in full;
- a regular file by its inode, among the files of more than one link those reads found
  (`LINKED`), the same way: a file the answer's read kept (`KnownRead`: its st_nlink as it
  was then) is looked for there too, by its inode;
- a file the answer's read found with more than one link that is not found so (linked
  since the booked tree was read: a link made elsewhere changes no time of the directory
  that holds the other), and anything the answer holds of those kinds while a booked tree
  is not known in full, by a read of the booked trees in full off the loop (up to
  `RESCAN_LIMIT` entries within `HANDED_TIMEOUT`; past either, refused: fail closed).

No booked tree of another ID, or no node and no file below the answer: nothing is looked up.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

from .devices import physical_id
from .identity import NODES
from .ownership_arrivals import INSIDE_LIMIT, RESCAN_LIMIT, Arrivals
from .ownership_claims import ClaimKey, Owner, Unresolvable
from .ownership_gate import AdmissionGate
from .ownership_reads import (
    LINKED,
    Found,
    KnownRead,
    Read,
    arrived,
    held_among,
    indexed,
    indexed_of,
)
from .rules import below

T = TypeVar("T")
HANDED_TIMEOUT: Final = 10.0
"""Seconds an Allocate waits for its host paths to resolve off the loop before it is refused
(a path on a hung file system does not hold the admission)."""


class PlaceOwned(ValueError):
    """An Allocate answer would hand out, besides its devices, what another device of the
    host owns (the answer is refused)."""


class SharedTrees(AdmissionGate):
    """An answer's mounted trees against the trees pods hold mounted (the module's doc)."""

    _arrivals: Arrivals
    """What arrives in claimed directories (`NodesFound`, each tree's `tree_nodes`)."""

    async def _shares_nothing(
        self,
        resource: str,
        ids: Iterable[str],
        mounted: list[str],
        found: Found,
        kept: KnownRead | None = None,
    ) -> None:
        """PlaceOwned when a node or a file below `mounted` (the directories the answer
        mounts: `found` below them now, `kept` the read of it when kept, and the nodes their
        trees' reads found) is also below a tree another ID's booking holds mounted;
        Unresolvable when such a tree could not be read in full in time (the module's doc)."""
        if not (trees := self._ledger.mounted):
            return  # (the common case)
        mine = {Owner(resource, d) for d in self._mine(resource, ids)}

        def outside(path: str) -> bool:
            return not any(path == d or below(path, d) for d in mounted)

        booked = sorted(
            t for t, owners in trees.items() if outside(t) and any(o not in mine for o in owners)
        )
        if not booked:
            return  # (only the answer's own trees, or its IDs': a mount every pod gets)
        arrivals = self._arrivals
        held = indexed_of(found) if kept is None else kept.indexed
        keys, linked = held.keys, held.linked
        if len(found) >= INSIDE_LIMIT:  # (the read may have stopped: what the trees' found)
            more_held = indexed_of(_in_trees(mounted, arrivals))
            keys, linked = keys | more_held.keys, linked | more_held.linked
        if not keys:
            return  # (no node, no file below the answer)
        paths = functools.partial(_answer_path, found, mounted, arrivals)
        nodes = arrivals.nodes  # (what their reads found: nothing read)
        _refuse(
            resource,
            [
                (key, there)
                for key in held_among(keys, nodes.by_number)
                for there in nodes.of(key)
                if outside(there) and any(below(there, t) for t in booked)
            ],
            paths,
        )
        wanted = linked  # (a file of a second link the booked trees' reads did not see)
        if not arrivals.known_in_full(booked):
            wanted = linked | {key for key in keys if key[0] in NODES}
        if not wanted:
            return
        shared, more = await self._off_loop(
            functools.partial(shared_below, booked, wanted, outside, RESCAN_LIMIT, arrived),
            f"{', '.join(booked)}: trees pods hold mounted were not read",
        )
        if shared:  # (linked since their reads: read there again, the index holds the device)
            self._found_shared([path for _, path in shared])
        _refuse(resource, shared, paths)
        if more:
            raise Unresolvable(
                f"{', '.join(booked)}: trees pods hold mounted hold more than "
                f"{RESCAN_LIMIT:,} entries: whether what the answer mounts is also below them "
                "is not known"
            )

    @abc.abstractmethod
    def _found_shared(self, paths: list[str]) -> None:
        """What a read of the booked trees found shared with an answer's trees (a file linked
        since the watcher read them): read again where it is (`Arrivals`), so that the index
        knows it there (`Ledger.sharing`)."""

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

    def _mine(self, resource: str, ids: Iterable[str]) -> set[str]:
        """The IDs an answer hands out with the devices they are replicas of."""
        state = self._resources.get(resource)
        n = 1 if state is None else state.replicas or 1
        return {d for i in ids for d in (i, physical_id(i, n))}


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
    for kind, path in (
        *found,
        *((k, p) for d in mounted for p, k in arrivals.tree_nodes(d).items()),
    ):
        if indexed(kind) == key:
            return path
    return ", ".join(mounted)


def shared_below(
    trees: list[str],
    keys: Iterable[ClaimKey],
    outside: Callable[[str], bool],
    limit: int,
    read: Read,
) -> tuple[Found, bool]:
    """Where below `trees` (`read` in full, up to `limit` entries) a node or file of `keys`
    (as `NodesFound` keeps them) is, `outside` the answer's directories; and whether more
    was there (unread)."""
    wanted = set(keys)
    found, more = read(trees, limit)
    return [
        (kept, path) for key, path in found if (kept := indexed(key)) in wanted and outside(path)
    ], more


def _refuse(resource: str, shared: Found, where: Callable[[ClaimKey], str]) -> None:
    """PlaceOwned when something below the answer's directories (`where` it is there) is
    `shared`."""
    if shared:
        key, there = shared[0]
        what = "a link of the file" if key[0] == LINKED else "a node of the device number"
        raise PlaceOwned(
            f"{resource}: the answer mounts {where(key)}, and {there}, below a directory a pod "
            f"holds mounted, is {what} (what one pod reaches the other would)"
        )
