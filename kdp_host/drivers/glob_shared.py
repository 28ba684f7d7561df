"""What the two glob scans share (`GlobScan` of paths, `GlobGroupScan` of groups): watching
the directories that decide a pattern, the notices of a scan, a matched path's NUMA node.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..config import GlobDriverConfig, render_template
from ..files import FileReader, FileReadError
from .base import Skipped
from .glob_paths import printable_path, watch_dirs
from .scanner import DirWatch, Notice


def dir_readable(directory: str) -> bool:
    return os.access(directory, os.R_OK | os.X_OK)


def watch_pattern(
    pattern: str, dirs: DirWatch, is_readable: Callable[[str], bool], unreadable: set[str]
) -> None:
    """Watch the directories that decide what `pattern` matches (signed before the glob
    looks into them); note those that exist but cannot be read."""
    for directory in watch_dirs(pattern, dirs.guard):
        dirs.watch(directory)
        if os.path.isdir(directory) and not is_readable(directory):
            unreadable.add(directory)


def scan_notices(
    found_any: bool, patterns: tuple[str, ...], unreadable: set[str]
) -> tuple[Notice, ...]:
    """What a glob scan says in the log when it changes: no match, unreadable directories."""
    notices = (
        []
        if found_any
        else [Notice("no_devices_match", (("patterns", ",".join(patterns)),), "info")]
    )
    notices += [Notice("device_dir_unreadable", (("dir", d),)) for d in sorted(unreadable)]
    return tuple(notices)


def numa_node(
    config: GlobDriverConfig, files: FileReader, path: str, skipped: dict[str, Skipped]
) -> int | None:
    """The NUMA node of a matched path: `numaNode`, else read from `numaNodeFile`."""
    if config.numa_node is not None:
        return config.numa_node
    if config.numa_node_file is None:
        return None
    numa_file = render_template(
        config.numa_node_file, {"path": path, "name": os.path.basename(path)}
    )
    try:
        data = files.read(numa_file)
    except FileReadError as exc:
        skipped[numa_file] = Skipped(exc.reason, printable_path(numa_file), str(exc))
        return None
    if data is None:
        return None
    try:
        node = int(data.strip())
    except ValueError:
        return None
    return node if node >= 0 else None
