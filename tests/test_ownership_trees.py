"""A node moved anywhere below a mounted directory (issue 17, "one node, one pod").

The watcher followed the top level of each mounted directory only: a held node renamed into
a subdirectory of another device's mounted directory (one there from the start, or made
later) left that device advertised, so a new pod of it reached the node a running pod holds;
and what arrived past 4,096 entries was never read again. Now every directory of a mounted
tree is followed (`ownership_arrivals.Arrivals`), up to `TREE_LIMIT`; a tree that cannot be
followed in full is logged, counted, and read in full by the safety net."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kdp_host import (
    inotify_limits,
    kept_reads,
    ownership_arrivals,
    ownership_hand_out,
    ownership_reads,
)
from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.holdings import Holdings
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.mount_table import MountMap
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Unresolvable
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .test_ownership_mounts import unshared
from .test_ownership_moves import R1, R2, Host, mounting, nodes


class ManualNet:
    """A safety net that checks when the test says (`tick`)."""

    def __init__(self) -> None:
        self.members: list[Callable[[bool], None]] = []

    def join(
        self, interval: float, check: Callable[[], bool], then: Callable[[bool], None], **_: float
    ) -> Callable[[], None]:
        self.members.append(then)
        return lambda: self.members.remove(then)

    def tick(self) -> None:
        for then in list(self.members):
            then(False)


async def booked_beside_tree(
    tmp: Path, *below: str, net: ManualNet | None = None, mounts: MountMap | None = None
) -> tuple[Host, ManualWatcher]:
    """Resource a's node dev/n0 is booked (a pod holds it); resource b mounts tmp/b, which
    has the directories `below` from the start."""
    (tmp / "dev").mkdir()
    (tmp / "dev" / "n0").write_text("")
    (tmp / "b").mkdir()
    for directory in below:
        (tmp / "b" / directory).mkdir(parents=True)
    watcher = ManualWatcher()
    host = Host(watcher, mounts=mounts, net=net)
    await host.publish(R1, nodes("n0", str(tmp / "dev" / "n0")))
    await host.index.book(R1, ["n0"])
    await host.publish(R2, mounting("b", str(tmp / "b")))
    assert (host.ids(R1), host.ids(R2)) == (["n0"], ["b"])
    return host, watcher


def unfollowed(host: Host) -> float:
    return host.metrics.registry.get_sample_value("kdp_watch_unfollowed_trees") or 0


async def test_a_node_moved_into_a_sub_sub_directory_holds_the_mount(tmp_path: Path) -> None:
    """b/sub/deep is there from the start; a's held node is renamed into it. Before, only b
    itself was followed: b stayed advertised."""
    host, watcher = await booked_beside_tree(tmp_path, "sub/deep")
    deep = tmp_path / "b" / "sub" / "deep"
    os.rename(tmp_path / "dev" / "n0", deep / "n0")
    watcher.change(str(tmp_path / "dev"), "n0")
    watcher.change(str(deep), "n0")
    await host.settled()
    assert host.ids(R2) == [], "b's mount now holds the node a pod of a holds"
    assert host.held(R2) == 1
    assert unfollowed(host) == 0


async def test_a_directory_made_later_is_followed_and_one_gone_let_go(tmp_path: Path) -> None:
    """b/new is made after b was claimed, then a's held node is renamed into it (before: not
    seen). A directory removed from the tree is no longer watched."""
    host, watcher = await booked_beside_tree(tmp_path, "old")
    (tmp_path / "b" / "old").rmdir()
    watcher.change(str(tmp_path / "b"), "old")
    (tmp_path / "b" / "new" / "inner").mkdir(parents=True)
    watcher.change(str(tmp_path / "b"), "new")
    await host.settled()
    assert host.ids(R2) == ["b"], "nothing held arrived"
    inner = tmp_path / "b" / "new" / "inner"
    os.rename(tmp_path / "dev" / "n0", inner / "n0")
    watcher.change(str(inner), "n0")
    await host.settled()
    assert host.ids(R2) == []
    assert host.held(R2) == 1
    assert str(inner) in watcher.directories
    assert str(tmp_path / "b" / "old") not in watcher.directories, "let go when gone"


async def test_a_tree_over_the_bound_is_logged_counted_and_read_by_the_safety_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """More directories below b than `TREE_LIMIT`: not all are followed, so a node renamed
    into one that is not makes no event. The tree is logged and counted, and the safety net
    reads it in full: b is held at its next tick."""
    monkeypatch.setattr(ownership_arrivals, "TREE_LIMIT", 2)
    net = ManualNet()
    caplog.set_level(logging.INFO)
    host, watcher = await booked_beside_tree(tmp_path, "d0", "d1", "d2", "d3", net=net)
    [record] = [r for r in caplog.records if r.getMessage() == "mount_tree_unfollowed"]
    fields = record.kdp_fields  # type: ignore[attr-defined]
    assert fields["resource"] == R2 and fields["dir"] == str(tmp_path / "b")
    assert "more than 2 directories" in fields["reason"]
    assert unfollowed(host) == 1
    assert len(net.members) == 1, "in the safety net while a tree is not followed"
    followed = {d for d in watcher.directories if os.path.dirname(d) == str(tmp_path / "b")}
    assert len(followed) == 2
    [loose] = [f"d{i}" for i in range(4) if str(tmp_path / "b" / f"d{i}") not in followed][1:]
    os.rename(tmp_path / "dev" / "n0", tmp_path / "b" / loose / "n0")
    watcher.change(str(tmp_path / "dev"), "n0")
    await host.settled()
    assert host.ids(R2) == ["b"], "not seen yet: no watch there"
    net.tick()
    await host.settled()
    assert host.ids(R2) == []
    assert host.held(R2) == 1
    # the tree shrinks back within the bound: followed again, out of the safety net
    for i in range(4):
        if (tmp_path / "b" / f"d{i}" / "n0").exists():
            os.rename(tmp_path / "b" / f"d{i}" / "n0", tmp_path / "b" / "n0")
        if i >= 2:
            (tmp_path / "b" / f"d{i}").rmdir()
    net.tick()
    await host.settled()
    assert unfollowed(host) == 0
    assert net.members == []
    assert "mount_tree_followed" in [r.getMessage() for r in caplog.records]


async def test_a_refused_watch_leaves_the_tree_to_the_safety_net(tmp_path: Path) -> None:
    """inotify refuses a watch below b (its watch limit): the subscription is dropped (not
    retried in a loop), the tree counted, and the safety net sees what moved there."""
    (tmp_path / "b" / "sub").mkdir(parents=True)
    net = ManualNet()
    watcher = ManualWatcher()
    watcher.refusing[str(tmp_path / "b" / "sub")] = "ENOSPC: No space left on device"
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "n0").write_text("")
    host = Host(watcher, net=net)
    await host.publish(R1, nodes("n0", str(tmp_path / "dev" / "n0")))
    await host.index.book(R1, ["n0"])
    await host.publish(R2, mounting("b", str(tmp_path / "b")))
    assert host.ids(R2) == ["b"]
    assert str(tmp_path / "b" / "sub") not in watcher.directories
    assert unfollowed(host) == 1
    os.rename(tmp_path / "dev" / "n0", tmp_path / "b" / "sub" / "n0")
    net.tick()
    await host.settled()
    assert host.ids(R2) == []


async def test_a_renamed_in_tree_past_the_read_limit_is_read_by_the_safety_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory with more entries than one read takes (`ARRIVAL_LIMIT`) is renamed into b
    with a's held node last in it: before, what was past the limit was never read again."""
    monkeypatch.setattr(ownership_arrivals, "ARRIVAL_LIMIT", 8)
    net = ManualNet()
    host, watcher = await booked_beside_tree(tmp_path, net=net)
    big = tmp_path / "big"
    for i in range(20):
        (big / f"d{i:02}").mkdir(parents=True)
    os.rename(tmp_path / "dev" / "n0", big / "d00" / "n0")
    os.rename(big, tmp_path / "b" / "big")
    watcher.change(str(tmp_path / "b"), "big")
    await host.settled()
    assert unfollowed(host) == 1
    net.tick()
    await host.settled()
    assert host.ids(R2) == []


