"""A probe's long list that changes a little each run costs what changed on the event loop, and
the PodResources answers that name every device of the node are decoded off it (issue 19,
hostile22 F6: 120,000 devices, one line toggled each second, held the loop 1-3 s).

No timing here: the tests count what each stage looks at, and which calls leave the loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from kdp_host.api.v1 import (
    AllocatableResourcesRequest,
    AllocatableResourcesResponse,
    ContainerDevices,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
    PodResourcesListerBase,
)
from kdp_host.device_changes import Derived, changed_between, derive, same_entries
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.drivers.shell import ShellDriver
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.podresources import ALLOCATABLE_EVERY, PodResourcesPoller
from kdp_host.podresources_calls import DECODE_ON_LOOP_BYTES
from kdp_host.testing import RecordingNotifier
from kdp_host.turns import Pace, to_the_end

from .conftest import reporter, script
from .test_ownership_places import CountingOffload
from .test_shell_driver import make_deps, shell

DEADLINE = 15.0
N = 3000


class Lists(RecordingNotifier):
    """A host that keeps every list the driver gave, and takes each when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[Mapping[str, Device] | Iterable[Device]] = []
        self.given = asyncio.Event()
        self.take = asyncio.Event()

    def update(self, devices: Any, *args: Any, **kwargs: Any) -> None:
        super().update(devices, *args, **kwargs)
        self.lists.append(devices)
        self.given.set()

    async def taken(self) -> None:
        await self.take.wait()
        self.take.clear()

    async def next_list(self) -> Mapping[str, Device]:
        self.take.set()
        self.given.clear()
        await asyncio.wait_for(self.given.wait(), DEADLINE)
        last = self.lists[-1]
        assert isinstance(last, Mapping)
        return last


async def test_each_probe_list_names_the_ids_that_changed_since_the_last(tmp_path: Path) -> None:
    """The shell driver hands on its list as made from the last one: only the line added, the
    line removed is named; every other entry is the very object of the last list."""
    listing = tmp_path / "devices.txt"
    lines = [f"d{i} path=/dev/d{i}\n" for i in range(N)]
    listing.write_text("".join(lines))
    probe = script(tmp_path, "p", f"cat {listing}\n")
    host = Lists()
    task = asyncio.get_running_loop().create_task(
        ShellDriver(shell(probe, interval=0.001), make_deps()).run(host)
    )
    try:
        await asyncio.wait_for(host.given.wait(), DEADLINE)
        first = host.lists[-1]
        assert isinstance(first, Derived) and len(first) == N
        listing.write_text("".join(lines) + "extra\n")
        second = await host.next_list()
        assert changed_between(first, second) == {"extra"}
        assert all(second[i] is first[i] for i in first)
        listing.write_text("".join(lines[:5] + lines[6:]))
        third = await host.next_list()
        assert changed_between(second, third) == {"d5", "extra"}
        same = await host.next_list()  # (the same output again: nothing named)
        assert changed_between(third, same) == set() and same == third
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_derive_names_added_replaced_and_removed_ids_and_keeps_the_first_of_an_id() -> None:
    a, b, c = Device("a"), Device("b"), Device("c")
    base = to_the_end(derive(None, [a, b, c], Pace(10)))
    assert base.changed == frozenset() and list(base) == ["a", "b", "c"]
    b2, d = Device("b", healthy=False), Device("d")
    made = to_the_end(derive(base, [a, b2, d, Device("d", healthy=False)], Pace(10)))
    assert made.changed == {"b", "c", "d"} and made["d"] is d and made.base is base
    steps = derive(made, [Device(f"x{i}") for i in range(50)], Pace(10))
    turns = 0
    with contextlib.suppress(StopIteration):
        while True:
            next(steps)
            turns += 1
    assert turns >= 5, "a long list is made in turns of the loop"


def test_an_unchanged_long_list_is_compared_by_what_changed() -> None:
    """The table compares a list with the last one by the IDs it names, not entry by entry."""

    class NoWalk(dict[str, Device]):
        def __eq__(self, other: object) -> bool:
            raise AssertionError("compared entry by entry")

        __hash__ = None  # type: ignore[assignment]

    before = NoWalk({f"d{i}": Device(f"d{i}") for i in range(N)})
    replaced = Derived(before, ["d1"], {**before, "d1": Device("d1")})
    assert same_entries(before, replaced)
    unhealthy = Derived(before, ["d1"], {**before, "d1": Device("d1", healthy=False)})
    assert not same_entries(before, unhealthy)


