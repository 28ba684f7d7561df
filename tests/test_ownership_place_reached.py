"""A device reachable at a booked path under a second name is held while the booking lives
(issue 17, hostile19 F9): p1 holds the device handed out at P; then P is made to reach
another device's identity while that device's own path stays (a hard link of its file, a
symlink to its directory; of another resource or of the same one). A restart of p1's
container opens P again (the kubelet hands it the answer it cached), so the other device
is held `place_booked` until P no longer reaches it or p1's booking ends."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.holdings import Holdings
from kdp_host.ownership import OwnershipIndex
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError
from kdp_host.testing import ManualWatcher

from .fake_nodes import FakeNodes, indexed, node

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

A = "vendor.example/a"
B = "vendor.example/b"


def _config(socket_dir: Path, root: Path, pod_resources: Path) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root / 'state'}\nresources:\n"
        f"  - name: {A}\n"
        f'    glob: {{group: [{{path: "{root}/a/{{key}}"}}], gracePeriod: 0s}}\n'
        f"  - name: {B}\n"
        f'    glob: {{group: [{{path: "{root}/b/{{key}}"}}], gracePeriod: 0s}}\n'
    )


@pytest.mark.parametrize(
    "how", ["file_link_other_resource", "file_link_same_resource", "dir_symlink_same_resource"]
)
async def test_a_device_reached_at_a_booked_path_under_a_second_name_is_held(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    how: str,
) -> None:
    """(A directory member that is a symlink out of its pattern's directory is never
    mounted: `unsafe_mount`; within it, a symlink to another member's directory.)"""
    kubelet, root = pod_resources_kubelet, short_dir
    a, b, aside = root / "a", root / "b", root / "aside"
    for directory in (a, b, aside):
        directory.mkdir()
    dirs, same = how.startswith("dir"), how.endswith("same_resource")
    (a / "0").mkdir() if dirs else (a / "0").touch()
    await start_host(_config(socket_dir, root, root / "pr"))
    resource = kubelet.resource
    await kubelet.wait_for(lambda: resource(A).healthy_ids == {"0"})
    first = await kubelet.allocate(A, 1, pod_uid="p1")
    assert first is not None
    place = a / "0"
    other, owner = (a / "1", A) if same else (b / "1", B)  # (plugged after p1's Allocate)
    if dirs:
        other.mkdir()
        (other / "f").touch()
    else:
        other.touch()
    await kubelet.wait_for(lambda: "1" in resource(owner).healthy_ids)

    place.rename(aside / "0")
    if dirs:
        os.symlink(other, place)
    else:
        os.link(other, place)
    # p1's cached answer names `place`, which reaches `other` now: `other` is not handed out
    await kubelet.wait_for(lambda: "1" not in resource(owner).healthy_ids, timeout=30)
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(owner, 1, pod_uid="p2")

    place.unlink()  # `place` reaches it no more: it is advertised again
    await kubelet.wait_for(lambda: "1" in resource(owner).healthy_ids, timeout=30)
    if dirs:
        os.symlink(other, place)
    else:
        os.link(other, place)
    await kubelet.wait_for(lambda: "1" not in resource(owner).healthy_ids, timeout=30)
    await kubelet.release("p1")  # p1's booking ends: one of the two names is advertised
    if owner == A:  # (one resource: the incumbent of the one file, "0" or "1")
        await kubelet.wait_for(lambda: len(resource(A).healthy_ids) == 1, timeout=30)
    else:
        await kubelet.wait_for(lambda: "1" in resource(B).healthy_ids, timeout=30)


R1, R2 = "vendor.example/a", "vendor.example/b"


async def settled(index: OwnershipIndex) -> None:
    await asyncio.sleep(0)  # (the watcher's recheck is called soon)
    await index.quiet()


async def changed(index: OwnershipIndex, watcher: ManualWatcher) -> None:
    """The watcher reports /dev/a/x1 changed; the index settles."""
    watcher.change("/dev/a", "x1")
    await settled(index)


async def test_through_the_index_a_second_node_of_a_number_made_at_a_booked_path() -> None:
    """hostile19 t18 through the index: p1 holds a/x1 (1); a node of y5's number (5) is made
    at a/x1: y5 is held `place_booked` by p1's booking while a/x1 reaches it, advertised
    again once it does not (or once the booking ends)."""
    nodes = FakeNodes({"/dev/a/x1": ("c", 1), "/dev/b/y5": ("c", 5)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/dev/a/x1")], R2: [node("/dev/b/y5")]}, nodes, watcher=watcher
    )

    def ids(resource: str) -> set[str]:
        return {d.id for d in tables[resource].snapshot.devices}

    await index.book(R1, ["x1"])
    nodes.nodes["/dev/a/x1"] = ("c", 5)
    await changed(index, watcher)
    assert ids(R2) == set()
    held = index.held_now(R2)["y5"]
    assert (held.reason, held.owner.resource, held.owner.device) == ("place_booked", R1, "x1")

    nodes.nodes["/dev/a/x1"] = ("c", 1)  # a/x1 reaches its own number again
    await changed(index, watcher)
    assert ids(R2) == {"y5"}

    nodes.nodes["/dev/a/x1"] = ("c", 5)
    await changed(index, watcher)
    assert ids(R2) == set()
    index.holdings(Holdings(1e9, 0.0, {}))  # p1 ended
    await settled(index)
    assert ids(R2) == {"y5"}


async def test_through_the_index_a_booked_path_no_device_claims_through() -> None:
    """The booked device left its list (a group's link is no member of it): the watcher's
    report of the booked path changed is what tells the index what it reaches now."""
    nodes = FakeNodes({"/dev/a/x1": ("c", 1), "/dev/b/y5": ("c", 5)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/dev/a/x1")], R2: [node("/dev/b/y5")]}, nodes, watcher=watcher
    )
    await index.book(R1, ["x1"])
    index.publish(R1, {})
    await settled(index)
    nodes.nodes["/dev/a/x1"] = ("c", 5)
    await changed(index, watcher)
    assert not tables[R2].snapshot.devices
    assert index.held_now(R2)["y5"].reason == "place_booked"
    del nodes.nodes["/dev/a/x1"]  # nothing there (told as anything in /dev/a: an overflow)
    watcher.change("/dev/a")
    await settled(index)
    assert {d.id for d in tables[R2].snapshot.devices} == {"y5"}
