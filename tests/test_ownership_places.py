"""What an Allocate answer hands out besides its devices (`allocate.mounts`, ...): resolved
once while the watcher follows its directory, so a repeated Allocate leaves the event loop
for nothing (Issue 17: another resource's churn on the offload queued it)."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Reached, Unresolvable
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.testing import ManualWatcher

from .fake_nodes import FakeNodes, indexed, node

R1, R2 = "t.io/a", "t.io/b"
T = TypeVar("T")


async def index_with(nodes: FakeNodes, watcher: ManualWatcher | None) -> OwnershipIndex:
    devices = {R1: [node("/dev/a")], R2: [node("/dev/b")]}
    return (await indexed(devices, nodes, watcher=watcher, offload=DaemonThreads()))[0]


async def test_a_repeated_allocate_resolves_its_places_once_while_they_are_followed() -> None:
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/opt/lib": ("path", "x")})
    watcher = ManualWatcher()
    index = await index_with(nodes, watcher)
    nodes.resolved.clear()
    for _ in range(3):
        await index.book(R1, ["a"], {"a": ["/opt/lib", "/opt/absent"]})
    assert sorted(nodes.resolved) == ["/opt/absent", "/opt/lib"], "resolved once each"
    assert "/opt" in watcher.directories
    # another name in the directory changed: nothing to resolve again
    watcher.change("/opt", "other")
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    assert sorted(nodes.resolved) == ["/opt/absent", "/opt/lib"]
    # the place became a link to what b owns: resolved again, and the answer refused
    nodes.nodes["/opt/lib"] = ("c", 2)
    watcher.change("/opt", "lib")
    with pytest.raises(PlaceOwned, match="device b of t"):
        await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    # one that appeared: so is a place that was not there
    nodes.nodes["/opt/absent"] = ("c", 2)
    watcher.change("/opt", None)
    with pytest.raises(PlaceOwned):
        await index.book(R1, ["a"], {"a": ["/opt/absent"]})


async def test_without_a_watcher_every_allocate_resolves_its_places() -> None:
    """Nothing would say that a place changed: it is never taken as known."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/opt/lib": ("path", "x")})
    index = await index_with(nodes, None)
    nodes.resolved.clear()
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    assert nodes.resolved == ["/opt/lib", "/opt/lib"]
    nodes.nodes["/opt/lib"] = ("c", 2)
    with pytest.raises(PlaceOwned):
        await index.book(R1, ["a"], {"a": ["/opt/lib"]})


async def test_a_place_that_changes_while_it_is_resolved_is_not_kept() -> None:
    """A change the watcher reports while the place is being resolved may have come after
    the answer: that answer is used once, not kept."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/opt/lib": ("path", "x")})
    watcher = ManualWatcher()
    loop = asyncio.get_running_loop()

    def racing(path: str) -> Reached | None:
        if path == "/opt/lib":  # (reported before the answer reaches the loop)
            loop.call_soon_threadsafe(watcher.change, "/opt", "lib")
        return nodes(path)

    index, _ = await indexed(
        {R1: [node("/dev/a")]}, racing, watcher=watcher, offload=DaemonThreads()
    )
    nodes.resolved.clear()
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    assert nodes.resolved == ["/opt/lib", "/opt/lib"]


class CountingOffload(DaemonThreads):
    """The host's offload, counting the calls that leave the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def run(self, function: Callable[[], T]) -> T:
        self.calls += 1
        return await super().run(function)


class PollingKind(ManualWatcher):
    kind = "poll"


async def handed_index(
    tmp_path: Path, watcher: ManualWatcher | None
) -> tuple[OwnershipIndex, CountingOffload, str]:
    """An index with one device, a plain file two directories down (its own real path)."""
    directory = tmp_path / "a" / "dev"
    directory.mkdir(parents=True)
    (directory / "n0").write_text("")
    path = str(directory / "n0")
    offload = CountingOffload()
    index, _ = await indexed({R1: [node(path)]}, watcher=watcher, offload=offload)
    return index, offload, path


async def hops(index: OwnershipIndex, offload: CountingOffload, paths: list[str], n: int) -> int:
    """How often `n` Allocates of device n0 handing out `paths` left the loop (after what
    the index itself resolved again: its recheck starts in the next turn of the loop)."""
    await asyncio.sleep(0)
    await index.quiet()
    before = offload.calls
    for _ in range(n):
        await index.hand_out(R1, ["n0"], paths)
    return offload.calls - before


