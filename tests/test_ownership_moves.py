"""One node in two pods through moved or bind-mounted paths (issue 17, hostile pass H1).

The index keyed containment by real path only: a held node renamed into a directory another
device mounts, a mounted directory renamed into another's (or another's nodes renamed into
it), and a bind mount that shows a held node (or a directory holding one) inside another
device's mounted directory, all left the mounting device advertised, so a new pod of it
reached what a running pod holds. Now a claim is at every place the mount table shows it
(`mount_table.MountMap`), and where it is found since it was claimed (`ownership_arrivals`):
the device that mounts it is held (`node_owned`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host import mount_table
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.files import DaemonThreads
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.mount_table import MountMap, parse_mounts
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_overlaps import overlaps
from kdp_host.ownership_reads import arrived
from kdp_host.testing import ManualWatcher
from kdp_host.watch import Watcher

from .conftest import glob_config
from .kubelet_harness import healthy
from .test_ownership_mounts import unshared

R1, R2 = "t.io/a", "t.io/b"


def nodes(device_id: str, *paths: str) -> Device:
    return Device(device_id, nodes=tuple(DeviceNode(p, p) for p in paths))


def mounting(device_id: str, directory: str) -> Device:
    return Device(device_id, mounts=(DeviceMount(directory, "/data"),))


def bind(source: Path, target: Path) -> MountMap:
    """A mount table with the root file system and one bind mount of `source` on `target`."""
    return parse_mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"2 1 8:1 {source} {target} rw,relatime - ext4 /dev/sda1 rw\n"
    )


class Host:
    def __init__(
        self, watcher: Watcher | None = None, mounts: MountMap | None = None, net: Any = None
    ) -> None:
        self.mounts = mounts or MountMap()
        self.metrics = Metrics()
        self.index = OwnershipIndex(
            self.metrics, offload=DaemonThreads(), mounts=lambda: self.mounts
        )
        if net is not None:
            self.index.watch(watcher, net)
        elif watcher is not None:
            self.index.watch(watcher)
        self.tables: dict[str, DeviceTable] = {}

    async def publish(self, resource: str, *devices: Device) -> None:
        if resource not in self.tables:
            table = self.tables[resource] = DeviceTable()
            log = get_logger().bind(resource=resource)
            self.index.attach(resource, table.publish, log)
        self.index.publish(resource, {d.id: d for d in devices})
        await self.settled()

    async def settled(self) -> None:
        for _ in range(3):  # (a recheck starts in a later turn of the loop)
            await asyncio.sleep(0)
            await self.index.quiet()

    def ids(self, resource: str) -> list[str]:
        return [d.id for d in self.tables[resource].snapshot.devices]

    def held(self, resource: str) -> float:
        labels = {"resource": resource, "reason": "node_owned"}
        return self.metrics.registry.get_sample_value("kdp_driver_skipped_total", labels) or 0


def test_places_through_bind_mounts() -> None:
    table = bind(Path("/srv/a"), Path("/data/b/sub"))
    assert table.places("/srv/a/n0") == ("/srv/a/n0", "/data/b/sub/n0")
    assert table.places("/data/b/sub/n0") == ("/data/b/sub/n0", "/srv/a/n0")
    assert table.places("/srv/ab") == ("/srv/ab",), "a sibling with a common prefix"
    assert MountMap().places("/x") == ("/x",)
    escaped = parse_mounts("1 0 8:1 / / rw - x y rw\n2 1 8:1 /a\\040b /c rw - x y rw\n")
    assert escaped.places("/a b/n") == ("/a b/n", "/c/n")


NESTED_BINDS = (
    "1 0 8:1 / / rw - x y rw\n"
    "2 1 8:1 /srv/a /data/b/sub rw - x y rw\n"
    "3 1 8:1 /srv/a/in /mnt/in rw - x y rw\n"
    "4 1 9:1 / /data/b rw - x y rw\n"
)


def test_places_asked_in_any_order_are_those_of_the_walk_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A path's mount point is found once per directory (`MountMap._point`, kept for the
    other paths of that directory and those below it): whatever was asked before, and after
    the kept directories were dropped at `BELOW_LIMIT`, each path's places are those a table
    asked nothing before finds."""
    paths = [
        "/srv/a/in/deep/n1",
        "/srv/a/n0",
        "/srv/a/in/n2",
        "/data/b/sub/in/n3",
        "/data/b/sub",
        "/data/b/other/n4",
        "/srv/ab/n5",
        "/mnt/in/deeper/still/n6",
        "/srv/a/in/deep/n7",
        "/",
    ]
    expected = {path: parse_mounts(NESTED_BINDS).places(path) for path in paths}
    assert expected["/srv/a/in/n2"] == ("/srv/a/in/n2", "/data/b/sub/in/n2", "/mnt/in/n2")
    assert expected["/data/b/other/n4"] == ("/data/b/other/n4",)
    table = parse_mounts(NESTED_BINDS)
    for order in (paths, paths[::-1]):
        assert {path: table.places(path) for path in order} == expected
    monkeypatch.setattr(mount_table, "BELOW_LIMIT", 3)
    for order in (paths, paths[::-1]):
        assert {path: table.places(path) for path in order} == expected


