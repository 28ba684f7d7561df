"""The host-wide ownership index (kdp_host/ownership.py): one node or mount source in at most
one advertised device, across resources, drivers and reloads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdp_host import ownership_contain
from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.drivers import DriverDeps, make_driver
from kdp_host.files import DaemonThreads
from kdp_host.holdings import Holder, Holdings
from kdp_host.identity import DIRECTORY
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_batches import MAX_STUCK, STUCK_PER_BATCH
from kdp_host.ownership_claims import (
    Reached,
    Resolver,
    claim_key,
    device_claims,
    reach,
)
from kdp_host.ownership_document import OWNERSHIP_FILE, ownership_file, read_saved
from kdp_host.ownership_gate import ADMISSION_CHUNK
from kdp_host.ownership_overlaps import overlaps
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.release_state import STATE_FILE, ReleaseStateStore
from kdp_host.state_file import StateFile
from kdp_host.testing import ManualWatcher
from kdp_host.unbook import drop_bookings
from kdp_host.watch import PollingWatcher

from .conftest import wait_until
from .fake_nodes import FakeNodes

R1, R2, R3 = "t.io/a", "t.io/b", "t.io/c"


def node(path: str, shared: bool = False) -> Device:
    return Device(Path(path).name, nodes=(DeviceNode(path, path, shared=shared),))


def dev(device_id: str, *paths: str, mounts: tuple[str, ...] = ()) -> Device:
    return Device(
        device_id,
        nodes=tuple(DeviceNode(p, p) for p in paths),
        mounts=tuple(DeviceMount(m, m) for m in mounts),
    )


class Host:
    """An index with one DeviceTable per resource, as the resources of a host use it."""

    def __init__(self, resolve: Resolver = reach, chunk: int = ADMISSION_CHUNK) -> None:
        """Turns of `chunk` devices each, whatever the machine's speed (no time budget)."""
        self.metrics = Metrics()
        self.index = OwnershipIndex(self.metrics, resolve, chunk=chunk, budget=None)
        self.tables: dict[str, DeviceTable] = {}
        self.detach: dict[str, object] = {}

    def attach(self, resource: str) -> DeviceTable:
        table = self.tables[resource] = DeviceTable()
        self.detach[resource] = self.index.attach(
            resource, table.publish, get_logger().bind(resource=resource)
        )
        return table

    def publish(self, resource: str, *devices: Device) -> None:
        if resource not in self.tables:
            self.attach(resource)
        self.index.publish(resource, {d.id: d for d in devices})

    def ids(self, resource: str) -> list[str]:
        return [d.id for d in self.tables[resource].snapshot.devices]

    def held(self, resource: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": resource, "reason": "node_owned"}
        )
        return value or 0.0


def test_a_node_reached_by_a_link_from_another_resource_is_held_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "fpga0").touch()
    (tmp_path / "alias0").symlink_to(tmp_path / "fpga0")
    host = Host()
    host.publish(R1, node(f"{tmp_path}/fpga0"))
    with caplog.at_level(logging.WARNING):
        host.publish(R2, node(f"{tmp_path}/alias0"))
        host.publish(R2, node(f"{tmp_path}/alias0"))
    assert host.ids(R1) == ["fpga0"]
    assert host.ids(R2) == []
    assert host.held(R2) == 1, "counted once while it stays held"
    [record] = [r for r in caplog.records if r.getMessage() == "device_held"]
    fields = record.kdp_fields  # type: ignore[attr-defined]
    assert fields["resource"] == R2 and fields["device"] == "alias0"
    assert (fields["owner_resource"], fields["owner_device"]) == (R1, "fpga0")


def test_many_held_devices_of_one_change_are_one_line_and_each_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """hostile4 H10: a probe whose 5,000 devices share one node logged 4,999 `device_held`
    lines per list. Past SKIPPED_SHOWN, one `devices_held` line per reason per change (the
    count and the first IDs); each device is still counted. Few stay one line each."""
    from kdp_host.rules import HELD_SHOWN, SKIPPED_SHOWN

    (tmp_path / "x").touch()
    shared_node = f"{tmp_path}/x"
    host = Host()
    host.publish(R1, dev("owner", shared_node))
    many = [dev(f"d{i:04}", shared_node) for i in range(500)]
    with caplog.at_level(logging.INFO):
        host.publish(R2, *many)
        host.publish(R2, *many)  # no change: nothing more
    assert host.ids(R2) == []
    assert host.held(R2) == 500
    assert not [r for r in caplog.records if r.getMessage() == "device_held"]
    [summary] = [r for r in caplog.records if r.getMessage() == "devices_held"]
    fields = summary.kdp_fields  # type: ignore[attr-defined]
    assert fields["resource"] == R2 and fields["count"] == 500
    assert fields["devices"] == ",".join(f"d{i:04}" for i in range(HELD_SHOWN))
    assert (fields["owner_resource"], fields["owner_device"]) == (R1, "owner")
    assert fields["reason"] and fields["action"]
    caplog.clear()
    few = [dev(f"e{i}", shared_node) for i in range(SKIPPED_SHOWN)]
    with caplog.at_level(logging.INFO):
        host.publish(R2, *many, *few)
    assert len([r for r in caplog.records if r.getMessage() == "device_held"]) == SKIPPED_SHOWN
    assert host.held(R2) == 500 + SKIPPED_SHOWN


def test_many_claims_won_at_once_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    from kdp_host.rules import SKIPPED_SHOWN

    count = SKIPPED_SHOWN + 10
    nodes = FakeNodes({f"/dev/{side}{i}": ("c", i) for i in range(count) for side in ("a", "b")})
    host = Host(nodes)
    host.publish(R1, *(node(f"/dev/a{i}") for i in range(count)))
    waiting = [node(f"/dev/b{i}") for i in range(count)]
    host.publish(R2, *waiting)
    assert host.ids(R2) == []
    host.publish(R1)
    for i in range(count):
        del nodes.nodes[f"/dev/a{i}"]
    with caplog.at_level(logging.INFO):
        host.publish(R1)  # the owner's nodes are gone: every waiter is advertised, in one line
    assert len(host.ids(R2)) == count
    assert not [r for r in caplog.records if r.getMessage() == "device_claim_won"]
    [won] = [r for r in caplog.records if r.getMessage() == "device_claims_won"]
    assert won.kdp_fields["count"] == count  # type: ignore[attr-defined]


