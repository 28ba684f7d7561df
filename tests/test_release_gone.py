"""A device gone from the list with nothing owed is forgotten: its lock file under
`<stateDir>/releases/` goes (under its lock) and so does its tracker entry (`release_gone`,
`DeviceLocks.drop`); a host that waited on a removed file opens the path again, so two
hosts never hold one device's lock at once (issue 17, tidyup item 1: one file stayed per
device ID ever released, and a node whose IDs change grew the directory for ever)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest

from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.release_lock import RELEASES_DIR, DeviceLocks, LockBusy, lock_name
from kdp_host.release_state import STATE_FILE

from .conftest import wait_until
from .test_release import FPGA, real_host, release_lines, release_script


def _files(state: Path) -> list[str]:
    directory = state / RELEASES_DIR
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def _healthy(count: int):  # type: ignore[no-untyped-def]
    def check(kubelet) -> bool:  # type: ignore[no-untyped-def]
        return (
            (kubelet.resource(FPGA) or {}).get("capacity")
            == count
            == kubelet.resource(FPGA)["healthy"]
        )

    return check


async def test_the_lock_file_of_a_device_gone_for_good_goes(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """Three device IDs in turn (a serial that changes), each handed to a pod through the
    kubelet's real device manager, released, unplugged: no lock file and no tracker entry
    is left of them (before: one file per ID, for ever); the one still listed keeps its."""
    devices = short_dir / "dev"
    devices.mkdir()
    (devices / "fpga-a").touch()
    kubelet, running = await real_host(
        real_kubelet_factory, start_host, short_dir, devices, release_script(short_dir),
        pattern="fpga-*",
    )  # fmt: skip
    tracker = running.host.resources[FPGA].release
    state = short_dir / "state"
    for i, name in enumerate(("a", "b", "c")):
        if i:
            (devices / f"fpga-{name}").touch()
            await kubelet.await_for(_healthy(1), what=f"fpga-{name} listed")
        assert (await kubelet.acall(kubelet.allocate, f"p{i}", {FPGA: 1}))["error"] == ""
        await kubelet.acall(kubelet.release, f"p{i}")
        await wait_until(lambda n=i: len(release_lines(short_dir)) == 2 * (n + 1), what="released")
        assert lock_name(FPGA, f"fpga-{name}") in _files(state)
        if name != "c":
            (devices / f"fpga-{name}").unlink()
            await kubelet.await_for(_healthy(0), what=f"fpga-{name} gone")
    await wait_until(
        lambda: _files(state) == [lock_name(FPGA, "fpga-c")], what="the gone devices' files go"
    )
    assert set(tracker.uses) == {"fpga-c"}
    (devices / "fpga-c").unlink()
    await wait_until(lambda: _files(state) == [], what="the last one's goes once it is gone")


async def test_a_file_another_host_still_names_the_device_in_stays(short_dir: Path) -> None:
    """Under the lock, another host's entry of the device in release-state.json keeps the file
    (its record may save that host a release): `drop` asks first, and keeps it when told."""
    state = short_dir / "state"
    locks = DeviceLocks(str(state), "host-new", DaemonThreads(), get_logger())
    async with locks.held(FPGA, "fpga0") as lock:
        await lock.released(5.0)
    (state / STATE_FILE).write_text(json.dumps({"writers": {"host-old": {FPGA: {"fpga0": {}}}}}))
    asked = []

    async def unneeded() -> bool:
        asked.append(True)
        return False

    assert not await locks.drop(FPGA, "fpga0", unneeded)
    assert asked and _files(state) == [lock_name(FPGA, "fpga0")]


async def test_a_host_that_waited_on_a_removed_file_takes_the_new_one(short_dir: Path) -> None:
    """The flock trap: host B opened the file and waits while host A holds it and removes it;
    B then holds a lock on a file at no path, and host C, opening the path anew, would lock
    a new file: both would run the device's release at once. B checks the path after it
    takes the lock and opens it again, so C waits for B."""
    state = str(short_dir / "state")
    host_a, host_b, host_c = (
        DeviceLocks(state, name, DaemonThreads(), get_logger()) for name in "abc"
    )
    a_holds, a_may_go = asyncio.Event(), asyncio.Event()

    async def a_removes() -> bool:
        a_holds.set()
        await a_may_go.wait()
        return True

    dropping = asyncio.ensure_future(host_a.drop(FPGA, "fpga0", a_removes))
    async with host_a.held(FPGA, "fpga0"):
        pass  # (the file is there: `drop` takes its lock)
    dropping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dropping
    dropping = asyncio.ensure_future(host_a.drop(FPGA, "fpga0", a_removes))
    await asyncio.wait_for(a_holds.wait(), 10)
    b_holds, b_may_go = asyncio.Event(), asyncio.Event()

    async def b_runs() -> None:
        async with host_b.held(FPGA, "fpga0"):
            b_holds.set()
            await b_may_go.wait()

    b_task = asyncio.ensure_future(b_runs())
    await asyncio.sleep(0.05)  # (B has opened the file and polls its lock)
    assert not b_holds.is_set()
    a_may_go.set()
    assert await asyncio.wait_for(dropping, 10)
    await asyncio.wait_for(b_holds.wait(), 10)
    with pytest.raises(LockBusy):
        async with host_c.held(FPGA, "fpga0", timeout=0.3):
            pass
    b_may_go.set()
    await asyncio.wait_for(b_task, 10)
