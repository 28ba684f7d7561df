"""GetPreferredAllocation over a long list with a pair at one container path (hostile25 F9):
the request names every free device, so an answer looks at its every ID only where the
container may be given the pair (`PreferredNeed.steers`), and a large request is read off
the event loop (`preferred_serving.DECODE_ON_LOOP_BYTES`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host import preferred
from kdp_host.api.v1beta1 import ContainerPreferredAllocationRequest, PreferredAllocationRequest
from kdp_host.config import PreferredPolicy, ResourceConfig, ShellDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.preferred import preferred_allocation
from kdp_host.preferred_need import PreferredNeed
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.protocol.preferred_serving import DECODE_ON_LOOP_BYTES
from kdp_host.protocol.server import PluginServer
from kdp_host.protocol.service import DevicePluginService
from tests.interop_kubelet import InteropKubelet, load_official_api

T = TypeVar("T")
PROBE = ResourceConfig(name="example.com/big", driver=ShellDriverConfig(command=("probe",)))


def node(device_id: str, container_path: str) -> Device:
    return Device(id=device_id, nodes=(DeviceNode(f"/r/{device_id}", container_path),))


def listed(count: int, *more: Device) -> list[Device]:
    """`count` plain devices (no node: a probe's `dN Healthy`) and `more`."""
    return [Device(id=f"d{i}") for i in range(count)] + list(more)


PAIR = (node("pa", "/dev/x"), node("pb", "/dev/x"))


class Unread(Sequence[str]):
    """An offer that fails the test if its IDs are looked at."""

    def __getitem__(self, index: object) -> str:  # type: ignore[override]
        raise AssertionError("the offer was read")

    def __len__(self) -> int:
        raise AssertionError("the offer was read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the offer was read")


def request(available: Sequence[str], must: Sequence[str], size: int) -> PreferredAllocationRequest:
    container = ContainerPreferredAllocationRequest(
        available_deviceIDs=list(available), must_include_deviceIDs=list(must), allocation_size=size
    )
    return PreferredAllocationRequest(container_requests=[container])


def test_a_pod_that_cannot_be_given_the_pair_is_decided_without_reading_the_offer() -> None:
    """The one-device pod (the common one) and a pod whose set is what it has: no ID of the
    offer looked at, whatever the list's length."""
    table = DeviceTable()
    need = PreferredNeed(PROBE, table)
    table.follow_lists(need.follow)
    table.publish(listed(20_000, *PAIR))
    snapshot = table.snapshot
    assert need.shared()
    assert not need.steers(snapshot, Unread(), [], 1)
    assert not need.steers(snapshot, Unread(), ["d1", "d2"], 2)
    assert not need.steers(snapshot, ["d3", "pa"], ["pb"], 1)  # (the kubelet gave both)


@pytest.mark.parametrize(
    ("available", "must", "size", "steers"),
    [
        (["d1", "pa", "pb"], [], 2, True),  # the pair offered to a two-device pod
        (["d1", "pa", "d2"], [], 2, False),  # one of it offered
        (["d1", "pb"], ["pa"], 2, True),  # it has one, the other offered
        (["d1", "d2"], ["pa"], 2, False),  # it has one, the other taken
        (["d1", "pa", "pb"], ["d0"], 2, False),  # one more device: never both
    ],
)
def test_a_pod_is_steered_where_it_may_be_given_the_pair(
    available: list[str], must: list[str], size: int, steers: bool
) -> None:
    table = DeviceTable()
    need = PreferredNeed(PROBE, table)
    table.publish(listed(5, *PAIR))
    assert need.steers(table.snapshot, available, must, size) is steers


def test_entries_that_nest_steer_every_pod_given_more_than_one_device() -> None:
    """A node below another device's node (`nests`): the index does not name the devices
    below a path, so every pod that may be given two devices is steered; a one-device pod
    never is."""
    table = DeviceTable()
    need = PreferredNeed(PROBE, table)
    table.publish(listed(3, node("pa", "/dev/x"), node("pb", "/dev/x/y")))
    snapshot = table.snapshot
    assert need.shared()
    assert not need.steers(snapshot, Unread(), [], 1)
    assert need.steers(snapshot, ["d0", "d1"], [], 2)
    assert need.steers(snapshot, ["d0", "pb"], ["pa"], 2)
    answer = preferred_allocation("packed", snapshot, ["pa", "pb", "d0"], [], 2, steer=True)
    assert answer == ["d0", "pa"]


def test_replicas_of_one_device_at_its_path_never_steer() -> None:
    """Two replicas of one device place the same node: no collision, no steering; the pair
    of two devices does, by any replica."""
    config = ResourceConfig(name=PROBE.name, driver=PROBE.driver, replicas=2)
    table = DeviceTable(replicas=2)
    need = PreferredNeed(config, table)
    table.publish(listed(2, *PAIR))
    snapshot = table.snapshot
    assert not need.steers(snapshot, ["pa::0", "pa::1", "d0::0"], [], 2)
    assert need.steers(snapshot, ["pa::1", "pb::0", "d0::0"], [], 2)


async def test_the_service_answers_a_one_device_pod_with_no_preference() -> None:
    """hostile25 F9: with the pair listed every answer ran the policy over the whole offer
    (~14 ms of the loop at 20,000 IDs); a one-device pod cannot be given the pair: the
    kubelet's own pick; a two-device pod offered the pair is steered clear of it."""
    table = DeviceTable()
    service = DevicePluginService(PROBE, table, ListAndWatchEncoder(), Metrics(), get_logger())
    table.publish(listed(50, *PAIR))
    ids = [e.id for e in table.snapshot.advertised]
    answer = await service.get_preferred_allocation(request(ids, [], 1))
    assert [list(c.device_i_ds) for c in answer.container_responses] == [[]]
    answer = await service.get_preferred_allocation(request(["pb", "pa"], [], 2))
    assert [list(c.device_i_ds) for c in answer.container_responses] == [["pa"]]


class CountingOffload:
    """The host's offload as far as the service sees it, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, function: Callable[[], T]) -> T:
        self.calls += 1
        return await asyncio.to_thread(function)


async def test_a_large_request_is_read_off_the_loop_and_a_bad_one_refused(
    short_dir: Path,
) -> None:
    """Through the server and an official protobuf client: a request larger than
    DECODE_ON_LOOP_BYTES is read through the offload (a short one where it arrives), both
    answered alike; bytes that are no request get INVALID_ARGUMENT, not an internal error."""
    table = DeviceTable()
    offload = CountingOffload()
    service = DevicePluginService(
        PROBE, table, ListAndWatchEncoder(), Metrics(), get_logger(), offload=offload
    )
    table.publish(listed(12_000, *PAIR))
    ids = [e.id for e in table.snapshot.advertised]
    assert len(bytes(request(ids, [], 2))) > DECODE_ON_LOOP_BYTES
    server = PluginServer([service])
    path = short_dir / "p.sock"
    await server.serve(str(path))
    kubelet = InteropKubelet(short_dir, load_official_api(short_dir / "api"))
    try:
        client = await kubelet.connect(path)
        answer = await client.get_preferred_allocation(ids, [], 2)
        assert list(answer.container_responses[0].deviceIDs) == ["d0", "d1"]
        assert offload.calls == 1
        answer = await client.get_preferred_allocation(["pb", "pa", "d7"], [], 2)
        assert list(answer.container_responses[0].deviceIDs) == ["d7", "pa"]
        assert offload.calls == 1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.raw_unary("GetPreferredAllocation", b"\x0a\x05\x0a\xff")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await kubelet.stop()
        server.close()
        server.close_connections()
        await server.wait_closed()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sets(st.sampled_from("wxyz"), max_size=2), min_size=1, max_size=12),
    st.sets(st.integers(0, 11)),
    st.sets(st.integers(0, 11), max_size=2),
    st.integers(1, 5),
    st.sampled_from(["packed", "spread", "numa", "none"]),
)
def test_steering_in_the_snapshot_s_order_answers_what_the_policy_s_rounds_do(
    shapes: list[set[str]], offered: set[int], must: set[int], size: int, policy: PreferredPolicy
) -> None:
    """One ID a device and no NUMA node: every policy ranks by ID, so the steered answer is
    the first IDs in the snapshot's order that fit, found by one walk that stops when full
    (not a ranking of the whole offer); the same as the rounds of the policy it replaces."""
    devices = [
        Device(id=f"d{i:02}", nodes=tuple(DeviceNode(f"/r/{i}{p}", f"/dev/{p}") for p in s))
        for i, s in enumerate(shapes)
    ]
    table = DeviceTable()
    table.publish(devices)
    available = [f"d{i:02}" for i in sorted(offered)]
    has = [f"d{i:02}" for i in sorted(must)]
    walked = preferred_allocation(policy, table.snapshot, available, has, size, steer=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preferred, "_fitting_in_order", lambda *_: None)
        ranked = preferred_allocation(policy, table.snapshot, available, has, size, steer=True)
    assert walked == ranked