def test_a_second_node_with_the_same_device_number_is_the_same_claim() -> None:
    nodes = FakeNodes({"/dev/fpga0": ("c", 0xF000), "/dev/other/card": ("c", 0xF000)})
    host = Host(nodes)
    host.publish(R1, node("/dev/fpga0"))
    host.publish(R2, node("/dev/other/card"))
    assert host.ids(R2) == []


def test_a_mount_source_is_claimed(tmp_path: Path) -> None:
    (tmp_path / "fw").mkdir()
    host = Host()
    host.publish(R1, dev("a", mounts=(f"{tmp_path}/fw",)))
    host.publish(R2, dev("b", mounts=(f"{tmp_path}/fw/../fw",)))
    assert host.ids(R2) == []


def test_within_one_list_the_owner_then_the_lowest_id_wins() -> None:
    nodes = FakeNodes({"/dev/x": ("c", 1), "/dev/y": ("c", 2)})
    host = Host(nodes)
    host.publish(R1, dev("m", "/dev/x"))
    host.publish(R1, dev("a", "/dev/x", "/dev/y"), dev("m", "/dev/x"), dev("z", "/dev/y"))
    assert host.ids(R1) == ["m", "z"]


def test_shared_nodes_coexist_but_not_with_an_exclusive_claim() -> None:
    nodes = FakeNodes({"/dev/vfio/vfio": ("c", 10), "/dev/vfio/1": ("c", 11)})
    host = Host(nodes)
    vfio = DeviceNode("/dev/vfio/vfio", "/dev/vfio/vfio", shared=True)
    group = DeviceNode("/dev/vfio/1", "/dev/vfio/1")
    host.publish(R1, Device("g1", nodes=(group, vfio)))
    host.publish(R2, Device("ctl", nodes=(vfio,)))
    assert host.ids(R1) == ["g1"] and host.ids(R2) == ["ctl"]
    host.publish(R3, node("/dev/vfio/vfio"))
    assert host.ids(R3) == []


def test_the_owner_keeps_its_claim_while_the_node_is_there_then_the_waiter_wins() -> None:
    nodes = FakeNodes({"/dev/fpga0": ("c", 5), "/dev/by-id/f": ("c", 5)})
    host = Host(nodes)
    host.publish(R1, node("/dev/fpga0"))
    host.publish(R2, node("/dev/by-id/f"))
    assert host.ids(R2) == []
    # the owner's list drops it (its pattern no longer matches): a pod may still hold it
    host.publish(R1)
    host.publish(R2, node("/dev/by-id/f"))
    assert host.ids(R1) == [] and host.ids(R2) == []
    # the node goes: the lingering claim is released and the waiter is advertised at once
    del nodes.nodes["/dev/fpga0"]
    host.publish(R1)
    assert host.ids(R2) == ["f"]


def test_claims_survive_a_restart_and_a_retired_resource_keeps_them() -> None:
    nodes = FakeNodes({"/dev/fpga0": ("c", 5), "/dev/by-id/f": ("c", 5)})
    host = Host(nodes)
    host.publish(R1, node("/dev/fpga0"))
    host.detach[R1]()  # type: ignore[operator]
    # between the old runtime and the new one another resource tries
    host.publish(R2, node("/dev/by-id/f"))
    assert host.ids(R2) == []
    host.attach(R1)
    host.publish(R1, node("/dev/fpga0"))
    assert host.ids(R1) == ["fpga0"] and host.ids(R2) == []
    host.index.retire(R1)
    host.publish(R2, node("/dev/by-id/f"))
    assert host.ids(R2) == []
    del nodes.nodes["/dev/fpga0"]
    host.publish(R2, node("/dev/by-id/f"))
    assert host.ids(R2) == ["f"]


async def test_a_renamed_device_keeps_the_id_the_kubelet_booked_and_only_that() -> None:
    """A reload renames both devices (patterns, usbIdFrom, ...): the one a pod holds (booked)
    keeps the ID the kubelet gave it; the other takes its new ID (issue 17 M3)."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host = Host(nodes)
    host.publish(R1, dev("old-a", "/dev/a"), dev("old-b", "/dev/b"))
    await host.index.book(R1, ["old-a"])
    host.attach(R1)
    host.publish(R1, dev("new-a", "/dev/a"), dev("new-b", "/dev/b"))
    assert host.ids(R1) == ["new-b", "old-a"]
    [device] = [d for d in host.tables[R1].snapshot.devices if d.id == "old-a"]
    assert device.nodes[0].host_path == "/dev/a"


async def test_an_id_a_booking_keeps_for_one_node_is_not_reused_for_a_new_node() -> None:
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host = Host(nodes)
    host.publish(R1, dev("x", "/dev/a"))
    await host.index.book(R1, ["x"])
    # /dev/a is now called y, and x names another node: x is held while /dev/a is "x"
    host.publish(R1, dev("y", "/dev/a"), dev("x", "/dev/b"))
    assert host.ids(R1) == ["x"]
    [device] = host.tables[R1].snapshot.devices
    assert device.nodes[0].host_path == "/dev/a"
    assert host.held(R1) == 1


def test_an_id_no_booking_keeps_goes_to_the_device_reported_under_it() -> None:
    """Issue 17 M3: /dev/a is now called y and x names another node; nothing booked x, so
    /dev/a is y and /dev/b is x (before, /dev/a stayed x and /dev/b was held `id_taken`)."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host = Host(nodes)
    host.publish(R1, dev("x", "/dev/a"))
    host.publish(R1, dev("y", "/dev/a"), dev("x", "/dev/b"))
    paths = {d.id: d.nodes[0].host_path for d in host.tables[R1].snapshot.devices}
    assert paths == {"x": "/dev/b", "y": "/dev/a"}
    assert host.held(R1) == 0


def test_claims_of_unchanged_devices_are_not_resolved_again() -> None:
    calls: list[str] = []

    def resolve(path: str) -> Reached | None:
        calls.append(path)
        return ("c", hash(path) & 0xFFFF), path

    host = Host(resolve)
    devices = [node(f"/dev/n{i}") for i in range(100)]
    host.publish(R1, *devices)
    calls.clear()
    host.publish(R1, *devices, node("/dev/new"))
    assert calls == ["/dev/new"]


