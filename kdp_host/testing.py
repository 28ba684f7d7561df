"""Fakes for testing drivers (and anything else built on `DriverDeps`), on public seams only.

A driver is driven through its public methods with these in place of the outside world:

    clock = ManualClock()
    watcher = ManualWatcher()
    driver = make_driver(config, driver_deps(clock=clock, watcher=watcher))
    notifier = RecordingNotifier()
    await driver.step(notifier)          # one scan and merge, as the scan loop does it
    assert notifier.devices[...]...
    clock.advance(5)                     # the grace period runs on the manual clock
    watcher.change("/dev")               # what inotify would report

Tests and benchmarks import them from here (the way trio ships `trio.testing`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .devices import Device
from .drivers.base import DriverDeps, DriverError, Skipped
from .files import DaemonThreads, FileReader, Offload
from .identity import PathReach
from .logs import EventLogger, get_logger
from .mount_table import MountCallback
from .safety_net import SafetyNet
from .watch import Subscription, UnwatchedReport, WatchCallback, new_subscription


@dataclass
class ManualClock:
    """A monotonic clock that moves only when told."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingNotifier:
    """A Notifier that keeps what it was told: the last list, every failure, every scan."""

    devices: dict[str, Device] = field(default_factory=dict)
    """The last complete list, by ID."""
    skipped: tuple[Skipped, ...] = ()
    updates: int = 0
    failures: list[DriverError] = field(default_factory=list)
    scans: list[float] = field(default_factory=list)
    """Seconds each scan took."""
    dropped: int = 0

    def update(
        self,
        devices: Iterable[Device] | Mapping[str, Device],
        skipped: Sequence[Skipped] = (),
        reached: Mapping[str, PathReach] | None = None,
    ) -> None:
        items = devices.values() if isinstance(devices, Mapping) else devices
        self.devices = {device.id: device for device in items}
        self.skipped = tuple(skipped)
        self.updates += 1

    def failure(self, error: DriverError) -> None:
        self.failures.append(error)

    def scanned(self, seconds: float) -> None:
        self.scans.append(seconds)

    def rate_limited(self, dropped: int) -> None:
        self.dropped += dropped

    async def taken(self) -> None:
        """Every list is taken when given."""

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """What the last list left out: reason -> subjects."""
        out: dict[str, list[str]] = {}
        for item in self.skipped:
            out.setdefault(item.reason, []).append(item.subject)
        return out


class ManualWatcher:
    """A Watcher that reports what the test says changed (`change`, `change_mounts`),
    nothing else. `mounts=False`: one that cannot follow the mount table (no
    /proc/self/mountinfo to poll)."""

    kind = "manual"
    watch_budget: int | None = None

    def __init__(self, mounts: bool = True) -> None:
        self._subscriptions: list[Subscription] = []
        self._mounts = mounts
        self._mount_callbacks: list[MountCallback] = []
        self.refusing: dict[str, str] = {}
        """Directory -> why it cannot be watched (`refused`), as the test says."""
        self.rewatched: list[list[str]] = []
        """The mount points of each `rewatch`."""

    @property
    def directories(self) -> set[str]:
        """The directories subscribed to now."""
        return {subscription.directory for subscription in self._subscriptions}

    def subscribe(
        self,
        directory: str,
        callback: WatchCallback,
        names: Iterable[str] | None = None,
        *,
        entries: bool = False,
    ) -> Subscription:
        subscription = new_subscription(directory, callback, names, self, entries)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def change(self, directory: str, name: str | None = None, *, entry: bool = True) -> None:
        """Tell the subscribers of `directory` that `name` (None: anything) changed; with
        `entry` False, only its attributes or contents did (inotify's ATTRIB, CLOSE_WRITE:
        not told to `Subscription.entries` subscribers)."""
        for subscription in list(self._subscriptions):
            if (entry or not subscription.entries) and (
                subscription.directory == os.path.normpath(directory)
                and (name is None or subscription.names is None or name in subscription.names)
            ):
                subscription.callback(name)

    def follow_mounts(self, callback: MountCallback) -> bool:
        if self._mounts:
            self._mount_callbacks.append(callback)
        return self._mounts

    def report_unwatched(self, report: UnwatchedReport) -> None:
        """Every directory is watched (nothing to refuse)."""
        report(0)

    def refused(self, directory: str) -> str | None:
        return self.refusing.get(os.path.normpath(directory))

    def rewatch(self, points: Collection[str]) -> None:
        """Noted (`rewatched`): a subscription here names a path, not what it reaches."""
        self.rewatched.append(sorted(points))

    def change_mounts(self) -> None:
        """Tell the followers of the mount table that it changed (a mount made or gone)."""
        for callback in list(self._mount_callbacks):
            callback()

    async def run(self) -> None:
        await asyncio.Event().wait()


def driver_deps(
    *,
    log: EventLogger | None = None,
    watcher: ManualWatcher | None = None,
    clock: ManualClock | None = None,
    files: FileReader | None = None,
    offload: Offload | None = None,
    safety_net: SafetyNet | None = None,
    local: Callable[[Collection[str]], bool] | None = None,
) -> DriverDeps:
    """DriverDeps for a test: a ManualWatcher and a ManualClock unless given."""
    return DriverDeps(
        log or get_logger(),
        watcher or ManualWatcher(),
        clock=clock or ManualClock(),
        files=files or FileReader(),
        offload=offload or DaemonThreads(),
        safety_net=safety_net,
        local=local,
    )


__all__ = ["ManualClock", "ManualWatcher", "RecordingNotifier", "driver_deps"]
