"""`kdp-host run` makes the objects start-up keeps (the host's modules, the config) with the
cyclic collector paused, then freezes them out of later collections (kdp_host/heap.py): the
collector no longer walks them over and over while they are made (Issue 19, start-up)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdp_host import heap
from kdp_host.cli import _settle_heap_when_ready
from kdp_host.metrics import Metrics
from kdp_host.probes import HealthState
from kdp_host.protocol.server import CoalescingTransport
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config
from .test_lazy_imports import record_a_run
from .test_ops import FPGA, SERIAL, running_host
from .test_server import RecordingTransport


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


_COMMAND_LOAD = """
import gc, sys
gc.collect()
before = sum(stats["collections"] for stats in gc.get_stats())
from kdp_host.__main__ import main
sys.argv = ["kdp-host", "version"]
code = main()
after = sum(stats["collections"] for stats in gc.get_stats())
print(after - before, "kdp_host.cli" in sys.modules, gc.isenabled())
sys.exit(code)
"""


def test_the_command_loads_its_modules_with_the_collector_paused() -> None:
    """`kdp-host` (and `python -m kdp_host`) loads the command's modules, asyncio, grpclib,
    PyYAML and the config machinery with the collector paused: on the old entry point
    (`kdp_host.cli:main`) ~40 collections ran while they loaded; the collector is on again
    for the command (`version` here) that runs after."""
    proc = subprocess.run(
        [sys.executable, "-c", _COMMAND_LOAD], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    collections, loaded, enabled = proc.stdout.split()[-3:]
    assert loaded == "True" and enabled == "True"
    assert int(collections) < 10


async def test_a_run_freezes_what_start_up_made_and_collects_after(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    seen = await record_a_run(kubelet, socket_dir, devices, short_dir)
    assert seen["collects"]
    assert seen["frozen"] > 10_000  # every module of the host, the config: not a few objects


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """The collector paused as `cmd_run` leaves it while the resources start; enabled and
    nothing frozen after the test."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.usefixtures("collector_paused")
async def test_the_collector_stays_paused_until_every_resource_sent_its_first_list() -> None:
    """Issue 19 (start-up): 100 resources starting made 130 young collections that found 600
    objects of garbage among what the resources keep (a tenth of the start's work). The
    collector now stays paused until the host has started, then collects once and freezes
    what the resources made. Started is ready and every first list sent: the collection
    (~140 ms at 100 x 1,000) run at the last registration held up the lists the kubelet asks
    for right then (the last first list ~0.7 s later)."""
    health = HealthState()
    settling = asyncio.create_task(_settle_heap_when_ready(health))
    health.resource_readiness("vendor.example/a", "not registered", listed=False)
    health.resource_readiness("vendor.example/b", "not registered", listed=False)
    for _ in range(10):  # turns of the loop: still paused while a resource is not ready
        await asyncio.sleep(0)
    assert not settling.done() and not gc.isenabled()
    health.resource_readiness("vendor.example/a", None, listed=False)
    health.resource_readiness("vendor.example/b", None, listed=True)
    for _ in range(10):  # ready, but a's first list has not gone out: still paused
        await asyncio.sleep(0)
    assert not health.not_ready and not settling.done() and not gc.isenabled()
    frozen = gc.get_freeze_count()
    health.resource_readiness("vendor.example/a", None, listed=True)
    await asyncio.wait_for(settling, 30)
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen


@pytest.mark.usefixtures("collector_paused")
async def test_the_collection_waits_until_the_last_first_list_has_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A list sent goes to the socket a turn later (`CoalescingTransport`): collecting in
    between held the last first list up by the collection (0.5 s under load, 100 x 1,000)."""
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    seen: list[list[bytes]] = []
    monkeypatch.setattr(heap, "settle_started", lambda: seen.append(list(real.writes)))
    health = HealthState()
    settling = asyncio.create_task(_settle_heap_when_ready(health))
    health.resource_readiness("vendor.example/a", None, listed=False)
    await asyncio.sleep(0)
    transport.write(b"the first list")
    health.resource_readiness("vendor.example/a", None, listed=True)
    await asyncio.wait_for(settling, 30)
    assert seen == [[b"the first list"]]


async def test_a_host_has_started_once_the_kubelet_has_every_first_list(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path
) -> None:
    """The host tells `HealthState` of each resource's first list (what the settle waits
    for)."""
    health = HealthState()
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), (SERIAL, f"{devices}/ttyA*"))
    async with running_host(text, Metrics(), health) as host:
        await asyncio.wait_for(health.started.wait(), 30)
        assert not health.unlisted and not health.not_ready
        assert all(runtime.status.listed for runtime in host.resources.values())


@pytest.mark.usefixtures("collector_paused")
async def test_a_host_that_never_gets_ready_keeps_the_collector_paused_for_a_while_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heap, "START_PAUSE_LIMIT", 0.05)
    health = HealthState()
    health.resource_readiness("vendor.example/a", "not registered", listed=False)
    await asyncio.wait_for(_settle_heap_when_ready(health), 30)
    assert gc.isenabled()
