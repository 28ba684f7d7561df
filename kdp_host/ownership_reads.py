"""Reading what arrived in mounted trees, off the event loop: each path by identity and
what is below it, bounded (`arrived`), and the reads of many trees in one worker-thread call
(`TreeReads`): a host that claims a thousand mounted directories at start reads their
trees in one hop, not a thousand. A read repeated for the same trees is answered from the
last one while every directory it listed is as it was (`kept_reads`).
"""

from __future__ import annotations

import os
import stat
import threading
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from .identity import DIRECTORY, FILE, NODES, identity_of
from .logs import EventLogger
from .ownership_claims import ClaimKey, ancestors
from .ownership_pinned import PinnedDirs
from .rules import below

Found = list[tuple[ClaimKey, str]]
"""What arrived: each entry's identity and its real path (a regular file with more than one
link also as `LINKED`)."""
LINKED: Final = "l"
"""The kind of a read's second entry for a regular file with more than one link (its
st_nlink, in the lstat the read takes anyway), keyed by its inode as the file's own
(`identity_of`): it matches no claim; `NodesFound` keeps it by inode like a node by number,
for what two mounted trees share (`ownership_shared`)."""
INDEXED: Final = NODES | {LINKED}
"""The kinds `NodesFound` keeps."""


def indexed(key: ClaimKey) -> ClaimKey | None:
    """How `NodesFound` keeps what a read found as `key`: a node by its number, a regular
    file by its inode (`LINKED`, whatever its links were then); None: neither."""
    if key[0] in INDEXED:
        return key
    return (LINKED, key[1]) if key[0] == FILE else None


def claimed_as(kept: ClaimKey) -> ClaimKey:
    """The claim a read's `kept` key (`indexed`) is: a node by its number, a regular file
    by its inode (`FILE`, not `LINKED`)."""
    return (FILE, kept[1]) if kept[0] == LINKED else kept


class TreesRead(Protocol):
    """What the reads of the followed trees found (`ownership_arrivals.Arrivals`)."""

    def reaches_nodes(self, directory: str) -> bool:
        """Whether a device node may be below a claimed directory (True where not known)."""

    def tree_nodes(self, directory: str) -> dict[str, ClaimKey]:
        """The nodes (`LINKED` files too) the reads of its tree found, by path."""


class NoTrees:
    """No follower of the trees: any directory may hold a node (fail closed), none known."""

    def reaches_nodes(self, _directory: str) -> bool:
        return True

    def tree_nodes(self, _directory: str) -> dict[str, ClaimKey]:
        return {}


def indexed_of(found: Iterable[tuple[ClaimKey, str]]) -> frozenset[ClaimKey]:
    """What a read found, as `NodesFound` keeps it (`indexed`): what an answer's trees may
    share with others' (`ownership_shared`)."""
    return frozenset(kept for key, _ in found if (kept := indexed(key)) is not None)


Read = Callable[[list[str], int], tuple[Found, bool]]
"""A read of paths and what is below them, up to a limit (`arrived`)."""


Listed = list[tuple[str, "os.stat_result | None"]]
"""The directories a read listed, each with its lstat taken before its listing (None: its
listing failed)."""


def arrived(paths: Iterable[str], limit: int, listed: Listed | None = None) -> tuple[Found, bool]:
    """Each path's identity (lstat: a link is not followed) and, below a directory, every
    entry's, up to `limit` entries in all (a directory's listing too); True: more were
    there (not read). `listed` is given the directories listed (`kept_reads.KnownRead`). A
    regular file with more than one link is found also as `LINKED` (not counted in `limit`)."""
    found: Found = []
    linked: Found = []
    todo = [os.path.normpath(path) for path in paths]
    left = False  # (entries of a directory not listed: the limit was reached)
    while todo:
        path = todo.pop()
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            continue  # (gone again, or no path)
        if stat.S_ISLNK(st.st_mode):
            continue
        key = identity_of(st)
        found.append((key, path))  # (its directory's real path, and its name)
        if st.st_nlink > 1 and key[0] == FILE:
            linked.append(((LINKED, key[1]), path))
        if len(found) >= limit:
            return found + linked, bool(todo) or left or key[0] == DIRECTORY
        if key[0] == DIRECTORY and not (left and len(found) + len(todo) >= limit):
            # (past that, a listing adds nothing and `left` is said already: not opened;
            # a big directory's first read costs what its whole listing does)
            try:
                with os.scandir(path) as entries:
                    for entry in entries:  # (no more than the limit: a big directory)
                        if len(found) + len(todo) >= limit:
                            left = True
                            break
                        todo.append(entry.path)
            except OSError:
                if listed is not None:
                    listed.append((path, None))
                continue
            if listed is not None:
                listed.append((path, st))
    return found + linked, left


