"""No change the watcher reports is lost (issue 17, hostile19 F3): every device passing the
path, held or advertised, is claimed anew, whether the report came while the path resolved,
after the scan that named it looked, while an admission ran in turns, or in a directory where
only another resource claims (a held device's)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_canonical import checked_reach
from kdp_host.ownership_claims import Reached
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .fake_nodes import FakeNodes, indexed, node
from .test_ownership_hotplug import HeldNodes

R1 = "vendor.example/fpga"
R2 = "vendor.example/gpu"


class Slow:
    """The real resolver, whose answer for a `held` path is what it reached when asked,
    given once the test releases it (the test changes the path meanwhile)."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.release = threading.Event()
        self.started: list[str] = []

    def __call__(self, path: str) -> Reached | None:
        answer = checked_reach(path)
        self.started.append(path)
        if path in self.held:
            self.release.wait(60)
        return None if isinstance(answer, str) else answer


async def test_a_held_device_whose_path_changed_while_it_resolved_is_claimed_anew(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("")
    os.link(a, b)  # (b: the same file as a, held)
    slow, watcher = Slow(), ManualWatcher()
    index, tables = await indexed(
        {R1: [node(str(a)), node(str(b))]}, slow, watcher=watcher, offload=DaemonThreads()
    )
    try:
        assert {d.id for d in tables[R1].snapshot.devices} == {"a"}
        assert set(index.held_now(R1)) == {"b"}
        slow.held.add(str(b))
        slow.started.clear()
        watcher.change(str(tmp_path), "b")  # (nothing changed yet: resolved as a's file)
        await wait_until(lambda: str(b) in slow.started, timeout=20)
        b.unlink()
        b.write_text("")  # made again meanwhile: another file
        watcher.change(str(tmp_path), "b")
        slow.held.clear()
        slow.release.set()
        await index.quiet()
        assert {d.id for d in tables[R1].snapshot.devices} == {"a", "b"}
        assert not index.held_now(R1)
        await index.hand_out(R1, ["b"], [str(b)])
    finally:
        slow.release.set()


async def test_what_a_scan_learnt_before_a_reported_change_is_claimed_anew() -> None:
    """A scan's list names what its paths reach (`known`), as the scan saw them; a change
    the watcher reported after the list before it was given may have come after the scan
    looked: taken (a hot-plug waits for no resolution of its own), the device is claimed
    anew once admitted (new in the list, it is in no admitted list the recheck could find
    it in)."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/x": ("c", 2)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/dev/a")], R2: [node("/dev/x")]}, nodes, watcher=watcher
    )
    nodes.nodes["/dev/b"] = ("c", 3)  # the scan saw x's number there; made again since
    watcher.change("/dev", "b")
    index.publish(R1, {"a": node("/dev/a"), "b": node("/dev/b")}, {"/dev/b": (("c", 2), "/dev/b")})
    await index.quiet()
    assert {d.id for d in tables[R1].snapshot.devices} == {"a", "b"}
    assert not index.held_now(R1)


async def test_a_change_reported_while_an_admission_runs_in_turns_is_claimed_anew() -> None:
    """A change reported after an admission running in turns claimed a device through that
    path (one new in its list: in no admitted list yet) is claimed anew once it is over."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/x": ("c", 2), "/dev/b": ("c", 2)})
    nodes.nodes.update({f"/dev/z{i:02}": ("c", 10 + i) for i in range(10)})
    watcher = ManualWatcher()
    index = OwnershipIndex(resolve=nodes, chunk=1, budget=None)
    index.watch(watcher)
    tables = {name: DeviceTable() for name in (R1, R2)}
    for name, table in tables.items():
        index.attach(name, table.publish, get_logger().bind(resource=name))
    index.publish(R2, {"x": node("/dev/x")})
    index.publish(R1, {"a": node("/dev/a")})
    await index.quiet()
    listed = [node(p) for p in ("/dev/a", "/dev/b", *(f"/dev/z{i:02}" for i in range(10)))]
    index.publish(R1, {d.id: d for d in listed})
    state = index._resources[R1]
    for _ in range(1000):  # (a turn at a time, until b is claimed: as x's number)
        if "/dev/b" in state.claims:
            break
        await asyncio.sleep(0)
    assert "/dev/b" in state.claims and index._running is not None
    nodes.nodes["/dev/b"] = ("c", 3)  # made again with another number
    watcher.change("/dev", "b")
    await index.quiet()
    assert {d.id for d in tables[R1].snapshot.devices} == {d.id for d in listed}
    assert not index.held_now(R1)


async def test_a_path_taken_from_an_older_scan_is_claimed_anew_after_a_newer_list() -> None:
    """What the scan learnt is kept for the admission to come while other paths resolve;
    a newer list that names nothing about that path (the same device) does not make it
    trusted: the device is claimed anew once admitted."""
    nodes = HeldNodes({"/dev/a": ("c", 1), "/dev/x": ("c", 2), "/dev/h": ("c", 5)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/dev/a")], R2: [node("/dev/x")]},
        nodes,
        watcher=watcher,
        offload=DaemonThreads(),
    )
    try:
        nodes.nodes["/dev/b"] = ("c", 3)  # the scan saw x's number there; made again since
        watcher.change("/dev", "b")
        await asyncio.sleep(0)  # (rechecked before the list comes: no device passes b yet)
        nodes.held.add("/dev/h")
        listed = {"a": node("/dev/a"), "b": node("/dev/b"), "h": node("/dev/h")}
        index.publish(R1, listed, {"/dev/b": (("c", 2), "/dev/b")})  # (h: resolved off the loop)
        await wait_until(lambda: "/dev/h" in nodes.started, timeout=20)
        index.publish(R1, dict(listed))  # the next scan: nothing new of b
        nodes.held.clear()
        nodes.release.set()
        await index.quiet()
        assert {d.id for d in tables[R1].snapshot.devices} == {"a", "b", "h"}
        assert not index.held_now(R1)
    finally:
        nodes.release.set()


async def test_a_device_held_in_a_directory_only_another_resource_claimed_is_rechecked() -> None:
    """A held device claims nothing, so its resource may claim nothing in its directory:
    a change there still has it claimed anew (here: x made again with another number;
    R1 claims it anew, and R2's device must not take the old number's claim it let go)."""
    nodes = FakeNodes({"/o/x": ("c", 2)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/o/x")], R2: [node("/o/x", "y")]}, nodes, watcher=watcher
    )
    assert [d.id for d in tables[R1].snapshot.devices] == ["x"]
    assert set(index.held_now(R2)) == {"y"}
    nodes.nodes["/o/x"] = ("c", 9)
    watcher.change("/o", "x")
    await asyncio.sleep(0)  # (the recheck runs in the next turn of the loop)
    await index.quiet()
    index.publish(R2, {"y": node("/o/x", "y")})  # (R2's driver looked again: the same)
    await index.quiet()
    assert [d.id for d in tables[R1].snapshot.devices] == ["x"]
    assert not tables[R2].snapshot.devices
    assert set(index.held_now(R2)) == {"y"}