def test_devices_renamed_on_their_paths_are_not_resolved_again() -> None:
    """A probe that renames every device on the same paths (d<i> <-> e<i>) costs no
    resolution: claims are known by places, not by driver ID."""
    nodes = FakeNodes({f"/dev/n{i}": ("c", i) for i in range(50)})
    calls: list[str] = []

    def resolve(path: str) -> Reached | None:
        calls.append(path)
        return nodes(path)

    host = Host(resolve)
    first = [dev(f"d{i}", f"/dev/n{i}") for i in range(50)]
    host.publish(R1, *first)
    assert len(calls) == 50
    calls.clear()
    for _ in range(3):
        host.publish(R1, *[dev(f"e{i}", f"/dev/n{i}") for i in range(50)])
        assert host.ids(R1) == sorted(f"e{i}" for i in range(50)), "nothing booked d<i>"
        host.publish(R1, *[dev(f"d{i}", f"/dev/n{i}") for i in range(50)])
        assert host.ids(R1) == sorted(f"d{i}" for i in range(50))
    # a renamed device that also moves to a new path resolves that path only
    nodes.nodes["/dev/new"] = ("c", 999)  # (a path where nothing is is never advertised)
    host.publish(R1, *first[1:], dev("e0", "/dev/new"))
    assert calls == ["/dev/new"]
    assert "e0" in host.ids(R1) and "d0" not in host.ids(R1)


def test_an_unchanged_list_costs_what_is_held_and_lingers_not_a_walk() -> None:
    """The safety-net rescan of every resource republishes an equal list: nothing is
    resolved and the table is not given the list again; a held device is still checked, so
    it is advertised once its owner's node is gone, though its own list never changed."""
    nodes = FakeNodes({f"/dev/n{i}": ("c", i) for i in range(100)})
    nodes.nodes["/dev/alias"] = ("c", 7)
    calls: list[str] = []

    def resolve(path: str) -> Reached | None:
        calls.append(path)
        return nodes(path)

    host = Host(resolve)
    sent: list[int] = []
    table = host.attach(R1)

    def publish(devices: Mapping[str, Device]) -> bool:
        sent.append(len(devices))
        return table.publish(devices)

    host.index.attach(R1, publish, get_logger().bind(resource=R1))
    host.publish(R1, *[node(f"/dev/n{i}") for i in range(100)])
    host.publish(R2, node("/dev/alias"))
    assert host.ids(R2) == [] and sent == [100]
    calls.clear()
    host.publish(R1, *[node(f"/dev/n{i}") for i in range(100)])  # equal, not the same
    assert calls == [] and sent == [100]
    host.publish(R2, node("/dev/alias"))  # the held one is checked again, nothing else
    assert calls == [] and host.ids(R2) == []
    # the owner lets go of n7 (a pod may hold it: it lingers), then the node goes
    host.publish(R1, *[node(f"/dev/n{i}") for i in range(100) if i != 7])
    assert host.ids(R2) == [] and sent == [100, 99]
    del nodes.nodes["/dev/n7"]
    calls.clear()
    host.publish(R2, node("/dev/alias"))  # its list is the same: the claim is won anyway
    assert host.ids(R2) == ["alias"]
    assert calls == ["/dev/n7"]


def test_a_restarted_runtime_does_not_advertise_what_it_held() -> None:
    """(A counter-example the property test found: a new runtime forgot what it held.)"""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host = Host(nodes)
    host.publish(R2, dev("x", "/dev/a"))
    host.publish(R1, dev("y", "/dev/a"), dev("z", "/dev/b"))
    host.attach(R1)
    host.publish(R1, dev("y", "/dev/a"), dev("z", "/dev/b"))
    assert host.ids(R1) == ["z"] and host.ids(R2) == ["x"]


async def test_a_node_replaced_at_its_path_is_claimed_by_its_new_number() -> None:
    """Claims are kept while a device's paths are unchanged; the watcher says when a path
    changed (a node removed and made again with another device number), and the device is
    claimed anew: the new number is not left free for another resource to advertise."""
    nodes = FakeNodes({"/dev/fpga0": ("c", 5), "/dev/by-id/other": ("c", 6)})
    host = Host(nodes)
    watcher = ManualWatcher()
    host.index.watch(watcher)
    host.publish(R1, node("/dev/fpga0"))
    assert watcher.directories == {"/dev"}
    nodes.nodes["/dev/fpga0"] = ("c", 6)
    watcher.change("/dev", "fpga1")  # another name: nothing to do
    watcher.change("/dev", "fpga0")
    await asyncio.sleep(0)  # the recheck runs once the burst is over (call_soon)
    host.publish(R2, node("/dev/by-id/other"))
    assert host.ids(R1) == ["fpga0"] and host.ids(R2) == [] and host.held(R2) == 1


async def test_a_path_that_hangs_is_left_out_and_stalls_nothing() -> None:
    """Claims are resolved off the loop through the host's offload, bounded by a timeout: a
    probe naming a path on a hung file system leaves that device out (logged, counted as
    `read_timeout`) while the rest of its list and every other resource go on; the next
    list tries again without a second thread stuck on the same path, and once the path
    answers the device is advertised."""
    nodes = FakeNodes({"/nfs/dead": ("c", 99), "/dev/a": ("c", 1)})
    nodes.nodes.update({"/dev/b": ("c", 2), "/dev/c": ("c", 3)})
    answer = threading.Event()
    calls: list[str] = []

    def resolve(path: str) -> Reached | None:
        calls.append(path)
        if path == "/nfs/dead":
            answer.wait(60)  # a hung file system, until the test lets it answer
        return nodes(path)

    metrics = Metrics()
    index = OwnershipIndex(metrics, resolve, offload=DaemonThreads(), timeout=0.2)
    tables = {R1: DeviceTable(), R2: DeviceTable()}
    detach = [
        index.attach(name, table.publish, get_logger().bind(resource=name))
        for name, table in tables.items()
    ]

    def ids(name: str) -> list[str]:
        return [d.id for d in tables[name].snapshot.devices]

    def timeouts() -> float:
        labels = {"resource": R1, "reason": "read_timeout"}
        return metrics.registry.get_sample_value("kdp_driver_skipped_total", labels) or 0.0

    try:
        index.publish(R1, {"a": dev("a", "/dev/a"), "dead": dev("dead", "/nfs/dead")})
        index.publish(R2, {"b": dev("b", "/dev/b")})
        await wait_until(lambda: ids(R1) == ["a"] and ids(R2) == ["b"], timeout=20)
        assert timeouts() == 1
        calls.clear()
        devices = {"a": dev("a", "/dev/a"), "c": dev("c", "/dev/c")}
        index.publish(R1, {**devices, "dead": dev("dead", "/nfs/dead")})
        await wait_until(lambda: ids(R1) == ["a", "c"], timeout=20)
        assert "/nfs/dead" not in calls and timeouts() == 1
        answer.set()

        def rescanned() -> bool:
            index.publish(R1, {**devices, "dead": dev("dead", "/nfs/dead")})  # the next list
            return ids(R1) == ["a", "c", "dead"]

        await wait_until(rescanned, timeout=20)
    finally:
        answer.set()
        for stop in detach:
            stop()  # (a runtime that stops drops an admission waiting for paths)


