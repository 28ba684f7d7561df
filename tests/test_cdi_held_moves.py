"""A held CDI name never comes to resolve to another pod's node (issue 17, hostile21).

F2: a reload removes a resource with `allocate.cdi`, or turns its `allocate.cdi` off, while a
pod holds one of its devices by CDI name: a keeper writes the held entry (`cdi_keeper`). When
the entry's host path comes to reach another pod's node (`mv n1 n0`), the entry must be left
out at once, as the resource's own writer does (`cdi_pins.HeldPaths`): the keeper's table lists
nothing, so it looked again only at its 10 s check, and a container of the pod restarting in
between got the other pod's node.

F3: a rolling update moves `allocate.cdi.specDir` to a later runtime dir and the old instance
is SIGKILLed: its file in the earlier dir stays until its lease runs out (30 s). A held name
the new host's file leaves out (its path reaches another pod's node now) resolves through
that file, which still names the path: it must be removed at once (`cdi_dirs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cdi import CdiSpecWriter
from kdp_host.cdi_files import SpecFiles
from kdp_host.cdi_resolution import winning_entries
from kdp_host.config.outputs import owner_path, spec_file_name
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.file_lease import VERIFY
from kdp_host.handed_out import HandedRecord
from kdp_host.identity import identity_of
from kdp_host.inotify_watch import make_watcher
from kdp_host.logs import get_logger
from kdp_host.watch import Subscription, WatchCallback

from .conftest import wait_until
from .kubelet_harness import RealKubelet, healthy
from .test_cdi import KIND as KIND_OF_RESOURCE
from .test_cdi import RESOURCE, own, resource
from .test_cdi_reload import resolved

P, Q = "example.com/p", "example.com/q"
KIND = "example.com/pp"
SOON = VERIFY / 2
"""Well within the writer's periodic check (milliseconds are expected)."""


def _config(kubelet: RealKubelet, root: Path, p: bool, p_cdi: bool) -> str:
    text = f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {root}/state\nresources:\n"
    if p:
        text += f'  - name: {P}\n    glob: {{paths: ["{root}/dev/n*"]}}\n'
        if p_cdi:
            text += f"    allocate: {{cdi: {{kind: {KIND}, specDir: {root}/cdi}}}}\n"
    text += f'  - name: {Q}\n    glob: {{paths: ["{root}/dev/m*"]}}\n'
    return text


class _Elsewhere:
    """The host's watcher, but blind to the spec dir: the writer is woken by nothing of its
    own writing (it reads its file back once after each write), so it is idle once written
    and wakes only when something tells it (or at its periodic check)."""

    def __init__(self, watcher: Any, blind: str) -> None:
        self.watcher, self.blind = watcher, blind

    def subscribe(self, directory: str, callback: WatchCallback, *args: Any, **kw: Any) -> Any:
        if directory == self.blind:
            return Subscription(directory, callback)
        return self.watcher.subscribe(directory, callback, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.watcher, name)