@pytest.mark.parametrize("made_later", [False, True])
async def test_a_node_moved_deep_into_a_mounted_tree_with_the_real_watcher(
    tmp_path: Path, made_later: bool
) -> None:
    """The same through inotify: b/sub/deep there from the start, or made after b was
    claimed; a's booked node renamed into it; b is held."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "n0").write_text("")
    (tmp_path / "b").mkdir()
    deep = tmp_path / "b" / "sub" / "deep"
    if not made_later:
        deep.mkdir(parents=True)
    watcher = InotifyWatcher(get_logger())
    watching = asyncio.create_task(watcher.run())
    try:
        index = OwnershipIndex(offload=DaemonThreads())
        index.watch(watcher)
        tables = {R1: DeviceTable(), R2: DeviceTable()}
        for name in (R1, R2):
            index.attach(name, tables[name].publish, get_logger().bind(resource=name))
        index.publish(R1, {"n0": nodes("n0", str(tmp_path / "dev" / "n0"))})
        await index.quiet()
        await index.book(R1, ["n0"])
        index.publish(R2, {"b": mounting("b", str(tmp_path / "b"))})
        await index.quiet()
        assert [d.id for d in tables[R2].snapshot.devices] == ["b"]
        if made_later:
            deep.mkdir(parents=True)
            await wait_until(lambda: str(deep) in watcher.directories, what="deep followed")
        os.rename(tmp_path / "dev" / "n0", deep / "n0")
        await wait_until(lambda: not tables[R2].snapshot.devices, what="b held")
    finally:
        watching.cancel()


async def test_an_allocate_before_the_watcher_reports_a_move_is_refused(tmp_path: Path) -> None:
    """A's held node is renamed into b/sub and an Allocate of b comes before the watcher's
    report: before, the answer mounted b (a new pod reached the node). The Allocate reads
    below what it mounts: refused, and b is held at once."""
    host, _ = await booked_beside_tree(tmp_path, "sub")
    b = str(tmp_path / "b")
    assert await host.index.hand_out(R2, ["b"], [b]) == {b: b}, "nothing moved in yet"
    os.rename(tmp_path / "dev" / "n0", tmp_path / "b" / "sub" / "n0")
    with pytest.raises(PlaceOwned, match=r"device n0 of t\.io/a"):
        await host.index.hand_out(R2, ["b"], [b])
    await host.settled()
    assert host.ids(R2) == []
    assert host.held(R2) == 1


async def test_the_allocate_read_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Allocate reads at most `INSIDE_LIMIT` entries below a mount (a bigger tree is the
    watcher's): no walk of a big tree per Allocate."""
    monkeypatch.setattr(ownership_hand_out, "INSIDE_LIMIT", 3)
    host, _ = await booked_beside_tree(tmp_path, "d0", "d1", "d2", "d3")
    read: list[int] = []

    real = ownership_reads.arrived

    def counted(
        paths: list[str], limit: int, listed: ownership_reads.Listed | None = None
    ) -> tuple[ownership_reads.Found, bool]:
        found, more = real(paths, limit, listed)
        read.append(len(found))
        return found, more

    monkeypatch.setattr(kept_reads, "arrived", counted)  # (what an Allocate's read calls)
    b = str(tmp_path / "b")
    await host.index.hand_out(R2, ["b"], [b])
    assert read == [3]