async def test_a_long_batch_or_a_busy_offload_is_no_hang() -> None:
    """The timeout is per path: a batch of many paths, each answering within it, takes
    longer than the timeout in all and loses none of them."""
    nodes = FakeNodes({f"/dev/n{i}": ("c", i) for i in range(12)})

    def slow(path: str) -> Reached | None:
        time.sleep(0.03)  # a slow file system, not a hung one (12 x 0.03 s > 0.2 s)
        return nodes(path)

    index = OwnershipIndex(Metrics(), slow, offload=DaemonThreads(), timeout=0.2)
    table = DeviceTable()
    detach = index.attach(R1, table.publish, get_logger().bind(resource=R1))
    try:
        index.publish(R1, {f"n{i}": node(f"/dev/n{i}") for i in range(12)})
        await wait_until(lambda: len(table.snapshot.devices) == 12, timeout=20)
    finally:
        detach()


async def test_a_dead_file_system_takes_a_bounded_number_of_workers() -> None:
    """Twenty devices on a dead mount, listed again and again: a few workers get stuck on
    it, then its paths are not tried while they are, and a device elsewhere is advertised
    every time."""
    answer = threading.Event()
    stuck: list[str] = []

    def resolve(path: str) -> Reached | None:
        if path.startswith("/nfs/"):
            stuck.append(path)
            answer.wait(60)
            return None
        return ("c", sum(map(ord, path)) << 8 | len(path)), path  # (a node there)

    index = OwnershipIndex(Metrics(), resolve, offload=DaemonThreads(), timeout=0.05)
    table = DeviceTable()
    detach = index.attach(R1, table.publish, get_logger().bind(resource=R1))

    def ids() -> list[str]:
        return [d.id for d in table.snapshot.devices]

    try:
        devices = {"d0": node("/nfs/d0"), "live0": node("/dev/live0")}
        index.publish(R1, devices)
        await wait_until(lambda: "live0" in ids(), timeout=20)
        for rescan in range(1, 6):  # each list has a new device elsewhere: its admission ran
            devices = {**{f"d{i}": node(f"/nfs/d{i}") for i in range(20)}, **devices}
            devices[f"live{rescan}"] = node(f"/dev/live{rescan}")
            index.publish(R1, devices)
            await wait_until(lambda r=rescan: f"live{r}" in ids(), timeout=20)  # type: ignore[misc]
        assert not [i for i in ids() if i.startswith("d")]
        assert len(stuck) <= MAX_STUCK - 1 + STUCK_PER_BATCH
    finally:
        answer.set()
        detach()


def test_claim_key_follows_links_and_claims_missing_paths_by_their_place(tmp_path: Path) -> None:
    """A file is claimed by its inode, through a symbolic or a hard link, and after a rename;
    a directory too; a missing path by the real path of where it would be."""
    (tmp_path / "f").touch()
    (tmp_path / "l").symlink_to(tmp_path / "f")
    os.link(tmp_path / "f", tmp_path / "h")
    st = os.stat(tmp_path / "f")
    inode = ("f", st.st_dev << 64 | st.st_ino)
    assert claim_key(f"{tmp_path}/l") == claim_key(f"{tmp_path}/f") == inode
    assert claim_key(f"{tmp_path}/h") == inode
    os.rename(tmp_path / "f", tmp_path / "g")
    assert claim_key(f"{tmp_path}/g") == inode
    assert claim_key(f"{tmp_path}/missing") == ("path", os.path.realpath(f"{tmp_path}/missing"))
    claims = device_claims(dev("a", f"{tmp_path}/missing"))
    assert [claim[0] for claim in claims.exclusive] == [("path", f"{tmp_path}/missing")]
    st = os.stat(tmp_path)
    assert claim_key(str(tmp_path)) == ("d", st.st_dev << 64 | st.st_ino)
    assert reach(f"{tmp_path}/h") == (inode, f"{tmp_path}/h")


def test_a_directory_mount_clashes_with_what_is_below_it_both_ways(tmp_path: Path) -> None:
    """A mount of /dev/dri in one device and the node /dev/dri/card0 in another reach the
    same node: whichever comes second is held, in either order, and `check` says so."""
    (tmp_path / "dri" / "by-path").mkdir(parents=True)
    (tmp_path / "dri" / "card0").touch()
    (tmp_path / "other").touch()
    dri, card0 = f"{tmp_path}/dri", f"{tmp_path}/dri/card0"
    mount_dri = dev("gpu-all", f"{tmp_path}/other", mounts=(dri,))
    host = Host()
    host.publish(R1, mount_dri)
    host.publish(R2, dev("card0", card0))
    assert host.ids(R1) == ["gpu-all"] and host.ids(R2) == [] and host.held(R2) == 1
    other = Host()
    other.publish(R2, dev("card0", card0))
    other.publish(R1, mount_dri)
    assert other.ids(R2) == ["card0"] and other.ids(R1) == []
    # a directory inside the mounted one, and the whole tree above it, clash too
    host.publish(R3, dev("by-path", f"{tmp_path}/other-missing", mounts=(f"{dri}/by-path",)))
    host.publish(R2, dev("everything", f"{tmp_path}/x", mounts=(str(tmp_path),)))
    assert host.ids(R3) == [] and host.ids(R2) == []
    found = overlaps([(R1, mount_dri), (R2, dev("card0", card0))])
    assert [(o.first.device, o.second.device, o.path) for o in found] == [
        ("gpu-all", "card0", card0)
    ]


def test_shared_directory_mounts_and_shared_nodes_below_them_coexist(tmp_path: Path) -> None:
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "ctl").touch()
    (tmp_path / "a").touch()
    (tmp_path / "b").touch()
    fw = str(tmp_path / "fw")
    host = Host()
    host.publish(
        R1,
        Device(
            "a",
            nodes=(DeviceNode(f"{tmp_path}/a", "/a"),),
            mounts=(DeviceMount(fw, "/fw", shared=True),),
        ),
        Device(
            "b",
            nodes=(DeviceNode(f"{tmp_path}/b", "/b"), DeviceNode(f"{fw}/ctl", "/ctl", shared=True)),
        ),
    )
    assert host.ids(R1) == ["a", "b"]
    host.publish(R2, Device("ctl", nodes=(DeviceNode(f"{fw}/ctl", "/ctl"),)))
    assert host.ids(R2) == []


