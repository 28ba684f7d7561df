"""ListAndWatchEncoder writes Device messages itself: its bytes must be the protobuf encoding.

Checked against two independent encoders of the same ListAndWatchResponse: the official
protobuf runtime (classes generated from protos/api.proto by grpc_tools.protoc) and
betterproto2's own `bytes(ListAndWatchResponse(...))`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    CdiDevice,
    ContainerAllocateRequest,
    ContainerAllocateResponse,
    ContainerPreferredAllocationRequest,
    ContainerPreferredAllocationResponse,
    DeviceSpec,
    Mount,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
)
from kdp_host.api.v1beta1 import Device as BpDevice
from kdp_host.api.v1beta1 import ListAndWatchResponse as BpListAndWatchResponse
from kdp_host.api.v1beta1 import NumaNode as BpNumaNode
from kdp_host.api.v1beta1 import TopologyInfo as BpTopologyInfo
from kdp_host.devices import HEALTHY, UNHEALTHY, AdvertisedDevice, Device, DeviceTable
from kdp_host.protocol.service import ListAndWatchEncoder
from kdp_host.protocol.wire import (
    WireError,
    decode_allocate_request,
    decode_preferred_allocation_request,
    encode_allocate_response,
    encode_device_entry,
    encode_preferred_allocation_response,
    topology_field,
)
from tests.bench.proto import Api, load_api

Entry = tuple[str, bool, int | None]


@pytest.fixture(scope="module")
def official() -> Api:
    return load_api()


def official_bytes(api: Api, entries: list[Entry]) -> bytes:
    pb2 = api.pb2
    devices = []
    for device_id, healthy, numa in entries:
        device = pb2.Device(ID=device_id, health=HEALTHY if healthy else UNHEALTHY)
        if numa is not None:
            device.topology.CopyFrom(pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=numa)]))
        devices.append(device)
    data: bytes = pb2.ListAndWatchResponse(devices=devices).SerializeToString()
    return data


def betterproto_bytes(entries: list[Entry]) -> bytes:
    return bytes(
        BpListAndWatchResponse(
            devices=[
                BpDevice(
                    id=device_id,
                    health=HEALTHY if healthy else UNHEALTHY,
                    topology=None if numa is None else BpTopologyInfo(nodes=[BpNumaNode(id=numa)]),
                )
                for device_id, healthy, numa in entries
            ]
        )
    )


def entries_of(table: DeviceTable) -> list[Entry]:
    return [(e.id, e.healthy, e.device.numa) for e in table.snapshot.advertised]


async def encoded(table: DeviceTable) -> bytes:
    return await ListAndWatchEncoder().encode(table.snapshot)


def direct(entries: list[Entry]) -> bytes:
    return b"".join(
        encode_device_entry(i, h, b"" if n is None else topology_field(n)) for i, h, n in entries
    )


def check(api: Api, entries: list[Entry], data: bytes) -> None:
    assert data == official_bytes(api, entries)
    assert data == betterproto_bytes(entries)
    parsed = api.pb2.ListAndWatchResponse.FromString(data)
    assert [(d.ID, d.health == HEALTHY, d.HasField("topology")) for d in parsed.devices] == [
        (i, h, n is not None) for i, h, n in entries
    ]


async def test_topology_health_and_numa_nodes(official: Api) -> None:
    table = DeviceTable()
    table.publish(
        [
            Device("plain"),
            Device("numa0", numa=0),
            Device("numa1", numa=1),
            Device("numa127", numa=127),
            Device("numa128", numa=128),
            Device("numa1023", numa=1023),
            Device("sick", healthy=False),
            Device("sick-numa", healthy=False, numa=3),
        ]
    )
    table.set_check_result("numa1", False)
    entries = entries_of(table)
    assert {h for _, h, _ in entries} == {True, False}
    assert {n is None for _, _, n in entries} == {True, False}
    check(official, entries, await encoded(table))


async def test_replicas(official: Api) -> None:
    table = DeviceTable(replicas=3)
    table.publish([Device("gpu0", numa=0), Device("gpu1", numa=1), Device("gpu2", healthy=False)])
    entries = entries_of(table)
    assert len(entries) == 9 and entries[0][0] == "gpu0::0"
    check(official, entries, await encoded(table))


async def test_ten_thousand_devices(official: Api) -> None:
    table = DeviceTable()
    table.publish(
        Device(
            f"dev{i:05d}",
            healthy=i % 7 != 0,
            numa=None if i % 3 == 0 else i % 4,
        )
        for i in range(10_000)
    )
    entries = entries_of(table)
    assert len(entries) == 10_000
    check(official, entries, await encoded(table))


async def test_ten_thousand_replicas(official: Api) -> None:
    table = DeviceTable(replicas=10)
    table.publish(Device(f"fpga{i:04d}", numa=i % 2) for i in range(1000))
    entries = entries_of(table)
    assert len(entries) == 10_000
    check(official, entries, await encoded(table))


async def test_empty_list(official: Api) -> None:
    data = await encoded(DeviceTable())
    assert data == b""
    check(official, [], data)


async def test_changes_after_the_first_encode(official: Api) -> None:
    table = DeviceTable()
    table.publish([Device(f"d{i}", numa=i % 2) for i in range(600)])
    encoder = ListAndWatchEncoder()
    first = await encoder.encode(table.snapshot)
    assert await encoder.encode(table.snapshot) is first
    table.set_degraded("probe failing")
    check(official, entries_of(table), await encoder.encode(table.snapshot))
    table.set_degraded(None)
    table.publish([Device(f"d{i}", numa=i % 3) for i in range(1, 700)])
    check(official, entries_of(table), await encoder.encode(table.snapshot))


def test_long_and_non_ascii_ids_and_negative_numa(official: Api) -> None:
    """Multi-byte lengths, UTF-8 lengths in bytes, int64 varints, proto3's empty string."""
    entries: list[Entry] = [
        ("x" * 127, True, None),
        ("y" * 128, True, 5),
        ("z" * 20_000, False, 300),
        ("dév-ü-日本", True, 2),
        ("neg", True, -1),
        ("", True, None),
        ("", False, 0),
    ]
    check(official, entries, direct(entries))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=40),
            st.booleans(),
            st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        ),
        max_size=30,
    )
)
def test_any_entries(entries: list[Entry]) -> None:
    api = load_api()
    check(api, entries, direct(entries))