def test_a_read_at_its_limit_opens_no_more_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the entries listed reach the limit and a listing was cut short, the directories
    still to be read add nothing (each is only stat'ed): they are not opened (issue 19: an
    Allocate mounting /usr/lib opened ~65 directories, reading a big one's first 32 KiB of
    entries each, to list none of them). What the read returns is the same."""
    for i in range(50):
        (tmp_path / f"d{i:02d}").mkdir()
        for j in range(10):
            (tmp_path / f"d{i:02d}" / f"f{j}").touch()
    opened: list[str] = []
    scandir = os.scandir

    def counted(path: str) -> object:
        opened.append(path)
        return scandir(path)

    monkeypatch.setattr(ownership_reads.os, "scandir", counted)
    found, more = ownership_reads.arrived([str(tmp_path)], 20)
    assert len(found) == 20 and more
    assert {os.path.dirname(path) for _key, path in found[1:]} == {str(tmp_path)}
    assert opened == [str(tmp_path)]
    opened.clear()
    found, more = ownership_reads.arrived([str(tmp_path / "d00")], 20)
    assert (len(found), more, len(opened)) == (11, False, 1)


@pytest.mark.parametrize("bound", ["constant", "node_watch_limit"])
async def test_the_host_wide_bound_leaves_the_tree_past_it_to_the_safety_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """The watch limit is shared with every other watch of the node: past
    `HOST_TREE_LIMIT` directories below mounted ones in all, or a quarter of the node's
    watch limit where that is less (hostile13 M9: 8,192 on older kernels, which pods' trees
    took whole), a tree is left to the safety net (and followed again once there is room)."""
    if bound == "constant":
        monkeypatch.setattr(inotify_limits, "HOST_TREE_LIMIT", 3)
    net = ManualNet()
    host, watcher = await booked_beside_tree(tmp_path, "d0", "d1", net=net)
    if bound == "node_watch_limit":
        watcher.watch_budget = 3 * inotify_limits.HOST_TREE_SHARE
    (tmp_path / "c" / "e0").mkdir(parents=True)
    (tmp_path / "c" / "e1").mkdir()
    await host.publish("t.io/c", mounting("c", str(tmp_path / "c")))
    assert unfollowed(host) == 1
    (tmp_path / "b" / "d1").rmdir()
    watcher.change(str(tmp_path / "b"), "d1")
    await host.settled()
    net.tick()
    await host.settled()
    assert unfollowed(host) == 0
    assert {str(tmp_path / "c" / "e0"), str(tmp_path / "c" / "e1")} <= watcher.directories


async def test_a_hung_tree_is_left_to_the_safety_net_and_the_others_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trees are read in one call off the loop: one whose read hangs (a dead network file
    system) past `ARRIVAL_TIMEOUT` is left to the safety net, the trees after it in the
    batch are read in the next one, the trees before it are taken in."""
    monkeypatch.setattr(ownership_arrivals, "ARRIVAL_TIMEOUT", 0.2)
    trees = {name: tmp_path / name for name in ("a", "hung", "z")}
    for tree in trees.values():
        (tree / "sub").mkdir(parents=True)
    gate = threading.Event()

    def read(paths: list[str], limit: int) -> tuple[ownership_reads.Found, bool]:
        if any(path.startswith(str(trees["hung"])) for path in paths):
            gate.wait(60)
        return ownership_reads.arrived(paths, limit)

    watcher = ManualWatcher()
    arrivals = ownership_arrivals.Arrivals(
        lambda _found, _complete: None, DaemonThreads(), read=read
    )
    try:
        for tree in trees.values():
            arrivals.follow(watcher, str(tree), get_logger().bind(resource=R2))
        await asyncio.wait_for(arrivals.quiet(), 60)
        assert set(arrivals.unfollowed) == {str(trees["hung"])}
        assert "took more than" in arrivals.unfollowed[str(trees["hung"])]
        assert {str(trees["a"] / "sub"), str(trees["z"] / "sub")} <= watcher.directories
    finally:
        gate.set()


