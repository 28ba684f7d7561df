"""The glob driver, the device table and the directory watchers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.glob_paths import DeviceIds, watch_dirs
from kdp_host.drivers.scanner import ScanGuard
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.watch import PollingWatcher, Watcher

from .conftest import reporter, wait_until


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("/dev/fpga0", "/dev/fpga*", "fpga0"),
        ("/dev/bus/usb/001/002", "/dev/bus/usb/*/*", "001-002"),
        ("/dev/serial/by-id/usb-FTDI_x-if00", "/dev/serial/by-id/*", "usb-FTDI_x-if00"),
        ("/opt/dev/fpga0", "/opt/dev/fpga[0-9]", "fpga0"),
    ],
)
def test_ids_are_readable_and_relative_to_the_fixed_directory(
    path: str, pattern: str, expected: str
) -> None:
    assert DeviceIds([pattern])(path) == expected


def test_ids_are_unique_stable_and_safe() -> None:
    paths = ["/dev/a/b-c", "/dev/a-b/c", "/dev/a/b_c", "/dev/a_b/c", "/dev/x y", "/dev/x_y"]
    device_id = DeviceIds(["/dev/*", "/dev/*/*"])
    ids = [device_id(p) for p in paths]
    assert len(set(ids)) == len(ids)
    assert ids == [device_id(p) for p in paths]
    long_id = device_id("/dev/" + "x" * 300)
    assert len(long_id) <= 128
    for device_id in [*ids, long_id]:
        assert all(c.isalnum() or c in "._-" for c in device_id), device_id


def test_watch_dirs_cover_wildcard_directories(tmp_path: Path) -> None:
    for bus in ("001", "002"):
        (tmp_path / "usb" / bus).mkdir(parents=True)
    dirs = watch_dirs(f"{tmp_path}/usb/*/*", ScanGuard())
    assert dirs[0] == f"{tmp_path}/usb"
    assert sorted(dirs[1:]) == [f"{tmp_path}/usb/001", f"{tmp_path}/usb/002"]
    assert watch_dirs(f"{tmp_path}/dev/fpga*", ScanGuard()) == [f"{tmp_path}/dev"]


def make_driver(config: GlobDriverConfig, watcher: Watcher, **options: Any) -> GlobDriver:
    log = get_logger().bind(resource="t.io/r")
    return GlobDriver(config, DriverDeps(log, watcher), **options)


async def test_scan_resolves_symlinks_and_applies_container_path(tmp_path: Path) -> None:
    (tmp_path / "ttyUSB0").touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-FTDI_A").symlink_to(tmp_path / "ttyUSB0")
    (by_id / "subdir").mkdir()
    config = GlobDriverConfig(paths=(f"{by_id}/*",), container_path="/dev/serial-{name}")
    devices = await make_driver(config, PollingWatcher(get_logger())).scan()
    # The ID is the real node's (outside the pattern's directory: hashed), never the link's.
    assert [d.id for d in devices] == [DeviceIds(config.paths)(str(tmp_path / "ttyUSB0"))]
    assert devices[0].id.startswith("ttyUSB0-")
    node = devices[0].nodes[0]
    assert node.host_path == str(tmp_path / "ttyUSB0")
    assert node.container_path == "/dev/serial-usb-FTDI_A"
    assert devices[0].path == str(by_id / "usb-FTDI_A")


@pytest.mark.parametrize("watcher_kind", ["inotify", "poll"])
async def test_hot_plug_vanish_grace_and_return(tmp_path: Path, watcher_kind: str) -> None:
    log = get_logger()
    watcher: Watcher = (
        InotifyWatcher(log) if watcher_kind == "inotify" else PollingWatcher(log, interval=0.05)
    )
    (tmp_path / "fpga0").touch()
    config = GlobDriverConfig(paths=(f"{tmp_path}/fpga*",), grace_period=0.5, rescan_interval=60)
    table = DeviceTable()
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(make_driver(config, watcher).run(reporter(table))),
    ]

    def health() -> dict[str, bool]:
        return {d.id: d.healthy for d in table.snapshot.devices}

    try:
        await wait_until(lambda: health() == {"fpga0": True}, what="initial scan")
        (tmp_path / "fpga1").touch()
        await wait_until(lambda: health() == {"fpga0": True, "fpga1": True}, 5, "hot-plug")
        (tmp_path / "fpga0").unlink()
        await wait_until(lambda: health() == {"fpga0": False, "fpga1": True}, 5, "vanished")
        await wait_until(lambda: health() == {"fpga1": True}, 5, "dropped after grace")
        (tmp_path / "fpga0").touch()
        await wait_until(lambda: health() == {"fpga0": True, "fpga1": True}, 5, "came back")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_directory_removed_and_recreated_is_watched_again(tmp_path: Path) -> None:
    watcher = InotifyWatcher(get_logger(), retry_interval=0.05)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "x0").touch()
    config = GlobDriverConfig(paths=(f"{dev}/x*",), grace_period=0, rescan_interval=60)
    table = DeviceTable()
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(make_driver(config, watcher).run(reporter(table))),
    ]
    ids = lambda: [d.id for d in table.snapshot.devices]  # noqa: E731
    try:
        await wait_until(lambda: ids() == ["x0"])
        (dev / "x0").unlink()
        dev.rmdir()
        await wait_until(lambda: ids() == [], 5, "directory gone")
        dev.mkdir()
        await asyncio.sleep(0)
        (dev / "x1").touch()
        await wait_until(lambda: ids() == ["x1"], 5, "new directory watched")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_pattern_directory_that_is_a_switched_link_is_followed(tmp_path: Path) -> None:
    """hostile18 F12: the pattern's directory `cur` is a link (`cur -> v1`) switched at once
    to `v2` (`ln -sfn v2 cur.new && mv -T cur.new cur`, a ConfigMap's `..data`): the old
    directory's device went on being advertised until the 30 s rescan, and what changed in
    the new one after was not heard (the watch stayed on v1). Now the link's directory is
    watched, and a watched directory that is another now is watched anew."""
    watcher = InotifyWatcher(get_logger(), retry_interval=0.05)
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
    (tmp_path / "v1" / "a").touch()
    (tmp_path / "v2" / "b").touch()
    (tmp_path / "cur").symlink_to("v1")
    config = GlobDriverConfig(paths=(f"{tmp_path}/cur/*",), grace_period=0, rescan_interval=60)
    table = DeviceTable()
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(make_driver(config, watcher).run(reporter(table))),
    ]
    paths = lambda: sorted(d.nodes[0].host_path for d in table.snapshot.devices)  # noqa: E731
    try:
        await wait_until(lambda: paths() == [str(tmp_path / "v1" / "a")])
        (tmp_path / "cur.new").symlink_to("v2")
        os.replace(tmp_path / "cur.new", tmp_path / "cur")
        await wait_until(lambda: paths() == [str(tmp_path / "v2" / "b")], 10, "switch seen")
        (tmp_path / "v2" / "c").touch()
        want = [str(tmp_path / "v2" / n) for n in ("b", "c")]
        await wait_until(lambda: paths() == want, 10, "the new directory watched")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_unreadable_directory_is_logged_once_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "open0").touch()
    watcher = PollingWatcher(get_logger(), interval=0.05)
    config = GlobDriverConfig(
        paths=(f"{locked}/d*", f"{tmp_path}/open*"), rescan_interval=0.1, grace_period=0
    )
    table = DeviceTable()
    driver = make_driver(config, watcher, dir_readable=lambda path: path != str(locked))
    task = asyncio.create_task(driver.run(reporter(table)))
    try:
        await wait_until(lambda: [d.id for d in table.snapshot.devices] == ["open0"])
        (tmp_path / "open1").touch()
        await wait_until(lambda: len(table.snapshot.devices) == 2, 5, "rescans go on")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    warnings = [r for r in caplog.records if r.getMessage() == "device_dir_unreadable"]
    assert len(warnings) == 1


async def test_numa_from_config(tmp_path: Path) -> None:
    (tmp_path / "a0").touch()
    config = GlobDriverConfig(paths=(f"{tmp_path}/a*",), numa_node=1)
    devices = await make_driver(config, PollingWatcher(get_logger())).scan()
    assert devices[0].numa == 1


class TestDeviceTable:
    async def test_versions_and_waiters(self) -> None:
        table = DeviceTable()
        assert table.snapshot.version == 0 and not table.published.is_set()
        waiter = asyncio.create_task(table.wait_newer(0))
        assert table.publish([Device("b"), Device("a")])
        snapshot = await asyncio.wait_for(waiter, 5)
        assert [d.id for d in snapshot.devices] == ["a", "b"]
        assert table.published.is_set()
        assert not table.publish([Device("a"), Device("b")])
        assert table.snapshot.version == 1

    def test_degraded_and_checks_overlay_health(self) -> None:
        table = DeviceTable()
        table.publish([Device("a"), Device("b")])
        assert table.set_check_result("a", False)
        assert [e.healthy for e in table.snapshot.advertised] == [False, True]
        assert not table.set_check_result("a", False)
        assert not table.set_check_result("zz", False)
        assert table.set_degraded("probe failed 3 times")
        assert table.snapshot.healthy_count == 0 and len(table.snapshot.devices) == 2
        assert table.set_degraded(None)
        assert table.set_check_result("a", True)
        assert table.snapshot.healthy_count == 2

    def test_replicas_follow_the_physical_device(self) -> None:
        table = DeviceTable(replicas=3)
        table.publish([Device("a"), Device("b", healthy=False)])
        advertised = {e.id: e.healthy for e in table.snapshot.advertised}
        assert advertised == {
            "a::0": True, "a::1": True, "a::2": True,
            "b::0": False, "b::1": False, "b::2": False,
        }  # fmt: skip
        assert table.snapshot.by_advertised_id["a::2"].device.id == "a"

    def test_a_device_at_its_own_path_stores_no_node_object(self) -> None:
        node = DeviceNode("/dev/a", "/dev/a")
        compact = Device("a", nodes=(node,), path="/dev/a")
        assert compact._nodes is None
        assert compact.nodes == (node,)
        assert compact == Device("a", nodes=(DeviceNode("/dev/a", "/dev/a"),), path="/dev/a")
        unhealthy = compact.with_health(False)
        assert not unhealthy.healthy and unhealthy.nodes == (node,) and unhealthy._nodes is None
        renamed = Device("c", nodes=(DeviceNode("/dev/real", "/dev/c"),), path="/dev/c")
        assert renamed._nodes == (DeviceNode("/dev/real", "/dev/c"),)
        assert Device("x").nodes == () and Device("x").env == {}

    def test_listeners_see_every_change(self) -> None:
        table = DeviceTable()
        seen: list[int] = []
        table.add_listener(lambda snapshot: seen.append(snapshot.healthy_count))
        table.publish([Device("a")])
        table.publish([Device("a"), Device("b")])
        table.publish([Device("a"), Device("b")])
        assert seen == [1, 2]


async def test_stray_braces_in_templates_never_raise(tmp_path: Path) -> None:
    (tmp_path / "a0").touch()
    config = GlobDriverConfig(
        paths=(f"{tmp_path}/a*",),
        container_path="/dev/{name}}{x}",
        numa_node_file=f"{tmp_path}/{{name}}/numa}}",
    )
    (device,) = await make_driver(config, PollingWatcher(get_logger())).scan()
    assert device.nodes[0].container_path == "/dev/a0}{x}"
    assert device.numa is None


class _DeafWatcher:
    """A watcher that never reports anything: only the safety-net rescan can see changes."""

    kind = "deaf"

    def subscribe(self, directory: str, callback: object, **_: object) -> object:
        return type("Sub", (), {"cancel": lambda self: None})()

    def unsubscribe(self, subscription: object) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_safety_net_rescans_only_when_a_directory_changed(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "a0").touch()
    old = time.time() - 60
    os.utime(dev, (old, old))
    metrics = Metrics()
    driver = GlobDriver(
        GlobDriverConfig(paths=(f"{dev}/a*",), rescan_interval=0.05),
        DriverDeps(get_logger(), _DeafWatcher()),  # type: ignore[arg-type]
    )
    table = DeviceTable()
    task = asyncio.create_task(driver.run(reporter(table, metrics)))

    def scans() -> float:
        count = metrics.registry.get_sample_value(
            "kdp_driver_scan_duration_seconds_count", {"resource": "t.io/r"}
        )
        return count or 0.0

    try:
        await wait_until(lambda: [d.id for d in table.snapshot.devices] == ["a0"])
        await asyncio.sleep(0.5)  # ten rescan periods with an unchanged, old directory
        assert scans() == 1
        (dev / "a1").touch()
        await wait_until(lambda: len(table.snapshot.devices) == 2, 5, "safety-net rescan")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_vanished_devices_expire_when_rescans_are_skipped(tmp_path: Path) -> None:
    """The grace period ends on a timer even when the directory looks unchanged since."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "a0").touch()
    (dev / "a1").touch()
    config = GlobDriverConfig(paths=(f"{dev}/a*",), grace_period=0.3, rescan_interval=0.05)
    watcher = InotifyWatcher(get_logger())
    table = DeviceTable()
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(make_driver(config, watcher).run(reporter(table))),
    ]
    try:
        await wait_until(lambda: len(table.snapshot.devices) == 2)
        (dev / "a1").unlink()
        await wait_until(lambda: table.snapshot.healthy_count == 1, 5, "vanished")
        old = time.time() - 60
        os.utime(dev, (old, old))  # later rescans are skipped: the directory looks old
        await wait_until(lambda: len(table.snapshot.devices) == 1, 5, "expired")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