@pytest.mark.parametrize("node_first", [True, False])
async def test_a_bind_mount_shows_a_node_inside_another_mount(
    tmp_path: Path, node_first: bool
) -> None:
    """Resource a's node a/n0; resource b mounts b, where a bind mount shows a (at b/sub).
    Before, both were advertised: a pod of b reached a's node through b/sub/n0."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "n0").write_text("")
    (tmp_path / "b" / "sub").mkdir(parents=True)
    host = Host(mounts=bind(tmp_path / "a", tmp_path / "b" / "sub"))
    first, second = (R1, R2) if node_first else (R2, R1)
    devices = {R1: nodes("n0", str(tmp_path / "a" / "n0")), R2: mounting("b", str(tmp_path / "b"))}
    await host.publish(first, devices[first])
    await host.publish(second, devices[second])
    assert host.ids(first) == [devices[first].id]
    assert host.ids(second) == [], "the later claimant is not advertised"
    assert host.held(second) == 1


async def test_a_bind_mount_made_later_holds_one_of_the_two(tmp_path: Path) -> None:
    """Both advertised, then a bind mount shows a's directory inside b's: the mount table's
    change counts every claim again at its places; they are never both advertised (the
    first rechecked is held by the other, whose claim then lingers while a pod may hold
    it, as any claim of a device no longer advertised)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "n0").write_text("")
    (tmp_path / "b" / "sub").mkdir(parents=True)
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, nodes("n0", str(tmp_path / "a" / "n0")))
    await host.publish(R2, mounting("b", str(tmp_path / "b")))
    assert (host.ids(R1), host.ids(R2)) == (["n0"], ["b"])
    host.mounts = bind(tmp_path / "a", tmp_path / "b" / "sub")
    watcher.change_mounts()
    await host.settled()
    assert len(host.ids(R1) + host.ids(R2)) <= 1
    assert host.held(R1) + host.held(R2) >= 1


async def booked_beside_mount(tmp: Path, held: Device) -> tuple[Host, ManualWatcher]:
    """Resource a advertises `held` and a pod holds it (booked); resource b mounts tmp/b."""
    (tmp / "b").mkdir(exist_ok=True)
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, held)
    await host.index.book(R1, [held.id])
    await host.publish(R2, mounting("b", str(tmp / "b")))
    assert (host.ids(R1), host.ids(R2)) == ([held.id], ["b"])
    return host, watcher