# ------------------------------------------------------------------ property


NODES = 5
PATTERNS = ("nodes/n*", "nodes/n[0-2]", "a/*", "b/*", "a/l[0-1]*")


def build_tree(root: Path, links: list[tuple[str, int, bool]]) -> None:
    """Nodes (files), and links to them in a/ and b/: symbolic, or hard (the same file)."""
    for sub in ("nodes", "a", "b", "fw"):
        (root / sub).mkdir()
    for i in range(NODES):
        (root / "nodes" / f"n{i}").touch()
    for k, (where, target, hard) in enumerate(links):
        link = root / where / f"l{k}"
        if hard:
            os.link(root / "nodes" / f"n{target}", link)
        else:
            link.symlink_to(root / "nodes" / f"n{target}")


async def glob_list(root: Path, patterns: tuple[str, ...]) -> dict[str, Device]:
    log = get_logger()
    config = GlobDriverConfig(paths=tuple(f"{root}/{p}" for p in patterns))
    driver = make_driver(config, DriverDeps(log, PollingWatcher(log)))
    return {d.id: d for d in await driver.scan()}


MOUNTS = (("", False), ("fw", False), ("fw", True), ("nodes", False), ("nodes", True), ("a", False))
"""A device's mount: none, a directory of its own (or shared), the directory of every node
(contains them all: a clash with every other device's node), one of links only."""


def shell_list(root: Path, picks: list[tuple[int, int, int]]) -> dict[str, Device]:
    """What a probe might print: devices with one or two nodes, a directory mount (which
    may contain the nodes of others), shared nodes."""
    out: dict[str, Device] = {}
    for k, (first, second, mount) in enumerate(picks):
        nodes = [DeviceNode(f"{root}/nodes/n{first}", f"/dev/x{k}")]
        if second != first:
            nodes.append(DeviceNode(f"{root}/nodes/n{second}", f"/dev/y{k}", shared=second == 4))
        mounts = tuple(
            DeviceMount(f"{root}/{sub}", f"/{sub}", shared=shared)
            for sub, shared in [MOUNTS[mount]]
            if sub
        )
        out[f"s{k}"] = Device(f"s{k}", nodes=tuple(nodes), mounts=mounts)
    return out


resource_lists = st.one_of(
    st.tuples(st.just("glob"), st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3)),
    st.tuples(
        st.just("shell"),
        st.lists(
            st.tuples(
                st.integers(0, NODES - 1),
                st.integers(0, NODES - 1),
                st.integers(0, len(MOUNTS) - 1),
            ),
            max_size=3,
        ),
    ),
)
steps = st.lists(
    st.tuples(
        st.sampled_from(["publish", "restart", "retire", "remove_node", "book"]),
        st.integers(0, 2),
        resource_lists,
        st.integers(0, NODES - 1),
    ),
    min_size=1,
    max_size=12,
)


IndependentKey = tuple[str, object]


def independent_key(path: str) -> tuple[IndependentKey, str]:
    """What a path is, found here without the index's code: the file (device and inode) it
    reaches, or its real path where nothing is; with its real path."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return ("missing", real), real
    return ("file", (st.st_dev, st.st_ino)), real


def independent_claims(
    device: Device,
) -> tuple[dict[IndependentKey, str], dict[IndependentKey, str]]:
    """What a device puts into a container (key -> real path), resolved here without the
    index's code."""
    exclusive: dict[IndependentKey, str] = {}
    shared: dict[IndependentKey, str] = {}
    paths = [(n.host_path, n.shared) for n in device.nodes]
    paths += [(m.host_path, m.shared) for m in device.mounts]
    for path, is_shared in paths:
        key, real = independent_key(path)
        (shared if is_shared else exclusive)[key] = real
    return exclusive, {key: real for key, real in shared.items() if key not in exclusive}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    links=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, NODES - 1), st.booleans()),
        max_size=5,
    ),
    script=steps,
    chunk=st.sampled_from([ADMISSION_CHUNK, 1, 2]),
)
@example(  # a booking while an admission lets go of the booked node: that Allocate is refused
    links=[],
    script=[
        ("publish", 0, ("glob", ["nodes/n*"]), 0),
        ("publish", 0, ("glob", ["nodes/n*"]), 0),
        ("publish", 0, ("glob", ["a/*"]), 0),
        ("book", 0, ("glob", ["nodes/n*"]), 0),
    ],
    chunk=2,
)
def test_no_node_is_ever_in_two_advertised_devices(
    links: list[tuple[str, int, bool]], script: list[tuple[str, int, object, int]], chunk: int
) -> None:
    """Random glob patterns and probe-like lists over a random tree of nodes and links
    (symbolic and hard), with restarts, reloads that retire resources, nodes that vanish and
    Allocates that book what a resource advertises: at every step no node (file) or mount
    source is in two advertised devices, a node that stayed present is only ever advertised
    by one resource, and a node a booking holds only under the booked ID -- what the kubelet
    books (an ID no booking holds follows the list). With a small `chunk`, admissions run
    in turns of the loop, and the next steps come while they run."""
    root = Path(tempfile.mkdtemp(prefix="kdp-own"))
    try:
        build_tree(root, links)
        asyncio.run(run_script(root, script, chunk))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def run_script(root: Path, script: list[tuple[str, int, object, int]], chunk: int) -> None:
    host = Host(chunk=chunk)
    names = [R1, R2, R3]
    live: set[str] = set()
    seen: Seen = {}, {}
    for action, which, spec, victim in script:
        name = names[which]
        if action == "remove_node":
            path = root / "nodes" / f"n{victim}"
            if path.exists():  # (a claim made through it lingers no longer: a hard link
                key = independent_key(str(path))[0]  # may keep the file)
                seen[0].pop(key, None)
                seen[1].pop(key, None)
                path.unlink()
            continue
        if action == "book":
            if name in live:  # (what the kubelet sees now: an admission may be running)
                advertised = host.tables[name].snapshot.devices
                try:
                    await host.index.book(name, [d.id for d in advertised])
                except PlaceOwned:
                    continue  # an admission let go of one meanwhile: the Allocate is refused
                for device in advertised:
                    for key in independent_claims(device)[0]:
                        if key[0] == "file":
                            seen[1][key] = (name, device.id)
            continue
        if action == "retire":
            if name in live:
                host.index.retire(name)
                live.discard(name)
            continue
        if action == "restart" or name not in live:
            host.attach(name)
            live.add(name)
        kind, arg = spec  # type: ignore[misc]
        devices = await glob_list(root, tuple(arg)) if kind == "glob" else shell_list(root, arg)
        host.index.publish(name, devices)
        check_advertised(host, live, seen)
    await host.index.quiet()
    check_advertised(host, live, seen)


