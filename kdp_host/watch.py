"""Directory watching: one inotify instance for the whole host, stat polling as a fallback.

Subscribers name a directory and get a callback with the name of the entry that changed
(or None when anything may have changed: a queue overflow, the directory itself went away
or came back, a poll saw a difference). A subscriber that cares about a few entries only
names them, and other entries' events never reach it (the kubelet's socket dir sees a
checkpoint write per pod admission; every resource watches that dir for two names). A
subscriber whose answer depends only on which entries are there (`entries`: the sysfs
driver's node directories) hears entries made, removed or renamed, not an entry's
attributes or contents changing (a node created, then given its mode by udev, or a file
written and closed, is one change to it, not two or three).
Callbacks run on the event loop and must be cheap: they set an event that the subscriber's
own task waits on. Nothing in here wakes up while nothing changes.

A mount made or gone changes what a path reaches with no inotify event: `Watcher.follow_mounts`
reports changes of the mount table instead (`mount_table`).

The watchers: `inotify_watch.InotifyWatcher` (and `make_watcher`, which falls back to the
`PollingWatcher` here where the system has no inotify).
"""

from __future__ import annotations

import asyncio
import functools
import os
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .dir_signature import DirSignature, dir_signature, dir_signatures
from .files import DaemonThreads, Offload
from .logs import EventLogger
from .mount_table import MountCallback

WatchCallback = Callable[[str | None], None]
POLL = "poll"
"""`Watcher.kind` of the watcher that polls (`PollingWatcher`): it tells a change up to its
interval late, and names no entry."""
UnwatchedReport = Callable[[int], None]
"""Called with the number of directories that are there but cannot be watched."""


@dataclass(eq=False)
class Subscription:
    """A callback for the events of one directory (`Watcher.subscribe`)."""

    directory: str
    callback: WatchCallback
    names: frozenset[str] | None = None
    """The entries whose events reach `callback` (None: every entry's); events that may
    concern any entry (name None) always do."""
    entries: bool = False
    """Only entries made, removed or renamed reach `callback`, not an entry's attributes or
    contents changing (inotify's ATTRIB, CLOSE_WRITE)."""
    _watcher: Watcher | None = field(default=None, repr=False)

    def cancel(self) -> None:
        if self._watcher is not None:
            self._watcher.unsubscribe(self)
            self._watcher = None


class Watcher(Protocol):
    def subscribe(
        self,
        directory: str,
        callback: WatchCallback,
        names: Iterable[str] | None = None,
        *,
        entries: bool = False,
    ) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    async def run(self) -> None: ...

    def follow_mounts(self, callback: MountCallback) -> bool:
        """Call `callback` (on the loop) whenever the host's mount table changes from now
        on; False: this watcher cannot say (nothing will be called)."""
        ...

    def rewatch(self, points: Collection[str]) -> None:
        """The mount table changed at `points` (mounts made or gone): a directory subscribed
        to at or below one is watched at what its path reaches now (a watch stays on the
        directory it was added to, which a mount may cover), its subscribers told anything in
        it may have changed."""
        ...

    def report_unwatched(self, report: UnwatchedReport) -> None:
        """Call `report(n)` now and whenever the number of directories subscribed to that
        are there but cannot be watched changes (a watcher that cannot fail: always 0)."""
        ...

    def refused(self, directory: str) -> str | None:
        """Why `directory` (subscribed to, and there) cannot be watched now (the inotify
        watch limit reached), or None."""
        ...

    @property
    def kind(self) -> str: ...

    @property
    def watch_budget(self) -> int | None:
        """The watches this watcher's user may hold on the node in all, shared with every
        other process of that user (`fs.inotify.max_user_watches`); None: no such limit."""
        ...


class WatcherFactory(Protocol):
    """Makes a host's watcher (`inotify_watch.make_watcher`: inotify where the system has
    it, else polling)."""

    def __call__(self, log: EventLogger, *, offload: Offload | None = None) -> Watcher: ...


def new_subscription(
    directory: str,
    callback: WatchCallback,
    names: Iterable[str] | None,
    watcher: Watcher,
    entries: bool = False,
) -> Subscription:
    return Subscription(
        os.path.normpath(directory),
        callback,
        None if names is None else frozenset(names),
        entries,
        watcher,
    )