@dataclass
class NodesFound:
    """The device nodes the reads of followed trees found, by number (`of`): a node there
    before a device claimed its number puts a device that appears later inside those trees
    (hostile18 F13); and the files of more than one link they found, by inode (`LINKED`: what
    two trees share, `ownership_shared`). Each tree keeps its own by path (`Arrivals`)."""

    by_number: dict[ClaimKey, set[str]] = field(default_factory=dict)

    def add(self, nodes: dict[str, ClaimKey], found: Found) -> None:
        """A tree's read `found` these (its `nodes` by path)."""
        for key, path in found:
            if key[0] in INDEXED and nodes.get(path) != key:
                self.drop(nodes, path)
                nodes[path] = key
                self.by_number.setdefault(key, set()).add(path)

    def drop(self, nodes: dict[str, ClaimKey], path: str) -> None:
        """`path` of a tree (its `nodes`) is no node found now."""
        key = nodes.pop(path, None)
        paths = None if key is None else self.by_number.get(key)
        if key is not None and paths is not None:
            paths.discard(path)
            if not paths:
                del self.by_number[key]

    def of(self, key: ClaimKey) -> tuple[str, ...]:
        paths = self.by_number.get(key)
        return () if paths is None else tuple(sorted(paths))


def tops(paths: Iterable[str]) -> list[str]:
    """`paths` but those below another of them (read with it)."""
    kept: list[str] = []
    for path in sorted(paths):
        if not kept or (path != kept[-1] and not below(path, kept[-1])):
            kept.append(path)
    return kept


def remounted(
    trees: Container[str], ordered: Sequence[str], points: Iterable[str]
) -> dict[str, set[str]]:
    """What to read again once the mount table changed at `points` (mounts made or gone),
    tree -> paths (`trees`: the followed directories, `ordered` sorted): a point inside a
    tree, in the nearest tree above it (what the mount brought, or what its going shows
    again); a tree at or below a point, in full (its directory reaches another now). A
    lookup per point: a pod's mounts far from every tree cost no walk of the trees."""
    again: dict[str, set[str]] = {}
    for point in points:
        prefix = point.rstrip("/") + "/"
        at = bisect_left(ordered, prefix)
        while at < len(ordered) and ordered[at].startswith(prefix):
            again.setdefault(ordered[at], set()).add(ordered[at])
            at += 1
        if point in trees:
            again.setdefault(point, set()).add(point)
            continue
        tree = next((d for d in ancestors(point) if d in trees), None)
        if tree is not None:
            again.setdefault(tree, set()).add(point)
    return again


