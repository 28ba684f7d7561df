"""Directory watching: one inotify instance for the whole host, stat polling as a fallback.

Subscribers name a directory and get a callback with the name of the entry that changed
(or None when anything may have changed: a queue overflow, the directory itself went away
or came back, a poll saw a difference). Callbacks run on the event loop and must be cheap:
they set an event that the subscriber's own task waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .files import DaemonThreads, Offload
from .logs import EventLogger

if TYPE_CHECKING:
    from asyncinotify import Mask, Watch

WatchCallback = Callable[[str | None], None]


def _dir_mask(mask: type[Mask]) -> Mask:
    return (
        mask.CREATE
        | mask.DELETE
        | mask.MOVED_FROM
        | mask.MOVED_TO
        | mask.ATTRIB
        | mask.CLOSE_WRITE
        | mask.DELETE_SELF
        | mask.MOVE_SELF
        | mask.ONLYDIR
    )


@dataclass(eq=False)
class Subscription:
    directory: str
    callback: WatchCallback
    _watcher: Watcher | None = field(default=None, repr=False)

    def cancel(self) -> None:
        if self._watcher is not None:
            self._watcher.unsubscribe(self)
            self._watcher = None


class Watcher(Protocol):
    def subscribe(self, directory: str, callback: WatchCallback) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    async def run(self) -> None: ...

    @property
    def kind(self) -> str: ...


class _SubscriberIndex:
    def __init__(self) -> None:
        self.by_dir: dict[str, list[Subscription]] = {}

    def add(self, subscription: Subscription) -> bool:
        """Returns True if this is the first subscriber of its directory."""
        subs = self.by_dir.setdefault(subscription.directory, [])
        subs.append(subscription)
        return len(subs) == 1

    def remove(self, subscription: Subscription) -> bool:
        """Returns True if the directory has no subscriber left."""
        subs = self.by_dir.get(subscription.directory, [])
        if subscription in subs:
            subs.remove(subscription)
        if not subs:
            self.by_dir.pop(subscription.directory, None)
            return True
        return False

    def notify(self, directory: str, name: str | None, log: EventLogger) -> None:
        for sub in list(self.by_dir.get(directory, ())):
            try:
                sub.callback(name)
            except Exception:
                log.exception("watch_callback_failed", dir=directory)

    def notify_all(self, log: EventLogger) -> None:
        for directory in list(self.by_dir):
            self.notify(directory, None, log)


class InotifyWatcher:
    """All directory watches of the host on one inotify file descriptor.

    asyncinotify is imported here, not with the module: on systems without inotify (macOS)
    it fails at import or at first use, with errors that are not always OSError, and the
    host must still start with the polling watcher.
    """

    kind = "inotify"

    def __init__(self, log: EventLogger, retry_interval: float = 0.5) -> None:
        from asyncinotify import Inotify, Mask

        self._log = log
        self._mask_type = Mask
        self._dir_mask = _dir_mask(Mask)
        self._inotify = Inotify()
        self._subs = _SubscriberIndex()
        self._watches: dict[str, Watch] = {}
        self._pending: set[str] = set()
        self._retry_interval = retry_interval

    def subscribe(self, directory: str, callback: WatchCallback) -> Subscription:
        directory = os.path.normpath(directory)
        subscription = Subscription(directory, callback, self)
        if self._subs.add(subscription):
            self._add_watch(directory)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subs.remove(subscription):
            self._pending.discard(subscription.directory)
            watch = self._watches.pop(subscription.directory, None)
            if watch is not None:
                with contextlib.suppress(OSError):
                    self._inotify.rm_watch(watch)

    def _add_watch(self, directory: str) -> bool:
        try:
            self._watches[directory] = self._inotify.add_watch(directory, self._dir_mask)
        except OSError:
            self._pending.add(directory)
            return False
        self._pending.discard(directory)
        return True

    def _retry_pending(self) -> None:
        for directory in list(self._pending):
            if self._add_watch(directory):
                self._log.debug("watch_added", dir=directory)
                self._subs.notify(directory, None, self._log)

    async def run(self) -> None:
        retry = asyncio.create_task(self._retry_pending_forever(), name="inotify-retry")
        try:
            async for event in self._inotify:
                self._dispatch(event.mask, event.watch, event.name)
                if self._pending:
                    self._retry_pending()
        finally:
            retry.cancel()
            self._inotify.close()

    async def _retry_pending_forever(self) -> None:
        """Directories that do not exist yet (a socket dir before the kubelet made it)."""
        while True:
            await asyncio.sleep(self._retry_interval)
            if self._pending:
                self._retry_pending()

    def _dispatch(self, mask: Mask, watch: Watch | None, name: os.PathLike[str] | None) -> None:
        flags = self._mask_type
        if flags.Q_OVERFLOW in mask:
            self._log.warning("inotify_overflow", action="rescan_all")
            self._subs.notify_all(self._log)
            return
        if watch is None:
            return
        directory = os.path.normpath(str(watch.path))
        if flags.IGNORED in mask or flags.DELETE_SELF in mask or flags.MOVE_SELF in mask:
            if self._watches.get(directory) is watch:
                del self._watches[directory]
                if directory in self._subs.by_dir:
                    self._pending.add(directory)
            self._subs.notify(directory, None, self._log)
            return
        self._subs.notify(directory, None if name is None else os.fspath(name), self._log)


class PollingWatcher:
    """Stat polling for hosts without inotify: compares inode and change times of directories."""

    kind = "poll"

    def __init__(
        self, log: EventLogger, interval: float = 1.0, offload: Offload | None = None
    ) -> None:
        self._log = log
        self._interval = interval
        self._offload = offload or DaemonThreads()
        self._subs = _SubscriberIndex()
        self._seen: dict[str, DirSignature | None] = {}

    def subscribe(self, directory: str, callback: WatchCallback) -> Subscription:
        directory = os.path.normpath(directory)
        subscription = Subscription(directory, callback, self)
        if self._subs.add(subscription):
            self._seen[directory] = dir_signature(directory)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subs.remove(subscription):
            self._seen.pop(subscription.directory, None)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            directories = list(self._seen)
            signatures = await self._offload.run(functools.partial(dir_signatures, directories))
            for directory, signature in zip(directories, signatures, strict=True):
                if directory in self._seen and self._seen[directory] != signature:
                    self._seen[directory] = signature
                    self._subs.notify(directory, None, self._log)


def dir_signatures(directories: list[str]) -> list[DirSignature | None]:
    return [dir_signature(d) for d in directories]


DirSignature = tuple[int, int, int]


def dir_signature(directory: str) -> DirSignature | None:
    """Inode, modification and change time of a directory: any entry added, removed or
    renamed in it changes the signature."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def make_watcher(
    log: EventLogger,
    *,
    prefer_inotify: bool = True,
    inotify: Callable[[EventLogger], Watcher] = InotifyWatcher,
    offload: Offload | None = None,
) -> Watcher:
    """An inotify watcher where the system has one, else the polling watcher.

    Any failure to set up inotify falls back: an OSError on Linux without inotify
    instances left, an ImportError or AttributeError where libc has no inotify (macOS).
    """
    if prefer_inotify:
        try:
            return inotify(log)
        except Exception as exc:
            log.warning(
                "inotify_unavailable", reason=f"{type(exc).__name__}: {exc}", fallback="poll"
            )
    return PollingWatcher(log, offload=offload)