class SubscriberIndex:
    """Subscriptions by directory, and who hears an event."""

    def __init__(self) -> None:
        self.by_dir: dict[str, list[Subscription]] = {}
        """Every subscription of a directory."""
        self._any: dict[str, list[Subscription]] = {}
        """Those that want every entry's events."""
        self._by_name: dict[tuple[str, str], list[Subscription]] = {}
        """Those that named the entry."""
        self._ordered: list[str] | None = None
        """The directories subscribed to, sorted (made when a mount changed: `at_or_below`)."""

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
        if len(subs) == 1:
            self._ordered = None
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
            self._ordered = None
            return True
        return False

    def at_or_below(self, points: Iterable[str]) -> list[str]:
        """The directories subscribed to that are one of `points` or below one: found in
        their sorted list (a lookup per point: a pod's mounts far from every watched
        directory cost no walk of them)."""
        ordered = self._ordered
        if ordered is None:
            ordered = self._ordered = sorted(self.by_dir)
        found: dict[str, None] = {}
        for point in points:
            if point in self.by_dir:
                found[point] = None
            prefix = point.rstrip("/") + "/"
            at = bisect_left(ordered, prefix)
            while at < len(ordered) and ordered[at].startswith(prefix):
                found[ordered[at]] = None
                at += 1
        return list(found)

    def notify(
        self,
        directory: str,
        name: str | None,
        log: EventLogger,
        *,
        entry: bool = True,
        again: bool = False,
    ) -> None:
        """Call the subscribers who hear this event. `entry` False: an entry's attributes or
        contents changed (not heard by `Subscription.entries`); `again`: the others heard
        this name already (an earlier event of it in the same read), only those hear it."""
        if name is None:
            subs = list(self.by_dir.get(directory, ()))
        else:
            subs = [*self._any.get(directory, ()), *self._by_name.get((directory, name), ())]
        if again or not entry:
            subs = [sub for sub in subs if sub.entries == again]
        for sub in subs:
            try:
                sub.callback(name)
            except Exception:
                log.exception("watch_callback_failed", dir=directory)

    def notify_all(self, log: EventLogger) -> None:
        for directory in list(self.by_dir):
            self.notify(directory, None, log)


class PollingWatcher:
    """Stat polling for hosts without inotify: compares inode and change times of directories."""

    kind = POLL
    watch_budget = None

    def __init__(
        self, log: EventLogger, interval: float = 1.0, offload: Offload | None = None
    ) -> None:
        self._log = log
        self._interval = interval
        self._offload = offload or DaemonThreads()
        self._subs = SubscriberIndex()
        self._seen: dict[str, DirSignature | None] = {}

    def subscribe(
        self,
        directory: str,
        callback: WatchCallback,
        names: Iterable[str] | None = None,
        *,
        entries: bool = False,
    ) -> Subscription:
        """(A poll names no entry: `entries` changes nothing.)"""
        subscription = new_subscription(directory, callback, names, self, entries)
        if self._subs.add(subscription):
            self._seen[subscription.directory] = dir_signature(subscription.directory)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subs.remove(subscription):
            self._seen.pop(subscription.directory, None)

    def follow_mounts(self, callback: MountCallback) -> bool:
        """Not followed: a poll sees a change late anyway, and nothing is kept on it."""
        return False

    def rewatch(self, points: Collection[str]) -> None:
        """Nothing to do: a poll reads each path as it is now (and `follow_mounts` says it
        does not follow the mount table)."""

    def report_unwatched(self, report: UnwatchedReport) -> None:
        """A stat poll watches any directory: none is ever refused."""
        report(0)

    def refused(self, directory: str) -> str | None:
        """A stat poll watches any directory."""
        return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            directories = list(self._seen)
            signatures = await self._offload.run(functools.partial(dir_signatures, directories))
            for directory, signature in zip(directories, signatures, strict=True):
                if directory in self._seen and self._seen[directory] != signature:
                    self._seen[directory] = signature
                    self._subs.notify(directory, None, self._log)