async def test_a_held_node_renamed_into_a_mounted_directory_holds_the_mount(
    tmp_path: Path,
) -> None:
    """(b) A pod holds a's node dev/n0; it is renamed into b's mounted directory: a new pod
    of b would reach it there. Before, b stayed advertised."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "n0").write_text("")
    host, watcher = await booked_beside_mount(tmp_path, nodes("n0", str(tmp_path / "dev/n0")))
    os.rename(tmp_path / "dev" / "n0", tmp_path / "b" / "n0")
    watcher.change(str(tmp_path / "dev"), "n0")
    watcher.change(str(tmp_path / "b"), "n0")
    await host.settled()
    assert host.ids(R2) == [], "b's mount now holds the node a pod of a holds"
    assert host.held(R2) == 1


async def test_a_hard_link_into_a_mounted_directory_keeps_the_old_place_too(
    tmp_path: Path,
) -> None:
    """A held node hard-linked into b's mounted directory holds b, and is still where it
    was: resource c, which mounts the node's own directory (held by a from the start),
    stays held when it is checked again."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "n0").write_text("")
    host, watcher = await booked_beside_mount(tmp_path, nodes("n0", str(tmp_path / "dev/n0")))
    await host.publish("t.io/c", mounting("c", str(tmp_path / "dev")))
    assert host.ids("t.io/c") == []
    os.link(tmp_path / "dev" / "n0", tmp_path / "b" / "n0")
    watcher.change(str(tmp_path / "b"), "n0")
    await host.settled()
    assert host.ids(R2) == []
    watcher.change(str(tmp_path), "dev")
    await host.settled()
    assert host.ids("t.io/c") == [], "the node is still below dev"


async def test_a_held_mounted_directory_renamed_into_another_holds_the_outer(
    tmp_path: Path,
) -> None:
    """(a) A pod holds a's mount of directory a; it is renamed into b's mounted directory."""
    (tmp_path / "a").mkdir()
    host, watcher = await booked_beside_mount(tmp_path, mounting("a", str(tmp_path / "a")))
    os.rename(tmp_path / "a", tmp_path / "b" / "a")
    watcher.change(str(tmp_path), "a")
    watcher.change(str(tmp_path / "b"), "a")
    await host.settled()
    assert host.ids(R2) == []
    assert host.held(R2) == 1


async def test_a_directory_renamed_in_with_held_nodes_below_holds_the_mount(
    tmp_path: Path,
) -> None:
    """(a) The other way: the directory of a's held node (two levels down) is renamed into
    b's mounted directory, so b's mount contains it: what arrived is read below too."""
    (tmp_path / "nodes" / "deep").mkdir(parents=True)
    (tmp_path / "nodes" / "deep" / "n0").write_text("")
    held = nodes("n0", str(tmp_path / "nodes" / "deep" / "n0"))
    host, watcher = await booked_beside_mount(tmp_path, held)
    os.rename(tmp_path / "nodes", tmp_path / "b" / "nodes")
    watcher.change(str(tmp_path), "nodes")
    watcher.change(str(tmp_path / "b"), "nodes")
    await host.settled()
    assert host.ids(R2) == []


async def test_an_unclaimed_arrival_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "n0").write_text("")
    host, watcher = await booked_beside_mount(tmp_path, nodes("n0", str(tmp_path / "dev/n0")))
    (tmp_path / "b" / "other").write_text("")
    watcher.change(str(tmp_path / "b"), "other")
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == (["n0"], ["b"])
    assert host.held(R2) == 0


def test_what_arrived_is_read_up_to_its_limit(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / "d" / str(i)).mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "d")
    found, more = arrived([str(tmp_path / "d"), str(tmp_path / "link")], 4096)
    assert len(found) == 6 and not more, "the directory and its entries; no link followed"
    found, more = arrived([str(tmp_path / "d")], limit=3)
    assert len(found) == 3 and more


