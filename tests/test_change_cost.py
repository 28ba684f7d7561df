"""One change costs what it touches, not a walk of every device (issues 19, 20: the event
loop stalled 123 ms when one device of 10,000 was unplugged). Each test counts the work a
change does (walks of a list, system calls, objects built), never time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from pathlib import Path

import pytest

from kdp_host import devices as devices_module
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers.grace import Tracker
from kdp_host.drivers.scanner import Listed, ScanResult
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Reached, missing
from kdp_host.ownership_paths import PathIndex
from kdp_host.testing import ManualClock, ManualWatcher
from kdp_host.turns import Pace

from .fake_nodes import FakeNodes

R = "t.io/big"


class CountsWalks(dict[str, Device]):
    """Counts the walks of a device list (an identity check or a lookup is none); adds no
    instance layout, so any dict-based list can take it in (`Walked`, a `Derived` one)."""

    __slots__ = ()
    walks = 0

    def __iter__(self) -> Iterator[str]:
        self.walks += 1
        return super().__iter__()

    def keys(self) -> KeysView[str]:
        self.walks += 1
        return super().keys()

    def values(self) -> ValuesView[Device]:
        self.walks += 1
        return super().values()

    def items(self) -> ItemsView[str, Device]:
        self.walks += 1
        return super().items()


class Walked(CountsWalks):
    """A device list that counts the walks of it."""


def node(i: int) -> Device:
    path = f"/dev/big/d{i}"
    return Device(f"d{i}", nodes=None, path=path)


async def settled(index: OwnershipIndex) -> None:
    await asyncio.sleep(0)  # (the watcher's recheck runs soon after the report)
    await index.quiet()


async def test_a_changed_path_rechecks_its_device_without_a_walk_of_the_list() -> None:
    """The watcher reports one path of 300 devices changed: its device is resolved and
    admitted again, and no list of the resource is walked (the recheck finds it by path)."""
    nodes = FakeNodes({f"/dev/big/d{i}": ("c", i) for i in range(300)})
    watcher = ManualWatcher()
    index = OwnershipIndex(resolve=nodes, offload=DaemonThreads(), chunk=50)
    index.watch(watcher)
    table = DeviceTable()
    index.attach(R, table.publish, get_logger().bind(resource=R))
    listed = Walked({f"d{i}": node(i) for i in range(300)})
    index.publish(R, listed)
    await index.quiet()
    assert len(table.snapshot.devices) == 300
    watcher.change("/dev/big", "d3")  # (the first recheck of a resource indexes its paths)
    await settled(index)
    nodes.resolved.clear()
    listed.walks = 0
    # the node made again (a udev rule): the same device number
    watcher.change("/dev/big", "d7")
    await settled(index)
    assert nodes.resolved == ["/dev/big/d7"]
    assert listed.walks == 0, "a change of one path walked the resource's list"
    assert len(table.snapshot.devices) == 300
    # one that now reaches another device's node is held, as before
    nodes.nodes["/dev/big/d9"] = ("c", 8)
    watcher.change("/dev/big", "d9")
    await settled(index)
    assert "d9" not in {d.id for d in table.snapshot.devices}
    assert "d8" in {d.id for d in table.snapshot.devices}


async def test_an_admission_looks_its_paths_up_in_the_fresh_ones_without_a_walk() -> None:
    """The paths resolved for every resource stay fresh while admissions run one after
    another (a host's start-up); each admission looks its own paths up in them, it does not
    walk them all (100 resources x 1,000 devices: a fifth of the start-up's CPU, issue 19)."""
    nodes = FakeNodes({f"/dev/big/d{i}": ("c", i) for i in range(300)})
    index = OwnershipIndex(resolve=nodes, offload=DaemonThreads(), chunk=50)
    index._fresh = fresh = CountsWalks()  # type: ignore[assignment]
    tables = {name: DeviceTable() for name in ("t.io/a", "t.io/b", "t.io/c")}
    for i, (name, table) in enumerate(tables.items()):
        index.attach(name, table.publish, get_logger().bind(resource=name))
        index.publish(name, {f"d{j}": node(j) for j in range(i * 100, i * 100 + 100)})
    await index.quiet()
    assert [len(table.snapshot.devices) for table in tables.values()] == [100, 100, 100]
    assert fresh.walks == 0


async def test_the_path_index_follows_the_list_it_was_made_for() -> None:
    """Kept with each admission, the index names the devices of the list as it is now: a
    device added later, one whose path moved, a path two devices pass, one removed."""
    nodes = FakeNodes({f"/dev/big/d{i}": ("c", i) for i in range(20)})
    nodes.nodes["/dev/big/ctl"] = ("c", 99)
    watcher = ManualWatcher()
    index = OwnershipIndex(resolve=nodes, offload=DaemonThreads())
    index.watch(watcher)
    table = DeviceTable()
    index.attach(R, table.publish, get_logger().bind(resource=R))
    listed = {f"d{i}": node(i) for i in range(10)}
    index.publish(R, listed)
    await index.quiet()
    watcher.change("/dev/big", "d0")
    await settled(index)
    ctl = DeviceNode("/dev/big/ctl", "/dev/ctl", shared=True)
    moved = Device("d1", nodes=(DeviceNode("/dev/big/d11", "/dev/big/d11"), ctl))
    shares = Device("d2", nodes=(DeviceNode("/dev/big/d2", "/dev/big/d2"), ctl))
    listed = {**listed, "d1": moved, "d2": shares, "d12": node(12)}
    del listed["d5"]
    index.publish(R, listed)
    await index.quiet()
    for path, expected in (
        ("/dev/big/d11", {"d1"}),
        ("/dev/big/d1", set()),
        ("/dev/big/ctl", {"d1", "d2"}),
        ("/dev/big/d12", {"d12"}),
        ("/dev/big/d5", set()),
    ):
        nodes.resolved.clear()
        watcher.change("/dev/big", os.path.basename(path))
        await settled(index)
        assert set(index._resources[R].stale) == set()
        made = PathIndex.of_devices(listed)
        assert set(made.through("/dev/big", {path})) == expected
        kept = index._resources[R].paths
        assert kept is not None and kept.of == made.of
    assert set(PathIndex.of_devices(listed).through("/dev/big", None)) == set(listed)


def test_an_unhealthy_copy_of_a_one_node_device_builds_no_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []

    class Counted(DeviceNode):
        def __init__(self, host_path: str, container_path: str) -> None:
            built.append(host_path)
            super().__init__(host_path, container_path)

    device = node(1)
    monkeypatch.setattr(devices_module, "DeviceNode", Counted)
    copy = device.with_health(False)
    renamed = device.with_id("other")
    assert built == []
    assert copy.nodes == device.nodes and not copy.healthy
    assert renamed.nodes == device.nodes and renamed.id == "other"


def test_paths_where_nothing_is_resolve_from_their_directorys_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many vanished paths of one directory (every device unplugged): the directory's real
    path is found once, not a walk of every path's components; the place is the same."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    paths = [str(tmp_path / "link" / f"d{i}") for i in range(50)]
    expected = {path: missing(path) for path in paths}
    calls: list[str] = []
    realpath = os.path.realpath

    def counted(path: str, **kwargs: bool) -> str:
        calls.append(path)
        return realpath(path, **kwargs)

    monkeypatch.setattr(os.path, "realpath", counted)
    real_dirs: dict[str, str] = {}
    found = {path: missing(path, real_dirs) for path in paths}
    assert found == expected
    assert found[paths[0]] == (("path", str(tmp_path / "real" / "d0")), str(tmp_path / "real/d0"))
    assert calls == [str(tmp_path / "link")]


def test_the_grace_merge_walks_no_list_when_nothing_vanished() -> None:
    """A device added, or one already gone staying gone: the merge looks at what changed
    (no walk of the last list for what vanished); one that vanishes is found as before."""
    clock = ManualClock()
    tracker = Tracker(10.0, clock)
    base = {f"d{i}": node(i) for i in range(100)}
    first = Walked(base)
    tracker.merge(ScanResult(first))
    first.walks = 0
    base["d100"] = node(100)
    tracker.merge(ScanResult(Walked(base)))
    assert first.walks == 0
    del base["d5"]
    third = Walked(base)
    listed, expiry = tracker.merge(ScanResult(third))
    assert not listed["d5"].healthy and expiry == clock() + 10.0
    clock.advance(1.0)
    base["d101"] = node(101)
    last = Walked(tracker.listed.devices)
    tracker.listed = Listed(last, tracker.listed.places)
    listed, _ = tracker.merge(ScanResult(Walked(base)))
    assert last.walks == 0
    assert not listed["d5"].healthy and len(listed) == 102


async def test_what_a_round_resolved_is_kept_while_the_next_round_resolves() -> None:
    """An admission that found half its paths resolved waits for the other half: those
    resolved stay until it ran. (Forgotten as soon as no admission ran, they had to be
    resolved again, then the other half: with 10,000 devices unplugged at once the rounds
    went on for minutes.)"""
    paths = [f"/dev/big/d{i}" for i in range(20)]
    nodes = FakeNodes({path: ("c", i) for i, path in enumerate(paths)})
    index = OwnershipIndex(resolve=nodes, offload=DaemonThreads())
    index.attach(R, DeviceTable().publish, get_logger().bind(resource=R))
    index.publish(R, {f"d{i}": node(i) for i in range(20)})
    await index.quiet()
    state = index._resources[R]
    index._fresh.update((path, (("c", i), path)) for i, path in enumerate(paths[:10]))
    waiting = asyncio.get_running_loop().create_future()
    state.resolving = asyncio.ensure_future(waiting)  # (the next round, off the loop)
    index._resolving[id(state)] = state  # (as `_defer` notes it)
    index._drain()
    assert set(index._fresh) == set(paths[:10])
    waiting.set_result(None)
    await state.resolving
    state.resolving = None
    del index._resolving[id(state)]  # (as `_resolve_for` does at its end)
    index._drain()
    assert not index._fresh


async def test_paths_changing_while_others_resolve_are_admitted_in_a_few_rounds() -> None:
    """Half the paths change while the other half resolve off the loop: the next admission
    waits for the new half only, then admits with both (the resolutions one round made are
    not forgotten before the admission waiting for the next round ran: no endless rounds of
    one half, then the other)."""
    paths = [f"/dev/big/d{i}" for i in range(300)]
    nodes = FakeNodes({path: ("c", i) for i, path in enumerate(paths)})
    watcher = ManualWatcher()
    loop = asyncio.get_running_loop()
    armed = second_half = False

    def resolve(path: str) -> Reached | None:
        nonlocal second_half
        if armed and path == paths[0] and not second_half:
            second_half = True  # (reported while the first half is being resolved)
            for other in paths[150:]:
                loop.call_soon_threadsafe(watcher.change, "/dev/big", os.path.basename(other))
        return nodes(path)

    index = OwnershipIndex(resolve=resolve, offload=DaemonThreads(), chunk=50)
    index.watch(watcher)
    table = DeviceTable()
    index.attach(R, table.publish, get_logger().bind(resource=R))
    index.publish(R, {f"d{i}": node(i) for i in range(300)})
    await index.quiet()
    nodes.resolved.clear()
    armed = True
    for path in paths[:150]:
        watcher.change("/dev/big", os.path.basename(path))
    await asyncio.wait_for(settled(index), 30)
    assert second_half
    assert max(nodes.resolved.count(path) for path in paths) <= 2
    assert len(table.snapshot.devices) == 300


def test_devices_unplugged_at_once_are_merged_a_chunk_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20: 10,000 devices unplugged at once were 10,000 Unhealthy copies made in one
    turn of the loop (the 114 ms stall), and every later merge walked all of them again.
    The merge makes the copies a chunk at a time (the tracker changes only at its last
    step), and a merge in which the gone stay gone makes none and yields not once."""
    clock = ManualClock()
    tracker = Tracker(10.0, clock)
    tracker.merge(ScanResult({f"d{i}": node(i) for i in range(1000)}))
    made = 0
    with_health = Device.with_health

    def counted(device: Device, healthy: bool) -> Device:
        nonlocal made
        made += 1
        return with_health(device, healthy)

    monkeypatch.setattr(Device, "with_health", counted)

    def merged_in_steps(result: ScanResult) -> tuple[list[int], Mapping[str, Device]]:
        """The copies each step made, and the list merged."""
        nonlocal made
        steps, made_by_step = tracker.merging(result, Pace(100)), []
        while True:
            made = 0
            try:
                next(steps)
            except StopIteration as done:
                made_by_step.append(made)
                return made_by_step, done.value[0]
            made_by_step.append(made)

    before = tracker.listed
    abandoned = tracker.merging(ScanResult({}), Pace(100))
    next(abandoned)
    abandoned.close()
    assert tracker.listed is before, "a merge given up on changed nothing"
    by_step, listed = merged_in_steps(ScanResult({}))
    assert sum(by_step) == 1000 and max(by_step) <= 100
    assert len(listed) == 1000 and not any(d.healthy for d in listed.values())
    clock.advance(1.0)
    by_step, again = merged_in_steps(ScanResult({"d5": node(5)}))
    assert by_step == [0] and again["d5"].healthy
    assert all(again[i] is listed[i] for i in again if i != "d5"), "the copies are kept"
    clock.advance(9.0)
    by_step, expired = merged_in_steps(ScanResult({"d5": node(5)}))
    assert by_step == [0] and list(expired) == ["d5"]
