"""Files kept in stateDir (kdp_host/state_file.py): a bad one gets a clear error, is kept
aside under a name of its own (never over an earlier copy), and the start goes on."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership_bookings import OWNERSHIP_FILE, ownership_file, read_saved
from kdp_host.release_state import STATE_FILE
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, wait_until

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