def test_the_reporter_checks_only_the_devices_a_list_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reporter's check of every node path for the list separator ran over every device
    of every list: 80 ms a run at 120,000 devices."""
    checked: list[str] = []
    contains = Device.any_node_path_contains

    def counting(device: Device, text: str) -> bool:
        checked.append(device.id)
        return contains(device, text)

    monkeypatch.setattr(Device, "any_node_path_contains", counting)
    table = DeviceTable()
    notifier = reporter(table)
    first = to_the_end(derive(None, [Device(f"d{i}") for i in range(N)], Pace(N)))
    notifier.update(first)
    assert len(checked) == N
    checked.clear()
    second = to_the_end(derive(first, [*first.values(), Device("extra")], Pace(N)))
    notifier.update(second)
    assert checked == ["extra"]
    devices = table.snapshot.devices
    assert devices[-1].id == "extra" and len(devices) == N + 1


class _Lister(PodResourcesListerBase):
    def __init__(self, allocatable: Sequence[str]) -> None:
        self.allocatable = allocatable

    async def list(self, message: ListPodResourcesRequest) -> ListPodResourcesResponse:
        return ListPodResourcesResponse()

    async def get_allocatable_resources(
        self, message: AllocatableResourcesRequest
    ) -> AllocatableResourcesResponse:
        return AllocatableResourcesResponse(
            devices=[ContainerDevices(resource_name="x.io/many", device_ids=list(self.allocatable))]
        )


@pytest.mark.parametrize(("count", "off_loop"), [(N, 1), (2, 0)])
async def test_a_large_allocatable_answer_is_decoded_off_the_loop(
    short_dir: Path, count: int, off_loop: int
) -> None:
    """GetAllocatableResources names every device of the node: a large answer is decoded (and
    the poller's mapping made) through the host's offload; a short one where it arrives."""
    ids = [f"device-{i:06d}" for i in range(count)]
    assert (len("".join(ids)) > DECODE_ON_LOOP_BYTES) == bool(off_loop)
    socket = short_dir / "pr.sock"
    server = Server([_Lister(ids)])
    await server.start(path=str(socket))
    offload = CountingOffload()
    poller = PodResourcesPoller(
        str(socket), 1.0, Metrics(process_collectors=False), get_logger(), offload=offload
    )
    try:
        assert await poller.poll() == 1.0
        assert poller.holdings is not None and poller.status.state == "ok"
        assert poller.allocatable == {"x.io/many": frozenset(ids)}
        assert offload.calls == off_loop, "the short List answer is decoded on the loop"
    finally:
        poller.close()
        server.close()
        await server.wait_closed()


class _Failing(_Lister):
    def __init__(self) -> None:
        super().__init__(())
        self.asked = 0

    async def get_allocatable_resources(
        self, message: AllocatableResourcesRequest
    ) -> AllocatableResourcesResponse:
        self.asked += 1
        raise GRPCError(Status.UNAVAILABLE, "busy")


async def test_a_failed_allocatable_call_waits_for_its_turn(short_dir: Path) -> None:
    """A GetAllocatableResources call that fails (one that timed out: at 120,000 devices the
    answer took 4-9 s over a held loop, the limit is 10 s) is asked again every
    `ALLOCATABLE_EVERY` polls, not at every poll while the poller has no answer yet."""
    socket = short_dir / "pr.sock"
    lister = _Failing()
    server = Server([lister])
    await server.start(path=str(socket))
    poller = PodResourcesPoller(str(socket), 1.0, Metrics(process_collectors=False), get_logger())
    try:
        for _ in range(ALLOCATABLE_EVERY + 1):
            assert await poller.poll() == 1.0
        assert poller.status.state == "ok" and poller.allocatable is None
        assert lister.asked == 2
    finally:
        poller.close()
        server.close()
        await server.wait_closed()