def test_advertised_entry_fields_used_by_the_encoder() -> None:
    """The encoder reads exactly these attributes: a rename must fail here, not on the wire."""
    entry: Any = AdvertisedDevice("a", Device("a", numa=1), True)
    assert (entry.id, entry.healthy, entry.device.numa) == ("a", True, 1)


# ------------------------------------------------- Allocate and GetPreferredAllocation

texts = st.text(max_size=12)
text_maps = st.dictionaries(texts, texts, max_size=4)
mounts = st.builds(Mount, container_path=texts, host_path=texts, read_only=st.booleans())
specs = st.builds(DeviceSpec, container_path=texts, host_path=texts, permissions=texts)
container_responses = st.builds(
    ContainerAllocateResponse,
    envs=text_maps,
    mounts=st.lists(mounts, max_size=3),
    devices=st.lists(specs, max_size=3),
    annotations=text_maps,
    cdi_devices=st.lists(st.builds(CdiDevice, name=texts), max_size=3),
)
id_lists = st.lists(texts, max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(container_responses, max_size=3))
def test_allocate_response_bytes_equal_betterproto(responses: list[Any]) -> None:
    fast = encode_allocate_response(AllocateResponse(container_responses=responses))
    assert fast == bytes(AllocateResponse(container_responses=responses))


def test_allocate_response_parses_the_same_with_official_protobuf(official: Api) -> None:
    response = ContainerAllocateResponse(
        envs={"IDS": "fpga0,fpga1", "EMPTY": "", "": "no-key"},
        mounts=[Mount(container_path="/x", host_path="/opt/x", read_only=True)],
        devices=[DeviceSpec(container_path="/dev/f0", host_path="/dev/f0", permissions="rw")],
        annotations={"a.io/p": "/dev/f0"},
        cdi_devices=[CdiDevice(name="vendor.example/fpga=fpga0")],
    )
    data = encode_allocate_response(
        AllocateResponse(container_responses=[response, ContainerAllocateResponse()])
    )
    parsed = official.pb2.AllocateResponse.FromString(data)
    first = parsed.container_responses[0]
    assert dict(first.envs) == response.envs
    assert [(m.container_path, m.host_path, m.read_only) for m in first.mounts] == [
        ("/x", "/opt/x", True)
    ]
    assert [d.permissions for d in first.devices] == ["rw"]
    assert dict(first.annotations) == response.annotations
    assert [c.name for c in first.cdi_devices] == ["vendor.example/fpga=fpga0"]
    assert len(parsed.container_responses) == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(id_lists, max_size=3))
def test_preferred_allocation_response_bytes_equal_betterproto(lists: list[list[str]]) -> None:
    responses = [ContainerPreferredAllocationResponse(device_i_ds=ids) for ids in lists]
    fast = encode_preferred_allocation_response(
        PreferredAllocationResponse(container_responses=responses)
    )
    assert fast == bytes(PreferredAllocationResponse(container_responses=responses))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(id_lists, id_lists, st.integers(-(2**31), 2**31 - 1)), max_size=3),
    st.lists(id_lists, max_size=3),
)
def test_request_decoders_equal_betterproto(
    preferred: list[tuple[list[str], list[str], int]], allocate: list[list[str]]
) -> None:
    request = PreferredAllocationRequest(
        container_requests=[
            ContainerPreferredAllocationRequest(
                available_deviceIDs=a, must_include_deviceIDs=m, allocation_size=n
            )
            for a, m, n in preferred
        ]
    )
    data = bytes(request)
    assert decode_preferred_allocation_request(data) == PreferredAllocationRequest.FromString(data)
    alloc = AllocateRequest(
        container_requests=[ContainerAllocateRequest(devices_ids=ids) for ids in allocate]
    )
    data = bytes(alloc)
    assert decode_allocate_request(data) == AllocateRequest.FromString(data)


def test_request_decoders_read_official_bytes_and_skip_unknown_fields(official: Api) -> None:
    pb2 = official.pb2
    request = pb2.PreferredAllocationRequest(
        container_requests=[
            pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=[f"d{i}" for i in range(1000)],
                must_include_deviceIDs=["d7"],
                allocation_size=3,
            )
        ]
    )
    unknown = b"\x98\x06\x01" + b"\xa1\x06" + b"\x00" * 8 + b"\xad\x06" + b"\x00" * 4
    decoded = decode_preferred_allocation_request(request.SerializeToString() + unknown)
    (container,) = decoded.container_requests
    assert container.available_deviceIDs[999] == "d999"
    assert (container.must_include_deviceIDs, container.allocation_size) == (["d7"], 3)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_request_decoders_reject_garbage_cleanly(data: bytes) -> None:
    for decode in (decode_allocate_request, decode_preferred_allocation_request):
        with contextlib.suppress(WireError):
            decode(data)
