"""An Allocate answer goes out once its names resolve, across the runtime's CDI dirs, to what
it hands out (hostile20 F2, `cdi_resolution`).

A rolling update that moves `allocate.cdi.specDir`: two live hosts on one stateDir serve one
resource and kind, the new one's file in the runtime's higher-priority dir (a later one of
`cdiRuntimeDirs`, as `/var/run/cdi` is over `/etc/cdi`), listing the devices at other nodes.
The runtime resolves a name through that file. The old host's answer waited for its own file
only, which already said what it handed out: a container created at once got the other
host's node until that host took the hand-out up (9-61 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cdi import CdiSpecWriter
from kdp_host.cdi_dirs import SpecDirRecord
from kdp_host.cdi_disk import SpecOnDisk
from kdp_host.cdi_files import SpecFiles
from kdp_host.cdi_resolution import dirs_above, follow_above, winning_entries
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.files import DaemonThreads
from kdp_host.inotify_watch import make_watcher
from kdp_host.logs import get_logger
from kdp_host.state_lock import holding
from kdp_host.watch import Subscription, WatchCallback

from .conftest import wait_until
from .test_cdi import KIND, RunningWriter, own, resource, start_writer, synced

NEW = "0badf00d"  # (the new host: runs on the stateDir)


def _at(node: str) -> Device:
    return Device(id="fpga0", nodes=(DeviceNode(node, node),))


def _spec(path: Path, entries: dict[str, str]) -> None:
    devices = [
        {"name": n, "containerEdits": {"deviceNodes": [{"path": p}]}} for n, p in entries.items()
    ]
    path.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}))


def _read_above(disk: SpecOnDisk) -> bool:
    """`disk.above` says what the new host's file defines (the old code keeps no such thing:
    at once)."""
    above: dict[str, Any] | None = getattr(disk, "above", None)
    return above is None or (own("fpga0") in above and not disk.pending)


@pytest.fixture
async def running() -> AsyncIterator[list[RunningWriter]]:
    started: list[RunningWriter] = []
    yield started
    for item in started:
        if not item.task.done():
            await item.stop()


async def test_an_answer_waits_for_a_live_hosts_file_in_a_later_runtime_dir(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """The old host (spec dir cdi1) lists fpga0 at /dev/a0, the new one (cdi2, the later dir)
    at /dev/a1: fpga0's name resolves to /dev/a1 through the new host's file, so an answer of
    the old host handing out /dev/a0 waits until that file says /dev/a0 (the new host took
    the hand-out up), and goes out then. Fails on the old code: the old host's own file
    said /dev/a0, so the answer went out at once."""
    low, high, state = tmp_path / "cdi1", tmp_path / "cdi2", tmp_path / "state"
    log, offload = get_logger(), DaemonThreads()
    watcher = make_watcher(log)
    watch_task = asyncio.create_task(watcher.run())
    try:
        async with holding(str(state), offload, log, NEW):
            tables = {"old": DeviceTable(), "new": DeviceTable()}
            tables["old"].publish([_at("/dev/a0")])
            tables["new"].publish([_at("/dev/a1")])
            writers: dict[str, CdiSpecWriter] = {}
            for instance, spec_dir in ((NEW, high), ("old", low)):
                table = tables["new" if instance == NEW else "old"]
                record = SpecDirRecord(str(state), log, offload, runtime_dirs=(low, high))
                writers[instance] = start_writer(
                    running, resource(spec_dir), table, debounce=0.0, verify_interval=3600.0,
                    watcher=watcher, instance=instance, spec_dirs=record,
                )  # fmt: skip
                await wait_until(lambda i=instance, t=table: synced(writers[i], t), what="synced")
            old = writers["old"]
            await wait_until(
                lambda: not getattr(old.disk, "pending", False), what="dirs above read"
            )
            handed = {own("fpga0"): _at("/dev/a0")}
            assert old.disk.entries[own("fpga0")] == {"/dev/a0"}  # (its own file says so)
            assert not old.disk.holds(handed), "the answer would go out: fpga0 resolves to a1"
            assert old.disk.holds({own("fpga0"): _at("/dev/a1")})
            answer = asyncio.create_task(old.disk.until_holding(handed, 60.0))
            tables["new"].publish([_at("/dev/a0")])  # (the new host takes the hand-out up)
            assert await answer
            assert all(d.healthy for d in tables["old"].snapshot.devices)  # (no clash)
    finally:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task


def test_the_winning_file_is_the_latest_dirs_that_defines_the_name(tmp_path: Path) -> None:
    """As the runtime resolves: a later dir's entry wins, a name a later dir does not define
    falls to an earlier one, and one two files of one dir define resolves nowhere."""
    dirs = [tmp_path / d for d in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    _spec(dirs[0] / "x.json", {"n1": "/dev/0", "n2": "/dev/0", "n3": "/dev/0"})
    _spec(dirs[1] / "y.json", {"n1": "/dev/1", "n3": "/dev/1"})
    _spec(dirs[1] / "z.json", {"n3": "/dev/2"})
    (dirs[1] / "ignored.tmp").write_text("{}")
    won = winning_entries([str(d) for d in dirs], KIND, SpecFiles())
    assert won == {"n1": {"/dev/1"}, "n2": {"/dev/0"}, "n3": None}
    disk = SpecOnDisk()
    disk.seen_above(won, pending=False)
    assert disk.holds({"n1": _at("/dev/1")}) and not disk.holds({"n3": _at("/dev/2")})


def test_the_dirs_above_a_spec_dir_follow_the_runtimes_order(tmp_path: Path) -> None:
    low, high = tmp_path / "etc", tmp_path / "run"
    low.mkdir()
    high.mkdir()
    (tmp_path / "link").symlink_to(high)
    order = [str(low), str(high)]
    assert dirs_above(str(low), order) == (str(high),)
    assert dirs_above(str(high), order) == ()
    assert dirs_above(str(tmp_path / "link"), order) == ()  # (the same dir)
    assert dirs_above(str(tmp_path / "elsewhere"), order) == (str(low), str(high))


class _Watcher:
    """Records subscriptions (a `Watcher` for `follow_above`)."""

    def __init__(self) -> None:
        self.dirs: list[str] = []

    def subscribe(self, directory: str, callback: WatchCallback, *_: Any, **__: Any) -> Any:
        self.dirs.append(directory)
        return Subscription(directory, callback)


async def test_a_spec_dir_that_is_the_runtimes_last_watches_and_reads_nothing(
    tmp_path: Path,
) -> None:
    """The common case (`/var/run/cdi`, the default, over `/etc/cdi`): no dir is above, so
    nothing is watched and an answer never waits on another file."""
    low, high = tmp_path / "etc", tmp_path / "run"
    disk, watcher = SpecOnDisk(), _Watcher()
    await follow_above(
        str(high), [str(low), str(high)], KIND, disk, watcher,  # type: ignore[arg-type]
        DaemonThreads(), get_logger(), 3600.0,
    )  # fmt: skip
    assert watcher.dirs == [] and disk.above == {} and not disk.pending
    assert not os.path.exists(low)
