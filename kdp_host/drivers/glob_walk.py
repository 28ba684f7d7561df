"""Walking a glob pattern under a scan's `ScanGuard`: what `glob.glob` lists, lazily, with
every directory entry looked at checking whether the scan was abandoned and every path
matched counting towards the scan's limit (`rules.MAX_MATCHED_PATHS`), so a tree of
symlinks that fan out stops the walk instead of being listed whole."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Iterator

from .. import rules
from .scanner import ScanGuard


def glob_paths(pattern: str, guard: ScanGuard, counted: str | None = None) -> Iterator[str]:
    """What `glob.glob(pattern)` lists (no recursive `**`; names starting with a dot only
    where the pattern's component does), walked lazily under `guard`: every directory
    entry looked at checks whether the scan was abandoned, every path matched (a directory
    a wildcard matched on the way too) counts towards its limit (errors name `counted`,
    the configured pattern, else `pattern`). Raises DriverError."""
    named = counted if counted is not None else pattern
    for path in _glob(pattern, guard, named, dironly=False):
        guard.match(named)
        yield path


def _glob(pattern: str, guard: ScanGuard, named: str, *, dironly: bool) -> Iterator[str]:
    directory, name = os.path.split(pattern)
    if not rules.GLOB_MAGIC.search(pattern):
        if os.path.lexists(pattern) if name else os.path.isdir(directory):
            yield pattern
        return
    parents: Iterable[str]
    if directory != pattern and rules.GLOB_MAGIC.search(directory):
        parents = _counted(_glob(directory, guard, named, dironly=True), guard, named)
    else:
        parents = (directory,)
    if rules.GLOB_MAGIC.search(name) is None:
        for parent in parents:
            if os.path.lexists(os.path.join(parent, name)) if name else os.path.isdir(parent):
                yield os.path.join(parent, name)
        return
    match = re.compile(fnmatch.translate(name)).match  # (once, not once per entry)
    hidden = name.startswith(".")
    for parent in parents:
        # (`os.path.join(parent, entry)`: an entry's name holds no `/`)
        prefix = parent if not parent or parent.endswith("/") else parent + "/"
        for entry in _entries(parent or os.curdir, guard, dironly=dironly):
            if (hidden or not entry.startswith(".")) and match(entry):
                yield prefix + entry


def _counted(paths: Iterator[str], guard: ScanGuard, named: str) -> Iterator[str]:
    for path in paths:
        guard.match(named)
        yield path


def _entries(directory: str, guard: ScanGuard, *, dironly: bool) -> Iterator[str]:
    """The names in `directory` (only those of directories, links to them included, with
    `dironly`); none if it cannot be listed."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                guard.entry()
                try:
                    if not dironly or entry.is_dir():
                        yield entry.name
                except OSError:
                    continue
    except OSError:
        return


def matches(pattern: str, path: str) -> bool:
    """Whether `glob_paths(pattern)` would list `path` were it there: component by
    component, with the same rule for names starting with a dot."""
    names, parts = pattern.split("/"), path.split("/")
    return len(names) == len(parts) and all(
        name == part
        if rules.GLOB_MAGIC.search(name) is None
        else (name.startswith(".") or not part.startswith(".")) and fnmatch.fnmatchcase(part, name)
        for name, part in zip(names, parts, strict=True)
    )