@dataclass(eq=False)
class TreeReads:
    """The reads of one batch, run in one call off the loop (thread-safe): each tree's
    paths up to its limit. `close` stops it between two trees (past its timeout)."""

    jobs: list[tuple[str, list[str], int]]
    """Tree, the paths to read in it, the limit."""
    read: Read
    pins: PinnedDirs | None = None
    booked: frozenset[str] = frozenset()
    """The trees pods hold mounted: each root read is kept open (`pins`); one gone from its
    path is found where it is now (`moved`: its identity and real path, added to what the
    read found), as the pod's mount follows it (hostile19 F6)."""
    moved: set[str] = field(default_factory=set)
    done: dict[str, tuple[Found, bool]] = field(default_factory=dict)
    running: str | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        for tree, paths, limit in self.jobs:
            with self.lock:
                if self.closed:
                    return
                self.running = tree
            found, more = self.read(paths, limit)
            moved = None
            if self.pins is not None and tree in self.booked and tree in paths:
                there = next((key for key, path in found if path == tree), None)
                moved = self.pins.where(tree, there)
                if moved is not None:
                    found = [*found, moved]
                elif there is not None:
                    self.pins.pin(tree, there)
            with self.lock:
                self.done[tree] = found, more
                if moved is not None:
                    self.moved.add(tree)
                self.running = None

    def close(self) -> tuple[dict[str, tuple[Found, bool]], str | None]:
        """Stop (the trees not started are not read); what was read, and the tree whose
        read is still running."""
        with self.lock:
            self.closed = True
            return dict(self.done), self.running


def more_than_one_link(nodes: Mapping[str, ClaimKey]) -> set[ClaimKey]:
    """The identities of the `nodes` (real path -> identity) with more than one link (an
    lstat each: where their directories are local, on the loop)."""
    linked: set[ClaimKey] = set()
    for real, key in nodes.items():
        try:
            if os.lstat(real).st_nlink > 1:
                linked.add(key)
        except (OSError, ValueError):
            continue  # (gone since it was resolved: the runtime finds nothing there)
    return linked


def linked_below(
    trees: list[str],
    nodes: Mapping[str, ClaimKey],
    limit: int,
    read: Read,
    linked: set[ClaimKey] | None = None,
) -> tuple[Found, bool]:
    """Where below `trees` (`read` up to `limit` entries) the nodes of `nodes` (real
    path -> identity) with more than one link are (`linked`: those, where the caller
    lstat'ed them already: `more_than_one_link`), and whether more was there (unread).
    Nothing is read for nodes of one link."""
    if linked is None:
        linked = more_than_one_link(nodes)
    if not linked:
        return [], False
    found, more = read(trees, limit)
    return [(key, path) for key, path in found if key in linked and path not in nodes], more


@dataclass
class FollowedTree:
    """A claimed directory followed with what is below it (`ownership_arrivals.Arrivals`)."""

    log: EventLogger | None
    """The log of the resource that claimed it first."""
    dirs: set[str] = field(default_factory=set)
    """Directories followed below it."""
    unfollowed: str | None = None
    """Why its tree is not followed in full (the safety net reads it), or None."""
    unread: bool = False
    """The safety net could not read it all either (`arrival_unread` logged)."""
    nodes: dict[str, ClaimKey] = field(default_factory=dict)
    """The device nodes (and `LINKED` files) its reads found below it (and not found gone
    since), by path."""
    read: bool = False
    """It was read in full once (what is below it is known)."""
    place: bool = False
    """Only bookings hold it (an answer's mount): see `Arrivals.left_to_net`."""
    booked: bool = False
    """A booking holds it mounted: its directory is kept open, followed where it moves."""

    def log_unread(self, tree: str, why: str) -> None:
        """The safety net could not read all of it either (logged once a time)."""
        if self.log is not None and not self.unread:
            self.log.warning(
                "arrival_unread",
                dir=tree,
                reason=why,
                consequence="claims moved deeper in its tree are not seen there",
            )
        self.unread = True

    def may_hold_nodes(self) -> bool:
        if not self.read or self.unfollowed is not None:
            return True
        return any(key[0] in NODES for key in self.nodes.values())


def reaches_nodes(
    trees: Mapping[str, FollowedTree], ordered: Callable[[], list[str]], directory: str
) -> bool:
    """`Arrivals.reaches_nodes`: the tree of `directory` or of one below it may hold a node
    (`ordered`: the trees' directories, sorted: those below one are a run)."""
    if directory not in trees:
        return True
    if trees[directory].may_hold_nodes():
        return True
    run = ordered()
    prefix = directory.rstrip("/") + "/"
    at = bisect_left(run, prefix)
    while at < len(run) and run[at].startswith(prefix):  # (the trees below it)
        if trees[run[at]].may_hold_nodes():
            return True
        at += 1
    return False
