"""A file of a tree a pod holds mounted that becomes a device's node by a hard link made
later (`ln held/x dev/n2`: a probe or glob then lists dev/n2): the pod reaches the new
device through its mount, so the device is held (`device_held reason=booked`) at once, not
advertised Healthy until its first Allocate is refused (issue 17, tidyup item 2). The tree
was read when the file had one link, and the link changes no time of the tree's directory:
the kernel tells the link count's change (inotify's ATTRIB) to a watch on the file only,
not to the tree's; the new device's claim, a file of more than one link, has the trees
pods hold read again, as a file of more than one link that arrives in a followed tree
does (`ownership_linked`)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from kdp_host.holdings import Holdings
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.testing import ManualWatcher
from kdp_host.watch import Watcher

from .conftest import wait_until
from .test_ownership_moves import R1, R2, Host, mounting, nodes


async def _held_tree(tmp: Path, watcher: Watcher | None = None) -> tuple[Host, Watcher]:
    """R1's directory device d0 holds x (one link), a pod holds d0; R2 lists dev/n0 (on
    `watcher`, a ManualWatcher by default)."""
    (tmp / "grp" / "d0").mkdir(parents=True)
    (tmp / "grp" / "d0" / "x").write_text("")
    (tmp / "dev").mkdir()
    (tmp / "dev" / "n0").write_text("")
    watcher = watcher or ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, mounting("d0", str(tmp / "grp" / "d0")))
    await host.index.book(R1, ["d0"])
    await host.publish(R2, nodes("n0", str(tmp / "dev" / "n0")))
    assert (host.ids(R1), host.ids(R2)) == (["d0"], ["n0"])
    return host, watcher


async def test_a_file_of_a_held_tree_linked_in_as_a_new_device_is_held(tmp_path: Path) -> None:
    """The tree hears nothing of the link (the kernel tells a link count's ATTRIB to a watch
    on the file only); the new device's listing has the held trees read again."""
    host, watcher = await _held_tree(tmp_path)
    assert isinstance(watcher, ManualWatcher)
    os.link(tmp_path / "grp" / "d0" / "x", tmp_path / "dev" / "n2")
    watcher.change(str(tmp_path / "dev"), "n2")
    await host.publish(
        R2, nodes("n0", str(tmp_path / "dev" / "n0")), nodes("n2", str(tmp_path / "dev" / "n2"))
    )
    await host.settled()
    assert host.ids(R2) == ["n0"], "n2 is a link of the file the pod holding d0 reaches"
    host.index.holdings(Holdings(time.monotonic() + 3600, 0.0, {}))  # (long after: no pod)
    await host.settled()
    assert host.ids(R2) == ["n0", "n2"], "advertised once no pod holds d0"


async def test_through_inotify(tmp_path: Path) -> None:
    """The same with the real watcher: the link count's ATTRIB reaches the followed tree."""
    watcher = InotifyWatcher(get_logger())
    watching = asyncio.create_task(watcher.run())
    try:
        host, _ = await _held_tree(tmp_path, watcher)
        await wait_until(
            lambda: str(tmp_path / "grp" / "d0") in watcher.directories, what="followed"
        )
        os.link(tmp_path / "grp" / "d0" / "x", tmp_path / "dev" / "n2")
        await host.publish(
            R2, nodes("n0", str(tmp_path / "dev" / "n0")), nodes("n2", str(tmp_path / "dev" / "n2"))
        )
        await wait_until(lambda: host.ids(R2) == ["n0"], what="n2 held", timeout=5)
    finally:
        watching.cancel()


async def test_through_the_real_kubelet(real_kubelet_factory, short_dir: Path, start_host) -> None:
    """The kubelet's real device manager: pod p0 holds a directory device (group `grp/d{key}`)
    holding x; `ln grp/d<key>/x dev/fpga2`: fpga2 is held (`booked`) within milliseconds of
    its listing, so no later pod's Allocate is refused (before: advertised Healthy until the
    first Allocate of it was refused, /readyz 200)."""
    directories, files = "vendor.example/dir", "vendor.example/fpga"
    for d in ("dev", "grp/d0", "grp/d1"):
        (short_dir / d).mkdir(parents=True)
    for name in ("fpga0", "fpga1"):
        (short_dir / "dev" / name).write_text(name)
    for key in ("0", "1"):
        (short_dir / "grp" / f"d{key}" / "x").write_text("x")
    kubelet = real_kubelet_factory()
    running = await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir}/state\n"
        f"resources:\n  - name: {directories}\n"
        f'    glob: {{group: [{{path: "{short_dir}/grp/d{{key}}"}}], gracePeriod: 0s}}\n'
        f'  - name: {files}\n    glob: {{paths: ["{short_dir}/dev/fpga*"], gracePeriod: 0s}}\n',
        fast=True,
    )
    await kubelet.await_for(
        lambda k: (
            (k.resource(files) or {}).get("healthy") == 2
            and (k.resource(directories) or {}).get("healthy") == 2
        ),
        what="both registered",
    )
    held = await kubelet.acall(kubelet.allocate, "p0", {directories: 1})
    assert held["error"] == ""
    [key] = held["device_ids"][directories]
    os.link(short_dir / "grp" / f"d{key}" / "x", short_dir / "dev" / "fpga2")
    index = running.host.ownership
    await wait_until(lambda: "fpga2" in index.held_now(files), what="fpga2 held", timeout=10)
    assert index.held_now(files)["fpga2"].reason == "booked"
    await kubelet.await_for(lambda k: k.resource(files)["healthy"] == 2, what="not offered")
    for pod in ("q0", "q1", "q2"):
        answer = await kubelet.acall(kubelet.allocate, pod, {files: 1})
        assert "cannot allocate" not in answer["error"], answer["error"]
    assert kubelet.resource(files)["healthy"] == 2