def a_node_and_b_mounted(tmp_path: Path) -> list[tuple[str, Device]]:
    """R1's node a/n0 and R2's device mounting directory b (with b/sub)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "n0").write_text("")
    (tmp_path / "b" / "sub").mkdir(parents=True)
    return [
        (R1, nodes("n0", str(tmp_path / "a" / "n0"))),
        (R2, mounting("b", str(tmp_path / "b"))),
    ]


def test_check_warns_about_a_node_a_bind_mount_shows_in_another_mount(tmp_path: Path) -> None:
    devices = a_node_and_b_mounted(tmp_path)
    assert overlaps(devices) == []
    [found] = overlaps(devices, mounts=bind(tmp_path / "a", tmp_path / "b" / "sub"))
    assert (found.first.resource, found.second.resource) == (R2, R1)


def test_a_real_bind_mount_of_a_held_node_into_another_mount(tmp_path: Path) -> None:
    """(c) As an ordinary user, in a user and mount namespace (`unshare -rm`): a's node is
    booked, b mounts directory b; a bind mount then shows a's directory at b/sub. The real
    watcher sees the mount table change; b is held. Before, b stayed advertised."""
    assert unshared("tests.test_ownership_moves", "bind_child", str(tmp_path))


async def bind_child(root: str) -> None:
    tmp = Path(root)
    (tmp / "a").mkdir()
    (tmp / "a" / "n0").write_text("")
    (tmp / "b" / "sub").mkdir(parents=True)
    watcher = InotifyWatcher(get_logger())
    watching = asyncio.create_task(watcher.run())
    index = OwnershipIndex(offload=DaemonThreads())
    index.watch(watcher)
    tables = {R1: DeviceTable(), R2: DeviceTable()}
    for name in (R1, R2):
        index.attach(name, tables[name].publish, get_logger().bind(resource=name))
    index.publish(R1, {"n0": nodes("n0", str(tmp / "a" / "n0"))})
    await index.quiet()
    await index.book(R1, ["n0"])
    index.publish(R2, {"b": mounting("b", str(tmp / "b"))})
    await index.quiet()
    assert [d.id for d in tables[R2].snapshot.devices] == ["b"]
    mount = await asyncio.create_subprocess_exec(
        "mount", "--bind", str(tmp / "a"), str(tmp / "b" / "sub")
    )
    assert await mount.wait() == 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        if not tables[R2].snapshot.devices:
            print("held")
            break
        await asyncio.sleep(0.01)  # (the mount table's report is on its way to the loop)
    else:
        print("advertised")
    watching.cancel()


BOX = "vendor.example/box"
FPGA = "vendor.example/fpga"


async def test_a_held_node_renamed_into_a_mounted_directory_through_the_real_kubelet(
    real_kubelet_factory: Any, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """(b) through the kubelet's real device manager: pod p1 holds fpga0; fpga0 is renamed
    into box0, the directory resource box mounts into its containers. Before, the kubelet
    still saw box0 healthy and gave it to pod p2 (which then reached p1's node through the
    mount). Now box0 is held: p2 is refused."""
    (devices / "fpga1").unlink()
    boxes = short_dir / "boxes"
    (boxes / "box0").mkdir(parents=True)
    kubelet = real_kubelet_factory()
    config = glob_config(kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]*"))
    config += (
        f"  - name: {BOX}\n"
        f"    glob:\n"
        f"      gracePeriod: 1s\n"
        f'      group: [{{path: "{boxes}/box{{key}}", containerPath: "/box/{{key}}"}}]\n'
    )
    await start_host(config)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    await kubelet.await_for(healthy(BOX, 1), what="box0 advertised")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == "", first
    os.rename(devices / "fpga0", boxes / "box0" / "fpga0")
    await kubelet.await_for(healthy(BOX, 0), what="box0 no longer advertised")
    second = await kubelet.acall(kubelet.allocate, "p2", {BOX: 1})
    assert second["error"] != "", second


def test_check_warns_about_another_node_of_a_claimed_number_in_a_mounted_directory(
    tmp_path: Path,
) -> None:
    """hostile15 F6: b's mounted directory holds a second link of a's node (the same
    identity, another path). `run` holds one of them (an Allocate of b reads below its
    mount); `check` said nothing: it compared claims by path below the directory only."""
    devices = a_node_and_b_mounted(tmp_path)
    assert overlaps(devices) == []
    (tmp_path / "b" / "sub" / "n").hardlink_to(tmp_path / "a" / "n0")
    [found] = overlaps(devices)
    assert found.path == str(tmp_path / "b" / "sub" / "n")
    assert {found.first.resource, found.second.resource} == {R1, R2}
