"""Glob device identity (issue 10 items 1-4): one physical device is advertised once, an ID
is a pure function of its path and the patterns, links that lead nowhere and names that are
not text never become Healthy devices, and nothing here stops the resource."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host import rules
from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.glob_paths import Assigned, DeviceIdentity, DeviceIds, assign_ids, examine
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.testing import RecordingNotifier
from kdp_host.watch import PollingWatcher

from .conftest import reporter, wait_table


def driver(*patterns: str, **options: object) -> GlobDriver:
    log = get_logger().bind(resource="t.io/r")
    config = GlobDriverConfig(paths=patterns, **options)  # type: ignore[arg-type]
    return GlobDriver(config, DriverDeps(log, PollingWatcher(log)))


async def scan(*patterns: str) -> dict[str, Device]:
    return {d.id: d for d in await driver(*patterns).scan()}


def skipped(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "kdp_driver_skipped_total", {"resource": "t.io/r", "reason": reason}
    )
    return value or 0.0


# ------------------------------------------------------------------ 1: one device, once


async def test_a_node_and_its_by_id_link_are_one_device(tmp_path: Path) -> None:
    (tmp_path / "ttyUSB0").touch()
    by_id = tmp_path / "serial" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "usb-FTDI_A-if00").symlink_to(tmp_path / "ttyUSB0")
    for patterns in (
        (f"{tmp_path}/ttyUSB*", f"{by_id}/*"),
        (f"{by_id}/*", f"{tmp_path}/ttyUSB*"),
    ):
        devices = await scan(*patterns)
        assert len(devices) == 1, devices
        (device,) = devices.values()
        assert device.nodes[0].host_path == str(tmp_path / "ttyUSB0")


async def test_overlapping_patterns_with_different_fixed_dirs_give_one_device(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x0").touch()
    devices = await scan(f"{tmp_path}/a/*", f"{tmp_path}/*/x*")
    assert list(devices) == ["a-x0"]


def test_device_nodes_are_identified_by_device_number() -> None:
    found = examine("/dev/null", {})
    assert found is not None and not isinstance(found, type(None))
    assert getattr(found, "identity", None) == ("c", os.stat("/dev/null").st_rdev)


async def test_two_nodes_of_one_device_number_are_one_device(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "a0", 0o600 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD; test_device_nodes_are_identified_... covers the rule")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a1").symlink_to("/dev/null")
    devices = await scan(f"{tmp_path}/a*", f"{tmp_path}/b/*")
    assert len(devices) == 1


# ------------------------------------------------------------------ 2: stable IDs


async def test_unplugging_one_device_never_renames_another(tmp_path: Path) -> None:
    for directory in ("a", "b", "c"):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "x").touch()
    patterns = [f"{tmp_path}/{d}/*" for d in ("a", "b", "c")]
    glob_driver = driver(*patterns, grace_period=0)
    before = {d.path: d.id for d in await glob_driver.scan()}
    assert len(before) == 3 and len(set(before.values())) == 3, "no entry overwritten"
    (tmp_path / "a" / "x").unlink()
    after = {d.path: d.id for d in await glob_driver.scan()}
    assert after == {p: i for p, i in before.items() if p != str(tmp_path / "a" / "x")}
    (tmp_path / "a" / "x").touch()
    assert {d.path: d.id for d in await glob_driver.scan()} == before


async def test_the_id_of_a_path_does_not_depend_on_other_paths(tmp_path: Path) -> None:
    names = ["x", "y-1", "z_2"]
    for directory in ("a", "b"):
        (tmp_path / directory).mkdir()
        for name in names:
            (tmp_path / directory / name).touch()
    patterns = (f"{tmp_path}/a/*", f"{tmp_path}/b/*", f"{tmp_path}/*/*")
    together = {d.path: d.id for d in (await scan(*patterns)).values()}
    ids = DeviceIds(patterns)
    for path, device_id in together.items():
        assert device_id == ids(path)
        assert rules.device_id_problem(device_id) is None


PATH_PART = st.text(alphabet="ab-_.0", min_size=1, max_size=4).filter(
    lambda p: p not in (".", "..")
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(PATH_PART, min_size=1, max_size=3), min_size=2, max_size=8, unique_by=tuple)
)
def test_distinct_paths_get_distinct_valid_ids(parts: list[list[str]]) -> None:
    """Mixed depths under one base (the case that used to collide: `a/b` and `a-b`)."""
    patterns = ["/dev/k/*", "/dev/k/*/*", "/dev/k/*/*/*"]
    ids = DeviceIds(patterns)
    paths = ["/dev/k/" + "/".join(p) for p in parts]
    made = [ids(p) for p in paths]
    assert len(set(made)) == len(made), list(zip(paths, made, strict=True))
    for device_id in made:
        assert rules.device_id_problem(device_id) is None


def test_ids_never_start_with_a_dash() -> None:
    ids = DeviceIds(["/dev/*"])
    assert not ids("/dev/-rf").startswith("-")
    assert rules.device_id_problem(ids("/dev/-rf")) is None


# ------------------------------------------------------------------ 3: links that lead nowhere


async def test_dangling_links_and_loops_are_not_devices(tmp_path: Path) -> None:
    (tmp_path / "d0").symlink_to(tmp_path / "nowhere")
    (tmp_path / "d1").symlink_to(tmp_path / "d2")
    (tmp_path / "d2").symlink_to(tmp_path / "d1")
    (tmp_path / "d3").touch()
    metrics = Metrics()
    table = DeviceTable()
    log = get_logger().bind(resource="t.io/r")
    glob_driver = GlobDriver(
        GlobDriverConfig(paths=(f"{tmp_path}/d*",)), DriverDeps(log, PollingWatcher(log))
    )
    task = asyncio.create_task(glob_driver.run(reporter(table, metrics)))
    try:
        await wait_table(table, lambda s: [d.id for d in s.devices] == ["d3"])
        assert skipped(metrics, "dangling_link") == 1
        assert skipped(metrics, "link_loop") == 2
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_a_link_whose_target_vanishes_becomes_unhealthy(tmp_path: Path) -> None:
    """The target lives in another directory: that directory is watched too, so the device
    turns Unhealthy at once, not after the next safety-net rescan (an hour here)."""
    dev = tmp_path / "dev"
    by_id = tmp_path / "by-id"
    dev.mkdir()
    by_id.mkdir()
    (dev / "ttyUSB0").touch()
    (by_id / "usb-A").symlink_to(dev / "ttyUSB0")
    log = get_logger().bind(resource="t.io/r")
    watcher = InotifyWatcher(log)
    config = GlobDriverConfig(paths=(f"{by_id}/*",), grace_period=60.0, rescan_interval=3600.0)
    table = DeviceTable()
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(GlobDriver(config, DriverDeps(log, watcher)).run(reporter(table))),
    ]
    try:
        device_id = DeviceIds(config.paths)(str(dev / "ttyUSB0"))
        await wait_table(
            table, lambda s: [(d.id, d.healthy) for d in s.devices] == [(device_id, True)]
        )
        (dev / "ttyUSB0").unlink()
        await wait_table(
            table, lambda s: [(d.id, d.healthy) for d in s.devices] == [(device_id, False)]
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


# ------------------------------------------------------------------ 4: names that are not text


async def test_names_that_are_not_text_are_skipped_and_counted(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    for name in (b"dev\xff\xfe", b"dev\nx", b"dev\x1b[31m"):
        os.close(os.open(root + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o600))
    (tmp_path / "dev0").touch()
    metrics = Metrics()
    table = DeviceTable()
    log = get_logger().bind(resource="t.io/r")
    glob_driver = GlobDriver(
        GlobDriverConfig(paths=(f"{tmp_path}/dev*",)), DriverDeps(log, PollingWatcher(log))
    )
    task = asyncio.create_task(glob_driver.run(reporter(table, metrics)))
    try:
        await wait_table(table, lambda s: [d.id for d in s.devices] == ["dev0"])
        assert skipped(metrics, "bad_name") == 3
        await asyncio.sleep(0)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.wait({task})


# ------------------------------------------------------------------ 5: links never re-identify


async def test_a_link_that_appears_or_vanishes_never_changes_the_id(tmp_path: Path) -> None:
    """The ID is the real node's: a `by-id` link created after the node (udev does that), or
    removed while a pod holds the device, never advertises the device under a second ID."""
    (tmp_path / "fpga1").touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    patterns = (f"{by_id}/*", f"{tmp_path}/fpga*")
    glob_driver = driver(*patterns, grace_period=60.0)

    async def listed() -> dict[str, tuple[bool, str, str, str | None]]:
        notifier = RecordingNotifier()
        await glob_driver.step(notifier)
        return {
            i: (d.healthy, d.nodes[0].host_path, d.nodes[0].container_path, d.path)
            for i, d in notifier.devices.items()
        }

    node = str(tmp_path / "fpga1")
    link = str(by_id / "usb-FTDI_1")
    assert await listed() == {"fpga1": (True, node, node, node)}
    (by_id / "usb-FTDI_1").symlink_to("../fpga1")
    # {path} is the first pattern's match now; the ID and the host path stay the node's.
    assert await listed() == {"fpga1": (True, node, link, link)}
    (by_id / "usb-FTDI_1").unlink()
    assert await listed() == {"fpga1": (True, node, node, node)}
    # A fresh driver (a restart) with both present: the same ID.
    (by_id / "usb-FTDI_1").symlink_to("../fpga1")
    assert [d.id for d in await driver(*patterns).scan()] == ["fpga1"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b-1", "c_2", "d"]), min_size=0, max_size=4, unique=True))
def test_the_id_is_the_real_paths_whatever_links_exist(links: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "dev").mkdir()
        (root / "dev" / "node0").touch()
        (root / "links").mkdir()
        for name in links:
            (root / "links" / name).symlink_to("../dev/node0")
        for patterns in (
            (f"{root}/links/*", f"{root}/dev/*"),
            (f"{root}/dev/*", f"{root}/links/*"),
            (f"{root}/links/*",),
        ):
            devices = asyncio.run(scan(*patterns))
            if patterns == (f"{root}/links/*",) and not links:
                assert devices == {}
                continue
            assert list(devices) == [DeviceIds(patterns)(str(root / "dev" / "node0"))]
            (device,) = devices.values()
            assert device.nodes[0].host_path == str(root / "dev" / "node0")


# ------------------------------------------------------------------ issue 17 item 5: kept IDs


def null_twin(path: Path) -> None:
    """A second character node for /dev/null's device number at `path`."""
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD; test_a_listed_device_keeps_its_id covers the rule")


