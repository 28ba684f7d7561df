"""A hot-plug costs the loop O(changed): the reporter checks only devices it has not seen, the
table keeps its order instead of sorting, the grace merge looks only at devices that are not
the very objects it listed. Each must give exactly what a fresh look at the whole list
gives, whatever the sequence of lists."""

from __future__ import annotations

import random

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers.grace import Tracker
from kdp_host.drivers.scanner import ScanResult
from kdp_host.testing import ManualClock

from .conftest import reporter


def make(device_id: str, version: int, *, bad: bool = False) -> Device:
    path = f"/dev/{device_id},x" if bad else f"/dev/{device_id}"
    nodes = (DeviceNode(path, path), DeviceNode(f"/dev/{device_id}-{version}", "/dev/extra"))
    return Device(device_id, healthy=version != 2, nodes=nodes[: 1 + version % 2])


def lists(seed: int, steps: int = 60) -> list[dict[str, Device]]:
    """A sequence of lists where each reuses most device objects of the one before."""
    rng = random.Random(seed)
    current: dict[str, Device] = {}
    out = []
    for _ in range(steps):
        current = dict(current)
        for _ in range(rng.choice([1, 1, 2, 5, 80])):
            device_id = f"d{rng.randrange(120):03d}"
            roll = rng.random()
            if roll < 0.3:
                current.pop(device_id, None)
            else:
                current[device_id] = make(device_id, rng.randrange(4), bad=roll > 0.93)
        out.append(current)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("replicas", [1, 3])
def test_the_table_and_the_reporter_agree_with_a_fresh_look(seed: int, replicas: int) -> None:
    table = DeviceTable(replicas)
    notifier = reporter(table)
    rng = random.Random(seed)
    failed: set[str] = set()
    for devices in lists(seed):
        if rng.random() < 0.1:
            table.set_degraded("flaky" if rng.random() < 0.5 else None)
        notifier.update(devices)
        listed = sorted(d.id for d in table.snapshot.devices)
        failed &= set(listed)
        if listed and rng.random() < 0.3:
            device_id = rng.choice(listed)
            healthy = rng.random() < 0.5
            table.set_check_result(device_id, healthy)
            (failed.discard if healthy else failed.add)(device_id)
        fresh_table = DeviceTable(replicas)
        fresh_table.set_degraded(table.degraded_reason)
        reporter(fresh_table).update(dict(devices))
        for device_id in failed:
            fresh_table.set_check_result(device_id, False)
        assert table.snapshot.devices == fresh_table.snapshot.devices
        assert table.snapshot.advertised == fresh_table.snapshot.advertised
        ids = [d.id for d in table.snapshot.devices]
        assert ids == sorted(ids)
        assert not any(d.any_node_path_contains(",") for d in table.snapshot.devices)


@pytest.mark.parametrize("seed", range(6))
def test_the_grace_merge_agrees_with_a_merge_of_copies(seed: int) -> None:
    """The merge looks only at devices that are not the objects it listed; given copies
    of every device (nothing reusable) it must come to the same list."""
    clock = ManualClock()
    fast, slow = Tracker(5.0, clock), Tracker(5.0, clock)
    for devices in lists(seed):
        clock.advance(1.0)
        listed, expiry = fast.merge(ScanResult(devices))
        copies = {i: Device(i, d.healthy, d.nodes, path=d.path) for i, d in devices.items()}
        expected, expected_expiry = slow.merge(ScanResult(copies))
        assert listed == expected and expiry == expected_expiry
