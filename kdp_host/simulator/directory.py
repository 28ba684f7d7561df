"""The kubelet's socket directory at start-up and shutdown (docs/kubelet-contract.md §9).
Blocking file-system calls: run them in a thread."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from .log import log_event


def cleanup_plugin_directory(directory: Path, keep: str, sockets_only: bool) -> list[str]:
    """``MkdirAll(dir, 0750)`` + ``CleanupPluginDirectory``: every entry that is not a
    directory is removed, except ``keep`` (only sockets with ``sockets_only``). Returns the
    names removed."""
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    removed: list[str] = []
    with os.scandir(directory) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        if name == keep:
            continue
        path = directory / name
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            log_event(logging.WARNING, "cleanup_stat_failed", path=path, error=exc)
            continue
        if stat.S_ISDIR(mode) or (sockets_only and not stat.S_ISSOCK(mode)):
            continue
        try:
            os.remove(path)
        except OSError as exc:
            log_event(logging.WARNING, "cleanup_remove_failed", path=path, error=exc)
            continue
        removed.append(name)
    return removed


def remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
