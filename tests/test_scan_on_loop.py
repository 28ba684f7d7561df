"""A glob scan told what the watcher named in directories that wait on nothing but this
machine (`DriverDeps.local`) looks at those paths on the event loop, with no thread hop
(issue 19: a hot-plug's hops to the scan thread and back were a third of its time under
load); it follows no link there (a link may lead to a file system that hangs: the scan off
the loop answers), and what it finds is what a full scan finds. A path the watcher named
that is gone is handed to the ownership index as nothing there (`ScanResult.reached`), so
an unplug is admitted without resolving it again off the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import example, given, settings

from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.drivers import DeviceReporter
from kdp_host.drivers.glob import GlobDriver, GlobScan
from kdp_host.drivers.scanner import DirWatch, Listed, ScanResult
from kdp_host.files import DaemonThreads, FileReader
from kdp_host.identity import NOTHING, own_reach
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership import OwnedTable, OwnershipIndex
from kdp_host.ownership_claims import Reached, reach
from kdp_host.testing import ManualWatcher, RecordingNotifier, driver_deps

from .conftest import reporter, wait_table, wait_until
from .test_glob_incremental import REPLACED_DIR_LINK, Step, apply, outcome, steps

T = TypeVar("T")
FPGA = "vendor.example/fpga"


class CountingOffload:
    """The host's offload, counting the calls (each one a thread hop)."""

    def __init__(self) -> None:
        self.calls = 0
        self._threads = DaemonThreads()

    async def run(self, function: Callable[[], T]) -> T:
        self.calls += 1
        return await self._threads.run(function)


def asked_local(answer: bool, asked: list[set[str]]) -> Callable[[Collection[str]], bool]:
    def local(directories: Collection[str]) -> bool:
        asked.append(set(directories))
        return answer

    return local


