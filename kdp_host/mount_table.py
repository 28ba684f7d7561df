"""Changes of the process's mount table: a mount made or removed in the host's mount
namespace changes what a path reaches with no inotify event anywhere; the kernel reports it
on /proc/self/mountinfo instead (POLLPRI|POLLERR). The watcher (`watch.Watcher.follow_mounts`)
hands it on."""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable

from .logs import EventLogger

MountCallback = Callable[[], None]

MOUNTINFO = "/proc/self/mountinfo"
"""Where Linux reports a change of the process's mount table (poll: POLLPRI|POLLERR)."""


class MountTable:
    """Changes of the process's mount table, on the watcher's loop.

    /proc/self/mountinfo is always readable, so the loop cannot wait for it to be: an epoll
    instance of its own waits for its POLLPRI (a change), and the loop waits for that
    instance's descriptor to be readable (`attach`). Opened at construction, so a change
    made before the loop runs is still reported. `open` is None where the file is absent or
    cannot be polled (not Linux, /proc not mounted): the caller says so once.
    """

    def __init__(self, fd: int, poller: select.epoll, log: EventLogger) -> None:
        self._fd = fd
        self._poller = poller
        self._log = log
        self._callbacks: list[MountCallback] = []

    @classmethod
    def open(cls, log: EventLogger, path: str = MOUNTINFO) -> MountTable | None:
        fd = poller = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            poller = select.epoll()
            poller.register(fd, select.EPOLLPRI | select.EPOLLERR)
        except (OSError, AttributeError) as exc:  # (AttributeError: no epoll, not Linux)
            if poller is not None:
                poller.close()
            if fd is not None:
                os.close(fd)
            log.warning(
                "mount_changes_unwatched",
                path=path,
                reason=f"{type(exc).__name__}: {exc}",
                consequence="every Allocate resolves the paths it hands out",
            )
            return None
        return cls(fd, poller, log)

    def follow(self, callback: MountCallback) -> None:
        self._callbacks.append(callback)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self._poller.fileno(), self._changed)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._poller.fileno())

    def close(self) -> None:
        self._poller.close()
        os.close(self._fd)

    def _changed(self) -> None:
        # The loop's own check of the epoll instance already took the change from the
        # file (its poll is what clears it): this poll only empties the instance's ready list
        # (else the loop would call again at once), and may find nothing.
        self._poller.poll(0)
        self._log.debug("mount_table_changed", action="paths resolved again")
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                self._log.exception("watch_callback_failed", dir=MOUNTINFO)