async def test_a_second_node_with_a_lower_path_never_renames_a_device(tmp_path: Path) -> None:
    """The kubelet holds `b` for a pod; a second node for the same device number appears at
    a lower path (`a`): the device keeps its ID and host path (a new ID for the same node
    would let the kubelet give it to a second pod). While `b` is gone and `a` remains, the
    ID stays with the device number; a fresh driver (a restart) takes the lowest path."""
    null_twin(tmp_path / "b")
    glob_driver = driver(f"{tmp_path}/*")
    notifier = RecordingNotifier()
    await glob_driver.step(notifier)
    [(device_id, device)] = notifier.devices.items()
    assert device.nodes[0].host_path == str(tmp_path / "b")
    null_twin(tmp_path / "a")
    await glob_driver.step(notifier)
    assert list(notifier.devices) == [device_id]
    assert notifier.devices[device_id].nodes[0].host_path == str(tmp_path / "b")
    assert notifier.devices[device_id].healthy
    assert [s.reason for s in notifier.skipped] == ["same_device"]
    (tmp_path / "b").unlink()
    await glob_driver.step(notifier)
    assert list(notifier.devices) == [device_id], "the device number keeps its ID"
    assert notifier.devices[device_id].nodes[0].host_path == str(tmp_path / "a")
    assert [d.id for d in await driver(f"{tmp_path}/*").scan()] != [device_id]


