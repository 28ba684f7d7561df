"""`kdp-host run` makes the objects start-up keeps (the host's modules, the config) with the
cyclic collector paused, then freezes them out of later collections (kdp_host/heap.py): the
collector no longer walks them over and over while they are made (Issue 19, start-up)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from kdp_host import heap
from kdp_host.simulator import KubeletSimulator

from .test_lazy_imports import record_a_run


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
    seen = await record_a_run(kubelet, socket_dir, devices, short_dir)
    assert seen["collects"]
    assert seen["frozen"] > 10_000  # every module of the host, the config: not a few objects