@pytest.mark.parametrize("is_local", [True, False])
async def test_a_hot_plug_in_a_local_directory_is_looked_at_on_the_loop(
    tmp_path: Path, is_local: bool
) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "a0").touch()
    watcher, offload, asked = ManualWatcher(), CountingOffload(), list[set[str]]()
    deps = driver_deps(watcher=watcher, offload=offload, local=asked_local(is_local, asked))
    driver = GlobDriver(GlobDriverConfig(paths=(f"{dev}/a*",), grace_period=0.0), deps)
    notifier = RecordingNotifier()
    task = asyncio.create_task(driver.run(notifier))
    try:
        await wait_until(lambda: len(notifier.devices) == 1, what="the first list")
        first = offload.calls  # (the first scan looks at everything: off the loop)
        (dev / "a1").touch()
        watcher.change(str(dev), "a1")
        await wait_until(lambda: len(notifier.devices) == 2, what="the plugged device")
        (dev / "a0").unlink()
        watcher.change(str(dev), "a0")
        await wait_until(lambda: len(notifier.devices) == 1, what="the unplugged device gone")
        assert [d.path for d in notifier.devices.values()] == [str(dev / "a1")]
        assert asked and all(directories == {str(dev)} for directories in asked)
        if is_local:
            assert offload.calls == first, "no thread hop for a named path"
        else:
            assert offload.calls == first + 2, "a scan off the loop for each"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_scan_on_the_loop_follows_no_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named link is not followed on the loop (its target's file system may hang): the
    look declines, and the scan off the loop finds the device through it."""
    dev, real = tmp_path / "dev", tmp_path / "real"
    dev.mkdir()
    real.mkdir()
    (dev / "a0").touch()
    (real / "node").touch()
    scan = GlobScan(GlobDriverConfig(paths=(f"{dev}/a*",)), FileReader())
    first = scan.scan(Listed(), DirWatch(), None)
    assert scan.named_on_loop()
    (dev / "a1").symlink_to(real / "node")
    named = frozenset({str(dev / "a1")})
    followed: list[str] = []
    stat, realpath = os.stat, os.path.realpath

    def no_follow(path: str, *args: object, **kwargs: object) -> os.stat_result:
        followed.append(str(path))
        return stat(path, *args, **kwargs)  # type: ignore[arg-type]

    def no_realpath(path: str, *args: object, **kwargs: object) -> str:
        followed.append(str(path))
        return realpath(path, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(os, "stat", no_follow)
        patched.setattr(os.path, "realpath", no_realpath)
        assert scan.scan_on_loop(Listed(first.devices), DirWatch(), named) is None
    assert str(dev / "a1") not in followed, "the link was not followed on the loop"
    assert scan.named_on_loop(), "the scan off the loop answers from the same answer"
    result = scan.scan(Listed(first.devices), DirWatch(), named)
    assert sorted(d.path or "" for d in result.devices.values()) == [
        str(dev / "a0"),
        str(dev / "a1"),
    ]


@pytest.mark.parametrize("on_loop", [True, False])
def test_a_named_path_that_is_gone_is_handed_on_as_nothing_there(
    tmp_path: Path, on_loop: bool
) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("a0", "a1"):
        (dev / name).touch()
    scan = GlobScan(GlobDriverConfig(paths=(f"{dev}/a*",)), FileReader())
    first = scan.scan(Listed(), DirWatch(), None)
    gone = str(dev / "a0")
    os.unlink(gone)
    look = scan.scan_on_loop if on_loop else scan.scan
    result = look(Listed(first.devices), DirWatch(), frozenset({gone}))
    assert result is not None and result.reached is not None
    assert result.reached[gone] == own_reach(gone, {}) == reach(gone)
    assert result.reached[gone][0][0] == NOTHING


async def test_an_unplug_is_admitted_without_resolving_its_path_again(tmp_path: Path) -> None:
    """The index takes what the scan learnt of the path gone (its device's lingering
    claim: nothing there now) instead of resolving it off the loop once more."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("a0", "a1"):
        (dev / name).touch()
    looked: list[str] = []

    def counting(path: str) -> Reached | None:
        looked.append(path)
        return reach(path)

    metrics = Metrics()
    index = OwnershipIndex(metrics, counting, offload=DaemonThreads())
    table = DeviceTable()
    log = get_logger().bind(resource=FPGA)
    detach = index.attach(FPGA, table.publish, log)
    reporter = DeviceReporter(
        OwnedTable(index, FPGA, table), resource=FPGA, log=log, metrics=metrics, failure_threshold=3
    )
    watcher = ManualWatcher()
    index.watch(watcher)  # (as the host does: the index follows the claims' directories)
    config = GlobDriverConfig(paths=(f"{dev}/a*",), grace_period=0.0)
    driver = GlobDriver(config, driver_deps(watcher=watcher))
    try:
        await driver.step(reporter)
        await wait_table(table, lambda snapshot: len(snapshot.devices) == 2)
        await index.quiet()
        os.unlink(dev / "a0")
        watcher.change(str(dev), "a0")  # the index looks again at what it claimed there
        await asyncio.sleep(0)
        await index.quiet()
        assert looked == [str(dev / "a0")]
        await driver.step(reporter, incremental=True)  # the scan's list: a0 gone
        await wait_table(table, lambda snapshot: len(snapshot.devices) == 1)
        await index.quiet()
        assert looked == [str(dev / "a0")], "not resolved once more for the list"
    finally:
        detach()


class OnLoopFirst:
    """A glob scan that looks on the loop where it can, as the scan loop does, and off it
    (the full scan's answer) where the look declines."""

    def __init__(self, root: Path) -> None:
        config = GlobDriverConfig(paths=(f"{root}/dev/a*", f"{root}/dev/*0", f"{root}/dev/*/a1"))
        self.scan_ = GlobScan(config, FileReader())

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        if changed is not None and self.scan_.named_on_loop():
            answer = self.scan_.scan_on_loop(listed, dirs, changed)
            if answer is not None:
                return answer
        return self.scan_.scan(listed, DirWatch(), changed)


@settings(max_examples=60, deadline=None)
@given(steps)
@example(REPLACED_DIR_LINK)
def test_a_scan_on_the_loop_finds_what_a_full_scan_finds(chosen: list[Step]) -> None:
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        (root / "dev").mkdir()
        (root / "real").mkdir()
        (root / "real" / "a1").touch()
        config = GlobDriverConfig(paths=(f"{root}/dev/a*", f"{root}/dev/*0", f"{root}/dev/*/a1"))
        incremental = OnLoopFirst(root)
        listed = Listed()
        incremental.scan(listed, DirWatch(), None)
        for step in chosen:
            named = apply(root, step)
            result = incremental.scan(listed, DirWatch(), frozenset(named))
            fresh = GlobScan(config, FileReader()).scan(Listed(), DirWatch(), None)
            assert outcome(result) == outcome(fresh), step
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_changed_list_is_sent_before_its_log_line() -> None:
    """The ListAndWatch stream a publish wakes writes its list before the reporter's
    `devices_changed` line is written (the line held the update back, issue 19); the line
    still comes, in the same loop iteration."""
    table = DeviceTable()
    order: list[str] = []

    async def stream() -> None:  # (as `device_lists`: woken by the table's listener)
        await table.wait_newer(table.snapshot.version)
        order.append("list")

    class Noted(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            order.append(record.getMessage())

    listening = asyncio.create_task(stream())
    await asyncio.sleep(0)  # (listening)
    logger = logging.getLogger("kdp_host")  # (restored after the test: conftest)
    logger.setLevel(logging.INFO)
    logger.addHandler(Noted())
    reporter(table).update([Device(id="a0")])
    await asyncio.wait_for(listening, 10)
    await asyncio.sleep(0)
    assert order == ["list", "devices_changed"]