Seen = tuple[dict[IndependentKey, str], dict[IndependentKey, tuple[str, str]]]
"""The resource each node was first advertised by, and the (resource, ID) each booked
node was booked under (bookings never end here: no PodResources answer comes)."""


def check_advertised(host: Host, live: set[str], seen: Seen) -> None:
    """Every live resource's advertised list, checked independently."""
    first, booked = seen
    owners: dict[IndependentKey, tuple[str, str]] = {}
    sharers: dict[IndependentKey, set[str]] = {}
    made: list[tuple[tuple[str, str], str, bool]] = []
    for resource in sorted(live):
        for device in host.tables[resource].snapshot.devices:
            exclusive, shared = independent_claims(device)
            me = (resource, device.id)
            for key in exclusive:
                assert key not in owners, (key, owners[key], me)
                assert key not in sharers, (key, sharers[key], me)
                owners[key] = me
                if key[0] == "file":
                    assert first.setdefault(key, resource) == resource, (key, first[key], me)
                    assert booked.get(key, me) == me, (key, booked[key], me)
            for key in shared:
                assert key not in owners, (key, owners[key], me)
                sharers.setdefault(key, set()).add(resource)
            made += [(me, real, False) for real in exclusive.values()]
            made += [(me, real, True) for real in shared.values()]
    # a directory one device mounts holds nothing another device claims (two shared
    # claims apart)
    for me, directory, dir_shared in made:
        if not os.path.isdir(directory):
            continue
        for other, real, shared in made:
            if other != me and real.startswith(directory + "/"):
                assert dir_shared and shared, (directory, me, real, other)


def test_a_lingering_claim_goes_once_podresources_shows_no_pod_holding_it() -> None:
    now = [100.0]
    nodes = FakeNodes({"/dev/fpga0": ("c", 5), "/dev/by-id/f": ("c", 5)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    host.publish(R1, node("/dev/fpga0"))
    host.publish(R2, node("/dev/by-id/f"))
    host.index.retire(R1)  # a reload removed it; a pod may still hold fpga0
    held = {R1: {"fpga0::1": (Holder("ns", "p1", "c", 0.0),)}}
    host.index.holdings(Holdings(now[0] + 60, 0.0, held))
    assert host.ids(R2) == [], "a pod holds one of its replicas"
    # an answer asked for before the kubelet can have heard that fpga0 went proves nothing
    host.index.holdings(Holdings(now[0] + 1, 0.0, {}))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"fpga01": ()}}))
    assert host.ids(R2) == ["f"]


async def test_a_device_whose_replica_ids_change_waits_until_no_pod_holds_a_booked_one() -> None:
    now = [100.0]
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])

    def run(replicas: int) -> list[str]:
        table = host.tables[R1] = DeviceTable(replicas=replicas)
        host.index.attach(R1, table.publish, get_logger(), replicas=replicas)
        host.index.publish(R1, {d.id: d for d in (dev("a", "/dev/a"), dev("b", "/dev/b"))})
        return [e.id for e in table.snapshot.advertised]

    def advertised() -> list[str]:
        return [e.id for e in host.tables[R1].snapshot.advertised]

    run(1)
    await host.index.book(R1, ["a"])
    # 1 -> 2: a pod holds "a"; "a::0" and "a::1" would give it to two more
    assert run(2) == ["b::0", "b::1"]
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"a": (Holder("n", "p", "c", 0.0),)}}))
    assert advertised() == ["b::0", "b::1"]
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert advertised() == ["a::0", "a::1", "b::0", "b::1"]
    # 2 -> 3 keeps every booked ID: nothing to wait for
    await host.index.book(R1, ["a::1"])
    assert len(run(3)) == 6
    # 3 -> 2: a pod holds b::2
    await host.index.book(R1, ["b::2"])
    assert run(2) == ["a::0", "a::1"]
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"a::1": ()}}))
    assert len(advertised()) == 4


# ---------------------------------------------------------------- bookings


def kept_file(directory: Path) -> StateFile:
    return ownership_file(str(directory), get_logger(), DaemonThreads())


def restarted(
    directory: Path, nodes: Resolver, now: list[float] | None = None, pod_resources: bool = True
) -> tuple[Host, StateFile]:
    """A Host whose index read `ownership.json` back, as `kdp_host.host.Host` does at start,
    and the file it keeps its bookings in."""
    host = Host(nodes)
    clock = (lambda: now[0]) if now is not None else time.monotonic
    host.index = OwnershipIndex(host.metrics, nodes, clock=clock, pod_resources=pod_resources)
    state = kept_file(directory)
    host.index.keep_bookings_in(state, state.load(read_saved))
    return host, state


def booked_ids(directory: Path) -> list[str]:
    document = json.loads((directory / OWNERSHIP_FILE).read_text())
    return sorted(f"{entry['resource']}/{entry['id']}" for entry in document["bookings"])


async def test_a_booked_device_keeps_its_id_across_a_restart_that_renames_it(
    tmp_path: Path,
) -> None:
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/d": ("f", 77)})
    first, _ = restarted(tmp_path, nodes)
    first.publish(R1, dev("old-a", "/dev/a"), dev("old-b", "/dev/b", mounts=("/d",)))
    assert not (tmp_path / OWNERSHIP_FILE).exists(), "nothing booked: nothing to write"
    await first.index.book(R1, ["old-a"])
    await first.index.book(R1, ["old-b"])
    assert booked_ids(tmp_path) == [f"{R1}/old-a", f"{R1}/old-b"]
    inode = (tmp_path / OWNERSHIP_FILE).stat().st_ino
    await first.index.book(R1, ["old-a", "old-b"])  # booked again, same claims
    assert (tmp_path / OWNERSHIP_FILE).stat().st_ino == inode, "an unchanged booking is written"

    # SIGKILL; the new config renames both (nothing of the rename was seen live)
    second, _ = restarted(tmp_path, nodes)
    second.publish(R1, dev("new-a", "/dev/a"), dev("new-b", "/dev/b", mounts=("/d",)))
    assert second.ids(R1) == ["old-a", "old-b"]
    [device] = [d for d in second.tables[R1].snapshot.devices if d.id == "old-b"]
    assert device.mounts[0].host_path == "/d"


