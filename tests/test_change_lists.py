"""A list that says what changed (`device_changes.Derived`: a sysfs scan's) goes from the
driver to the table with no walk of any list (issues 19, 20: a hot-plug among 1,000 USB
adapters walked the list in the grace merge, the reporter and the admission, each time).
Each test counts walks of the lists (as tests/test_change_cost.py does), never time."""

from __future__ import annotations

import random
from collections.abc import Mapping

from kdp_host.device_changes import Derived, changed_between, healthy_count
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.drivers.grace import Tracker
from kdp_host.drivers.reporting import DeviceReporter
from kdp_host.drivers.scanner import ScanResult
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership import OwnedTable, OwnershipIndex
from kdp_host.testing import ManualClock

from .fake_nodes import FakeNodes
from .test_change_cost import CountsWalks, node

R = "t.io/big"


class WalkedDerived(CountsWalks, Derived):
    """A `Derived` list that counts the walks of it."""


def derived(
    base: Mapping[str, Device] | None, devices: dict[str, Device], *changed: str
) -> WalkedDerived:
    return WalkedDerived(base, changed, dict(devices))


def test_the_grace_merge_of_a_list_that_says_what_changed_walks_nothing() -> None:
    """Plugged, unplugged (listed Unhealthy for the grace period), plugged back: each merge
    gives what a merge of plain lists gives, and walks none of the lists."""
    clock = ManualClock()
    tracker, plain = Tracker(10.0, clock), Tracker(10.0, clock)
    devices = {f"d{i}": node(i) for i in range(200)}
    lists = [derived(None, devices)]
    tracker.merge(ScanResult(lists[0]))
    plain.merge(ScanResult(dict(devices)))
    steps: list[tuple[str, Device | None]] = [
        ("d200", node(200)),
        ("d7", None),
        ("d200", None),
        ("d7", node(7)),
        ("d9", Device("d9", path="/dev/big/moved")),
    ]
    for device_id, device in steps:
        clock.advance(1.0)
        if device is None:
            del devices[device_id]
        else:
            devices[device_id] = device
        lists.append(derived(lists[-1], devices, device_id))
        for walked in lists:
            walked.walks = 0
        listed, expiry = tracker.merge(ScanResult(lists[-1]))
        expected, expected_expiry = plain.merge(ScanResult(dict(devices)))
        # (the new list is copied once where the grace period lists a device it has not)
        assert lists[-1].walks <= (1 if len(listed) > len(devices) else 0)
        assert [walked.walks for walked in lists[:-1]] == [0] * (len(lists) - 1)
        assert dict(listed) == dict(expected) and expiry == expected_expiry
        assert changed_between(lists[-2], lists[-1]) == {device_id}


def test_the_reporter_and_the_index_admit_a_changed_list_without_a_walk() -> None:
    """One device of 300 plugged, one unplugged: the reporter (what it cannot list, the
    healthy count it logs) and the index's admission look at those, and walk no list; each
    stage holds its last list alone (as in a run: no list is kept alive for them)."""
    nodes = FakeNodes({f"/dev/big/d{i}": ("c", i) for i in range(301)})
    index = OwnershipIndex(resolve=nodes)  # (resolved inline: no event loop needed)
    published: list[Mapping[str, Device]] = []

    def publish(devices: Mapping[str, Device]) -> bool:
        published[:] = [devices]  # (as a table does: the last list alone)
        return True

    index.attach(R, publish, get_logger().bind(resource=R))
    reporter = DeviceReporter(
        OwnedTable(index, R, DaemonlessTable()),
        resource=R,
        log=get_logger().bind(resource=R),
        metrics=Metrics(),
        failure_threshold=3,
    )
    devices = {f"d{i}": node(i) for i in range(300)}
    current = derived(None, devices)
    reporter.update(current)
    for device_id, device in (("d300", node(300)), ("d7", None), ("d300", None)):
        if device is None:
            del devices[device_id]
        else:
            devices[device_id] = device
        current = derived(current, devices, device_id)  # (the last: held by the stages alone)
        nodes.resolved.clear()
        reporter.update(current)
        assert current.walks == 0
        assert set(published[-1]) == set(devices)
        # the device that changed, and the claim of one gone (lingering: gone for good?)
        assert set(nodes.resolved) <= {f"/dev/big/{device_id}", "/dev/big/d7"}


class DaemonlessTable:
    """What `OwnedTable` needs of a table (lists go to the index's publish)."""

    def set_degraded(self, reason: str | None) -> bool:
        return False


def plug_or_unplug(
    rng: random.Random, devices: dict[str, Device], ids: int, make: type[Device]
) -> str:
    """One random change of `devices`: one of `ids` IDs unplugged (30 %), else plugged or
    made anew, healthy or not; the ID."""
    device_id = f"d{rng.randrange(ids)}"
    if rng.random() < 0.3:
        devices.pop(device_id, None)
    else:
        devices[device_id] = make(device_id, healthy=rng.random() < 0.5)
    return device_id


def test_the_healthy_count_follows_the_changes() -> None:
    rng = random.Random(5)
    devices = {f"d{i}": node(i) for i in range(50)}
    current: Derived = Derived(None, (), devices)
    for _ in range(200):
        device_id = plug_or_unplug(rng, devices, 60, Device)
        current = Derived(current, {device_id}, devices)
        if rng.random() < 0.6:  # (counted from the nearest list counted before)
            assert healthy_count(current) == sum(d.healthy for d in devices.values())
    assert healthy_count({"a": node(1)}) == 1


class ReadsHealth(Device):
    """A device that counts the reads of its health (one count for every such device)."""

    __slots__ = ()
    reads = 0

    @property
    def healthy(self) -> bool:  # type: ignore[override]
        ReadsHealth.reads += 1
        return bool(Device.healthy.__get__(self))

    @healthy.setter
    def healthy(self, value: bool) -> None:
        Device.healthy.__set__(self, value)


def test_the_table_orders_and_counts_a_changed_list_without_a_walk() -> None:
    """The metrics' `kdp_devices{state}` at every version: the table counted the healthy
    entries of each snapshot, one pass over the list per hot-plug, and compared the keys of
    the lists to order them. A list that says what changed is ordered and counted from the
    last one: no walk of it, the health of the changed devices alone read (no pass); the
    count and the order are right at each step, replicas too. Only the table holds the list
    it is given (as in a run, where the driver's stages drop theirs): counting it from a
    list nobody holds any more, a walk again, is not what it does."""
    for replicas in (1, 3):
        table = DeviceTable(replicas)
        devices: dict[str, Device] = {f"d{i}": ReadsHealth(f"d{i}", i % 2 == 0) for i in range(300)}
        current = derived(None, devices)
        table.publish(current)
        rng = random.Random(replicas)
        for _ in range(40):
            device_id = plug_or_unplug(rng, devices, 310, ReadsHealth)
            current = derived(current, devices, device_id)  # (the last: the table's alone)
            ReadsHealth.reads = 0
            table.publish(current)
            counted = table.snapshot.healthy_count
            assert current.walks == 0
            assert ReadsHealth.reads <= 40, "the changed devices compared and counted, no pass"
            assert counted == replicas * sum(d.healthy for d in devices.values())
            assert [d.id for d in table.snapshot.devices] == sorted(devices)
        assert table.snapshot.unhealthy_count == len(table.snapshot.advertised) - counted