def test_a_listed_device_keeps_its_id() -> None:
    """The rule without device nodes: identities stand for device numbers."""
    ids = DeviceIds(["/d/*"])
    number: DeviceIdentity = ("c", 7)
    other: DeviceIdentity = ("c", 8)
    held = {number: Device("b", nodes=(DeviceNode("/d/b", "/d/b"),), path="/d/b")}
    found: dict[DeviceIdentity, list[tuple[str, str]]]
    found = {number: [("/d/a", "/d/a"), ("/d/b", "/d/b")]}
    assigned, collided = assign_ids(found, held, {}, ids)
    assert assigned == {number: Assigned("b", "/d/b")} and collided == {}
    # its host path vanished: the ID stays, the path is the canonical one of what remains
    assigned, _ = assign_ids({number: [("/d/a", "/d/a")]}, held, {}, ids)
    assert assigned == {number: Assigned("b", "/d/a")}
    # a newcomer whose canonical path gives a held ID gets the ID of its path and
    # identity at once (never left waiting on a device that may stay), whatever the order
    found = {other: [("/d/b", "/d/b")], number: [("/d/a", "/d/a")]}
    assigned, collided = assign_ids(found, held, {}, ids)
    elsewhere = ids.elsewhere("/d/b", other)
    assert assigned == {number: Assigned("b", "/d/a"), other: Assigned(elsewhere, "/d/b")}
    assert collided == {} and elsewhere.startswith("b-") and elsewhere != ids("/d/b")
    # a device that vanished while listed comes back to its ID, before a newcomer
    # whose path gives that ID
    newcomer: DeviceIdentity = ("c", 9)
    found = {newcomer: [("/d/a", "/d/a")], other: [("/d/c", "/d/c")]}
    assigned, _ = assign_ids(found, {}, {other: "a"}, ids)
    assert assigned == {
        other: Assigned("a", "/d/c"),
        newcomer: Assigned(ids.elsewhere("/d/a", newcomer), "/d/a"),
    }
    # nothing held (a restart): the canonical path decides
    assigned, _ = assign_ids({number: [("/d/b", "/d/b"), ("/d/a", "/d/a")]}, {}, {}, ids)
    assert assigned == {number: Assigned("a", "/d/a")}