def test_the_real_watch_limit_leaves_the_tree_to_the_safety_net(tmp_path: Path) -> None:
    """In a user namespace of the test's own with room for three inotify watches (a's node's
    directory, the one above b, b itself), b/sub is refused (ENOSPC): the tree is counted
    and a's held node renamed into b/sub is seen at the safety net's next read."""
    assert unshared("tests.test_ownership_trees", "watch_limit_child", str(tmp_path))


async def watch_limit_child(root: str) -> None:
    Path("/proc/sys/user/max_inotify_watches").write_text("3\n")
    tmp = Path(root)
    (tmp / "dev").mkdir()
    (tmp / "dev" / "n0").write_text("")
    (tmp / "b" / "sub").mkdir(parents=True)
    watcher = InotifyWatcher(get_logger(), mounts=lambda _log: None)
    watching = asyncio.create_task(watcher.run())
    net = ManualNet()
    metrics = Metrics()
    index = OwnershipIndex(metrics, offload=DaemonThreads())
    index.watch(watcher, net)
    tables = {R1: DeviceTable(), R2: DeviceTable()}
    for name in (R1, R2):
        index.attach(name, tables[name].publish, get_logger().bind(resource=name))
    index.publish(R1, {"n0": nodes("n0", str(tmp / "dev" / "n0"))})
    await settled(index)
    await index.book(R1, ["n0"])
    index.publish(R2, {"b": mounting("b", str(tmp / "b"))})
    await settled(index)
    counted = metrics.registry.get_sample_value("kdp_watch_unfollowed_trees")
    advertised = [d.id for d in tables[R2].snapshot.devices]
    os.rename(tmp / "dev" / "n0", tmp / "b" / "sub" / "n0")
    net.tick()
    await settled(index)
    print(counted, advertised, [d.id for d in tables[R2].snapshot.devices])
    held = counted == 1 and advertised == ["b"] and not tables[R2].snapshot.devices
    print("held" if held else "advertised")
    watching.cancel()


