"""Files kept in stateDir (kdp_host/state_file.py): a bad one gets a clear error, is kept
aside under a name of its own (never over an earlier copy), and the start goes on."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kdp_host import state_file
from kdp_host.devices import Device, DeviceNode, DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_bookings import OWNERSHIP_FILE, SavedBooking, ownership_file, read_saved
from kdp_host.ownership_claims import Owner
from kdp_host.release_state import STATE_FILE, ReleaseStateStore
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, wait_until

T = TypeVar("T")

FPGA = "vendor.example/fpga"
NESTED = "[" * 100_000
"""Valid JSON so far, nested too deep for the parser (RecursionError, not ValueError)."""


async def test_corrupt_state_files_are_kept_aside_and_the_host_starts(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = socket_dir.parent / "state"
    state.mkdir()
    (state / OWNERSHIP_FILE).write_text(NESTED)
    (state / STATE_FILE).write_bytes(b"\xff\xfe not text")
    await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
    assert (state / (OWNERSHIP_FILE + ".unreadable")).read_text() == NESTED
    assert (state / (STATE_FILE + ".unreadable")).read_bytes() == b"\xff\xfe not text"
    errors = {r.getMessage(): r for r in caplog.records if r.levelno == logging.ERROR}
    line = errors["ownership_state_unreadable"].__dict__["kdp_fields"]
    assert "kept as ownership.json.unreadable" in line["reason"], line
    assert "bookings are forgotten" in line["consequence"]
    assert "release_state_unreadable" in errors


def test_a_second_bad_file_never_replaces_the_first_kept_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = ["{not json", '{"version": 7}', NESTED]
    for text in texts:
        (tmp_path / OWNERSHIP_FILE).write_text(text)
        state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
        assert state.load(read_saved) is None and state.unknown
    kept = [OWNERSHIP_FILE + ".unreadable", OWNERSHIP_FILE + ".unreadable.1"]
    kept.append(OWNERSHIP_FILE + ".unreadable.2")
    assert [(tmp_path / name).read_text() for name in kept] == texts
    reasons = [
        r.__dict__["kdp_fields"]["reason"]
        for r in caplog.records
        if r.getMessage() == "ownership_state_unreadable"
    ]
    assert [reason.rpartition("kept as ")[2] for reason in reasons] == kept
    assert not (tmp_path / OWNERSHIP_FILE).exists()


async def test_a_state_file_that_cannot_be_read_is_kept_aside_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory where the file should be (a bad hostPath mount) is not read as a file;
    it is moved aside, so the next booking can be written."""
    (tmp_path / OWNERSHIP_FILE).mkdir()
    (tmp_path / OWNERSHIP_FILE / "inside").write_text("kept")
    state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
    assert state.load(read_saved) is None and state.unknown
    assert (tmp_path / (OWNERSHIP_FILE + ".unreadable") / "inside").read_text() == "kept"
    state.changed(lambda: {"bookings": []})
    await state.flush()
    await wait_until(lambda: (tmp_path / OWNERSHIP_FILE).is_file(), what="the file written")
    assert state.write_failures == 0


async def test_a_fifo_in_place_of_the_file_never_blocks_the_start(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / OWNERSHIP_FILE)
    state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
    loaded = DaemonThreads().run(lambda: state.load(read_saved))  # a daemon: never waited on
    assert await asyncio.wait_for(loaded, 30) is None
    assert state.unknown and (tmp_path / (OWNERSHIP_FILE + ".unreadable")).is_fifo()


class HungWrites:
    """An offload whose calls wait until `go` is set (a state directory whose file system
    hangs), then run on threads."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.threads = DaemonThreads()

    async def run(self, function: Callable[[], T]) -> T:
        await self.go.wait()
        return await self.threads.run(function)


async def test_allocate_and_prestart_do_not_wait_for_a_state_dir_that_hangs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allocate's booking (`ownership.json`) and PreStartContainer's release state
    (`release-state.json`) wait for their write at most `WRITE_LIMIT`: then the answer goes
    out with an error line, and the write lands once the file system answers."""
    monkeypatch.setattr(state_file, "WRITE_LIMIT", 0.05)
    writes = HungWrites()
    kept = ownership_file(str(tmp_path), get_logger(), writes)
    index = OwnershipIndex(resolve=lambda path: (("c", 1), path))
    index.keep_bookings_in(kept, None)
    table = DeviceTable()
    index.attach("t.io/a", table.publish, get_logger())
    index.publish("t.io/a", {"a": Device("a", nodes=(DeviceNode("/dev/a", "/dev/a"),))})
    store = ReleaseStateStore(str(tmp_path), get_logger(), writes)
    store.update("t.io/a", {"a": {"used": True}})
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(index.book("t.io/a", ["a"]), 30)  # the Allocate's booking
        await asyncio.wait_for(store.flush(), 30)  # what PreStartContainer awaits
    events = [r.getMessage() for r in caplog.records]
    assert events.count("ownership_state_write_stalled") == 1
    assert events.count("release_state_write_stalled") == 1
    assert not (tmp_path / OWNERSHIP_FILE).exists() and not (tmp_path / STATE_FILE).exists()
    writes.go.set()  # the file system answers again: both writes land
    await wait_until(lambda: (tmp_path / OWNERSHIP_FILE).exists(), what="ownership.json")
    await wait_until(lambda: (tmp_path / STATE_FILE).exists(), what="release-state.json")
    assert kept.load(read_saved) == [
        SavedBooking(Owner("t.io/a", "a"), "a", ((("c", 1), "/dev/a", "/dev/a"),), ())
    ]
