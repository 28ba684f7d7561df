"""The kernel's inotify limits as the watcher meets them: the per-user watch limit
(`max_user_watches`) and why a directory that is there was refused a watch (`refusal`)."""

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
