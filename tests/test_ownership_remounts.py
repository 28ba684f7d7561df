"""A file system mounted later inside a followed mounted tree (hostile18 F11).

The index followed the mount table (claims rechecked at their places now), but not the trees
below a change of it: a tree bind-mounted (or a tmpfs mounted) at a directory of a device's
mounted tree was never read, so a node held elsewhere that it brought reached a second pod;
and the watch of that directory stayed on the covered one, so a node made later in the new
mount was never seen either. Now, where a mount is made or gone at or below a followed tree,
the watches there are renewed (`Watcher.rewatch`) and what the tree shows there is read as
an arrival (`Arrivals.remounted`); a mount far from every tree reads nothing.

A mount needs root: the index is driven with a fake mount table and a directory swapped in
(the watcher fake reports the mount-table change only), and, where a user and mount
namespace can be made (`unshare -rm`), with real bind mounts and the real inotify watcher."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.mount_table import MountMap, parse_mounts
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_reads import remounted
from kdp_host.watch import SubscriberIndex, new_subscription

from .conftest import wait_until
from .test_ownership_mounts import unshared
from .test_ownership_moves import R1, R2, mounting, nodes
from .test_ownership_trees import booked_beside_tree

ROOT = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"


def tmpfs_at(*points: Path) -> MountMap:
    """The root file system and a tmpfs mounted at each of `points`."""
    lines = [f"{n} 1 0:{90 + n} / {p} rw - tmpfs tmpfs rw\n" for n, p in enumerate(points, 2)]
    return parse_mounts(ROOT + "".join(lines))


async def test_a_tree_mounted_inside_a_followed_one_is_read(tmp_path: Path) -> None:
    """b/sub is followed; a directory holding a link of a's booked node is mounted there
    (swapped in: the watcher reports the mount-table change only). Before, b stayed
    advertised: nothing read what the mount brought. Now b is held, and the watches at
    b/sub are renewed."""
    host, watcher = await booked_beside_tree(tmp_path, "sub", mounts=parse_mounts(ROOT))
    (tmp_path / "t2").mkdir()
    os.link(tmp_path / "dev" / "n0", tmp_path / "t2" / "evil")
    sub = tmp_path / "b" / "sub"
    os.rename(sub, tmp_path / "covered")
    os.rename(tmp_path / "t2", sub)
    host.mounts = tmpfs_at(sub)
    watcher.change_mounts()
    await host.settled()
    assert host.ids(R2) == [], "b's mount now shows the node a pod of a holds"
    assert host.held(R2) == 1
    assert watcher.rewatched == [[str(sub)]]


async def test_a_mount_over_the_mounted_directory_itself_reads_all_of_it(
    tmp_path: Path,
) -> None:
    """The mount is made at b itself (or above it): its whole tree is read."""
    host, watcher = await booked_beside_tree(tmp_path, "sub/deep", mounts=parse_mounts(ROOT))
    (tmp_path / "t2" / "x").mkdir(parents=True)
    os.link(tmp_path / "dev" / "n0", tmp_path / "t2" / "x" / "evil")
    os.rename(tmp_path / "b", tmp_path / "covered")
    os.rename(tmp_path / "t2", tmp_path / "b")
    host.mounts = tmpfs_at(tmp_path / "b")
    watcher.change_mounts()
    await host.settled()
    assert host.ids(R2) == []
    assert str(tmp_path / "b" / "x") in watcher.directories, "the new tree is followed"
    assert str(tmp_path / "covered" / "sub" / "deep") not in watcher.directories


async def test_a_mount_far_from_every_tree_reads_nothing(tmp_path: Path) -> None:
    """A pod's mounts elsewhere (the common case: every pod adds some) renew no watch and
    read no tree: b stays advertised with nothing queued."""
    host, watcher = await booked_beside_tree(tmp_path, "sub", mounts=parse_mounts(ROOT))
    (tmp_path / "pods" / "p1").mkdir(parents=True)
    host.mounts = tmpfs_at(tmp_path / "pods" / "p1")
    watcher.change_mounts()
    await host.settled()
    assert watcher.rewatched == [[str(tmp_path / "pods" / "p1")]]
    assert host.ids(R2) == ["b"]


def test_what_a_mount_point_makes_read_again() -> None:
    trees = ["/a/b", "/a/b/c/d", "/a/b c", "/x"]
    again = remounted(set(trees), sorted(trees), ["/a/b/c", "/a/b/c/d/e", "/y", "/a/bc"])
    assert again == {"/a/b": {"/a/b/c"}, "/a/b/c/d": {"/a/b/c/d", "/a/b/c/d/e"}}
    assert remounted(set(trees), sorted(trees), ["/a"]) == {
        "/a/b": {"/a/b"},
        "/a/b/c/d": {"/a/b/c/d"},
        "/a/b c": {"/a/b c"},
    }
    assert set(remounted(set(trees), sorted(trees), ["/"])) == set(trees)
    assert remounted(set(), [], ["/a"]) == {}


def test_the_directories_subscribed_at_or_below_mount_points() -> None:
    """Found in the sorted list, `/a/b c` (sorted between `/a/b` and `/a/b/x`) not below
    `/a/b`; the list is made again when a directory is subscribed to."""
    index = SubscriberIndex()
    for directory in ("/a/b", "/a/b c", "/a/b/x", "/a/bx", "/z"):
        index.add(new_subscription(directory, lambda _name: None, None, None))  # type: ignore[arg-type]
    assert index.at_or_below(["/a/b"]) == ["/a/b", "/a/b/x"]
    assert index.at_or_below(["/a/b/x/y", "/q"]) == []
    index.add(new_subscription("/a/b/x/y", lambda _name: None, None, None))  # type: ignore[arg-type]
    assert index.at_or_below(["/a/b/x"]) == ["/a/b/x", "/a/b/x/y"]
    assert len(index.at_or_below(["/"])) == 6


@pytest.mark.parametrize("what", ["bind_with_node", "empty_then_linked"])
def test_a_real_mount_inside_a_followed_tree(tmp_path: Path, what: str) -> None:
    """The real watcher in a private mount namespace (skipped, saying why, where one
    cannot be made): a directory holding a link of a's booked node is bind-mounted at
    b/sub; or an empty one is, and the node is moved into it after that (as a pod with a
    writable mount could move one in). Before, b stayed advertised in both (the watch of
    b/sub heard the covered directory); now it is held."""
    assert unshared("tests.test_ownership_remounts", "mount_inside_child", str(tmp_path), what)


async def mount_inside_child(root: str, what: str) -> None:
    """Run in a user and mount namespace (`unshare -rm`). Prints `held` once b is no longer
    advertised (or `advertised` after 20 s)."""
    tmp = Path(root)
    for directory in ("dev", "b/sub", "t2"):
        (tmp / directory).mkdir(parents=True)
    (tmp / "dev" / "n0").write_text("")
    if what == "bind_with_node":
        os.link(tmp / "dev" / "n0", tmp / "t2" / "evil")
    watcher = InotifyWatcher(get_logger())
    watching = asyncio.create_task(watcher.run())
    seen = asyncio.Event()

    def mounts() -> MountMap:
        """The table the index reads: `seen` once it shows the mount at b/sub."""
        text = Path("/proc/self/mountinfo").read_text()
        if any(line.split(" ")[4] == str(tmp / "b" / "sub") for line in text.splitlines()):
            seen.set()  # (its waiter runs once the index has handled this table)
        return parse_mounts(text)

    index = OwnershipIndex(offload=DaemonThreads(), mounts=mounts)
    index.watch(watcher)
    tables = {R1: DeviceTable(), R2: DeviceTable()}
    for name in (R1, R2):
        index.attach(name, tables[name].publish, get_logger().bind(resource=name))
    index.publish(R1, {"n0": nodes("n0", str(tmp / "dev" / "n0"))})
    await index.quiet()
    await index.book(R1, ["n0"])
    index.publish(R2, {"b": mounting("b", str(tmp / "b"))})
    await index.quiet()
    assert [d.id for d in tables[R2].snapshot.devices] == ["b"]
    await wait_until(lambda: str(tmp / "b" / "sub") in watcher.directories, what="b/sub")
    await index.quiet()  # (its tree read: b/sub is watched before the mount)
    mount = await asyncio.create_subprocess_exec(
        "mount", "--bind", str(tmp / "t2"), str(tmp / "b" / "sub")
    )
    assert await mount.wait() == 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    if what == "empty_then_linked":
        try:
            async with asyncio.timeout(20):
                await seen.wait()
        except TimeoutError:
            print("advertised")
            return
        await index.quiet()
        os.rename(tmp / "dev" / "n0", tmp / "t2" / "evil")  # (shown at b/sub/evil)
    while loop.time() < deadline:
        if not tables[R2].snapshot.devices:
            print("held")
            break
        await asyncio.sleep(0.01)
    else:
        print("advertised")
    watching.cancel()


def test_the_real_watcher_renews_a_shared_watch_over_a_mount_and_back(tmp_path: Path) -> None:
    """Two subscribers of one directory (one inotify watch); a directory is bind-mounted
    over it: after `rewatch`, a file made in the mounted one is heard by both; unmounted,
    and `rewatch` again, one made in the directory it covered is heard again."""
    assert unshared("tests.test_ownership_remounts", "rewatch_child", str(tmp_path))


async def rewatch_child(root: str) -> None:
    """Run in a user and mount namespace (`unshare -rm`); prints `held` (what `unshared`
    looks for) once both subscribers heard both files."""
    tmp = Path(root)
    for directory in ("d", "t2"):
        (tmp / directory).mkdir()
    watcher = InotifyWatcher(get_logger())
    watching = asyncio.create_task(watcher.run())
    heard: list[tuple[int, str | None]] = []
    for n in (1, 2):
        watcher.subscribe(str(tmp / "d"), lambda name, n=n: heard.append((n, name)))
    for argv, made in (
        (["mount", "--bind", str(tmp / "t2"), str(tmp / "d")], tmp / "t2" / "in_mount"),
        (["umount", str(tmp / "d")], tmp / "d" / "covered_again"),
    ):
        done = await asyncio.create_subprocess_exec(*argv)
        assert await done.wait() == 0
        watcher.rewatch([str(tmp / "d")])
        made.write_text("")
        want = {(1, made.name), (2, made.name)}
        await wait_until(lambda want=want: want <= set(heard), timeout=10, what=made.name)
    print("held")
    watching.cancel()
