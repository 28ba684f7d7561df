"""Admissions in bounded turns of the event loop, one at a time (kdp_host/ownership_gate.py):
a long list (a probe renaming 12,000 devices at once) never holds the loop for long, and
what comes meanwhile sees a consistent table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import pytest

from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.holdings import Holder, Holdings
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Claim, ClaimSet
from kdp_host.ownership_shared import PlaceOwned

from .fake_nodes import FakeNodes
from .test_ownership import R1, R2, Host, dev, node

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

N, CHUNK = 1000, 50
NOW = 100.0


def listed(prefix: str, n: int = N) -> dict[str, Device]:
    return {f"{prefix}{i}": dev(f"{prefix}{i}", f"/dev/n{i}") for i in range(n)}


def nodes(n: int = N) -> FakeNodes:
    found = FakeNodes({f"/dev/n{i}": ("c", i) for i in range(n)})
    found.nodes["/dev/alias"] = ("c", 3)
    return found


class Beside:
    """A task that counts the turns of the event loop it gets."""

    def __init__(self) -> None:
        self.turns = 0
        self.task = asyncio.get_running_loop().create_task(self._count())

    async def _count(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    def stop(self) -> None:
        self.task.cancel()


async def test_a_long_admission_yields_to_the_loop_in_bounded_turns() -> None:
    """1,000 devices, then all of them renamed on their paths: each admission works in
    turns of at most CHUNK devices, another task runs between them, and the table gets
    the list once, at the end: under the new IDs (nothing booked), then, all booked, under
    the IDs the kubelet booked."""
    host = Host(nodes(), chunk=CHUNK)
    table = host.attach(R1)
    beside = Beside()
    try:
        assert not host.index.publish(R1, listed("d")), "more than a turn: not done yet"
        assert table.snapshot.devices == ()
        await host.index.quiet()
        assert len(host.ids(R1)) == N
        assert beside.turns >= N // CHUNK
        for prefix in "ed":
            beside.turns = 0
            host.index.publish(R1, listed(prefix))
            await host.index.quiet()
            assert host.ids(R1) == sorted(listed(prefix)), "no booking: the list's IDs"
            assert beside.turns >= N // CHUNK
        await host.index.book(R1, sorted(listed("d")))
        for prefix in "ede":
            beside.turns = 0
            version = table.snapshot.version
            host.index.publish(R1, listed(prefix))
            await host.index.quiet()
            assert host.ids(R1) == sorted(listed("d")), "renamed: the kubelet's IDs stay"
            assert beside.turns >= N // CHUNK
            assert table.snapshot.version == version, "nothing the kubelet sees changed"
        # a rename that changes something the kubelet sees is given to the table
        renamed = listed("e")
        renamed["e5"] = Device("e5", healthy=False, nodes=renamed["e5"].nodes)
        host.index.publish(R1, renamed)
        await host.index.quiet()
        assert host.ids(R1) == sorted(listed("d"))
        assert [d.id for d in table.snapshot.devices if not d.healthy] == ["d5"]
    finally:
        beside.stop()


async def test_an_admission_yields_at_its_time_budget_however_large_its_chunk() -> None:
    """A chunk larger than the list, and a budget: the first turn runs its chunk (where the
    list arrives), each later one stops at its budget (0 s here: a step or two a turn,
    whatever the machine), so an admission whose steps are slow still yields to the loop
    often. Without a budget the same admission takes a few turns (its walks of the list)."""
    for budget, turns in ((None, range(N // 50)), (0.0, range(N // 2, 10 * N))):
        host = Host(nodes(), chunk=10 * N)
        host.index = OwnershipIndex(host.metrics, nodes(), chunk=N, budget=budget)
        host.attach(R1)
        host.index.publish(R1, listed("d"))
        await host.index.quiet()
        beside = Beside()
        try:
            host.index.publish(R1, listed("e"))  # every device renamed: a long admission
            await host.index.quiet()
        finally:
            beside.stop()
        assert beside.turns in turns, (budget, beside.turns)
        assert host.ids(R1) == sorted(listed("e"))


def test_without_an_event_loop_an_admission_runs_to_its_end() -> None:
    host = Host(nodes(20), chunk=5)
    host.attach(R1)
    assert host.index.publish(R1, listed("d", 20))
    assert len(host.ids(R1)) == 20


class Sink:
    """Bookings kept in memory, flushed at once (the file's own tests are elsewhere)."""

    def __init__(self) -> None:
        self.document: Callable[[], Mapping[str, Any]] | None = None

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None:
        self.document = document

    async def written(self) -> None:
        await asyncio.sleep(0)  # (a turn of the loop, as a write through the offload takes)

    def booked(self) -> list[str]:
        assert self.document is not None
        return sorted(f"{e['resource']}/{e['id']}" for e in self.document()["bookings"])


async def test_lists_that_come_during_an_admission_wait_for_it() -> None:
    """One admission at a time: another resource's list that reaches a node of the one being
    admitted waits for it, then is held; an Allocate's booking does not wait, and books the
    claims of the device it names."""
    host = Host(nodes(), chunk=CHUNK)
    sink = Sink()
    host.index.keep_bookings_in(sink, None)
    host.attach(R1)
    host.index.publish(R1, listed("d"))
    await host.index.quiet()
    host.index.publish(R1, listed("e"))  # a long admission
    host.publish(R2, node("/dev/alias"))  # reaches /dev/n3
    assert host.ids(R2) == [] and host.held(R2) == 0, "it waits for its turn"
    await host.index.book(R1, ["d7"])
    assert host.held(R2) == 0, "the booking did not wait for the admission"
    assert sink.booked() == [f"{R1}/d7"]
    await host.index.quiet()
    assert host.ids(R2) == [] and host.held(R2) == 1
    assert host.ids(R1) == sorted({*listed("e"), "d7"} - {"e7"}), "d7 is booked: n7 keeps it"


async def test_a_booking_made_while_its_device_is_being_renamed_keeps_its_id() -> None:
    """An Allocate books d7 while an admission that renames every device (nothing booked)
    runs, at every phase of it. While the index still advertises d7, it is booked and the
    resource is admitted again once the admission is done (it may have chosen e7 for n7):
    n7 is advertised under d7, as the kubelet booked it. Once the index let go of d7 (its
    node may be e7's already), the Allocate is refused: the pod never gets n7 as d7 while
    the kubelet may give e7 to another."""
    refused = 0
    for turns in range(0, 8 * N // CHUNK, 7):
        host = Host(nodes(), chunk=CHUNK)
        host.attach(R1)
        host.index.publish(R1, listed("d"))
        await host.index.quiet()
        host.index.publish(R1, listed("e"))
        for _ in range(turns):
            await asyncio.sleep(0)
        try:
            await host.index.book(R1, ["d7"])
        except PlaceOwned:
            refused += 1
            await host.index.quiet()
            assert host.ids(R1) == sorted(listed("e")), turns
            continue
        await host.index.quiet()
        assert host.ids(R1) == sorted({*listed("e"), "d7"} - {"e7"}), turns
    assert 0 < refused < 8 * N // CHUNK // 7, "both sides of the admission were seen"


async def test_an_admission_of_a_retired_resource_stops_and_its_claims_linger() -> None:
    host = Host(nodes(), chunk=CHUNK)
    host.attach(R1)
    host.index.publish(R1, listed("d"))
    await host.index.quiet()
    host.index.publish(R1, listed("e"))
    await asyncio.sleep(0)
    host.index.retire(R1)  # a reload removed it while its list was being admitted
    await host.index.quiet()
    host.publish(R2, node("/dev/alias"))
    assert host.ids(R2) == [] and host.held(R2) == 1, "n3 lingers with d3 (a pod may hold it)"
    # added back: it takes its claims back (under the list's IDs: nothing booked d<i>)
    host.attach(R1)
    host.index.publish(R1, listed("e"))
    await host.index.quiet()
    assert host.ids(R1) == sorted(listed("e"))


async def test_a_booking_from_podresources_during_an_admission_holds_its_device() -> None:
    """A PodResources answer comes between two turns of a long admission (at every phase of
    it): a pod holds `d7::1` with no booking (`replicas` was 2 before a restart that lost
    ownership.json). It is d7's: booked, and once the admission is done the resource is
    admitted again in full, so d7 is held (the admission that was running sets its flags
    back at its end)."""
    pod = (Holder("ns", "p1", "c", 0.0),)
    for turns in range(0, 3 * N // CHUNK, 3):
        host = Host(nodes(), chunk=CHUNK)
        host.index = OwnershipIndex(
            host.metrics, nodes(), clock=lambda: NOW, chunk=CHUNK, budget=None
        )
        host.index.keep_bookings_in(Sink(), None)
        host.attach(R1)
        host.index.publish(R1, listed("d"))
        await host.index.quiet()
        down = {i: Device(i, healthy=False, nodes=d.nodes) for i, d in listed("d").items()}
        host.index.publish(R1, down)  # a long admission (no rename: the quick path)
        for _ in range(turns):
            await asyncio.sleep(0)
        host.index.holdings(Holdings(NOW + 1, 0.0, {R1: {"d7::1": pod}}))
        await host.index.quiet()
        assert "d7" not in host.ids(R1) and len(host.ids(R1)) == N - 1, turns
        host.index.holdings(Holdings(NOW + 60, 0.0, {}))  # p1 ended
        await host.index.quiet()
        assert host.ids(R1) == sorted(listed("d")), turns


async def test_a_rename_that_changes_one_device_makes_no_copy_of_the_others() -> None:
    """Every device renamed on its paths (all booked), one of them now Unhealthy: the table
    gets the list under the kubelet's IDs, every other entry the same object as before
    (ListAndWatch writes only the changed entry again; nothing is copied for the unchanged
    ones)."""
    host = Host(nodes(), chunk=CHUNK)
    table = host.attach(R1)
    host.index.publish(R1, listed("d"))
    await host.index.quiet()
    await host.index.book(R1, sorted(listed("d")))
    before = {d.id: d for d in table.snapshot.devices}
    renamed = listed("e")
    renamed["e5"] = Device("e5", healthy=False, nodes=renamed["e5"].nodes)
    host.index.publish(R1, renamed)
    await host.index.quiet()
    after = {d.id: d for d in table.snapshot.devices}
    assert after.keys() == before.keys()
    assert not after["d5"].healthy
    assert [i for i in after if after[i] is not before[i]] == ["d5"]


def test_a_device_under_a_known_id_is_the_known_entry_only_when_all_else_is_the_same() -> None:
    device = Device("e1", nodes=(DeviceNode("/dev/n1", "/dev/n1"),), numa=0, env={"A": "1"})
    known = device.with_id("d1")
    assert device.with_id("d1", known) is known
    assert device.with_id("d2", known) == Device("d2", nodes=device.nodes, numa=0, env={"A": "1"})
    for field in fields(Device):
        if field.name == "id":
            continue
        value = getattr(known, field.name)
        other = {
            bool: lambda v: not v,
            str: lambda v: v + "x",
            int: lambda v: v + 1,
            tuple: lambda v: (*v, DeviceMount("/m", "/m")),
            type(None): lambda v: "/x",
        }.get(type(value), lambda v: {"B": "2"})(value)
        changed = Device.__new__(Device)
        for f in fields(Device):
            object.__setattr__(changed, f.name, getattr(known, f.name))
        object.__setattr__(changed, field.name, other)
        got = device.with_id("d1", changed)
        assert got is not changed and got == known, field.name


async def test_a_device_whose_node_changed_is_admitted_with_the_changed_devices_only() -> None:
    """Issue 20: a hot-plug makes a device's node again, and its old claim goes (here: the
    device moves to another node). No other device claims what it let go of: it is admitted
    with the devices that changed (two walks of the list: what to resolve, what changed),
    not by a full admission (six walks), and its old claim lingers as the full admission
    leaves it (a node another resource reaches is held while it is there)."""
    found = nodes()
    found.nodes["/dev/m5"] = ("c", N + 5)
    host = Host(found, chunk=CHUNK)
    table = host.attach(R1)
    devices = listed("d")
    host.index.publish(R1, devices)
    await host.index.quiet()
    beside = Beside()
    try:
        moved = {**devices, "d5": dev("d5", "/dev/m5")}
        host.index.publish(R1, moved)
        await host.index.quiet()
        assert beside.turns <= 2 * N // CHUNK + 5, beside.turns
    finally:
        beside.stop()
    assert host.ids(R1) == sorted(devices)
    assert [d.nodes[0].host_path for d in table.snapshot.devices if d.id == "d5"] == ["/dev/m5"]
    host.publish(R2, dev("other", "/dev/n5"))
    await host.index.quiet()
    assert host.ids(R2) == [] and host.held(R2) == 1, "its old claim lingers"


async def test_a_node_let_go_of_that_another_device_claims_keeps_its_booked_id() -> None:
    """The node one device lets go of, claimed by a new device of the same list: a rename
    (the full admission): the node keeps the ID the kubelet booked it under; with no
    booking, each device is advertised under its own ID."""
    for booked in (False, True):
        found = nodes(20)
        found.nodes["/dev/m5"] = ("c", 105)
        host = Host(found, chunk=CHUNK)
        table = host.attach(R1)
        devices = listed("d", 20)
        host.index.publish(R1, devices)
        await host.index.quiet()
        if booked:
            await host.index.book(R1, ["d5"])
        moved = {**devices, "d5": dev("d5", "/dev/m5"), "x": dev("x", "/dev/n5")}
        host.index.publish(R1, moved)
        await host.index.quiet()
        paths = {d.id: d.nodes[0].host_path for d in table.snapshot.devices}
        if booked:
            assert sorted(paths) == sorted(devices) and paths["d5"] == "/dev/n5"
        else:
            assert sorted(paths) == sorted(moved)
            assert (paths["d5"], paths["x"]) == ("/dev/m5", "/dev/n5")


async def test_every_node_made_again_at_once_is_admitted_in_bounded_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20: 10,000 devices unplugged (or plugged back) at once each let go of a node;
    whether another device claims one of them (a rename) was one walk of every claim in one
    turn of the loop (~50 ms). It is paced like the rest of the admission: no turn looks at
    more claims than a few for each of CHUNK devices."""
    found = nodes()
    found.nodes.update({f"/dev/m{i}": ("c", N + i) for i in range(N)})
    host = Host(found, chunk=CHUNK)
    table = host.attach(R1)
    devices = listed("d")
    host.index.publish(R1, devices)
    await host.index.quiet()
    looked = 0
    real_all = ClaimSet.all

    def counted(claims: ClaimSet) -> tuple[Claim, ...]:
        nonlocal looked
        looked += 1
        return real_all(claims)

    monkeypatch.setattr(ClaimSet, "all", counted)
    most = 0

    async def beside() -> None:
        nonlocal looked, most
        while True:
            most, looked = max(most, looked), 0
            await asyncio.sleep(0)

    counter = asyncio.get_running_loop().create_task(beside())
    try:
        moved = {d: dev(d, f"/dev/m{i}") for i, d in enumerate(devices)}
        host.index.publish(R1, moved)
        await host.index.quiet()
    finally:
        counter.cancel()
    assert host.ids(R1) == sorted(devices)
    assert {d.nodes[0].host_path for d in table.snapshot.devices} == set(
        f"/dev/m{i}" for i in range(N)
    )
    assert 0 < most <= 4 * CHUNK, most  # (a few looks a device: its conflicts, its own)
