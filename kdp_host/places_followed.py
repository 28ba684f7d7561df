"""The protected places' stats vouched for by the watcher (issue 19).

Every Allocate answer checks what it hands out against the places no container may be
handed (`config.handed.NeverHanded`) by identity, on their stats taken fresh: a hard link
of a protected file made just before the Allocate is refused. That was 7 stats and a new
view per Allocate. Where the host's inotify watcher follows each place (a protected
directory: what is made, removed or renamed in it) and every directory on the way to each
(the entry on the way: renamed, removed, replaced by a link), only the places it reported
changed since the last stats are stat'ed again (`FollowedPlaces.changed`); none where
nothing changed.

It vouches only where nothing can have changed unseen, else the stats are taken whole, as
without a watcher (`InotifyWatcher.untold`, one poll): every event the kernel holds was
read and dispatched (the kernel queues an event in the call that makes the change, so a
change made before the answer is either told or queued), no change of the mount table is
untold (a mount over a place makes no event: the table itself is asked), and every
directory on the way is watched, or absent where its parent is watched and would tell its
making (a watch refused: `fs.inotify.max_user_watches`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Final, Protocol, runtime_checkable

from .config.handed_tree import FollowedRule
from .watch import Watcher

NAMES_LIMIT: Final = 256
"""Names kept per directory for `FollowedPaths.named`; more: walked again."""


@runtime_checkable
class Vouching(Watcher, Protocol):
    """A watcher that can say nothing is left untold (`inotify_watch.InotifyWatcher`)."""

    def untold(self) -> bool | None: ...

    def watching(self, directory: str) -> bool | None: ...


def entries_on_the_way(path: str) -> Iterator[tuple[str, str]]:
    """(directory, entry name) of `path` in its directory, then of each directory on the way
    to it in its parent, up to `/`: a rename, removal or link at any of them changes what
    `path` names."""
    at = path
    while at != (parent := os.path.dirname(at)):
        yield parent, os.path.basename(at)
        at = parent


class FollowedPaths:
    """Paths followed through a `Vouching` watcher: each path's entry in its directory and
    every directory's on the way to it (renamed, removed, replaced by a link), and what is
    made, removed or renamed in those followed `inside` too; `heard` is told the paths a
    change reached (`cancel` ends it)."""

    def __init__(
        self,
        watcher: Vouching,
        paths: Iterable[tuple[str, bool]],
        heard: Callable[[set[str]], None],
        *,
        names: bool = False,
    ) -> None:
        self._watcher = watcher
        self._heard = heard
        reaches: dict[str, dict[str | None, set[str]]] = {}
        for path, inside in paths:
            if inside:
                reaches.setdefault(path, {}).setdefault(None, set()).add(path)
            for parent, name in entries_on_the_way(path):
                reaches.setdefault(parent, {}).setdefault(name, set()).add(path)
        self._reaches = reaches
        """Directory -> entry name (None: any entry in it) -> the paths a change there
        changes (the entry is one of the paths, or a directory on the way to them)."""
        self._names: dict[str, set[str] | None] = (
            dict.fromkeys((p for p, inside in reaches.items() if None in inside), None)
            if names
            else {}
        )
        """`names`: each path followed `inside` -> the names made, removed or renamed in it
        since `named` was last asked of it (None: any may have been, unheard)."""
        self._dirs = tuple(sorted(reaches, key=lambda d: (d.count("/"), d)))
        """Every directory subscribed to, each after its parent."""
        self._covered: bool | None = None
        """Whether every directory is watched or absent below a watched one (None: to be
        found again: a watch gained or lost tells its subscribers)."""
        self._subscriptions = [
            watcher.subscribe(
                directory,
                functools.partial(self._changed, directory),
                None if None in names else [n for n in names if n is not None],
                entries=True,
            )
            for directory, names in reaches.items()
        ]

    def cancel(self) -> None:
        for subscription in self._subscriptions:
            subscription.cancel()

    def vouched(self) -> bool:
        """Whether nothing can have changed untold: `Vouching.untold` says so, and every
        directory is watched, or absent where its parent is (which tells its making)."""
        return self._watcher.untold() is False and self._all_covered()

    def named(self, path: str) -> set[str] | None:
        """The names made, removed or renamed in `path` (followed `inside`, with `names`)
        since it was last asked (None: any may have been, unheard: asked first, a watch
        gained or lost, an overflow, `path` or a directory on the way to it changed, not
        `vouched` at a question: `lose`); said once."""
        if path not in self._names:
            return None
        named, self._names[path] = self._names[path], set()
        return named

    def lose(self) -> None:
        """What `named` would say is not known (`vouched` said no)."""
        self._names = dict.fromkeys(self._names, None)

    def _changed(self, directory: str, name: str | None) -> None:
        """A watcher callback: `name` in `directory` (None: anything there, its watch
        gained or lost) was made, removed or renamed."""
        reaches = self._reaches.get(directory, {})
        if name is None:
            self._covered = None
            self._heard({path for paths in reaches.values() for path in paths})
            self.lose()
            return
        reached = reaches.get(name, set())
        self._heard(reached | reaches.get(None, set()))
        if self._names:
            for path in reached:  # (it, or a directory on the way to it)
                if path in self._names:
                    self._names[path] = None
            named = self._names.get(directory)
            if named is not None:
                named.add(name)
                if len(named) > NAMES_LIMIT:
                    self._names[directory] = None

    def _all_covered(self) -> bool:
        if self._covered is None:
            covered: dict[str, bool] = {}
            for directory in self._dirs:
                watched = self._watcher.watching(directory)
                parent = os.path.dirname(directory)
                covered[directory] = watched is True or (
                    watched is None and covered.get(parent, False)
                )
            self._covered = all(covered.values())
        return self._covered


class FollowedPlaces:
    """The places of the current rule (`config.handed.Followed`), followed through the
    host's watcher; a new rule (a reload) is followed from its first question on."""

    def __init__(self, watcher: Vouching) -> None:
        self._watcher = watcher
        self._rule: FollowedRule | None = None
        self._paths: FollowedPaths | None = None
        self._changed: set[str] = set()

    def changed(self, rule: FollowedRule) -> Collection[str] | None:
        """The paths of `rule` reported changed since the last question (then forgotten), or
        None where any may have: the first question of a rule, or what `Vouching` says."""
        if rule is not self._rule or self._paths is None:
            if self._paths is not None:
                self._paths.cancel()
            self._rule, self._changed = rule, set()
            self._paths = FollowedPaths(
                self._watcher, rule.followed_paths(), self._changed.update, names=True
            )
            return None
        if not self._paths.vouched():
            self._changed.clear()
            self._paths.lose()
            return None
        changed = set(self._changed)
        self._changed.clear()
        return changed

    def named(self, directory: str) -> set[str] | None:
        """`FollowedPaths.named` of the current rule's places (None: none followed yet)."""
        return None if self._paths is None else self._paths.named(directory)
