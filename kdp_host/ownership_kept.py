"""What an Allocate hands out, kept resolved where the watcher follows it.

An Allocate resolves its answer's places and host paths off the loop; a path that is its own
real path (no link on the way) and whose directory and every directory above it the watcher
follows is kept as resolved (`KeptAnswers._resolve_keeping`) until a change is reported
there (`_forget_kept`), so an Allocate repeated leaves the loop for nothing. A base of the
index (`ownership_resolve.Resolving` admits through it).
"""

from __future__ import annotations

import abc
import functools
import os
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Final

from .kept_reads import KeptReads
from .ownership_admission import Admission
from .ownership_batches import HUNG, Resolution
from .ownership_claims import Reached, ancestors
from .rules import below

if TYPE_CHECKING:
    from .watch import Watcher

KEPT_LIMIT: Final = 4096
"""Paths kept resolved (`KeptAnswers._resolve_keeping`) beyond which they are all forgotten (an
`allocate.command` may print new paths every time); changes noted (`Resolving._note_change`)
beyond which they are forgotten too (each then counts as reported since)."""


class KeptAnswers(Admission):
    """What Allocate answers hand out, kept resolved where the watcher follows it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._kept: dict[str, Resolution] = {}
        """What Allocate answers hand out (places, host paths), as resolved while the
        watcher follows their directories (forgotten when one changes, `_forget_kept`)."""
        self._above: set[str] = set()
        """Directories the watcher follows as entries of their parent (`_follow_above`)."""
        self._reads_kept = KeptReads()
        """What Allocate answers read below the directories they mount (`KnownRead`)."""
        self._path_news = 0
        """Changes the watcher reported so far (a resolution that raced one is not kept)."""

    @abc.abstractmethod
    def _follows(self, path: str) -> bool:
        """Whether the watcher reports at once, from now on, a change of what the normalised
        `path` reaches, unless through a link (its directory and the directories above it
        followed; False: no such watcher)."""

    @abc.abstractmethod
    async def _resolve_all(self, paths: Collection[str]) -> dict[str, Resolution]:
        """What each path resolves to (off the loop with an offload)."""

    async def _reach_kept(self, paths: Collection[str]) -> dict[str, Reached | None]:
        """`_reach_all` for the places of an Allocate answer, kept (`_resolve_keeping`)."""
        kept = self._kept
        todo = [path for path in paths if path not in kept]
        if not todo:
            return reached_only(paths, kept)
        resolved = await self._resolve_keeping(todo, self._resolve_all)
        return reached_only(paths, {**kept, **resolved})

    async def _resolve_keeping(
        self,
        todo: list[str],
        resolve: Callable[[list[str]], Awaitable[Mapping[str, Resolution]]],
    ) -> Mapping[str, Resolution]:
        """What an Allocate hands out (its places, its host paths), resolved by `resolve`
        off the loop, and kept where the watcher will say it changed: a path that is its
        own real path (no link on the way: where a link's target lies is not followed)
        whose directory and every directory above it the watcher follows (`_follows`). So
        an Allocate repeated leaves the loop for nothing (no thread hop, no system call;
        nor does it wait behind another resource's work on the offload). A change reported
        while resolving (it may have come after the answer) keeps nothing."""
        kept = self._kept
        followed = [p for p in todo if os.path.normpath(p) == p and self._follows(p)]
        news = self._path_news
        resolved = await resolve(todo)
        if news == self._path_news and followed:
            if len(kept) + len(followed) > KEPT_LIMIT:
                kept.clear()
            for path in followed:
                found = resolved.get(path, HUNG)
                if found is None or (not isinstance(found, str) and found[1] == path):
                    kept[path] = found
        return resolved

    def _follow_above(self, watcher: Watcher, directory: str) -> None:
        """Have the watcher follow every directory above `directory` for its entry on the
        way there: one renamed, removed or replaced by a link changes what a path below
        reaches with no event in the path's own directory (hostile3 G10)."""
        for parent in ancestors(directory):
            if directory in self._above:
                break  # (and every directory above it)
            changed = functools.partial(self._above_changed, directory)
            watcher.subscribe(parent, changed, (os.path.basename(directory),))
            self._above.add(directory)
            directory = parent

    def _above_changed(self, directory: str, name: str | None) -> None:
        """A watcher callback: `directory` changed in its parent (or anything there may
        have, `name` None): forget what was kept below it."""
        self._forget_kept(functools.partial(below, directory=directory))

    def _forget_kept(self, changed: Callable[[str], bool]) -> None:
        """The watcher reported changes: forget the kept places `changed` names."""
        self._path_news += 1
        for path in [p for p in self._kept if changed(p)]:
            del self._kept[path]


def reached_only(
    paths: Collection[str], resolved: Mapping[str, Resolution]
) -> dict[str, Reached | None]:
    """What each path reaches; None where nothing is there or it did not answer in time."""
    found: dict[str, Reached | None] = {}
    for path in paths:
        reached = resolved.get(path)
        found[path] = None if reached is None or isinstance(reached, str) else reached
    return found
