"""What an Allocate answer hands out besides its devices (`allocate.mounts`, ...): resolved
once while the watcher follows its directory, so a repeated Allocate leaves the event loop
for nothing (Issue 17: another resource's churn on the offload queued it)."""

from __future__ import annotations

import asyncio

import pytest

from kdp_host.devices import Device, DeviceNode, DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_allocate import PlaceOwned
from kdp_host.ownership_claims import ClaimKey, Reached
from kdp_host.testing import ManualWatcher

R1, R2 = "t.io/a", "t.io/b"


class CountingNodes:
    """path -> claim, every path its own real path; counts what is resolved."""

    def __init__(self, nodes: dict[str, ClaimKey]) -> None:
        self.nodes = nodes
        self.resolved: list[str] = []

    def __call__(self, path: str) -> Reached | None:
        self.resolved.append(path)
        key = self.nodes.get(path)
        return None if key is None else (key, path)


def node(path: str) -> Device:
    return Device(path.rsplit("/", 1)[-1], nodes=(DeviceNode(path, path),), path=path)


def index_with(nodes: CountingNodes, watcher: ManualWatcher | None) -> OwnershipIndex:
    index = OwnershipIndex(resolve=nodes, offload=DaemonThreads())
    if watcher is not None:
        index.watch(watcher)
    for name, device in ((R1, node("/dev/a")), (R2, node("/dev/b"))):
        index.attach(name, DeviceTable().publish, get_logger().bind(resource=name))
        index.publish(name, {device.id: device})
    return index


async def test_a_repeated_allocate_resolves_its_places_once_while_they_are_followed() -> None:
    nodes = CountingNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/opt/lib": ("path", "x")})
    watcher = ManualWatcher()
    index = index_with(nodes, watcher)
    await index.quiet()
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
    nodes = CountingNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2), "/opt/lib": ("path", "x")})
    index = index_with(nodes, None)
    await index.quiet()
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
    nodes = CountingNodes({"/dev/a": ("c", 1), "/opt/lib": ("path", "x")})
    watcher = ManualWatcher()
    loop = asyncio.get_running_loop()

    def racing(path: str) -> Reached | None:
        if path == "/opt/lib":  # (reported before the answer reaches the loop)
            loop.call_soon_threadsafe(watcher.change, "/opt", "lib")
        return nodes(path)

    index = OwnershipIndex(resolve=racing, offload=DaemonThreads())
    index.watch(watcher)
    index.attach(R1, DeviceTable().publish, get_logger().bind(resource=R1))
    index.publish(R1, {"a": node("/dev/a")})
    await index.quiet()
    nodes.resolved.clear()
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    await index.book(R1, ["a"], {"a": ["/opt/lib"]})
    assert nodes.resolved == ["/opt/lib", "/opt/lib"]