@pytest.mark.parametrize("grace", [60.0, 0.0])
async def test_two_nodes_that_swap_devices_both_stay_advertised(
    tmp_path: Path, grace: float
) -> None:
    """hostile16 F7: `fpga0` and `fpga1` swap their devices by two renames with a scan
    between (a driver reload enumerating two cards the other way round; files stand for
    device numbers). The card seen at both paths keeps its ID; the other card, back at
    the other path, takes its ID back while it is still listed (the grace period), else it
    gets the ID of its path and identity: both stay advertised (it used to wait for ever,
    `id_collision`, on a device that stays)."""
    card_a, card_b = tmp_path / "fpga0", tmp_path / "fpga1"
    card_a.write_text("a")
    card_b.write_text("b")
    glob_driver = driver(f"{tmp_path}/fpga*", grace_period=grace)
    notifier = RecordingNotifier()
    await glob_driver.step(notifier)
    assert sorted(notifier.devices) == ["fpga0", "fpga1"]
    os.link(card_b, tmp_path / ".b")
    os.link(card_a, tmp_path / ".a")
    os.replace(tmp_path / ".b", card_a)  # fpga0 is card b now; card a is nowhere matched
    await glob_driver.step(notifier)
    assert notifier.devices["fpga1"].healthy
    os.replace(tmp_path / ".a", card_b)  # fpga1 is card a
    await glob_driver.step(notifier)
    assert notifier.skipped_by_reason().get("id_collision") is None
    by_path = {d.nodes[0].host_path: i for i, d in notifier.devices.items()}
    assert sorted(by_path) == [str(card_a), str(card_b)], notifier.devices
    assert by_path[str(card_a)] == "fpga1", "card b keeps its ID"
    if grace:
        assert by_path[str(card_b)] == "fpga0", "card a takes its ID back"
    else:
        assert by_path[str(card_b)].startswith("fpga1-"), by_path
    assert all(d.healthy for d in notifier.devices.values()), "each card is present"
    # a restart: the canonical paths decide
    assert sorted(d.id for d in await driver(f"{tmp_path}/fpga*").scan()) == ["fpga0", "fpga1"]


@pytest.mark.parametrize("how", ["rename", "second_node_left"])
async def test_a_node_at_another_path_under_its_id_stays_healthy(tmp_path: Path, how: str) -> None:
    """hostile18 F9: a node renamed within the patterns (or its path removed while a hard
    link, standing for a second node of its number, remains) keeps its ID and is passed at
    its new path. It was Unhealthy for the whole grace period (its old path counted as a
    lost node), unallocatable while present: the ID names the node, so nothing was lost."""
    node = tmp_path / "x"
    node.write_text("")
    glob_driver = driver(f"{tmp_path}/*", grace_period=60.0)
    notifier = RecordingNotifier()
    await glob_driver.step(notifier)
    if how == "rename":
        os.rename(node, tmp_path / "y")
    else:
        os.link(node, tmp_path / "z")
        await glob_driver.step(notifier)
        node.unlink()
    await glob_driver.step(notifier)
    [(device_id, device)] = notifier.devices.items()
    assert device_id == "x"
    assert device.nodes[0].host_path == str(tmp_path / ("y" if how == "rename" else "z"))
    assert device.healthy