async def settled(index: OwnershipIndex) -> None:
    for _ in range(3):  # (a recheck, a tree's read start in a later turn of the loop)
        await asyncio.sleep(0)
        await index.quiet()


async def free_node_beside_mount(
    tmp: Path, *below: str, booked: bool = True
) -> tuple[Host, ManualWatcher]:
    """Resource a's node dev/n0 is free (advertised, no pod); resource b mounts tmp/b (with
    the directories `below`), and a pod holds b (`booked`)."""
    (tmp / "dev").mkdir()
    (tmp / "dev" / "n0").write_text("")
    (tmp / "b").mkdir()
    for directory in below:
        (tmp / "b" / directory).mkdir(parents=True)
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, nodes("n0", str(tmp / "dev" / "n0")))
    await host.publish(R2, mounting("b", str(tmp / "b")))
    if booked:
        await host.index.book(R2, ["b"])
    assert (host.ids(R1), host.ids(R2)) == (["n0"], ["b"])
    return host, watcher


@pytest.mark.parametrize("where", ["", "sub", "sub/deep"])
async def test_a_free_node_linked_into_a_booked_mount_is_held(tmp_path: Path, where: str) -> None:
    """Issue 17, hostile8 N1: a's free node is hard-linked into b (top level or a
    subdirectory) while a pod holds b's mount. Before, b was held (the pod has it already)
    and a's node stayed advertised: a second pod got the node the first one reaches. A
    booked mount wins: the node is held while the booking lives."""
    host, watcher = await free_node_beside_mount(tmp_path, *([where] if where else []))
    inside = tmp_path / "b" / where
    os.link(tmp_path / "dev" / "n0", inside / "n0link")
    watcher.change(str(inside), "n0link")
    await host.settled()
    assert host.ids(R1) == [], "the pod holding b reaches a's node"
    assert host.held(R1) == 1


async def test_a_node_held_by_a_booked_mount_is_advertised_once_the_booking_ends(
    tmp_path: Path,
) -> None:
    """The node linked into b keeps its claim while b's booking holds it: once no pod holds
    b, the node is advertised again and b (which reaches it) is the one held."""
    host, watcher = await free_node_beside_mount(tmp_path, "sub")
    os.link(tmp_path / "dev" / "n0", tmp_path / "b" / "sub" / "n0link")
    watcher.change(str(tmp_path / "b" / "sub"), "n0link")
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == ([], [])
    host.index.holdings(Holdings(time.monotonic() + 3600, 0.0, {}))  # (long after: no pod)
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == (["n0"], [])


async def test_a_free_node_linked_into_an_unbooked_mount_holds_the_mount(tmp_path: Path) -> None:
    """No pod holds b: the node linked into it stays advertised and b is held (one node,
    one advertised device: no pod reaches the node through b)."""
    host, watcher = await free_node_beside_mount(tmp_path, "sub", booked=False)
    os.link(tmp_path / "dev" / "n0", tmp_path / "b" / "sub" / "n0link")
    watcher.change(str(tmp_path / "b" / "sub"), "n0link")
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == (["n0"], [])


