"""The inotify watcher: all directory watches of the host on one inotify descriptor, and
`make_watcher`, which falls back to stat polling (`watch.PollingWatcher`) where there is none.

A directory that is there but cannot be watched (the kernel's inotify watch limit,
`fs.inotify.max_user_watches`, reached: ENOSPC; no permission) is tried again as a missing one
is; meanwhile its changes are seen only by the safety-net rescan. It is logged once
(`watch_refused`, and `watch_recovered` when a later try succeeds) and counted
(`Watcher.report_unwatched`: `kdp_watch_unwatched_directories`), never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import struct
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from .files import Offload
from .inotify_limits import max_user_watches, refusal
from .logs import EventLogger
from .mount_table import MountCallback, MountTable
from .watch import (
    PollingWatcher,
    SubscriberIndex,
    Subscription,
    UnwatchedReport,
    WatchCallback,
    Watcher,
    new_subscription,
)

if TYPE_CHECKING:
    from asyncinotify import Mask, Watch

_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR})
"""add_watch errors that mean the directory is not there (yet): tried again, not reported."""


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
        self._moved = int(Mask.MOVE_SELF)
        self._appeared = int(Mask.CREATE | Mask.MOVED_TO)
        self._content = int(Mask.ATTRIB | Mask.CLOSE_WRITE)
        """An entry's attributes or contents changed (not heard by `Subscription.entries`)."""
        self._kept_kinds = self._overflow | self._gone
        """Events dispatched also when their name was dispatched in the same read."""
        self._inotify = Inotify()
        self._subs = SubscriberIndex()
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
        self._refused: dict[str, str] = {}
        """Pending directories that are there but could not be watched, with why."""
        self._report_unwatched: UnwatchedReport | None = None
        self.watch_budget = max_user_watches()
        self._look: select.poll | None = None
        """The descriptor and the mount table's, asked at once (`untold`)."""

    def report_unwatched(self, report: UnwatchedReport) -> None:
        self._report_unwatched = report
        report(len(self._refused))

    @property
    def directories(self) -> set[str]:
        """The directories watched now."""
        return set(self._watches)

    def refused(self, directory: str) -> str | None:
        return self._refused.get(os.path.normpath(directory))

    def untold(self) -> bool | None:
        """Whether a change may be made that the subscribers were not told of: an event the
        kernel holds unread, or a change of the mount table not told (`MountTable.noticed`);
        one poll, asked now. None where it cannot say (the descriptor closed, the mount
        table not followed)."""
        mounts = self._mounts
        if self._closed or mounts is None:
            return None
        if mounts.due:
            return True
        if self._look is None:
            self._look = select.poll()
            self._look.register(self._inotify.fd, select.POLLIN)
            self._look.register(mounts.fd, select.POLLPRI | select.POLLERR)
        untold = False
        for fd, events in self._look.poll(0):
            if fd != mounts.fd:
                untold = True
            elif events & (select.POLLPRI | select.POLLERR):
                mounts.noticed()
                untold = True
        return untold

    def watching(self, directory: str) -> bool | None:
        """Whether `directory` (subscribed to) is watched now; None: it is not there (tried
        again when it is made in a watched directory, and every retry); False: refused."""
        if directory in self._watches:
            return True
        return None if directory in self._pending and directory not in self._refused else False

    def follow_mounts(self, callback: MountCallback) -> bool:
        if self._mounts is None or self._closed:
            return False
        self._mounts.follow(callback)
        return True

    def subscribe(
        self,
        directory: str,
        callback: WatchCallback,
        names: Iterable[str] | None = None,
        *,
        entries: bool = False,
    ) -> Subscription:
        subscription = new_subscription(directory, callback, names, self, entries)
        if self._subs.add(subscription):
            self._add_watch(subscription.directory)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subs.remove(subscription):
            self._pending.discard(subscription.directory)
            self._set_refused(subscription.directory, None)
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

    def rewatch(self, points: Collection[str]) -> None:
        """A watch is on an inode: after a mount at or above a watched directory it hears
        the covered directory, not the mounted one (and, the mount gone, the one that was
        mounted). Each directory subscribed to at or below `points` is watched anew, and its
        subscribers told anything in it may have changed where its watch is another now."""
        for directory in self._subs.at_or_below(points):
            old = self._watches.pop(directory, None)
            if old is None:
                continue  # (not there: tried again every retry, as before)
            sharing = self._dirs_of_wd.get(old.wd, [])
            with contextlib.suppress(ValueError):
                sharing.remove(directory)
            self._add_watch(directory)  # (not there now: pending, as a missing one is)
            new = self._watches.get(directory)
            if new is not None and new.wd == old.wd:
                continue  # (the same directory)
            if not sharing and self._dirs_of_wd.pop(old.wd, None) is not None:
                with contextlib.suppress(OSError):  # (gone with its file system, maybe)
                    self._inotify.rm_watch(old)
            self._log.debug("watch_renewed", dir=directory, watched=new is not None)
            self._subs.notify(directory, None, self._log)

    def _add_watch(self, directory: str) -> bool:
        try:
            if self._closed:
                raise OSError("the inotify descriptor is closed")
            watch = self._inotify.add_watch(directory, self._dir_mask)
        except OSError as exc:
            self._pending.add(directory)
            self._retry_wanted.set()
            absent = exc.errno in _ABSENT or self._closed
            self._set_refused(directory, None if absent else refusal(exc))
            return False
        self._set_refused(directory, None)
        self._watches[directory] = watch
        sharing = self._dirs_of_wd.setdefault(watch.wd, [])
        if directory not in sharing:
            sharing.append(directory)
        self._pending.discard(directory)
        return True

    def _set_refused(self, directory: str, why: str | None) -> None:
        """Note that `directory` is (why: str) or is no longer (None) refused a watch."""
        known = self._refused.get(directory)
        if why == known:
            return
        if why is None:
            del self._refused[directory]
            if directory in self._subs.by_dir:
                self._log.info("watch_recovered", dir=directory)
        else:
            self._refused[directory] = why
            if known is None:
                self._log.warning(
                    "watch_refused",
                    dir=directory,
                    reason=why,
                    consequence="changes there are seen by the safety-net rescan only; "
                    "tried again every retry",
                )
        if self._report_unwatched is not None:
            self._report_unwatched(len(self._refused))

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
        calls again while more are queued, so a flood of events cannot starve it. A
        callback is told a name, not what happened to it: an event that names what an
        earlier one of the same read named (a file made, written and closed is three
        events; a churned directory makes and removes names by the thousand) is dispatched
        once, unless its kind matters here (overflow, a watch gone, a name that appeared
        while a directory waits to be made), or it is the name's first entry event after
        a content one (then only to `Subscription.entries` subscribers, the others heard
        it)."""
        try:
            data = os.read(self._inotify.fd, _READ_SIZE)
        except BlockingIOError:
            return
        seen: dict[tuple[int, bytes], bool] = {}
        """Names dispatched in this read, with whether an entry event of theirs was."""
        offset, end = 0, len(data)
        while offset < end:
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            offset += _EVENT_HEADER.size
            raw = data[offset : offset + length]
            offset += length
            entry = not mask & self._content
            again = False
            if not mask & (self._kept_kinds | (self._appeared if self._pending else 0)):
                before = seen.get((wd, raw))
                if before is not None:
                    if before or not entry:
                        continue
                    again = True  # (its content event reached all but `entries` subscribers)
                seen[wd, raw] = entry
            name = raw.split(b"\0", 1)[0]
            self._dispatch(mask, wd, os.fsdecode(name) if name else None, entry, again)

    async def _retry_pending_forever(self) -> None:
        """Directories that do not exist yet (a socket dir before the kubelet made it): tried
        again every `retry_interval` while there are any, and not at all otherwise."""
        while True:
            await self._retry_wanted.wait()
            while self._pending:
                await asyncio.sleep(self._retry_interval)
                self._retry_pending()
            self._retry_wanted.clear()

    def _dispatch(
        self, mask: int, wd: int, name: str | None, entry: bool = True, again: bool = False
    ) -> None:
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
                    if mask & self._moved:
                        # (the kernel keeps watching the inode where it went: one watch of
                        # the limit for as long as it lives, unless removed here)
                        with contextlib.suppress(OSError):
                            self._inotify.rm_watch(watch)
                if directory in self._subs.by_dir:
                    self._pending.add(directory)
                    self._retry_wanted.set()
                self._subs.notify(directory, None, self._log)
            return
        for directory in directories:
            self._subs.notify(directory, name, self._log, entry=entry, again=again)
        if name is not None and mask & self._appeared and self._pending:
            # a missing directory made in a watched one is watched at once (the others at
            # the next retry: trying every one on every event cost a failed watch each)
            made = [os.path.join(directory, name) for directory in directories]
            self._retry_pending([path for path in made if path in self._pending])


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