async def test_a_booked_node_is_never_advertised_by_another_resource_after_a_restart(
    tmp_path: Path,
) -> None:
    nodes = FakeNodes({"/dev/x0": ("c", 7), "/links/l0": ("c", 7)})
    first, _ = restarted(tmp_path, nodes)
    first.publish(R1, node("/dev/x0"))
    await first.index.book(R1, ["x0"])
    second, _ = restarted(tmp_path, nodes)
    second.publish(R2, node("/links/l0"))  # the other resource lists first this time
    assert second.ids(R2) == []
    second.publish(R1, node("/dev/x0"))
    assert second.ids(R1) == ["x0"] and second.ids(R2) == []


async def test_a_booking_holds_a_reused_device_number_until_its_pod_ends() -> None:
    """A held tty is unplugged, another stick gets the same node number: while the old pod
    runs (its container keeps the major:minor), no new ID and no other resource gets it."""
    now = [100.0]
    nodes = FakeNodes({"/dev/ttyUSB0": ("c", 188 << 8)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    host.publish(R1, dev("SERB", "/dev/ttyUSB0"))
    await host.index.book(R1, ["SERB"])
    del nodes.nodes["/dev/ttyUSB0"]
    host.publish(R1)  # unplugged
    host.publish(R2)
    nodes.nodes["/dev/ttyUSB0"] = ("c", 188 << 8)  # another stick, the same number
    host.publish(R1, dev("SERC", "/dev/ttyUSB0"))
    host.publish(R2, dev("other", "/dev/ttyUSB0"))
    assert host.ids(R1) == ["SERB"], "only under the ID the kubelet gave the old pod"
    assert host.ids(R2) == []
    pod = (Holder("ns", "p1", "c", 0.0),)
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"SERB": pod}}))
    assert host.ids(R2) == []
    # the node gone while the booking lives: the claim stays
    del nodes.nodes["/dev/ttyUSB0"]
    host.publish(R1)
    nodes.nodes["/dev/ttyUSB0"] = ("c", 188 << 8)
    host.publish(R2, dev("other", "/dev/ttyUSB0"))
    assert host.ids(R2) == []
    # an answer asked for too soon after the booking proves nothing
    host.index.holdings(Holdings(now[0] + 1, 0.0, {}))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert host.ids(R2) == ["other"]


async def test_a_booking_goes_when_no_pod_holds_it_and_the_file_follows(tmp_path: Path) -> None:
    now = [100.0]
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/dev/c": ("c", 3)})
    first, state = restarted(tmp_path, nodes, now)
    first.publish(R1, dev("a", "/dev/a"), dev("b", "/dev/b"))
    first.publish(R2, dev("c", "/dev/c"))
    await first.index.book(R1, ["a", "b"])
    await first.index.book(R2, ["c"])
    assert booked_ids(tmp_path) == [f"{R1}/a", f"{R1}/b", f"{R2}/c"]

    second, state = restarted(tmp_path, nodes, now)  # R2 left the config while kdp-host was down
    del nodes.nodes["/dev/a"]  # unplugged
    second.publish(R1, dev("x-b", "/dev/b"))
    assert second.ids(R1) == ["b"]
    # a pod still holds c: the claim stays (and R3, reaching it, waits)
    second.publish(R3, dev("y", "/dev/c"))
    assert second.ids(R3) == []
    pod = (Holder("ns", "p", "c", 0.0),)
    second.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"b": pod}, R2: {"c": pod}}))
    assert second.ids(R3) == []
    second.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"b": pod}}))
    assert second.ids(R3) == ["y"]
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path) == [f"{R1}/b"], "no pod holds a or c"


async def test_without_podresources_a_held_device_says_what_ends_the_booking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = FakeNodes({"/dev/a": ("c", 1)})
    host, _ = restarted(tmp_path, nodes, pod_resources=False)
    host.publish(R1, dev("a", "/dev/a"))
    await host.index.book(R1, ["a"])
    table = host.tables[R1] = DeviceTable(replicas=2)
    host.index.attach(R1, table.publish, get_logger().bind(resource=R1), replicas=2)
    host.index.publish(R1, {"a": dev("a", "/dev/a")})
    assert table.snapshot.advertised == ()
    [line] = [r for r in caplog.records if r.getMessage() == "device_held"]
    action = getattr(line, "action", "") or str(line.__dict__)
    assert "PodResources polling is off" in action and "kdp-host unbook" in action
    # what unbook does (kdp-host stopped): the next start advertises it
    assert await drop_bookings(str(tmp_path), R1, ["a"]) == ["a"]
    assert booked_ids(tmp_path) == []
    again, _ = restarted(tmp_path, nodes, pod_resources=False)
    table = again.tables[R1] = DeviceTable(replicas=2)
    again.index.attach(R1, table.publish, get_logger(), replicas=2)
    again.index.publish(R1, {"a": dev("a", "/dev/a")})
    assert [e.id for e in table.snapshot.advertised] == ["a::0", "a::1"]


async def test_a_replica_wait_survives_a_restart(tmp_path: Path) -> None:
    """`replicas: 1` -> `2` while a pod holds the booked `a`: the device waits, and still
    waits after a restart (the booking is in `ownership.json`) until no pod holds `a`."""
    now = [100.0]
    nodes = FakeNodes({"/dev/a": ("c", 1)})

    def run(host: Host, replicas: int) -> DeviceTable:
        table = host.tables[R1] = DeviceTable(replicas=replicas)
        host.index.attach(R1, table.publish, get_logger(), replicas=replicas)
        host.index.publish(R1, {"a": dev("a", "/dev/a")})
        return table

    first, state = restarted(tmp_path, nodes, now)
    run(first, 1)
    await first.index.book(R1, ["a"])
    assert [e.id for e in run(first, 2).snapshot.advertised] == [], "a pod may hold a"

    second, state = restarted(tmp_path, nodes, now)  # SIGKILL, start with replicas: 2
    table = run(second, 2)
    assert [e.id for e in table.snapshot.advertised] == []
    second.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"a": (Holder("n", "p", "c", 0.0),)}}))
    assert [e.id for e in table.snapshot.advertised] == []
    second.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert [e.id for e in table.snapshot.advertised] == ["a::0", "a::1"]
    await asyncio.wait_for(state.flush(), 30)
    assert json.loads((tmp_path / OWNERSHIP_FILE).read_text())["bookings"] == []


