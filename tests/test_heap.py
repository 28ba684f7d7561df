"""`kdp-host run` makes the objects start-up keeps (the host's modules, the config) with the
cyclic collector paused, then freezes them out of later collections (kdp_host/heap.py): the
collector no longer walks them over and over while they are made (Issue 19, start-up)."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
from pathlib import Path

import pytest

from kdp_host import heap
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config

FPGA = "vendor.example/fpga"

_RECORD_COLLECTOR = """
import atexit, gc, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(
    {"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()})))
from kdp_host.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_paused_restores_the_collector_as_it_was() -> None:
    assert gc.isenabled()
    with heap.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), heap.paused():
        raise RuntimeError("start-up failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with heap.paused():
            pass
        assert not gc.isenabled()  # a caller's paused collector stays paused
    finally:
        gc.enable()


async def test_a_run_freezes_what_start_up_made_and_collects_after(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    config = short_dir / "config.yaml"
    config.write_text(
        glob_config(socket_dir, (FPGA, f"{devices}/fpga*")) + "metrics: {listen: '127.0.0.1:0'}\n"
    )
    record = short_dir / "collector.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RECORD_COLLECTOR, str(record), "run", "--config", str(config)
    )
    try:
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seen = json.loads(record.read_text())
    assert seen["enabled"]
    assert seen["frozen"] > 10_000  # every module of the host, the config: not a few objects
