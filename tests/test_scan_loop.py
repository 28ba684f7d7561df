"""The one scan loop of the watching drivers (`drivers/scanning.py`) and the driver
registry, driven through the public fakes of `kdp_host.testing`."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import pytest

from kdp_host.config import GlobDriverConfig, GlobGroupMemberConfig, ShellDriverConfig
from kdp_host.config.model import DRIVERS
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers import REGISTRY, DriverError, failure_threshold, make_driver
from kdp_host.drivers.glob import GlobDriver, GlobScan
from kdp_host.drivers.glob_groups import GlobGroupScan
from kdp_host.drivers.grace import Tracker
from kdp_host.drivers.scanner import DirWatch, Listed, Notice, ScanResult, ScanSettings
from kdp_host.drivers.scanning import MAX_NAMED_CHANGES, ScanLoop, wait_for_change
from kdp_host.files import DaemonThreads
from kdp_host.testing import ManualClock, ManualWatcher, RecordingNotifier, driver_deps

from .conftest import wait_until

T = TypeVar("T")


def device(device_id: str, *paths: str) -> Device:
    return Device(id=device_id, nodes=tuple(DeviceNode(p, p) for p in paths))


# --------------------------------------------------------------------------- registry


def test_every_driver_kind_is_registered_with_its_config() -> None:
    assert set(REGISTRY) == set(DRIVERS)
    for kind, registered in REGISTRY.items():
        assert registered.config is DRIVERS[kind], kind
    deps = driver_deps()
    assert isinstance(make_driver(GlobDriverConfig(paths=("/x/*",)), deps), GlobDriver)
    groups = GlobDriverConfig(group=(GlobGroupMemberConfig(path="/x{key}"),))
    grouped = make_driver(groups, deps)
    assert isinstance(grouped, GlobDriver) and isinstance(grouped.scanner, GlobGroupScan)
    assert failure_threshold(ShellDriverConfig(command=("true",), failure_threshold=7)) == 7
    assert failure_threshold(GlobDriverConfig(paths=("/x/*",))) == 3


# --------------------------------------------------------------------------- the grace period


def test_a_vanished_device_is_unhealthy_for_the_grace_period_then_dropped() -> None:
    clock = ManualClock()
    tracker = Tracker(10.0, clock)
    a, b = device("a", "/dev/a"), device("b", "/dev/b")
    listed, expiry = tracker.merge(ScanResult({"a": a, "b": b}))
    assert listed == {"a": a, "b": b} and expiry is None
    clock.advance(1)
    listed, expiry = tracker.merge(ScanResult({"a": a}))
    assert not listed["b"].healthy and expiry == clock.now + 10
    vanished = listed["b"]
    clock.advance(5)
    listed, _ = tracker.merge(ScanResult({"a": a}))
    assert listed["b"] is vanished, "the Unhealthy copy is reused"
    clock.advance(5)
    listed, expiry = tracker.merge(ScanResult({"a": a}))
    assert list(listed) == ["a"] and expiry is None


def test_a_lost_node_makes_its_device_unhealthy_unless_it_moved_or_was_optional() -> None:
    clock = ManualClock()
    tracker = Tracker(10.0, clock)
    two = device("a", "/dev/a0", "/dev/a1")
    tracker.merge(ScanResult({"a": two}, places={"a": "/sys/1-1"}))
    listed, expiry = tracker.merge(
        ScanResult({"a": device("a", "/dev/a0")}, places={"a": "/sys/1-1"})
    )
    assert not listed["a"].healthy and expiry == clock.now + 10
    assert [n.host_path for n in listed["a"].nodes] == ["/dev/a0"]
    clock.advance(10)
    listed, expiry = tracker.merge(
        ScanResult({"a": device("a", "/dev/a0")}, places={"a": "/sys/1-1"})
    )
    assert listed["a"].healthy and expiry is None
    # moved to another place: the nodes it had elsewhere are not lost
    tracker.merge(ScanResult({"a": two}, places={"a": "/sys/1-1"}))
    listed, _ = tracker.merge(ScanResult({"a": device("a", "/dev/b0")}, places={"a": "/sys/1-2"}))
    assert listed["a"].healthy
    # an optional node may come and go
    optional = Device(
        id="o",
        nodes=(DeviceNode("/dev/o0", "/dev/o0"), DeviceNode("/dev/o1", "/dev/o1", optional=True)),
    )
    tracker.merge(ScanResult({"o": optional}))
    listed, _ = tracker.merge(ScanResult({"o": device("o", "/dev/o0")}))
    assert listed["o"].healthy


def test_a_grace_period_of_zero_drops_at_once() -> None:
    tracker = Tracker(0.0, ManualClock())
    tracker.merge(ScanResult({"a": device("a", "/dev/a0", "/dev/a1")}))
    listed, expiry = tracker.merge(ScanResult({"a": device("a", "/dev/a0")}))
    assert listed["a"].healthy and expiry is None
    listed, expiry = tracker.merge(ScanResult({}))
    assert listed == {} and expiry is None


# --------------------------------------------------------------------------- the loop


class FakeScanner:
    """Lists one device per file in `directory`, watches the directory, counts its scans."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.scans = 0
        self.seen: list[Listed] = []
        self.changed: list[frozenset[str] | None] = []
        self.block = threading.Event()
        self.block.set()
        self.entered = 0
        """Scans begun (told what changed), held or not at `block`."""

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        self.entered += 1
        self.block.wait(30)
        self.scans += 1
        self.seen.append(listed)
        self.changed.append(changed)
        dirs.watch(str(self.directory))
        names = sorted(os.listdir(self.directory))
        devices = {n: device(n, str(self.directory / n)) for n in names}
        return ScanResult(devices, notices=() if names else (Notice("no_devices_match"),))


