"""Findings of the second hostile pass (issue 17), each reproduced as the tester did it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from kdp_host.ownership_bookings import OWNERSHIP_FILE
from kdp_host.release_state import STATE_FILE

from .conftest import glob_config
from .kubelet_harness import healthy

FPGA = "vendor.example/fpga"


@pytest.mark.parametrize("name", [OWNERSHIP_FILE, STATE_FILE])
async def test_hostile2_6_a_fifo_as_a_state_file_neither_hangs_the_start_nor_sigterm(
    name: str, real_kubelet_factory, short_dir: Path, devices: Path
) -> None:
    """F6: a FIFO at `<stateDir>/ownership.json` or `release-state.json` held the start in a
    blocking open() for ever (nothing registered, SIGTERM ignored). It is read like every
    small file (non-blocking, regular files only): set aside with one error line, and the
    host serves, registers and stops on SIGTERM."""
    kubelet = real_kubelet_factory()
    state = short_dir / "state"
    state.mkdir()
    os.mkfifo(state / name)
    config = short_dir / "kdp.yaml"
    config.write_text(
        glob_config(kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]"))
        + "metrics: {listen: '127.0.0.1:0'}\n"
    )
    log_path = short_dir / "host.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kdp_host", "run", "--config", str(config),
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            await kubelet.await_for(healthy(FPGA, 2), what="two fpgas registered")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    unreadable = [line for line in log_path.read_text().splitlines() if "_unreadable" in line]
    assert len(unreadable) == 1, unreadable
    assert "not a regular file" in unreadable[0]
    assert (state / (name + ".unreadable")).is_fifo()