async def test_a_repeated_allocate_hands_out_its_kept_paths_without_leaving_the_loop(
    tmp_path: Path,
) -> None:
    """Issue 19: every Allocate resolved its host paths on the offload (a thread hop, a
    stat and a realpath per path). A path that is its own real path is resolved once and
    kept while the watcher follows its directory and every directory above it; a change
    there (an ancestor renamed or replaced by a link: hostile3 G10) resolves it again."""
    watcher = ManualWatcher()
    index, offload, path = await handed_index(tmp_path, watcher)
    assert await index.hand_out(R1, ["n0"], [path]) == {path: path}
    assert await hops(index, offload, [path], 3) == 0, "kept"
    directory = os.path.dirname(path)
    assert {directory, str(tmp_path / "a"), str(tmp_path), "/"} <= watcher.directories
    # another entry of the directory, or of one above, changed: still kept
    watcher.change(directory, "other")
    watcher.change(str(tmp_path), "other")
    assert await hops(index, offload, [path], 2) == 0
    # the path's own entry changed: resolved again (once)
    watcher.change(directory, "n0")
    assert await hops(index, offload, [path], 2) == 1
    # a directory above it renamed (G10: no event in its own directory)
    watcher.change(str(tmp_path), "a")
    assert await hops(index, offload, [path], 2) == 1
    # ... and really swapped: the Allocate is refused, not handed the stale path
    os.rename(tmp_path / "a", tmp_path / "a.old")
    (tmp_path / "b" / "dev").mkdir(parents=True)
    (tmp_path / "b" / "dev" / "n0").write_text("")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    watcher.change(str(tmp_path), "a")
    with pytest.raises(Unresolvable, match="no longer reaches what was claimed"):
        await index.hand_out(R1, ["n0"], [path])


async def test_a_path_through_a_link_is_resolved_at_every_allocate(tmp_path: Path) -> None:
    """Where a link's target lies is not followed (hostile3 G1, G2): such a path is never
    kept, nor is anything without a watcher, or with the polling one (it sees a change up
    to a poll later)."""
    watcher = ManualWatcher()
    index, offload, path = await handed_index(tmp_path, watcher)
    link = tmp_path / "link"
    link.symlink_to(path)
    assert await index.hand_out(R1, ["n0"], [str(link)]) == {str(link): path}
    assert await hops(index, offload, [str(link)], 2) == 2
    for other in (None, PollingKind()):
        index, offload, path = await handed_index(tmp_path / f"{other}", other)
        await index.hand_out(R1, ["n0"], [path])
        assert await hops(index, offload, [path], 2) == 2


async def test_a_place_through_a_link_is_resolved_at_every_allocate() -> None:
    """A place whose real path is not its text (a link on the way) was kept like any other:
    its target re-pointed in a directory nobody follows (hostile3 G2 addendum) kept the old
    claim, while the Allocate handed out the new real path. It is never kept now."""
    nodes = FakeNodes(
        {"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/opt/lib": ("d", 7)}, {"/opt/lib": "/srv/lib"}
    )
    index = await index_with(nodes, ManualWatcher())
    nodes.resolved.clear()
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    assert nodes.resolved == ["/opt/lib", "/opt/lib"]
    nodes.nodes["/opt/lib"] = ("c", 2)  # the link's target now reaches what b owns
    with pytest.raises(PlaceOwned, match="device b of t"):
        await index.book(R1, ["a"], {"a": ["/opt/lib"]})


def test_the_common_devices_claims_are_one_object_each() -> None:
    """A device with one node at its path (most glob devices) costs the index one object
    for its claims, the claim itself (`OneClaim`), not a Claims, a tuple and the claim (at
    100 resources x 1000 devices the three were 15 MiB of the host's 120)."""
    paths = [f"/dev/n{number:04d}" for number in range(2000)]
    nodes = FakeNodes({path: ("c", 1000 + number) for number, path in enumerate(paths)})
    devices = {device.id: device for device in map(node, paths)}
    index = OwnershipIndex(resolve=nodes)
    table = DeviceTable()
    index.attach(R1, table.publish, get_logger().bind(resource=R1))
    gc.collect()
    tracemalloc.start()
    try:
        index.publish(R1, devices)
        assert len(table.snapshot.devices) == 2000
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        del index, table
        gc.collect()
        kept = held - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # per device: its claim, its owner, the index's entries and the table's; it was 313
    assert kept / 2000 < 270, f"{kept / 2000:.0f} bytes per device"
