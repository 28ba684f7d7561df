"""What a glob scan learnt, kept for the next one (`MatchCache`): each pattern's listing and
each matched path's answer, with the links resolving the path passed through, so a scan
told which paths changed looks again only at those."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from .. import rules
from .glob_walk import glob_paths
from .scanner import ScanGuard

T = TypeVar("T")


def leaf_pattern(pattern: str) -> tuple[str, str] | None:
    """(directory, leaf) of a pattern whose only wildcards are in its last component, the
    case a change named by the watcher can be applied to directly; else None."""
    directory, leaf = os.path.split(pattern)
    if rules.GLOB_MAGIC.search(directory) or os.path.normpath(pattern) != pattern:
        return None  # (a path spelt with `//` or `.` is listed as spelt, not as named)
    return directory, leaf


def leaf_matches(leaf: str, name: str) -> bool:
    """What glob.glob lists in a directory: names matching `leaf`, hidden ones only when
    `leaf` starts with a dot."""
    if name.startswith(".") and not leaf.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, leaf)


DirLinks = dict[str, tuple[tuple[str, ...], str]]
"""Per directory (as spelt): the links resolving it passes through and where it leads."""


def links_on_the_way(path: str, limit: int = 40, dirs: DirLinks | None = None) -> tuple[str, ...]:
    """Every symlink that resolving `path` passes through, each named as the path it has
    there: a matched path depends on all of them (`dev/a0/a1` through a link `dev/a0 -> dev`
    depends on `dev/a1`), not only on itself and its real path.

    With `dirs` (kept for one scan), the directory above `path` is walked once, not once per
    path in it: one lstat per path instead of one per component of each."""
    parts = [part for part in path.split("/") if part]
    if dirs is None or len(parts) < 2:
        links: list[str] = []
        _follow(parts, "/", links, limit)
        return tuple(links)
    directory = "/".join(parts[:-1])
    known = dirs.get(directory)
    if known is None:
        links = []
        end = _follow(parts[:-1], "/", links, limit)
        known = dirs[directory] = (tuple(links), end)
    links = list(known[0])
    _follow(parts[-1:], known[1], links, limit)
    return tuple(links)


def _follow(parts: list[str], current: str, links: list[str], limit: int) -> str:
    """Resolve `parts` from the directory `current`, adding each symlink passed through to
    `links` (at most `limit`); where they lead."""
    pending = list(reversed(parts))
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if len(links) >= limit or not os.path.islink(candidate):
            current = candidate
            continue
        links.append(candidate)
        try:
            target = os.readlink(candidate)
        except OSError:
            current = candidate
            continue
        if target.startswith("/"):
            current = "/"
        pending.extend(part for part in reversed(target.split("/")) if part)
    return current


@dataclass(frozen=True, slots=True)
class _Kept(Generic[T]):
    """A `MatchCache` answer for a path that is not its own real path (a link on the way,
    or nothing real): what its answer depends on besides the path."""

    value: T
    real_path: str | None
    links: tuple[str, ...]


_NOTHING: Final[Any] = object()
"""No answer kept (None may be one)."""


class MatchCache(Generic[T]):
    """What a scan learnt about each matched path, kept for the next scan, so that a scan
    told which paths changed (the watcher's names) looks again only at those: O(changed)
    system calls instead of one listing and a few per path.

    A kept answer is reused while neither the path nor its real path, nor a directory above
    either, was named as changed; anything else is looked at again. The listing of a
    pattern whose wildcards are all in its last component is the last listing with the
    named entries of its directory added or removed; other patterns are listed again.
    Without a change set (None: the first scan, a safety-net rescan) nothing is reused.
    Used by one scan at a time (the scan loop never runs two at once).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = tuple(patterns)
        self._leaves = tuple(leaf_pattern(p) for p in self._patterns)
        self._listed: list[list[str] | None] = [None] * len(self._patterns)
        self._kept: dict[Hashable, T | _Kept[T]] = {}
        self._seen: dict[Hashable, T | _Kept[T]] = {}
        """Per key: the answer alone for a path that is its own real path (no link on the
        way: the common case, nothing allocated per path), else a `_Kept`."""
        self._dirs: DirLinks = {}
        """The links above each directory, learnt in this scan."""
        self._changed: frozenset[str] | None = None
        self._below: tuple[str, ...] = ()

    def begin(self, changed: frozenset[str] | None) -> None:
        self._changed = changed
        self._below = tuple(path.rstrip("/") + "/" for path in changed or ())
        """Everything below a changed path (a directory replaced) changed too."""
        self._seen = {}
        self._dirs = {}
        if changed is None:
            self._kept = {}
            self._listed = [None] * len(self._patterns)

    def end(self) -> None:
        """Keep what this scan saw (and only that) for the next."""
        self._kept, self._seen = self._seen, {}

    def matched(self, index: int, guard: ScanGuard) -> list[str]:
        """The paths pattern `index` matches now, in sorted order (walked under `guard`:
        raises DriverError)."""
        pattern = self._patterns[index]
        listed = self._listed[index]
        leaf = self._leaves[index]
        changed = self._changed
        if (
            listed is None
            or leaf is None
            or changed is None
            or (leaf[0] + "/").startswith(self._below)  # (its directory, or one above it,
        ):  # replaced: a link to it switched, hostile18 F12)
            listed = sorted(glob_paths(pattern, guard))
        else:
            directory, name_pattern = leaf
            named = [
                path
                for path in changed
                if os.path.dirname(path) == directory
                and leaf_matches(name_pattern, os.path.basename(path))
            ]
            if named:
                paths = set(listed)
                for path in named:
                    if os.path.lexists(path):
                        paths.add(path)
                    else:
                        paths.discard(path)
                listed = sorted(paths)
                guard.match(pattern, len(listed))
        self._listed[index] = listed
        return listed

    def lookup(self, key: Hashable, path: str, look: Callable[[], tuple[T, str | None, bool]]) -> T:
        """What `key` (a matched `path`) is: the answer kept from the last scan if neither
        the path nor the real path it had changed, else `look()`'s: (the answer, the real
        path it depends on (`path` itself when no link is on the way), whether it may be
        kept: a dangling link may not)."""
        kept: T | _Kept[T] = self._kept.get(key, _NOTHING)
        if kept is not _NOTHING and not self._touched(path):
            if not isinstance(kept, _Kept):
                self._seen[key] = kept
                return kept
            real = kept.real_path
            if (real is None or not self._touched(real)) and not any(
                self._touched(link) for link in kept.links
            ):
                self._seen[key] = kept
                return kept.value
        value, real_path, keep = look()
        if keep:
            # A path that is its own real path passes through no link (resolving it went
            # through none): no lstat of each of its components again, and nothing kept
            # beside the answer.
            if real_path == path:
                self._seen[key] = value
            else:
                links = links_on_the_way(path, dirs=self._dirs)
                self._seen[key] = _Kept(value, real_path, links)
        return value

    def kept(self, key: Hashable) -> T | None:
        """The answer the last scan kept for `key` (None: none, or nothing there)."""
        kept = self._kept.get(key)
        return kept.value if isinstance(kept, _Kept) else kept

    def was_matched(self, key: Hashable) -> bool:
        """Whether the last scan kept an answer for `key` (a path it matched)."""
        return key in self._kept

    def learn(self, key: Hashable, value: T | None, present: bool, *, own: bool) -> None:
        """Keep `value` for `key` (a path that is its own real path with `own`), or forget
        it when nothing is there, as a scan would have; the listings are not changed (the
        next scan must not be told what changed: `begin(None)`)."""
        if not present:
            self._kept.pop(key, None)
        elif own:
            self._kept[key] = value  # type: ignore[assignment]
        else:
            self._kept[key] = _Kept(value, None, ())  # type: ignore[arg-type]

    def _touched(self, path: str) -> bool:
        changed = self._changed
        if changed is None:
            return True
        return path in changed or path.startswith(self._below)