def old_dir(path: Path) -> None:
    os.utime(path, (1_000_000, 1_000_000))  # not "just changed"


async def test_a_watched_change_wakes_the_loop_and_an_unchanged_directory_skips_rescans(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    scanner = FakeScanner(tmp_path)
    loop = ScanLoop(scanner, ScanSettings(0.02, 60.0, 5.0), driver_deps(watcher=watcher))
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    try:
        await wait_until(lambda: list(notifier.devices) == ["a"])
        assert watcher.directories == {str(tmp_path)}
        await wait_until(lambda: notifier.updates >= 5, what="safety-net wake-ups")
        assert scanner.scans == 1, "the directory did not change: no rescan"
        (tmp_path / "b").touch()
        old_dir(tmp_path)  # the mtime looks old; the watch says it changed
        watcher.change(str(tmp_path), "b")
        await wait_until(lambda: list(notifier.devices) == ["a", "b"])
        # (a safety-net check between the touch and old_dir may have seen it first)
        assert scanner.scans in (2, 3)
        assert scanner.seen[1].devices.keys() == {"a"}, "the scan reads what was listed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert watcher.directories == set(), "cancelled: every watch is dropped"


class GatedOffload:
    """The host's offload; `arm()` holds the next call at two gates a test opens: before it
    runs (`before`) and before its answer is handed back (`after`)."""

    def __init__(self) -> None:
        self.inner = DaemonThreads()
        self.armed = False
        self.before, self.after = asyncio.Event(), asyncio.Event()
        self.waiting = self.ran = self.calls = 0

    def arm(self) -> None:
        self.armed = True
        self.before.clear()
        self.after.clear()

    async def run(self, function: Callable[[], T]) -> T:
        self.calls += 1
        if not self.armed:
            return await self.inner.run(function)
        self.armed = False
        self.waiting += 1
        await self.before.wait()
        result = await self.inner.run(function)
        self.ran += 1
        await self.after.wait()
        return result


async def answer_then_three_more_checks(offload: GatedOffload, notifier: RecordingNotifier) -> None:
    """Hand back the held check's answer, then let three more safety-net checks pass."""
    offload.after.set()
    updates = notifier.updates
    await wait_until(lambda: notifier.updates >= updates + 3, what="more checks")


async def stop_gated(task: asyncio.Task[None], offload: GatedOffload) -> None:
    offload.before.set()
    offload.after.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_check_that_saw_a_change_before_the_scan_that_read_it_adds_no_scan(
    tmp_path: Path,
) -> None:
    """The safety net's check sees a change; the watch wakes the loop, which scans
    everything; the check's answer comes after that scan: it is about what the scan read,
    so no second scan (the flaky 3 == 2 of the test above, made certain). (A scan of the
    named paths alone vouches for nothing else: the test below.)"""
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    offload = GatedOffload()
    scanner = FakeScanner(tmp_path)
    loop = ScanLoop(
        scanner, ScanSettings(0.02, 60.0, 5.0), driver_deps(watcher=watcher, offload=offload)
    )
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    try:
        await wait_until(lambda: notifier.updates >= 3, what="safety-net checks")
        assert scanner.scans == 1
        offload.arm()  # the next call is the safety net's check
        await wait_until(lambda: offload.waiting == 1, what="a check about to look")
        (tmp_path / "b").touch()
        old_dir(tmp_path)  # not "just changed": the check sees it by the directory's ctime
        offload.before.set()
        await wait_until(lambda: offload.ran == 1, what="the check saw the change")
        watcher.change(str(tmp_path))  # the watch wakes the loop, which scans everything
        await wait_until(lambda: list(notifier.devices) == ["a", "b"], what="scanned")
        assert scanner.scans == 2
        await answer_then_three_more_checks(offload, notifier)  # the answer: "changed"
        assert scanner.scans == 2
    finally:
        await stop_gated(task, offload)


async def test_a_check_that_began_during_the_first_scan_adds_no_scan(tmp_path: Path) -> None:
    """A safety-net check that looks while the first scan still runs has nothing to compare
    with ("changed"); its answer comes once that scan is done, and is about no scan at all:
    no second scan (the flaky 2 == 1 of the first loop test, made certain)."""
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    offload = GatedOffload()
    scanner = FakeScanner(tmp_path)
    scanner.block.clear()  # the first scan waits in its thread
    loop = ScanLoop(
        scanner,
        ScanSettings(0.02, 60.0, 30.0),
        driver_deps(watcher=ManualWatcher(), offload=offload),
    )
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    try:
        await wait_until(lambda: offload.calls == 1, what="the first scan started")
        offload.arm()  # the next call is a safety-net check
        await wait_until(lambda: offload.waiting == 1, what="a check about to look")
        offload.before.set()
        await wait_until(lambda: offload.ran == 1, what="the check looked during the scan")
        scanner.block.set()
        await wait_until(lambda: list(notifier.devices) == ["a"], what="the first scan's list")
        await answer_then_three_more_checks(offload, notifier)  # "changed", after the scan
        assert scanner.scans == 1
    finally:
        scanner.block.set()
        await stop_gated(task, offload)


async def test_a_full_rescan_runs_every_n_intervals_when_asked(tmp_path: Path) -> None:
    old_dir(tmp_path)
    scanner = FakeScanner(tmp_path)
    # (no spacing: the safety net's 10 ms interval is shorter than the default spacing)
    settings = ScanSettings(0.01, 60.0, 5.0, full_rescan_every=3, spacing=0.0)
    loop = ScanLoop(scanner, settings, driver_deps())
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    try:
        await wait_until(lambda: notifier.updates >= 9)
        assert 2 <= scanner.scans <= notifier.updates // 3 + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_hung_scan_is_a_timeout_and_is_never_started_twice(tmp_path: Path) -> None:
    scanner = FakeScanner(tmp_path)
    scanner.block.clear()
    loop = ScanLoop(scanner, ScanSettings(60.0, 60.0, 0.1), driver_deps())
    notifier = RecordingNotifier()
    try:
        await loop.step(notifier)
        await loop.step(notifier)
        assert [f.reason for f in notifier.failures] == ["timeout", "timeout"]
        assert "still stuck" in str(notifier.failures[1])
        assert len(notifier.scans) == 2 and notifier.updates == 0
    finally:
        scanner.block.set()
    await loop.step(notifier)
    assert scanner.scans == 1, "the stuck scan's result was taken, no second scan ran"
    assert notifier.updates == 1
    await loop.step(notifier)
    assert scanner.scans == 2


async def test_a_scan_that_raises_is_an_io_failure(tmp_path: Path) -> None:
    loop = ScanLoop(FakeScanner(tmp_path / "missing"), ScanSettings(60.0, 60.0, 5.0), driver_deps())
    notifier = RecordingNotifier()
    await loop.step(notifier)
    assert [f.reason for f in notifier.failures] == ["io"]
    with pytest.raises(DriverError, match="scan failed"):
        await loop.scan()


async def test_notices_are_logged_when_they_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop = ScanLoop(FakeScanner(tmp_path), ScanSettings(60.0, 60.0, 5.0), driver_deps())
    notifier = RecordingNotifier()
    for _ in range(3):
        await loop.step(notifier)
    assert [r.getMessage() for r in caplog.records].count("no_devices_match") == 1
    (tmp_path / "a").touch()
    await loop.step(notifier)
    (tmp_path / "a").unlink()
    await loop.step(notifier)
    assert [r.getMessage() for r in caplog.records].count("no_devices_match") == 2


def test_the_group_scan_is_no_kind_of_glob_scan() -> None:
    assert not issubclass(GlobGroupScan, GlobScan)


async def test_the_scanner_is_told_what_the_watcher_named(tmp_path: Path) -> None:
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    scanner = FakeScanner(tmp_path)
    loop = ScanLoop(scanner, ScanSettings(60.0, 60.0, 5.0), driver_deps(watcher=watcher))
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    try:
        await wait_until(lambda: watcher.directories == {str(tmp_path)})
        watcher.change(str(tmp_path), "b")
        watcher.change(str(tmp_path), "c")
        await wait_until(lambda: scanner.scans >= 2)
        await wait_until(lambda: notifier.updates >= scanner.scans)
        named = set().union(*(c or () for c in scanner.changed[1:]))
        assert named == {str(tmp_path / "b"), str(tmp_path / "c")}
        count = scanner.scans
        watcher.change(str(tmp_path), None)  # a queue overflow: anything may have changed
        await wait_until(lambda: scanner.scans > count)
        assert scanner.changed[count] is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert scanner.changed[0] is None, "the first scan looks at everything"


def test_the_cheap_path_check_agrees_with_the_nodes() -> None:
    """The reporter checks every device of every list for `,` (DeviceNode objects are made
    only for the devices that have one)."""
    compact = Device(id="a", nodes=(DeviceNode("/dev/a,b", "/dev/a,b"),), path="/dev/a,b")
    plain = device("p", "/dev/p")
    inside = Device(id="c", nodes=(DeviceNode("/dev/c", "/x,y/c"), DeviceNode("/dev/d", "/d")))
    for item in (compact, plain, inside):
        expected = any("," in n.host_path or "," in n.container_path for n in item.nodes)
        assert item.any_node_path_contains(",") == expected, item.id
    assert [compact.any_node_path_contains(","), plain.any_node_path_contains(",")] == [
        True,
        False,
    ]


async def test_a_flood_of_named_changes_makes_a_full_scan(tmp_path: Path) -> None:
    """Past MAX_NAMED_CHANGES names between two scans the loop stops listing them (bounded
    memory) and the next scan looks at everything."""
    watcher = ManualWatcher()
    scanner = FakeScanner(tmp_path)
    loop = ScanLoop(scanner, ScanSettings(60.0, 60.0, 5.0), driver_deps(watcher=watcher))
    notifier = RecordingNotifier()
    await loop.step(notifier)  # subscribes to tmp_path
    watcher.change(str(tmp_path), "few")
    await loop.step(notifier, incremental=True)
    for number in range(MAX_NAMED_CHANGES + 10):
        watcher.change(str(tmp_path), f"n{number}")
    await loop.step(notifier, incremental=True)
    assert scanner.changed == [None, frozenset({str(tmp_path / "few")}), None]


async def test_changes_that_keep_coming_are_gathered_into_one_scan_per_spacing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """hostile4 H7: a loop creating and removing files made one scan (and one published
    list) per event, and every other resource's Allocate waited. A change after a quiet
    spell is scanned at once; changes that keep coming wait for the spacing, and all that
    came meanwhile are one scan of the names involved, the flood logged once."""
    import logging

    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    scanner = FakeScanner(tmp_path)
    spacing = 3600.0  # the second scan waits for good: nothing else can make it
    settings = ScanSettings(60.0, 60.0, 5.0, spacing=spacing, burst=1)
    loop = ScanLoop(scanner, settings, driver_deps(watcher=watcher))
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    try:
        with caplog.at_level(logging.INFO):
            await wait_until(lambda: list(notifier.devices) == ["a"])
            for i in range(200):  # a flood, the loop running in between
                watcher.change(str(tmp_path), f"f{i}")
                await asyncio.sleep(0)
            await wait_until(lambda: loop.spaced == 1, what="the wake-up waiting")
            for _ in range(20):
                await asyncio.sleep(0)
        assert scanner.scans == 1, "no scan per event"
        assert [r.getMessage() for r in caplog.records].count("scans_spaced") == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # the same with a spacing that passes: every name gathered goes to the next scan
    scanner = FakeScanner(tmp_path)
    settings = ScanSettings(60.0, 60.0, 5.0, spacing=1.0, burst=1)  # (longer than a scan)
    loop = ScanLoop(scanner, settings, driver_deps(watcher=watcher))
    task = asyncio.create_task(loop.run(RecordingNotifier()))
    try:
        await wait_until(lambda: scanner.scans == 1 and str(tmp_path) in watcher.directories)
        watcher.change(str(tmp_path), "g0")
        await wait_until(lambda: loop.spaced == 1, what="the wake-up waiting")
        names = [f"g{i}" for i in range(1, 100)]
        for name in names:  # all before the loop runs again
            watcher.change(str(tmp_path), name)
        await wait_until(lambda: scanner.scans == 2)
        assert scanner.changed[-1] == frozenset(str(tmp_path / n) for n in ["g0", *names])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_hot_plug_burst_is_scanned_at_once_change_by_change(tmp_path: Path) -> None:
    """The bound on a flood must not delay a hot-plug: a device's nodes appearing one after
    another, or a remove and a re-add, are each scanned at once (the burst); only changes
    beyond the burst wait for the spacing."""
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    scanner = FakeScanner(tmp_path)
    settings = ScanSettings(60.0, 60.0, 5.0, spacing=3600.0, burst=4)
    loop = ScanLoop(scanner, settings, driver_deps(watcher=watcher))
    task = asyncio.create_task(loop.run(RecordingNotifier()))
    try:
        # the first scan takes one of the four; its directory is watched once it is in
        await wait_until(lambda: scanner.scans == 1 and str(tmp_path) in watcher.directories)
        for i in range(3):
            watcher.change(str(tmp_path), f"n{i}")
            await wait_until(lambda i=i: scanner.scans == i + 2, what=f"change {i} scanned")
        assert loop.spaced == 0
        watcher.change(str(tmp_path), "n3")  # beyond the burst: waits for the spacing
        await wait_until(lambda: loop.spaced == 1, what="the wake-up waiting")
        assert scanner.scans == 4
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_changes_named_before_a_scan_begins_are_its_own_and_a_burst_during_it_one_more(
    tmp_path: Path,
) -> None:
    """Issue 19, sysfs flapping: the kernel makes several events per hot-plug (a node made,
    then its permissions, the next node). Those named after a scan was asked for but before
    its thread began to read are read by that scan: no scan of their own (each made one more
    scan, told the names the first had read). Those named while it reads make one scan after
    it, however many."""
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    scanner = FakeScanner(tmp_path)
    offload = GatedOffload()
    deps = driver_deps(watcher=watcher, offload=offload)
    loop = ScanLoop(scanner, ScanSettings(60.0, 60.0, 5.0), deps)
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    directory = str(tmp_path)
    try:
        await wait_until(lambda: scanner.scans == 1 and directory in watcher.directories)
        await wait_until(lambda: notifier.updates == 1)
        offload.arm()
        watcher.change(directory, "n0")  # scanned at once...
        await wait_until(lambda: offload.waiting == 1, what="the scan asked for")
        before = [f"n{i}" for i in range(10)]
        for name in before[1:]:  # ...but its thread has not begun yet
            watcher.change(directory, name)
        scanner.block.clear()
        offload.before.set()
        await wait_until(lambda: scanner.entered == 2, what="the scan begun")
        during = [f"m{i}" for i in range(10)]
        for name in during:  # named while it reads
            watcher.change(directory, name)
        scanner.block.set()
        offload.after.set()
        await wait_until(lambda: scanner.scans == 3 and notifier.updates == 3)
        watcher.change(directory, "last")  # (any scan still to come would be told it too)
        await wait_until(lambda: str(tmp_path / "last") in set().union(*scanner.changed[1:]))
        await wait_until(lambda: notifier.updates == scanner.scans)
    finally:
        await stop_gated(task, offload)
    assert scanner.changed[1:] == [
        frozenset(str(tmp_path / n) for n in before),
        frozenset(str(tmp_path / n) for n in during),
        frozenset({str(tmp_path / "last")}),
    ]


async def test_a_wake_up_that_comes_as_the_grace_period_ends_is_not_lost() -> None:
    """The loop waits for a wake-up or the next grace expiry. A change named in the turn
    the expiry's timeout fires sets the event, but the wait is already cancelled: it ended
    as "not woken", the loop then cleared the event and only merged, and the named change
    waited for the next event or the safety net (up to `rescanInterval`)."""

    class SetAsTheTimeoutFires(asyncio.Event):
        async def wait(self) -> Literal[True]:
            self.set()  # (set in the very turn the timeout cancels the waiting task)
            await asyncio.Event().wait()
            return True

    wake = SetAsTheTimeoutFires()
    clock = ManualClock()
    assert await wait_for_change(wake, clock.now, clock)


class NotingScanner(FakeScanner):
    """A FakeScanner that notes when it read each file it lists (`DirWatch.read_at`: the
    loop's clock before listing), and can be held after reading (`after_read`)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.after_read = threading.Event()
        self.after_read.set()
        self.read = 0
        """Scans that have listed the directory (held at `after_read` or not)."""

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        self.entered += 1
        self.block.wait(30)
        clock = dirs.clock
        before = clock() if clock is not None else None
        names = sorted(os.listdir(self.directory))
        if before is not None:
            dirs.read_at.update((str(self.directory / n), before) for n in names)
        self.read += 1
        self.after_read.wait(30)
        self.scans += 1
        self.changed.append(changed)
        dirs.watch(str(self.directory))
        return ScanResult({n: device(n, str(self.directory / n)) for n in names})


async def test_changes_during_a_scan_to_paths_it_reads_later_make_no_scan_of_their_own(
    tmp_path: Path,
) -> None:
    """Issue 19, sysfs flapping: a device's other node (and more events of the first) named
    while the scan of its first node runs, before the scan read them, are in its answer: no
    scan follows (each made one more, told the names the scan had read). A change named
    after the scan read its path (or for a path it did not read) still makes one more
    scan, told that path alone, and its answer is listed: nothing is lost."""
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    scanner = NotingScanner(tmp_path)
    loop = ScanLoop(scanner, ScanSettings(60.0, 60.0, 5.0), driver_deps(watcher=watcher))
    notifier = RecordingNotifier()
    task = asyncio.create_task(loop.run(notifier))
    directory = str(tmp_path)

    def named(*names: str) -> frozenset[str]:
        return frozenset(str(tmp_path / n) for n in names)

    try:
        await wait_until(lambda: notifier.updates == 1 and directory in watcher.directories)
        scanner.block.clear()
        (tmp_path / "b").touch()
        watcher.change(directory, "b")  # the device's first node: a scan begins
        await wait_until(lambda: scanner.entered == 2, what="the scan begun")
        (tmp_path / "c").touch()
        for _ in range(5):  # its second node, and more events of both, before the read
            watcher.change(directory, "c")
            watcher.change(directory, "b")
        scanner.block.set()
        await wait_until(lambda: list(notifier.devices) == ["a", "b", "c"], what="b and c")
        watcher.change(directory, "mark")  # a scan still to come would come before this one
        await wait_until(lambda: scanner.scans == 3, what="the scan of the mark")
        assert scanner.changed[1:] == [named("b"), named("mark")]
        # after the read: one more scan, however many events, and it is listed
        scanner.after_read.clear()
        watcher.change(directory, "c")
        await wait_until(lambda: scanner.read == 4, what="the scan has read")
        (tmp_path / "b").unlink()
        for _ in range(5):
            watcher.change(directory, "b")
        watcher.change(directory, "ghost")  # a path it never read
        scanner.after_read.set()
        await wait_until(lambda: not notifier.devices["b"].healthy, what="b gone")
        watcher.change(directory, "mark")
        await wait_until(lambda: scanner.changed[-1] == named("mark"), what="the mark")
        assert scanner.changed[3:] == [named("c"), named("b", "ghost"), named("mark")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_change_the_watcher_missed_is_found_though_a_later_one_was_named(
    tmp_path: Path,
) -> None:
    """The safety net compares the watched directories with what they were when the last
    scan that looked at everything began. A scan told what the watcher named looks at
    those paths alone (a glob `Delta`): it signed the directories too, so a change the
    watcher missed just before a change it named was never looked for again."""
    (tmp_path / "a").touch()
    old_dir(tmp_path)
    watcher = ManualWatcher()
    config = GlobDriverConfig(paths=(f"{tmp_path}/*",), rescan_interval=0.05)
    driver = GlobDriver(config, driver_deps(watcher=watcher, clock=ManualClock()))
    notifier = RecordingNotifier()
    task = asyncio.create_task(driver.run(notifier))
    try:
        await wait_until(lambda: list(notifier.devices) == ["a"])
        await wait_until(lambda: notifier.updates >= 3, what="safety-net checks")
        (tmp_path / "missed").touch()  # (its event lost)
        (tmp_path / "named").touch()
        old_dir(tmp_path)  # (not "just changed": only the ctime tells)
        watcher.change(str(tmp_path), "named")
        await wait_until(lambda: "named" in notifier.devices, what="the named change")
        await wait_until(lambda: "missed" in notifier.devices, what="the safety net's rescan")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ------------------------------------------------------------------- public seams only


def test_no_test_reaches_for_a_private_method_of_a_driver() -> None:
    """Issue 20 item 14: tests drive the drivers through `kdp_host.testing` and the scanners'
    public methods (`step`, `scan_once`, `scan`), never a driver's private method: not
    called, not wrapped, not replaced. Every `x._name` in tests/ (on anything but a class's
    own `self`/`cls`) whose name is a private method of kdp_host/drivers or kdp_host/sysfs
    fails, and so does a `getattr`/`setattr` (or `monkeypatch.setattr`) naming one."""
    import ast

    root = Path(__file__).resolve().parent.parent
    private: set[str] = set()
    for package in ("drivers", "sysfs"):
        for source in (root / "kdp_host" / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_def and node.name.startswith("_") and not node.name.endswith("__"):
                    private.add(node.name)
    assert "_scan_sync" in private  # (the walk finds them)
    uses = []
    for path in sorted((root / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private:
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    uses.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Call):
                function = node.func
                called = function.id if isinstance(function, ast.Name) else None
                if isinstance(function, ast.Attribute):
                    called = function.attr  # (monkeypatch.setattr, ...)
                named = {a.value for a in node.args if isinstance(a, ast.Constant)}
                if called in ("getattr", "setattr", "hasattr", "delattr") and named & private:
                    uses.append(f"{path.relative_to(root)}:{node.lineno}: {called}")
    assert not uses, "\n".join(uses)
