"""Admissions that ask for each other again (hostile22 F9): two that change nothing must not
queue each other again, and no chain of admissions may hold the event loop (a round of the
gate per turn of the loop; a long chain is logged and counted as a storm)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_table import ResourceState
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .fake_nodes import FakeNodes, indexed, node
from .test_ownership_hotplug import HeldNodes

R1 = "vendor.example/fpga"
R2 = "vendor.example/link"
HELD_LOOP = 2000
"""Admissions in a row with no turn of the loop between them: the loop is held (the test
fails then instead of hanging)."""


async def test_a_doubtful_answer_read_by_one_resource_does_not_queue_both_for_ever() -> None:
    """hostile22 F9 at the gate: R1's admission waits for the path of a lingering claim to
    resolve off the loop; its scan's answer for n predates a change reported since
    (doubtful). R2's device on n waits for R1's (held). Before: each time R1 was admitted
    again it put that answer back among those every admission reads, R2 read it, and the
    doubt had every resource with a device on n (R1 too) claimed anew: R1, R2, R1, ...
    in one turn of the loop, for ever."""
    nodes = HeldNodes({"/dev/n": ("c", 2), "/dev/m": ("c", 1)})
    watcher = ManualWatcher()
    index, tables = await indexed(
        {R1: [node("/dev/n"), node("/dev/m")]}, nodes, watcher=watcher, offload=DaemonThreads()
    )
    tables[R2] = DeviceTable()
    index.attach(R2, tables[R2].publish, get_logger().bind(resource=R2))
    index.publish(R2, {"y": node("/dev/n", "y")})  # (after R1's: the node is R1's)
    await index.quiet()
    admitted: list[str] = []
    real = index._admit_or_defer

    def counted(state: ResourceState) -> bool:
        admitted.append(state.name)
        if len(admitted) > HELD_LOOP:
            raise RuntimeError("the event loop is held")
        return real(state)

    index._admit_or_defer = counted  # type: ignore[method-assign]
    try:
        assert set(index.held_now(R2)) == {"y"}
        nodes.held.add("/dev/m")  # (m's lingering claim resolves off the loop, slowly)
        index.publish(R1, {"n": node("/dev/n")})  # m left the list: its claim lingers
        await wait_until(lambda: "/dev/m" in nodes.started, timeout=20)
        watcher.change("/dev", "n")  # reported after the list before the next one
        index.publish(R1, {"n": node("/dev/n")}, {"/dev/n": (("c", 2), "/dev/n")})
        for _ in range(10):
            await asyncio.sleep(0)  # (the recheck, and what it queues)
        nodes.held.clear()
        nodes.release.set()
        await asyncio.wait_for(index.quiet(), 20)
    finally:
        nodes.release.set()
    assert len(admitted) < 20, admitted
    assert [d.id for d in tables[R1].snapshot.devices] == ["n"]
    assert set(index.held_now(R2)) == {"y"}
    assert not tables[R2].snapshot.devices


async def test_admissions_that_queue_each_other_for_ever_leave_the_loop_its_turns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever makes two admissions queue each other again (here: forced), each round of
    the gate runs in its own turn of the loop: a coroutine beside them keeps running (an
    Allocate, /healthz, SIGTERM), the storm is logged and counted once, and when it stops
    the gate is quiet again."""
    metrics = Metrics(process_collectors=False)
    index = OwnershipIndex(metrics, resolve=FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)}))
    tables = {name: DeviceTable() for name in (R1, R2)}
    for name, table in tables.items():
        index.attach(name, table.publish, get_logger().bind(resource=name))
    index.publish(R2, {"b": node("/dev/b")})
    await index.quiet()
    storming, admitted, turns = True, 0, 0
    real = index._admit_or_defer

    def queue_peer(state: ResourceState) -> bool:
        nonlocal admitted
        admitted += 1
        if admitted > HELD_LOOP and not turns:
            raise RuntimeError("the event loop is held")
        changed = real(state)
        if storming:
            index._pending[R2 if state.name == R1 else R1] = None
        return changed

    async def beside() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    index._admit_or_defer = queue_peer  # type: ignore[method-assign]
    ticker = asyncio.create_task(beside())
    try:
        with caplog.at_level(logging.INFO):
            index.publish(R1, {"a": node("/dev/a")})
            await wait_until(lambda: storms(metrics) == 1, timeout=30)
            rounds = turns
            await wait_until(lambda: turns > rounds + 10, timeout=30)  # (still storming)
            assert rounds >= 100  # (a round per turn of the loop: `STORM_ROUNDS`)
            assert storms(metrics) == 1
            storming = False
            await asyncio.wait_for(index.quiet(), 20)
    finally:
        ticker.cancel()
    events = [r.getMessage() for r in caplog.records]
    assert events.count("admission_storm") == 2  # (one line per resource of the storm)
    assert events.count("admission_storm_over") == 2
    assert storms(metrics) == 1
    assert [d.id for d in tables[R1].snapshot.devices] == ["a"]
    assert [d.id for d in tables[R2].snapshot.devices] == ["b"]


def storms(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("kdp_admission_storms_total")
