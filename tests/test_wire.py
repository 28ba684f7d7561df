"""ListAndWatchEncoder writes Device messages itself: its bytes must be the protobuf encoding.

Checked against two independent encoders of the same ListAndWatchResponse: the official
protobuf runtime (classes generated from protos/api.proto by grpc_tools.protoc) and
betterproto2's own `bytes(ListAndWatchResponse(...))`.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.api.v1beta1 import Device as BpDevice
from kdp_host.api.v1beta1 import ListAndWatchResponse as BpListAndWatchResponse
from kdp_host.api.v1beta1 import NumaNode as BpNumaNode
from kdp_host.api.v1beta1 import TopologyInfo as BpTopologyInfo
from kdp_host.devices import HEALTHY, UNHEALTHY, AdvertisedDevice, Device, DeviceTable
from kdp_host.plugin import ListAndWatchEncoder, _topology_field, encode_device_entry
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
        encode_device_entry(i, h, b"" if n is None else _topology_field(n)) for i, h, n in entries
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