async def test_an_allocate_of_an_unfollowed_tree_reads_it_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, hostile8 N4: b's tree is past the follow bound (left to the safety net) and
    a's held node is linked deep in it, past what an Allocate reads of a followed tree.
    Before, the Allocate mounted b until the safety net's next read (a second pod reached
    the node). It reads an unfollowed tree in full: refused, and b is held at once."""
    monkeypatch.setattr(ownership_arrivals, "TREE_LIMIT", 2)
    monkeypatch.setattr(ownership_hand_out, "INSIDE_LIMIT", 3)
    host, _ = await booked_beside_tree(tmp_path, "d0", "d1", "d2", "d3/e/f", net=ManualNet())
    assert unfollowed(host) == 1
    b = str(tmp_path / "b")
    assert await host.index.hand_out(R2, ["b"], [b]) == {b: b}, "nothing moved in yet"
    os.link(tmp_path / "dev" / "n0", tmp_path / "b" / "d3" / "e" / "f" / "n0")
    with pytest.raises(PlaceOwned, match=r"device n0 of t\.io/a"):
        await host.index.hand_out(R2, ["b"], [b])
    await host.settled()
    assert host.ids(R2) == []
    assert host.held(R2) == 1


async def test_an_allocate_of_an_unfollowed_tree_too_big_to_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the safety net's read limit too, what is below is not known: refused (fail
    closed), whatever is there; a followed tree keeps the bounded read."""
    monkeypatch.setattr(ownership_arrivals, "TREE_LIMIT", 2)
    monkeypatch.setattr(ownership_hand_out, "RESCAN_LIMIT", 4, raising=False)  # (new in N4)
    host, _ = await booked_beside_tree(tmp_path, "d0", "d1", "d2", "d3", net=ManualNet())
    b = str(tmp_path / "b")
    with pytest.raises(Unresolvable, match="not followed in full"):
        await host.index.hand_out(R2, ["b"], [b])


async def free_node_beside_unfollowed_tree(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, booked: bool = True
) -> tuple[Host, str]:
    """Resource a's free node dev/n0 (advertised, no pod); resource b mounts tmp/b, whose
    tree is past the follow bound (left to the safety net), and a pod holds b (`booked`)."""
    monkeypatch.setattr(ownership_arrivals, "TREE_LIMIT", 2)
    host, _ = await free_node_beside_mount(tmp, "d0", "d1", "d2", "d3/e/f", booked=booked)
    await host.settled()
    assert unfollowed(host) == 1
    return host, str(tmp / "dev" / "n0")


async def test_an_allocate_of_a_node_linked_into_an_unfollowed_booked_tree_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hostile8 N1 past the follow bound: a's free node is hard-linked deep into b's tree,
    which a pod holds mounted and the watcher does not follow in full. Before, the node
    stayed advertised and its Allocate handed it to a second pod until the safety net's
    read (up to 30 s). The Allocate looks for it there: refused, and a is held at once."""
    host, n0 = await free_node_beside_unfollowed_tree(tmp_path, monkeypatch)
    assert await host.index.hand_out(R1, ["n0"], [n0]) == {n0: n0}, "not linked there yet"
    os.link(n0, tmp_path / "b" / "d3" / "e" / "f" / "n0link")
    with pytest.raises(PlaceOwned, match=r"n0 is also at .*/d3/e/f/n0link"):
        await host.index.hand_out(R1, ["n0"], [n0])
    await host.settled()
    assert host.ids(R1) == [], "held while the pod holds b"


async def test_a_node_linked_into_an_unbooked_or_followed_tree_is_not_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pod holds b: nothing to look for (b is the one held, by the safety net). A node
    with one link is never looked for: nothing is read, whatever the trees."""
    reads: list[list[str]] = []

    def counting(paths: list[str], limit: int) -> tuple[ownership_reads.Found, bool]:
        reads.append(list(paths))
        return ownership_reads.arrived(paths, limit)

    monkeypatch.setattr(ownership_hand_out, "arrived", counting)
    host, n0 = await free_node_beside_unfollowed_tree(tmp_path, monkeypatch, booked=False)
    os.link(n0, tmp_path / "b" / "d3" / "n0link")
    assert await host.index.hand_out(R1, ["n0"], [n0]) == {n0: n0}
    await host.index.book(R2, ["b"])
    os.unlink(tmp_path / "b" / "d3" / "n0link")
    assert await host.index.hand_out(R1, ["n0"], [n0]) == {n0: n0}, "one link: not read"
    assert reads == []


async def test_an_allocate_of_a_linked_node_beside_a_tree_too_big_to_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node with a second link while a booked unfollowed tree is past the read limit:
    whether the link is below it is not known, so the Allocate is refused (fail closed)."""
    monkeypatch.setattr(ownership_hand_out, "RESCAN_LIMIT", 4)
    host, n0 = await free_node_beside_unfollowed_tree(tmp_path, monkeypatch)
    os.link(n0, tmp_path / "elsewhere")
    with pytest.raises(Unresolvable, match="hold more than 4 entries"):
        await host.index.hand_out(R1, ["n0"], [n0])
