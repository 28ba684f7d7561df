"""Mounts: a mount made over a path, or over a directory above it, changes what the path
reaches with no inotify event anywhere (Issue 17). The kernel reports a change of the mount
table on /proc/self/mountinfo; the watcher follows it (`Watcher.follow_mounts`), and the
ownership index forgets what it kept and rechecks every claim.

A mount needs root: the mechanism is tested with the watcher fake's `change_mounts`, and,
where an ordinary user may make a user and mount namespace (`unshare -rm`), with a real bind
mount and the real inotify watcher in a child process."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.mount_table import MountTable
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Unresolvable
from kdp_host.testing import ManualWatcher
from kdp_host.watch import Watcher

from .fake_nodes import indexed, node
from .test_ownership_places import R1, R2, handed_index, hops

REPO = Path(__file__).resolve().parent.parent


async def test_a_mount_table_change_forgets_the_kept_paths(tmp_path: Path) -> None:
    """A kept path is resolved again after the mount table changed (once)."""
    watcher = ManualWatcher()
    index, offload, path = await handed_index(tmp_path, watcher)
    assert await index.hand_out(R1, ["n0"], [path]) == {path: path}
    assert await hops(index, offload, [path], 2) == 0, "kept"
    watcher.change_mounts()
    assert await hops(index, offload, [path], 2) == 1, "resolved again once"


async def kept_beside_b(
    tmp: Path, watcher: Watcher
) -> tuple[OwnershipIndex, dict[str, DeviceTable], str]:
    """Resource a's node a/dev/n0 (its path kept by two Allocates) and resource b's node
    b/dev/n0 (another file), on `watcher`."""
    for side in ("a", "b"):
        (tmp / side / "dev").mkdir(parents=True)
        (tmp / side / "dev" / "n0").write_text(side)
    path = str(tmp / "a" / "dev" / "n0")
    devices = {
        name: [node(str(tmp / side / "dev" / "n0"))] for name, side in ((R1, "a"), (R2, "b"))
    }
    index, tables = await indexed(devices, watcher=watcher, offload=DaemonThreads())
    for _ in range(2):
        assert await index.hand_out(R1, ["n0"], [path]) == {path: path}
    return index, tables, path


async def test_a_path_a_mount_swapped_is_refused_then_held(tmp_path: Path) -> None:
    """The path now reaches resource b's node, with no directory event reported (as a
    mount does it): the next Allocate is refused, not handed the kept path, and once the
    claims are rechecked a's device is held (b owns the node)."""
    watcher = ManualWatcher()
    index, tables, path = await kept_beside_b(tmp_path, watcher)
    os.rename(tmp_path / "a", tmp_path / "a.old")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    watcher.change_mounts()  # (the only report: no directory event)
    with pytest.raises(Unresolvable, match="no longer reaches what was claimed"):
        await index.hand_out(R1, ["n0"], [path])  # (before the recheck's turn of the loop)
    await asyncio.sleep(0)
    await index.quiet()
    assert tables[R1].snapshot.devices == ()
    assert [d.id for d in tables[R2].snapshot.devices] == ["n0"]


async def test_without_mount_changes_nothing_is_kept(tmp_path: Path) -> None:
    """A watcher that cannot follow the mount table (no /proc/self/mountinfo to poll):
    every Allocate resolves what it hands out, as before anything was kept."""
    index, offload, path = await handed_index(tmp_path, ManualWatcher(mounts=False))
    await index.hand_out(R1, ["n0"], [path])
    assert await hops(index, offload, [path], 2) == 2


async def test_a_mount_table_change_rechecks_every_claim(tmp_path: Path) -> None:
    """The same report makes the index resolve its claims again, as a watcher overflow
    does: a claimed node swapped by a mount is claimed anew."""
    watcher = ManualWatcher()
    index, offload, _ = await handed_index(tmp_path, watcher)
    await hops(index, offload, [], 0)
    before = offload.calls
    watcher.change_mounts()
    await hops(index, offload, [], 0)
    assert offload.calls > before, "the claims were resolved again"


def test_a_mount_table_that_cannot_be_polled_is_said_once(tmp_path: Path) -> None:
    logged: list[str] = []

    class Log:
        def warning(self, event: str, **fields: object) -> None:
            logged.append(event)

    assert MountTable.open(Log(), str(tmp_path / "absent")) is None  # type: ignore[arg-type]
    assert logged == ["mount_changes_unwatched"]
    watcher = InotifyWatcher(get_logger(), mounts=lambda _log: None)
    assert watcher.follow_mounts(lambda: None) is False


def _unshare_refused() -> str | None:
    """Why a user and mount namespace cannot be made here (None: it can)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "no unshare(1) here"
    done = subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        return f"unshare -rm refused: {done.stderr.strip()}"
    return None


@pytest.mark.parametrize("over", ["ancestor", "node"])
def test_a_real_bind_mount_over_a_kept_path_is_seen(tmp_path: Path, over: str) -> None:
    """The real watcher in a private mount namespace: resource a's path is kept by two
    Allocates, then a bind mount over a directory above it (or over the node itself) makes
    it reach the node resource b advertises. Before, nothing saw it: a's device stayed
    advertised and its kept path was handed out (two pods, one node). Now a's device is
    held (b owns the node), and an Allocate meanwhile is refused, never handed the kept
    path."""
    assert unshared("tests.test_ownership_mounts", "bind_mount_child", str(tmp_path), over)


def unshared(module: str, child: str, *args: str) -> bool:
    """Run the coroutine `module.child(*args)` in a user and mount namespace of its own
    (`unshare -rm`: a mount as an ordinary user), or skip saying why that cannot be made
    here; whether the last line it printed is `held`."""
    why = _unshare_refused()
    if why is not None:
        pytest.skip(why)
    code = f"import asyncio, sys; from {module} import {child}; asyncio.run({child}(*sys.argv[1:]))"
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()[-1] == "held"


async def bind_mount_child(root: str, over: str) -> None:
    """Run in a user and mount namespace (`unshare -rm`): keep a path, mount over it. Prints
    what an Allocate of a's device got after the mount, then `held` once a's device is no
    longer advertised (or `advertised` after 30 s)."""
    tmp = Path(root)
    watcher = InotifyWatcher(get_logger())
    watching = asyncio.create_task(watcher.run())
    index, tables, path = await kept_beside_b(tmp, watcher)
    source, target = (
        (tmp / "b", tmp / "a") if over == "ancestor" else (tmp / "b/dev/n0", tmp / "a/dev/n0")
    )
    mount = await asyncio.create_subprocess_exec("mount", "--bind", str(source), str(target))
    assert await mount.wait() == 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        if not tables[R1].snapshot.devices:
            print("held")
            break
        try:
            got = await index.hand_out(R1, ["n0"], [path])
            print(f"handed out {got}")
        except Unresolvable as exc:
            print(f"refused: {exc}")
        await asyncio.sleep(0.01)  # (the mount table's report is on its way to the loop)
    else:
        print("advertised")
    watching.cancel()
