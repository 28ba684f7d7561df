"""Directory watching: one inotify instance for the whole host, stat polling as a fallback.

Subscribers name a directory and get a callback with the name of the entry that changed
(or None when anything may have changed: a queue overflow, the directory itself went away
or came back, a poll saw a difference). A subscriber that cares about a few entries only
names them, and other entries' events never reach it (the kubelet's socket dir sees a
checkpoint write per pod admission; every resource watches that dir for two names).
Callbacks run on the event loop and must be cheap: they set an event that the subscriber's
own task waits on. Nothing in here wakes up while nothing changes.

A mount made or gone changes what a path reaches with no inotify event: `Watcher.follow_mounts`
reports changes of the mount table instead (`mount_table`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .dir_signature import DirSignature, dir_signature, dir_signatures
from .files import DaemonThreads, Offload
from .logs import EventLogger
from .mount_table import MountCallback, MountTable

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


_EVENT_HEADER = struct.Struct("iIII")
"""struct inotify_event: wd, mask, cookie, len (then `len` bytes of NUL-padded name)."""
_READ_SIZE = 64 * 1024


@dataclass(eq=False)
class Subscription:
    directory: str
    callback: WatchCallback
    names: frozenset[str] | None = None
    """The entries whose events reach `callback` (None: every entry's); events that may
    concern any entry (name None) always do."""
    _watcher: Watcher | None = field(default=None, repr=False)

    def cancel(self) -> None:
        if self._watcher is not None:
            self._watcher.unsubscribe(self)
            self._watcher = None


class Watcher(Protocol):
    def subscribe(
        self, directory: str, callback: WatchCallback, names: Iterable[str] | None = None
    ) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    async def run(self) -> None: ...

    def follow_mounts(self, callback: MountCallback) -> bool:
        """Call `callback` (on the loop) whenever the host's mount table changes from now
        on; False: this watcher cannot say (nothing will be called)."""
        ...

    @property
    def kind(self) -> str: ...


def new_subscription(
    directory: str, callback: WatchCallback, names: Iterable[str] | None, watcher: Watcher
) -> Subscription:
    return Subscription(
        os.path.normpath(directory),
        callback,
        None if names is None else frozenset(names),
        watcher,
    )


class _SubscriberIndex:
    def __init__(self) -> None:
        self.by_dir: dict[str, list[Subscription]] = {}
        """Every subscription of a directory."""
        self._any: dict[str, list[Subscription]] = {}
        """Those that want every entry's events."""
        self._by_name: dict[tuple[str, str], list[Subscription]] = {}
        """Those that named the entry."""

    def _lists(self, subscription: Subscription) -> list[list[Subscription]]:
        directory = subscription.directory
        if subscription.names is None:
            return [self._any.setdefault(directory, [])]
        return [self._by_name.setdefault((directory, n), []) for n in subscription.names]

    def add(self, subscription: Subscription) -> bool:
        """Returns True if this is the first subscriber of its directory."""
        subs = self.by_dir.setdefault(subscription.directory, [])
        subs.append(subscription)
        for listed in self._lists(subscription):
            listed.append(subscription)
        return len(subs) == 1

    def remove(self, subscription: Subscription) -> bool:
        """Returns True if the directory has no subscriber left."""
        subs = self.by_dir.get(subscription.directory, [])
        if subscription in subs:
            subs.remove(subscription)
            for listed in self._lists(subscription):
                listed.remove(subscription)
        directory = subscription.directory
        if not self._any.get(directory, True):
            del self._any[directory]
        for name in subscription.names or ():
            if not self._by_name.get((directory, name), True):
                del self._by_name[directory, name]
        if not subs:
            self.by_dir.pop(directory, None)
            return True
        return False

    def notify(self, directory: str, name: str | None, log: EventLogger) -> None:
        if name is None:
            subs = list(self.by_dir.get(directory, ()))
        else:
            subs = [*self._any.get(directory, ()), *self._by_name.get((directory, name), ())]
        for sub in subs:
            try:
                sub.callback(name)
            except Exception:
                log.exception("watch_callback_failed", dir=directory)

    def notify_all(self, log: EventLogger) -> None:
        for directory in list(self.by_dir):
            self.notify(directory, None, log)


class InotifyWatcher:
    """All directory watches of the host on one inotify file descriptor.

    asyncinotify makes the descriptor and the watches (`Inotify`, `add_watch`, `rm_watch`).
    The events are read here, when the loop says the descriptor is readable, in the
    kernel's own format (inotify(7): a fixed header, then the name): no task, future,
    `Path` or flag object per event. The kubelet's socket dir sees four events per pod
    admission (its checkpoint written and renamed), each woke every resource's task.

    asyncinotify is imported here, not with the module: on systems without inotify (macOS)
    it fails at import or at first use, with errors that are not always OSError, and the
    host must still start with the polling watcher.
    """

    kind = "inotify"

    def __init__(
        self,
        log: EventLogger,
        retry_interval: float = 0.5,
        mounts: Callable[[EventLogger], MountTable | None] = MountTable.open,
    ) -> None:
        from asyncinotify import Inotify, Mask

        self._log = log
        self._dir_mask = _dir_mask(Mask)
        self._overflow = int(Mask.Q_OVERFLOW)
        self._gone = int(Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF)
        self._appeared = int(Mask.CREATE | Mask.MOVED_TO)
        self._inotify = Inotify()
        self._subs = _SubscriberIndex()
        self._watches: dict[str, Watch] = {}
        self._dirs_of_wd: dict[int, list[str]] = {}
        """Watched directories by watch descriptor (one inode reached by two paths is one
        watch for both)."""
        self._pending: set[str] = set()
        self._retry_wanted = asyncio.Event()
        self._retry_interval = retry_interval
        self._closed = False
        """The descriptor is closed (`run` ended): subscriptions may still be cancelled."""
        self._mounts = mounts(log)

    def follow_mounts(self, callback: MountCallback) -> bool:
        if self._mounts is None or self._closed:
            return False
        self._mounts.follow(callback)
        return True

    def subscribe(
        self, directory: str, callback: WatchCallback, names: Iterable[str] | None = None
    ) -> Subscription:
        subscription = new_subscription(directory, callback, names, self)
        if self._subs.add(subscription):
            self._add_watch(subscription.directory)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subs.remove(subscription):
            self._pending.discard(subscription.directory)
            watch = self._watches.pop(subscription.directory, None)
            if watch is not None:
                sharing = self._dirs_of_wd.get(watch.wd, [])
                with contextlib.suppress(ValueError):
                    sharing.remove(subscription.directory)
                if not sharing:
                    self._dirs_of_wd.pop(watch.wd, None)
                    if not self._closed:
                        with contextlib.suppress(OSError):
                            self._inotify.rm_watch(watch)

    def _add_watch(self, directory: str) -> bool:
        try:
            if self._closed:
                raise OSError("the inotify descriptor is closed")
            watch = self._inotify.add_watch(directory, self._dir_mask)
        except OSError:
            self._pending.add(directory)
            self._retry_wanted.set()
            return False
        self._watches[directory] = watch
        sharing = self._dirs_of_wd.setdefault(watch.wd, [])
        if directory not in sharing:
            sharing.append(directory)
        self._pending.discard(directory)
        return True

    def _retry_pending(self, directories: Iterable[str] | None = None) -> None:
        """Watch the missing `directories` (None: all) that are there now."""
        for directory in list(self._pending if directories is None else directories):
            if self._add_watch(directory):
                self._log.debug("watch_added", dir=directory)
                self._subs.notify(directory, None, self._log)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self._inotify.fd
        os.set_blocking(fd, False)
        failed: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                self._read_events()
            except Exception as exc:
                loop.remove_reader(fd)
                if not failed.done():
                    failed.set_exception(exc)

        retry = asyncio.create_task(self._retry_pending_forever(), name="inotify-retry")
        loop.add_reader(fd, readable)
        mounts = self._mounts
        if mounts is not None:
            mounts.attach(loop)
        try:
            await failed
        finally:
            loop.remove_reader(fd)
            retry.cancel()
            self._closed = True
            self._inotify.close()
            if mounts is not None:
                mounts.detach(loop)
                mounts.close()

    def _read_events(self) -> None:
        """Dispatch the events one read of the (non-blocking) descriptor returns. The loop
        calls again while more are queued, so a flood of events cannot starve it."""
        try:
            data = os.read(self._inotify.fd, _READ_SIZE)
        except BlockingIOError:
            return
        offset, end = 0, len(data)
        while offset < end:
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            offset += _EVENT_HEADER.size
            name = data[offset : offset + length].split(b"\0", 1)[0]
            offset += length
            self._dispatch(mask, wd, os.fsdecode(name) if name else None)

    async def _retry_pending_forever(self) -> None:
        """Directories that do not exist yet (a socket dir before the kubelet made it): tried
        again every `retry_interval` while there are any, and not at all otherwise."""
        while True:
            await self._retry_wanted.wait()
            while self._pending:
                await asyncio.sleep(self._retry_interval)
                self._retry_pending()
            self._retry_wanted.clear()

    def _dispatch(self, mask: int, wd: int, name: str | None) -> None:
        if mask & self._overflow:
            self._log.warning("inotify_overflow", action="rescan_all")
            self._subs.notify_all(self._log)
            return
        # A removed watch's last events may still arrive: they concern no one.
        directories = tuple(self._dirs_of_wd.get(wd, ()))
        if mask & self._gone:
            self._dirs_of_wd.pop(wd, None)
            for directory in directories:
                watch = self._watches.get(directory)
                if watch is not None and watch.wd == wd:
                    del self._watches[directory]
                if directory in self._subs.by_dir:
                    self._pending.add(directory)
                    self._retry_wanted.set()
                self._subs.notify(directory, None, self._log)
            return
        for directory in directories:
            self._subs.notify(directory, name, self._log)
        if name is not None and mask & self._appeared and self._pending:
            # a missing directory made in a watched one is watched at once (the others at
            # the next retry: trying every one on every event cost a failed watch each)
            made = [os.path.join(directory, name) for directory in directories]
            self._retry_pending([path for path in made if path in self._pending])


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

    def subscribe(
        self, directory: str, callback: WatchCallback, names: Iterable[str] | None = None
    ) -> Subscription:
        subscription = new_subscription(directory, callback, names, self)
        if self._subs.add(subscription):
            self._seen[subscription.directory] = dir_signature(subscription.directory)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subs.remove(subscription):
            self._seen.pop(subscription.directory, None)

    def follow_mounts(self, callback: MountCallback) -> bool:
        """Not followed: a poll sees a change late anyway, and nothing is kept on it."""
        return False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            directories = list(self._seen)
            signatures = await self._offload.run(functools.partial(dir_signatures, directories))
            for directory, signature in zip(directories, signatures, strict=True):
                if directory in self._seen and self._seen[directory] != signature:
                    self._seen[directory] = signature
                    self._subs.notify(directory, None, self._log)


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