@pytest.mark.parametrize("reload", ["removes_it", "turns_cdi_off"])
async def test_hostile21_f2_a_kept_entry_whose_path_reaches_another_pods_node_is_left_out(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, reload: str
) -> None:
    """p1 holds p's n0 by CDI name; a reload removes p (or its `allocate.cdi`: p still runs,
    listing n0 as p1's); p2 is handed q's m0, which is then renamed over n0. p1's held name
    must stop resolving (to p2's node) within milliseconds. Fails on the old code: it
    resolved to p2's node until the keeper's next 10 s check (its last wake, the reload, a
    second or so before the rename)."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("n0", "n1", "m0"):
        (dev / name).touch()
    config, spec_dir = short_dir / "kdp.yaml", short_dir / "cdi"
    config.write_text(_config(kubelet, short_dir, p=True, p_cdi=True))
    blind = _Elsewhere(make_watcher(get_logger()), str(spec_dir))  # (see `_Elsewhere`)
    running = await start_host(config.read_text(), config_path=config, watcher=blind)
    await kubelet.await_for(healthy(P, 2), what="p's devices advertised")
    await kubelet.await_for(healthy(Q, 1), what="q's device advertised")
    p1 = await kubelet.acall(kubelet.allocate, "p1", {P: 1})
    assert p1["error"] == "", p1
    (held,) = [c.get("Name", c.get("name")) for c in p1["cdi_devices"]]
    (mine,) = p1["device_ids"][P]
    assert resolved(spec_dir)[held] == [str(dev / mine)]

    off = reload == "turns_cdi_off"
    config.write_text(_config(kubelet, short_dir, p=off, p_cdi=False))
    assert await running.host.reload_from(config) == "ok"
    supervisor = running.host._supervisor
    assert supervisor is not None
    await wait_until(lambda: P in supervisor._keepers, what="the keeper runs")
    await wait_until(  # (the keeper's file: the stopped writer's defined n1 too)
        lambda: set(resolved(spec_dir)) == {held}, what="the held name kept, alone"
    )
    p2 = await kubelet.acall(kubelet.allocate, "p2", {Q: 1})
    assert p2["error"] == "", p2
    (theirs,) = p2["device_ids"][Q]
    assert theirs != mine

    os.rename(dev / theirs, dev / mine)  # p2's node, now at p1's held path
    await wait_until(
        lambda: held not in resolved(spec_dir), timeout=SOON, what="the held entry left out"
    )


async def test_a_keepers_held_entry_is_left_out_when_its_path_changes_not_at_its_check(
    tmp_path: Path,
) -> None:
    """The keeper's writer alone (retired: its table lists nothing), its periodic check never
    due: p1's held n0 goes from the file once n1 is renamed over it (the writer follows the
    paths its held entries are checked at). Fails on the old code: it never looked again."""
    dev, spec_dir = tmp_path / "dev", tmp_path / "cdi"
    dev.mkdir()
    for name in ("n0", "n1"):
        (dev / name).touch()
    n0 = str(dev / "n0")
    listed = DeviceTable()
    listed.publish([Device("n0", nodes=(DeviceNode(n0, "/dev/n0"),))])
    record = HandedRecord()
    record.hand_out(RESOURCE, listed.snapshot, ["n0"], {n0: identity_of(os.stat(n0))})
    table = DeviceTable()
    table.publish([])
    log = get_logger()
    watcher = make_watcher(log)
    watch_task = asyncio.create_task(watcher.run())
    writer = CdiSpecWriter(
        resource(spec_dir), table, log, debounce=0.0, verify_interval=3600.0,
        watcher=_Elsewhere(watcher, str(spec_dir)),  # type: ignore[arg-type]
        booked=lambda advertised: True, pinned=record.of(RESOURCE), retired=True,
    )  # fmt: skip
    task = asyncio.create_task(writer.run())
    name = f"{KIND_OF_RESOURCE}={own('n0')}"
    try:
        await wait_until(lambda: resolved(spec_dir).get(name) == [n0], what="the held entry")
        os.rename(dev / "n1", n0)
        await wait_until(lambda: name not in resolved(spec_dir), what="the held entry left out")
    finally:
        for running in (task, watch_task):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


FPGA = "example.com/fpga"


def _update_config(kubelet: RealKubelet, root: Path, spec_dir: Path) -> str:
    dirs = f"[{root / 'cdi' / 'etc'}, {root / 'cdi' / 'run'}]"
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {root / 'state'}\n"
        f"cdiRuntimeDirs: {dirs}\nmetrics: {{listen: '127.0.0.1:0'}}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{root / "dev"}/fpga*"]}}\n'
        f"    allocate: {{cdi: {{kind: {KIND}, specDir: {spec_dir}}}}}\n"
    )


async def test_hostile21_f3_a_killed_owners_file_never_resolves_a_held_name_to_another_node(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """The old instance (a process, spec dir etc/) hands p1 fpga0 by CDI name; the new one
    (spec dir run/, later in `cdiRuntimeDirs`: its file wins) takes over and hands p2 fpga1;
    the old one is SIGKILLed (its lease kept running here for the test's length); fpga1 is
    renamed over fpga0. As the runtime resolves across etc/ and run/, p1's name must resolve
    to nothing, not to p2's node through the dead owner's file. Fails on the old code: the
    file stayed until the lease ran out. (fpga2, held by no pod, keeps the dead owner's file
    from defining held names only, as the new host's does: such a file goes at once, hostile27
    F5.)"""
    kubelet = real_kubelet_factory()
    dev, etc, run = short_dir / "dev", short_dir / "cdi" / "etc", short_dir / "cdi" / "run"
    dev.mkdir()
    for i in (0, 1, 2):
        (dev / f"fpga{i}").touch()
    config = short_dir / "old.yaml"
    config.write_text(_update_config(kubelet, short_dir, etc))
    old = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await kubelet.await_for(healthy(FPGA, 3), timeout=60, what="the old host's devices")
        p1 = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
        assert p1["error"] == "", p1
        (held,) = [c.get("Name", c.get("name")) for c in p1["cdi_devices"]]
        (mine,) = p1["device_ids"][FPGA]
        name = held.split("=", 1)[1]

        def resolves() -> frozenset[str] | None:
            return winning_entries([str(etc), str(run)], KIND, SpecFiles()).get(name)

        assert resolves() == {str(dev / mine)}
        since = await kubelet.acall(kubelet.last_seq)
        await start_host(_update_config(kubelet, short_dir, run))
        await kubelet.acall(kubelet.first_list_after_registering, FPGA, since)
        await wait_until(
            lambda: name in resolved_in(run), timeout=30, what="the new file keeps p1's entry"
        )
        p2 = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
        assert p2["error"] == "", p2
        (theirs,) = p2["device_ids"][FPGA]
    finally:
        old.kill()
        await old.wait()
    later = time.time() + 3600  # (its lease runs on: killed just now, in effect)
    os.utime(owner_path(str(etc / spec_file_name(FPGA))), (later, later))
    assert resolves() == {str(dev / mine)}

    os.rename(dev / theirs, dev / mine)  # p2's node, now at p1's held path
    await wait_until(lambda: resolves() is None, timeout=30, what="p1's name resolving nowhere")


def resolved_in(spec_dir: Path) -> dict[str, Any]:
    """The device names (without the kind) `spec_dir`'s files define."""
    return winning_entries([str(spec_dir)], KIND, SpecFiles())
