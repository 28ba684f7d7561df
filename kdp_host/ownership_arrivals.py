"""What arrives in a mounted directory: a claimed node, file or directory renamed (or hard
linked) into a directory another device mounts, at any depth, is the same identity at a new
real path, and a pod given that mount would reach it.

The watcher follows each claimed directory (a booking's mounts too) and every directory
below it (`Arrivals`: its tree is read once, each subdirectory subscribed to, one made or
renamed in later too, one gone let go). An entry that appears anywhere in the tree is
resolved off the loop by identity (not following links: a link in a mounted directory is
resolved inside the container), and, when it is a directory (renamed in with what it
holds), what is below it too, up to `ARRIVAL_LIMIT` entries: the cost is what changed. The
index then counts each claim found at its new place (`Containment.move`) and rechecks the
devices that mount a directory above it (`OwnershipIndex._arrived`).

A tree that cannot be followed in full (more than `TREE_LIMIT` directories below the
claimed one, or than `HOST_TREE_LIMIT` below all of them; inotify refused a watch, its
limit reached; more arrived at once than one read takes) is logged
(`mount_tree_unfollowed`) and counted (`kdp_watch_unfollowed_trees`), like a directory the
watcher refuses: it is read in full by the safety net every `RESCAN_INTERVAL`, up to
`RESCAN_LIMIT` entries, and followed again once it can be (`mount_tree_followed`). Not
held: a big or deep mounted tree is a working device, and the watch limit is the node's,
shared with other processes; the safety net keeps the promise within its interval.

Each tree also says whether a device node may be below it (`reaches_nodes`: the nodes its
reads found, by number in `nodes`; True until read in full and while not followed in full),
for the rule of a booked node's number not known (`ownership_unknown`); `nodes_changed` is
told the trees whose answer changed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Final

from .files import Offload
from .identity import DIRECTORY
from .inotify_limits import host_tree_limit
from .logs import EventLogger
from .metrics import Metrics
from .ownership_claims import ClaimKey
from .ownership_pinned import PinnedDirs
from .ownership_reads import FollowedTree as _Tree
from .ownership_reads import Found as Found
from .ownership_reads import NodesFound, Read, TreeReads, arrived, reaches_nodes, remounted, tops
from .rules import below
from .turns import Pace

if TYPE_CHECKING:
    from .safety_net import SafetyNet
    from .watch import Subscription, Watcher

ARRIVAL_LIMIT: Final = 4096
"""Entries read at once below what changed in a followed tree (past it, the tree is left to
the safety net: `mount_tree_unfollowed`)."""
ARRIVAL_TIMEOUT: Final = 2.0
"""Seconds the read of what arrived may take (a hung file system is left, logged)."""
TREE_LIMIT: Final = 1024
"""Directories followed (one inotify watch each) below one claimed directory."""
TAKE_CHUNK: Final = 64
"""Trees whose reads are taken in (their directories subscribed to) per loop turn."""
RESCAN_INTERVAL: Final = 30.0
"""Seconds between the safety net's reads of a tree that is not followed in full."""
RESCAN_LIMIT: Final = 65536
"""Entries the safety net reads below such a tree (past it: `arrival_unread`)."""
RESCAN_TIMEOUT: Final = 10.0
"""Seconds that read may take."""
INSIDE_LIMIT: Final = 128
"""Entries an Allocate reads below the directories its answer mounts, for what was moved in
but not reported yet (`BookingAllocations.hand_out`); below one whose tree is not followed
in full, it reads all of it (`left_to_net`, up to `RESCAN_LIMIT`)."""


