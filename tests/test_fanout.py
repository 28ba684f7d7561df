"""Glob patterns over symlink fan-out (a directory whose entries link back to it): the walk
is bounded (`rules.MAX_MATCHED_PATHS`, checked while matching), a scan the loop abandoned at
its timeout stops at its next entry, repeated skips are one summary line, and the other
resources go on."""

from __future__ import annotations

import asyncio
import gc
import glob
import threading
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.drivers import DriverDeps, DriverError
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.glob_walk import glob_paths
from kdp_host.drivers.scanner import DirWatch, Listed, ScanGuard, ScanResult, ScanSettings
from kdp_host.drivers.scanning import ScanLoop
from kdp_host.first_list import FirstList
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.watch import PollingWatcher

from .conftest import reporter, wait_until


def fan_out(root: Path, ways: int) -> Path:
    """`root/l/f`, a file, and `root/l/d0..` links to `root/l`: `l/d*/d*/f` matches
    ways**2 paths, all `l/f`."""
    top = root / "l"
    top.mkdir()
    (top / "f").touch()
    for index in range(ways):
        (top / f"d{index}").symlink_to(top)
    return top


def test_glob_paths_lists_what_glob_lists(tmp_path: Path) -> None:
    top = fan_out(tmp_path, 3)
    (top / ".hidden").touch()
    (top / "d0x").mkdir()
    for pattern in (
        f"{top}/d*/d*/f",
        f"{top}/*",
        f"{top}/.*",
        f"{top}/d[01]/*/f",
        f"{top}/d?/",
        f"{top}/f",
        f"{top}/nothing*/f",
    ):
        assert sorted(glob_paths(pattern, ScanGuard())) == sorted(glob.glob(pattern)), pattern


def test_the_walk_stops_at_the_limit_naming_pattern_and_limit(tmp_path: Path) -> None:
    top = fan_out(tmp_path, 10)
    pattern = f"{top}/d*/d*/d*/f"  # 10 + 100 + 1000 directories on the way, 1000 paths
    guard = ScanGuard(max_matched=200)
    walked = glob_paths(pattern, guard)
    with pytest.raises(DriverError) as raised:
        for _ in walked:
            pass
    assert raised.value.reason == "too_many_paths"
    assert pattern in str(raised.value) and "200" in str(raised.value)
    assert guard.matched == 201  # stopped while walking, not after listing everything


def test_an_abandoned_walk_stops_at_its_next_entry(tmp_path: Path) -> None:
    top = fan_out(tmp_path, 4)
    guard = ScanGuard()
    walked = glob_paths(f"{top}/d*/d*/f", guard)
    next(walked)
    guard.abandon()
    with pytest.raises(DriverError) as raised:
        next(walked)
    assert raised.value.reason == "abandoned"


async def test_fan_out_fails_the_scan_keeps_the_list_and_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    top = fan_out(tmp_path, 1)
    neighbour = tmp_path / "b"
    neighbour.mkdir()
    watcher = PollingWatcher(get_logger(), interval=0.05)
    log = get_logger().bind(resource="t.io/r")
    fanned = GlobDriverConfig(paths=(f"{top}/d*/d*/d*/f",), rescan_interval=0.1, grace_period=0)
    other = GlobDriverConfig(paths=(f"{neighbour}/b*",), rescan_interval=60, grace_period=0)
    tables = DeviceTable(), DeviceTable()
    metrics = Metrics()
    fan_reporter = reporter(tables[0], metrics)
    drivers = (
        GlobDriver(fanned, DriverDeps(log, watcher), max_matched_paths=500),
        GlobDriver(other, DriverDeps(log, watcher)),
    )
    tasks = [asyncio.create_task(watcher.run())]
    tasks += [
        asyncio.create_task(driver.run(notifier))
        for driver, notifier in zip(drivers, (fan_reporter, reporter(tables[1])), strict=True)
    ]
    try:
        await wait_until(lambda: len(tables[0].snapshot.devices) == 1, what="first list")
        for index in range(1, 10):  # 1000 paths to one file, 1110 with the directories
            (top / f"d{index}").symlink_to(top)
        await wait_until(lambda: fan_reporter.consecutive_failures > 0, what="scan failure")
        (neighbour / "b1").touch()
        await wait_until(lambda: len(tables[1].snapshot.devices) == 1, what="neighbour hot-plug")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [d.healthy for d in tables[0].snapshot.devices] in ([True], [False])  # kept
    failures = [r for r in caplog.records if r.getMessage() == "probe_failed"]
    assert failures, "the failed scan is logged"
    record: Any = failures[0]
    text = str(record.__dict__)
    assert "too_many_paths" in text and "500" in text and f"{top}/d*/d*/d*/f" in text


async def test_repeated_skips_are_one_summary_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    top = fan_out(tmp_path, 6)  # 216 paths to one file: 215 skipped as the same device
    watcher = PollingWatcher(get_logger(), interval=0.05)
    config = GlobDriverConfig(paths=(f"{top}/d*/d*/d*/f",), rescan_interval=60, grace_period=0)
    table = DeviceTable()
    driver = GlobDriver(config, DriverDeps(get_logger().bind(resource="t.io/r"), watcher))
    task = asyncio.create_task(driver.run(reporter(table)))
    try:
        await wait_until(lambda: len(table.snapshot.devices) == 1, what="first list")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    messages = [r.getMessage() for r in caplog.records]
    assert "path_skipped" not in messages
    summaries = [r for r in caplog.records if r.getMessage() == "paths_skipped"]
    assert len(summaries) == 1
    fields = str(summaries[0].__dict__)
    assert "same_device" in fields and "215" in fields


class _Stuck:
    """A scanner that walks until abandoned, after the test lets it start."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.stopped = threading.Event()
        self.calls = 0

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        self.calls += 1
        if self.calls > 1:
            return ScanResult({})
        try:
            self.go.wait(60)
            while True:
                dirs.guard.entry()
                threading.Event().wait(0.001)
        finally:
            self.stopped.set()


async def test_a_timed_out_scan_thread_stops_and_the_next_scan_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scanner = _Stuck()
    loop = ScanLoop(
        scanner, ScanSettings(60, 0, 0.2), DriverDeps(get_logger(), PollingWatcher(get_logger()))
    )
    with pytest.raises(DriverError) as raised:
        await loop.scan_once()
    assert raised.value.reason == "timeout"
    scanner.go.set()
    await asyncio.to_thread(scanner.stopped.wait, 30)
    assert scanner.stopped.is_set(), "the abandoned walk stopped"
    outcomes: list[str] = []
    while len(outcomes) < 3:  # the abandoned scan's end may still be on its way to the loop
        try:
            result = await loop.scan_once()
        except DriverError as exc:
            outcomes.append(exc.reason)
            continue
        outcomes.append("scanned")
        break
    assert outcomes[-1] == "scanned" and result.devices == {}
    assert scanner.calls == 2  # a fresh scan ran once the abandoned one had stopped


async def test_first_list_failure_leaves_no_unretrieved_exception() -> None:
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        first = FirstList([asyncio.Event()])
        waiting = asyncio.create_task(first.wait(get_logger()))
        await asyncio.sleep(0)
        first.failed("timeout")
        await waiting
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert not reports, reports
