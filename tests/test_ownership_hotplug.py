"""A hot-plug resolves each path once: the index's recheck of a changed path (its watcher)
starts a resolution before the scan's list asks for the same path; the list's admission
takes what that resolution found unless a change was reported meanwhile (issue 19: an
unplug waited for two resolutions in turn)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.ownership_claims import Reached
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .fake_nodes import FakeNodes, indexed, node

R1 = "vendor.example/fpga"


class HeldNodes(FakeNodes):
    """FakeNodes whose answers for `held` paths wait until the test releases them."""

    def __init__(self, nodes: dict[str, tuple[str, int]]) -> None:
        super().__init__(nodes)
        self.held: set[str] = set()
        self.release = threading.Event()
        self.started: list[str] = []

    def __call__(self, path: str) -> Reached | None:
        self.started.append(path)
        if path in self.held:
            self.release.wait(60)
        return super().__call__(path)


@pytest.mark.parametrize("changed_meanwhile", [False, True])
async def test_an_unplug_resolves_the_path_once_unless_it_changed_meanwhile(
    changed_meanwhile: bool,
) -> None:
    nodes = HeldNodes({"/dev/a": ("c", 1), "/dev/hot": ("c", 2)})
    watcher = ManualWatcher()
    hot = node("/dev/hot")
    index, tables = await indexed(
        {R1: [node("/dev/a"), hot]}, nodes, watcher=watcher, offload=DaemonThreads()
    )
    try:
        assert {d.id for d in tables[R1].snapshot.devices} == {"a", "hot"}
        del nodes.nodes["/dev/hot"]  # unplugged
        nodes.held.add("/dev/hot")
        nodes.resolved.clear()
        nodes.started.clear()
        watcher.change("/dev", "hot")  # the index rechecks the device at once
        await wait_until(lambda: "/dev/hot" in nodes.started, timeout=20)
        # the scan's list (the device Unhealthy for its grace period) asks for the same path
        index.publish(
            R1,
            {
                "a": node("/dev/a"),
                "hot": Device("hot", nodes=hot.nodes, path=hot.path, healthy=False),
            },
        )
        if changed_meanwhile:
            watcher.change("/dev", "hot")
        nodes.held.clear()
        nodes.release.set()
        await index.quiet()
        listed = {d.id: d.healthy for d in tables[R1].snapshot.devices}
        assert listed == {"a": True, "hot": False}
        assert nodes.resolved.count("/dev/hot") == (2 if changed_meanwhile else 1)
    finally:
        nodes.release.set()


@pytest.mark.parametrize("entry", [False, True])
async def test_only_an_entry_made_removed_or_renamed_rechecks_its_claims(entry: bool) -> None:
    """What a path reaches changes with its entry, not with its attributes or contents: the
    ATTRIB and CLOSE_WRITE of a `touch` (a second inotify read after its CREATE) resolved
    the path again, on the way of the scan they also woke (issue 19)."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/hot": ("c", 2)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/dev/a"), node("/dev/hot")]}, nodes, watcher=watcher, offload=DaemonThreads()
    )
    nodes.resolved.clear()
    watcher.change("/dev", "hot", entry=entry)
    await asyncio.sleep(0)  # (the recheck runs in the next turn of the loop)
    await index.quiet()
    assert nodes.resolved == (["/dev/hot"] if entry else [])
    assert {d.id for d in tables[R1].snapshot.devices} == {"a", "hot"}


async def test_a_lingering_claims_path_the_scan_resolved_is_not_resolved_again() -> None:
    """What the scan learnt a path reaches is as fresh as its list, for a lingering claim's
    path too (a device plugged in again where it left a claim): its admission did not wait
    for a resolution of its own off the loop (issue 19)."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/hot": ("c", 2)})
    hot = node("/dev/hot")
    index, tables = await indexed({R1: [node("/dev/a"), hot]}, nodes, offload=DaemonThreads())
    index.publish(R1, {"a": node("/dev/a")})  # gone from the list: its claim lingers
    await index.quiet()
    assert {d.id for d in tables[R1].snapshot.devices} == {"a"}
    nodes.nodes["/dev/hot"] = ("c", 3)  # plugged in again: another node
    nodes.resolved.clear()
    again = {"a": node("/dev/a"), "hot": hot}
    index.publish(R1, again, {"/dev/hot": (("c", 3), "/dev/hot")})
    await index.quiet()
    assert {d.id for d in tables[R1].snapshot.devices} == {"a", "hot"}
    assert "/dev/hot" not in nodes.resolved
