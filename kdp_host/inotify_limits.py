"""The kernel's inotify limits as the watcher meets them: the per-user watch limit
(`max_user_watches`), why a directory that is there was refused a watch (`refusal`), and the
share of it the trees pods hold mounted may take (`host_tree_limit`)."""

from __future__ import annotations

import errno
from typing import Final

MAX_USER_WATCHES: Final = "/proc/sys/fs/inotify/max_user_watches"


def max_user_watches() -> int | None:
    """The node's per-user inotify watch limit, or None where it cannot be read."""
    try:
        with open(MAX_USER_WATCHES, encoding="ascii") as file:
            return int(file.read(32).strip())
    except (OSError, ValueError):
        return None


def refusal(exc: OSError) -> str:
    """Why inotify refused a directory that is there, with what to do about it."""
    why = f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror or exc}"
    if exc.errno == errno.ENOSPC:
        return f"{why} (the inotify watch limit is reached: raise fs.inotify.max_user_watches)"
    return why


HOST_TREE_LIMIT: Final = 8192
"""Directories followed below claimed directories on the host in all, at most: the inotify
watch limit (`fs.inotify.max_user_watches`) is shared with the watches every resource needs
and with every other process of root on the node (the kubelet's, the runtime's)."""
HOST_TREE_SHARE: Final = 4
"""...and at most 1/n of that limit (8,192 before Linux 5.11: 2,048, hostile13 M9)."""


def host_tree_limit(watch_budget: int | None) -> int:
    """Directories followed below claimed ones in all, given the node's watch limit."""
    share = HOST_TREE_LIMIT if watch_budget is None else watch_budget // HOST_TREE_SHARE
    return max(0, min(HOST_TREE_LIMIT, share))