class Arrivals:
    """Follows claimed directories and their trees for entries that appear in them; hands
    what they are to `found` (on the loop), once per burst of events, with the paths read in
    full (what was there and is not found now has gone)."""

    def __init__(
        self,
        found: Callable[[Found, list[str]], None],
        offload: Offload | None,
        metrics: Metrics | None = None,
        read: Read = arrived,
        nodes_changed: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`metrics`: where the trees not followed in full are counted; `nodes_changed`: told
        the trees whose `reaches_nodes` may have changed."""
        self._found = found
        self._nodes_changed = nodes_changed
        self._offload = offload
        self._read = read
        self._metrics = metrics
        self._trees: dict[str, _Tree] = {}
        """Claimed directory -> its tree."""
        self._ordered: list[str] | None = None
        """The claimed directories sorted (those below one are one run), made when needed."""
        self._unfollowed: dict[str, str] = {}
        """Claimed directory -> why its tree is not followed in full (kept with the trees')."""
        self.nodes = NodesFound()
        """The device nodes the trees' reads found, by number."""
        self.pins = PinnedDirs()  # (the trees bookings hold mounted: `TreeReads`)
        self._dirs: dict[str, tuple[str, Subscription]] = {}
        """Every directory followed (claimed ones too) -> its tree, and its subscription."""
        self._below = 0
        """Directories followed below claimed ones, in all trees."""
        self._pending: dict[str, set[str]] = {}
        """Tree -> the paths to read in it."""
        self._full: set[str] = set()
        """Trees whose next read is the safety net's (the whole tree, `RESCAN_LIMIT`)."""
        self._task: asyncio.Task[None] | None = None
        self._watcher: Watcher | None = None
        self._net: SafetyNet | None = None
        self._leave: Callable[[], None] | None = None

    def follow(
        self, watcher: Watcher, directory: str, log: EventLogger | None, place: bool = False,
        booked: bool | None = None,
    ) -> None:  # fmt: skip
        """Follow what appears in `directory` (a claimed directory's real path; `place`: one
        only a booking holds, or an `allocate.mounts` source, not `booked` yet) and below it,
        for as long as the host runs. One a booking holds (`booked`, now or later) is kept
        open: renamed, it is found where it is (`TreeReads`)."""
        booked = place if booked is None else booked
        if (tree := self._trees.get(directory)) is not None:
            tree.place = tree.place and place
            if booked and not tree.booked:  # (kept open from its next read)
                tree.booked = True
                self._queue(directory, directory)
            return
        self._watcher = watcher
        self._trees[directory] = _Tree(log, place=place, booked=booked)
        self._ordered = None
        known = self._dirs.get(directory)
        if known is not None:  # (followed in a tree above it so far: its own from now on)
            self._trees[known[0]].dirs.discard(directory)
            self._below -= 1
            subscription = known[1]
        else:
            subscription = watcher.subscribe(directory, functools.partial(self._changed, directory))
        self._dirs[directory] = (directory, subscription)
        self._queue(directory, directory)  # (its tree: what to follow below it)

    def unbook(self, directory: str) -> None:
        """No booking holds `directory` mounted now (its tree stays followed, by path)."""
        if (tree := self._trees.get(directory)) is not None:
            tree.booked = False
        self.pins.unpin(directory)

    def rescan_with(self, net: SafetyNet | None) -> None:
        """Read the trees not followed in full through the host's safety net."""
        self._net = net
        self._join()

    @property
    def unfollowed(self) -> dict[str, str]:
        """Claimed directory -> why its tree is not followed in full (a copy; empty at the
        cost of a lookup, not a walk of the trees: every Allocate asks)."""
        return dict(self._unfollowed) if self._unfollowed else {}

    def reaches_nodes(self, directory: str) -> bool:
        """Whether a device node may be below `directory` (a claimed directory's real path):
        one was found in its tree, or in the tree of a claimed directory below it, or one of
        those is not known in full (not read yet, not followed in full); True for a
        directory not followed (fail closed)."""
        return reaches_nodes(self._trees, self._sorted, directory)

    def remounted(self, points: Collection[str]) -> None:
        """The mount table changed at `points`: what the trees show there is read again, as
        an arrival (`ownership_reads.remounted`; their watches: `Watcher.rewatch`)."""
        for tree, paths in remounted(self._trees, self._sorted(), points).items():
            for path in paths:
                self._queue(tree, path)

    def _sorted(self) -> list[str]:
        if self._ordered is None:
            self._ordered = sorted(self._trees)
        return self._ordered

    def left_to_net(self, directories: list[str]) -> tuple[list[str], list[str]]:
        """Those of `directories` to read in full (not followed at all: no device claims it,
        no booking holds it mounted yet; not read yet; a device's tree past a bound: those
        are also the second list, not known past `RESCAN_LIMIT`). An answer's mount past a
        bound (a library directory every pod gets) is read up to `INSIDE_LIMIT` entries."""
        trees = [(d, self._trees.get(d)) for d in directories]
        bounded = [d for d, t in trees if t is not None and t.unfollowed and not t.place]
        return [d for d, t in trees if t is None or not (t.read or t.unfollowed)] + bounded, bounded

    def known_in_full(self, directories: list[str]) -> bool:
        """Whether each of `directories` is a tree read and followed in full (the nodes
        below it are known: `nodes`)."""
        trees = self._trees
        return all((t := trees.get(d)) is not None and t.read and not t.unfollowed
                   for d in directories)  # fmt: skip

    def tree_nodes(self, directory: str) -> dict[str, ClaimKey]:
        """The nodes (`LINKED` files too) the reads of its tree found, by path (none: not one)."""
        return tree.nodes if (tree := self._trees.get(directory)) is not None else {}

    @property
    def reading(self) -> bool:
        """Whether what arrived is being read (or waits to be): not handed on yet."""
        return self._task is not None

    async def quiet(self) -> bool:
        """Return once what arrived so far was read and handed on; whether any was left."""
        left = self._task is not None
        while self._task is not None:
            await asyncio.wait({self._task})
        return left

    def _changed(self, directory: str, name: str | None) -> None:
        """A watcher callback: `name` changed in `directory` (None: the directory itself, or
        anything in it: read it all again)."""
        followed = self._dirs.get(directory)
        if followed is not None:
            self._queue(followed[0], directory if name is None else os.path.join(directory, name))

    def _queue(self, tree: str, path: str) -> None:
        self._pending.setdefault(tree, set()).add(path)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read_pending())

    async def _read_pending(self) -> None:
        """Read what is pending, every tree's in one call off the loop, until nothing is."""
        try:
            while self._pending:
                pending, self._pending = self._pending, {}
                full = self._full & pending.keys()
                self._full -= full
                limits = {t: RESCAN_LIMIT if t in full else ARRIVAL_LIMIT for t in pending}
                jobs = [(tree, tops(paths), limits[tree]) for tree, paths in pending.items()]
                timeout = RESCAN_TIMEOUT if full else ARRIVAL_TIMEOUT
                booked = frozenset(t for t in pending if self._trees[t].booked)
                batch = TreeReads(jobs, self._read, self.pins, booked)
                if self._offload is None:
                    batch.run()
                else:
                    reading = asyncio.ensure_future(self._offload.run(batch.run))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await asyncio.shield(reading)
                done, running = batch.close()
                for tree in [t for t in booked if t in batch.moved or not self._trees[t].booked]:
                    self.pins.unpin(tree)  # (its booking ended; moved: its new place is pinned)
                everything: Found = []
                complete: list[str] = []  # (the paths read in full: what is not found went)
                changed: list[str] = []
                pace = Pace(TAKE_CHUNK)
                for tree, todo, limit in jobs:
                    if pace.due():
                        await asyncio.sleep(0)  # (a thousand trees read at start)
                    if tree not in done and tree != running:  # (not started: the next batch)
                        self._pending.setdefault(tree, set()).update(todo)
                        self._full |= {tree} & full
                        continue
                    found, more = done.get(tree, ([], True))
                    unread = f"more than {limit:,} entries below what changed there"
                    if tree not in done:
                        unread = f"its read took more than {timeout:g} s"
                    before = self._trees[tree].may_hold_nodes()
                    kept = tree in batch.moved  # (its root now, found last: a tree of its own)
                    self._take(tree, todo, found[:-1] if kept else found,
                               unread if more else None, tree in full, kept)  # fmt: skip
                    if self._trees[tree].may_hold_nodes() != before:
                        changed.append(tree)
                    everything += found
                    complete += [] if more or kept else todo
                self._found(everything, complete)
                if changed and self._nodes_changed is not None:
                    self._nodes_changed(changed)
        finally:
            self._task = None

    def _take(
        self, tree: str, read: list[str], found: Found, unread: str | None, full: bool, moved: bool
    ) -> None:
        """Follow the directories found that are not yet, let go of those gone (none if the
        tree `moved`: its old place is kept), note if it is followed in full (`unread`)."""
        dirs = {path for key, path in found if key[0] == DIRECTORY}
        state = self._trees[tree]
        if unread is None and not moved:  # (all of each path read: a directory not found went)
            for path in read:
                if path in self._dirs:
                    self._let_go(path, dirs)
                if path in state.nodes:
                    self.nodes.drop(state.nodes, path)  # (a node: nothing below it)
                elif state.nodes:  # (a directory, or a file or node made anew: what was below)
                    for node in [n for n in state.nodes if below(n, path)]:
                        self.nodes.drop(state.nodes, node)
            state.read = state.read or tree in read
        self.nodes.add(state.nodes, found)
        followed: list[str] = []
        why = None
        for directory in sorted(dirs):
            if directory not in self._dirs:
                why = self._follow_below(tree, directory)
                if why is not None:
                    break
                followed.append(directory)
        if unread is not None:
            why = unread
            if full:
                self._trees[tree].log_unread(tree, unread)
        if why is not None:
            self._set_unfollowed(tree, why)
        elif full:
            self._set_unfollowed(tree, None)
        for directory in tops(followed):  # (what appeared while they were not followed yet)
            self._queue(tree, directory)

    def _follow_below(self, tree: str, directory: str) -> str | None:
        """Follow `directory` in `tree`; why it cannot be (None: it is)."""
        state, watcher = self._trees[tree], self._watcher
        if watcher is None:
            return "no watcher"
        if directory in self._trees:
            return None  # (a claimed directory: followed as its own tree)
        if len(state.dirs) >= TREE_LIMIT:
            return f"more than {TREE_LIMIT:,} directories below it"
        if self._below >= (limit := host_tree_limit(watcher.watch_budget)):
            return f"more than {limit:,} directories below mounted ones on the host"
        subscription = watcher.subscribe(directory, functools.partial(self._changed, directory))
        refused = watcher.refused(directory)
        if refused is not None:
            subscription.cancel()
            return f"a watch of {directory} was refused: {refused}"
        self._dirs[directory] = (tree, subscription)
        state.dirs.add(directory)
        self._below += 1
        return None

    def _let_go(self, path: str, there: set[str]) -> None:
        """`path` was read in full: stop following it and what is below it where no
        directory is now (not one of `there`; a claimed directory is followed for as long
        as the host runs). What its tree follows is looked at, not every tree's."""
        state = self._trees[self._dirs[path][0]]
        for directory in [d for d in state.dirs if d == path or below(d, path)]:
            if directory not in there:
                state.dirs.discard(directory)
                self._dirs.pop(directory)[1].cancel()
                self._below -= 1

    def _set_unfollowed(self, tree: str, why: str | None) -> None:
        state = self._trees[tree]
        if (state.unfollowed is None) == (why is None):
            return
        state.unfollowed = why
        if why is None:
            self._unfollowed.pop(tree, None)
        else:
            self._unfollowed[tree] = why
        state.unread = False
        if state.log is not None and why is not None:
            state.log.warning(
                "mount_tree_unfollowed",
                dir=tree,
                reason=why,
                consequence="what is moved below it is seen by the safety-net rescan "
                f"only (every {RESCAN_INTERVAL:g} s) until it can be followed again",
            )
        elif state.log is not None:
            state.log.info("mount_tree_followed", dir=tree, dirs=len(state.dirs))
        if self._metrics is not None:
            self._metrics.watch_unfollowed.set(len(self._unfollowed))
        self._join()

    def _join(self) -> None:
        """In the safety net while a tree is not followed in full, out of it otherwise."""
        wanted = self._net is not None and bool(self._unfollowed)
        if wanted and self._leave is None and self._net is not None:
            self._leave = self._net.join(  # (its check reads nothing: `_rescan` reads)
                RESCAN_INTERVAL, lambda: False, self._rescan, timeout=RESCAN_TIMEOUT
            )
        elif not wanted and self._leave is not None:
            self._leave()
            self._leave = None

    def _rescan(self, _unchanged: bool) -> None:
        """The safety net's turn: read every tree not followed in full, in full."""
        for tree in self.unfollowed:
            self._full.add(tree)
            self._queue(tree, tree)