async def test_a_held_id_without_a_booking_is_booked_from_podresources(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ownership.json is gone (an upgrade from a version without it, a lost state directory)
    while pods hold `a` and an ID no device has now. An answer that came before the resource
    listed (as at start) is used by its first admission, before its list goes out: `a` is
    booked with its claims (and the file written), so a reload that renames `a` (replicas
    1 -> 2) holds it; the other is logged once and counted, and holds nothing."""
    caplog.set_level(logging.INFO)
    now = [100.0]
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host, state = restarted(tmp_path, nodes, now)
    pod = (Holder("ns", "p1", "c", 0.0),)
    held = {R1: {"a": pod, "gone": pod}, "other.io/gpu": {"g0": pod}}
    host.index.holdings(Holdings(now[0] + 1, 0.0, held))  # before R1 listed: nothing known
    assert not [r for r in caplog.records if r.getMessage().startswith("held_id")]
    table = host.tables[R1] = DeviceTable()
    host.index.attach(R1, table.publish, get_logger().bind(resource=R1))
    host.index.publish(R1, {"a": dev("a", "/dev/a"), "b": dev("b", "/dev/b")})
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path) == [f"{R1}/a"]
    for _ in range(2):  # later answers: nothing new
        host.index.holdings(Holdings(now[0] + 2, 0.0, held))
    lines = [r for r in caplog.records if r.getMessage().startswith("held_id")]
    assert [(r.getMessage(), r.__dict__["kdp_fields"]["device"]) for r in lines] == [
        ("held_id_booked", "a"),
        ("held_id_not_present", "gone"),
    ]
    assert lines[1].__dict__["kdp_fields"]["resource"] == R1
    counted = {
        result: host.metrics.registry.get_sample_value(
            "kdp_pod_resources_unbooked_total", {"result": result}
        )
        for result in ("booked", "not_present")
    }
    assert counted == {"booked": 1.0, "not_present": 1.0}

    table = host.tables[R1] = DeviceTable(replicas=2)
    host.index.attach(R1, table.publish, get_logger().bind(resource=R1), replicas=2)
    host.index.publish(R1, {"a": dev("a", "/dev/a"), "b": dev("b", "/dev/b")})
    assert [e.id for e in table.snapshot.advertised] == ["b::0", "b::1"], "p1 holds a"
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))  # p1 ended
    assert len(table.snapshot.advertised) == 4
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path) == []


async def test_a_held_replica_id_of_another_replica_count_holds_its_device(
    tmp_path: Path,
) -> None:
    """`replicas: 2` -> `1` while kdp-host was down and ownership.json is gone: p1 holds
    `a::1`, which no device has now; it is the device `a`'s, so `a` waits until p1 ends."""
    now = [100.0]
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    host, _ = restarted(tmp_path, nodes, now)
    host.publish(R1, dev("a", "/dev/a"), dev("b", "/dev/b"))
    assert host.ids(R1) == ["a", "b"]
    host.index.holdings(Holdings(now[0] + 1, 0.0, {R1: {"a::1": (Holder("n", "p1", "c", 0.0),)}}))
    host.publish(R1, dev("a", "/dev/a"), dev("b", "/dev/b"))
    assert host.ids(R1) == ["b"], "a second pod would share a with p1"
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert host.ids(R1) == ["a", "b"]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 1, "bookings": [{"resource": "t.io/a", "id": "a", "device": "a", '
        '"claims": "x"}]}',
        '{"version": 1, "bookings": [{"resource": "t.io/a", "device": "a", "claims": []}]}',
        '{"version": 2, "claims": []}',
        '{"version": 1}',
        '{"version": 1, "bookings": [{"resource": "t.io/a", "id": "a", "device": "a", '
        '"claims": [{"kind": "c", "key": "1", "path": "/dev/a", "real": "/dev/a"}]}]}',
        '{"version": 1, "bookings": [{"resource": "t.io/a", "id": "", "device": "a", '
        '"claims": [{"kind": "path", "key": "/d", "path": "/d", "real": "/d"}]}]}',
        '{"version": 1, "bookings": [{"resource": "t.io/a", "id": "a", "device": "a", '
        '"claims": [{"kind": "c", "key": true, "path": "/dev/a", "real": "/dev/a"}]}]}',
        '{"version": 1, "bookings": [{"resource": "t.io/a", "id": "a", "device": "a", '
        '"claims": [{"kind": "c", "key": 1, "path": 5, "real": "/dev/a"}]}]}',
        '{"version": 1, "bookings": [{"resource": "t.io/a", "id": "a", "device": "a", '
        '"claims": [{"kind": "c", "key": 1, "path": "/dev/a"}]}]}',
    ],
)
def test_a_bad_ownership_file_is_set_aside_with_an_error_and_nothing_else_is_lost(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / OWNERSHIP_FILE).write_text(text)
    release = {"version": 1, "resources": {R1: {"a": {"used": ["a"], "owed": False}}}}
    (tmp_path / STATE_FILE).write_text(json.dumps(release))
    state = kept_file(tmp_path)
    assert state.load(read_saved) is None and state.unknown
    assert (tmp_path / (OWNERSHIP_FILE + ".unreadable")).read_text() == text
    [line] = [r for r in caplog.records if r.getMessage() == "ownership_state_unreadable"]
    assert line.levelno == logging.ERROR
    store = ReleaseStateStore(str(tmp_path), get_logger(), DaemonThreads())
    store.load()
    assert not store.unknown and store.entries(R1) == {"a": {"used": ["a"], "owed": False}}


def test_the_claims_below_a_directory_none_is_below_cost_no_look_at_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19, the renaming probe: an Allocate that mounts a directory asks which claims
    lie below it; with nothing claimed there, the answer (none) comes from the counts kept
    per directory, not from a look at each of the host's claims (12,000 devices beside it
    made every Allocate walk them all)."""
    claims = [(("c", i), f"/dev/x{i}", f"/dev/x{i}") for i in range(1000)]
    claims.append(((DIRECTORY, 1), "/srv/data", "/srv/data"))
    within = ownership_contain.Containment(lambda: iter(claims))
    for key, _, real in claims:
        within.count(key, real)
    looked = 0
    real_below = ownership_contain.below

    def counting(real: str, directory: str) -> bool:
        nonlocal looked
        looked += 1
        return real_below(real, directory)

    monkeypatch.setattr(ownership_contain, "below", counting)
    assert list(within.inner("/usr/lib")) == []
    assert list(within.inner("/srv/data")) == []
    assert looked == 0
    assert sorted(within.inner("/dev")) == sorted(key for key, _, _ in claims[:1000])
    assert list(within.inner("/")) != []
