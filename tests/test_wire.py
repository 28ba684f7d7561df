"""The hand-written wire paths (kdp_host/protocol/wire.py, wire_read.py) against two
independent codecs.

All seven paths (ListAndWatch device entries, the Allocate and GetPreferredAllocation answers,
their two requests, the DevicePluginOptions answer and the Register request) are checked
with hypothesis against the official protobuf runtime (classes generated from
protos/api.proto by grpc_tools.protoc) and betterproto2. Messages
are generated from the .proto's descriptor, so a field added to protos/api.proto is
generated too; and a descriptor walk fails while any reachable field is not handled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.api import v1beta1 as bp
from kdp_host.api.v1beta1 import Device as BpDevice
from kdp_host.api.v1beta1 import ListAndWatchResponse as BpListAndWatchResponse
from kdp_host.api.v1beta1 import NumaNode as BpNumaNode
from kdp_host.api.v1beta1 import TopologyInfo as BpTopologyInfo
from kdp_host.device_table import DeviceTable
from kdp_host.devices import HEALTHY, UNHEALTHY, Device
from kdp_host.protocol import lists
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.protocol.server import PluginServer
from kdp_host.protocol.wire import (
    ENCODERS,
    HANDLED_FIELDS,
    encode_device_entry,
    topology_field,
)
from kdp_host.protocol.wire_read import DECODERS, WireError
from tests.bench.proto import Api, load_api
from tests.interop_kubelet import InteropKubelet

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


class CountingEntries:
    """`encode_device_entry` counting the entries it writes."""

    def __init__(self) -> None:
        self.written = 0

    def __call__(self, entry_id: str, healthy: bool, topology: bytes) -> bytes:
        self.written += 1
        return encode_device_entry(entry_id, healthy, topology)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_the_encoder_writes_only_the_entries_that_changed(
    official: Api, monkeypatch: pytest.MonkeyPatch, replicas: int
) -> None:
    """Issue 19: every list rewrote every entry (~0.6 ms at 1000 devices for one hot-plug).
    Entries the table hands on unchanged are taken from the last list's bytes."""
    replica = "::0" if replicas == 2 else ""  # a device's first entry
    counting = CountingEntries()
    monkeypatch.setattr(lists, "encode_device_entry", counting)
    devices = {f"d{i:04}": Device(f"d{i:04}", numa=i % 3 or None) for i in range(0, 2000, 2)}
    table = DeviceTable(replicas=replicas)
    table.publish(dict(devices))
    encoder = ListAndWatchEncoder()

    async def written(change: Callable[[], object]) -> int:
        change()
        before = counting.written
        data = await encoder.encode(table.snapshot)
        check(official, entries_of(table), data)
        return counting.written - before

    assert await written(lambda: None) == 1000 * replicas
    devices["d0777"] = Device("d0777", numa=1)  # hot-plugged between two others
    assert await written(lambda: table.publish(dict(devices))) == replicas
    del devices["d0000"]
    assert await written(lambda: table.publish(dict(devices))) == 0
    assert await written(lambda: table.set_check_result("d1998", False)) == replicas
    assert await written(lambda: table.set_check_result("d0500", False)) == replicas
    # added far apart: the span from the first to the last, not the whole list
    devices.update({f"d{i:04}": Device(f"d{i:04}") for i in (1, 3, 1501)})
    span = await written(lambda: table.publish(dict(devices)))
    ids = [entry.id for entry in table.snapshot.advertised]
    assert span == ids.index(f"d1502{replica}") - ids.index(f"d0001{replica}")
    # every device but the two already Unhealthy, and back
    assert await written(lambda: table.set_degraded("probe failing")) == 1001 * replicas
    assert await written(lambda: table.set_degraded(None)) == 1001 * replicas
    assert await written(lambda: table.publish({})) == 0


async def test_lists_written_in_parts_equal_whole_writes(official: Api) -> None:
    """Random adds, removals, replaced devices and health changes, each list as a fresh
    encoder writes it whole."""
    rng = random.Random(19)
    devices = {f"d{i:03}": Device(f"d{i:03}", numa=rng.choice([None, 0, 1])) for i in range(300)}
    table = DeviceTable(replicas=2)
    table.publish(dict(devices))
    encoder = ListAndWatchEncoder()
    for _ in range(150):
        action = rng.randrange(4)
        device_id = f"d{rng.randrange(400):03}"
        if action == 0:
            devices[device_id] = Device(device_id, healthy=rng.random() < 0.8)
        elif action == 1:
            devices.pop(device_id, None)
            devices.pop(f"d{rng.randrange(400):03}", None)
        elif action == 2:
            table.set_check_result(device_id, rng.random() < 0.5)
        else:
            table.set_degraded(rng.choice([None, None, "down"]))
        table.publish(dict(devices))
        data = await encoder.encode(table.snapshot)
        assert data == await ListAndWatchEncoder().encode(table.snapshot)
    check(official, entries_of(table), data)


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


async def test_list_and_watch_on_the_wire_is_the_official_encoding(
    official: Api, short_dir: Path
) -> None:
    """The real server path: service, codec and grpclib, read back by grpcio as raw bytes."""
    from kdp_host.config import load_config_text
    from kdp_host.logs import get_logger
    from kdp_host.metrics import Metrics
    from kdp_host.protocol.service import DevicePluginService

    table = DeviceTable(replicas=2)
    table.publish([Device("d0", numa=1), Device("d1", healthy=False), Device("d2", numa=0)])
    config = load_config_text("resources: [{name: t.io/r, glob: {paths: [/dev/r*]}}]")
    service = DevicePluginService(
        config.resources[0], table, ListAndWatchEncoder(), Metrics(), get_logger()
    )
    server = PluginServer([service])
    path = short_dir / "p.sock"
    await server.serve(str(path))
    kubelet = InteropKubelet(short_dir, official)
    try:
        client = await kubelet.connect(path)
        stream = client.raw_list_and_watch()
        data = await anext(stream)
        await stream.aclose()
        entries = entries_of(table)
        assert len(entries) == 6 and entries[0] == ("d0::0", True, 1)
        assert data == official_bytes(official, entries)
    finally:
        await kubelet.stop()
        await service.end_streams()
        server.close()
        server.close_connections()
        await server.wait_closed()


# ------------------------------------------------- the .proto's descriptor


ROOTS = ("ListAndWatchResponse", *(t.__name__ for t in ENCODERS), *(t.__name__ for t in DECODERS))
"""The messages the hand-written paths write or read (ListAndWatch: pre-encoded entries)."""
KINDS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_MESSAGE: "message",
}


def short_name(descriptor: Descriptor) -> str:
    return descriptor.full_name.removeprefix("v1beta1.")


def reachable(roots: list[Descriptor]) -> dict[str, Descriptor]:
    """Every message reachable from `roots` through message and map fields."""
    found: dict[str, Descriptor] = {}
    pending = list(roots)
    while pending:
        descriptor = pending.pop()
        if short_name(descriptor) in found:
            continue
        found[short_name(descriptor)] = descriptor
        pending += [f.message_type for f in descriptor.fields if f.message_type is not None]
    return found


def unhandled(find_message: Callable[[str], Descriptor]) -> list[str]:
    """What the hand-written paths miss, walking the descriptor from ROOTS."""
    messages = reachable([find_message(f"v1beta1.{name}") for name in ROOTS])
    problems = []
    for name, descriptor in sorted(messages.items()):
        handled = HANDLED_FIELDS.get(name)
        if handled is None:
            problems.append(f"message {name} is not handled at all")
            continue
        for field in descriptor.fields:
            kind = KINDS.get(field.type, f"type {field.type}")
            if handled.get(field.name) != (field.number, kind):
                problems.append(
                    f"{name}.{field.name} = {field.number} ({kind}) is in protos/api.proto, "
                    f"wire.py handles {handled.get(field.name)}"
                )
        for field_name in set(handled) - {f.name for f in descriptor.fields}:
            problems.append(f"wire.py handles {name}.{field_name}, which the .proto lacks")
    stale = set(HANDLED_FIELDS) - set(messages)
    problems += [f"wire.py lists {name}, not on a hot path" for name in sorted(stale)]
    return problems


def test_every_field_on_the_hot_paths_is_handled_by_the_encoder(official: Api) -> None:
    """Add a field to protos/api.proto on one of these messages and this fails until
    kdp_host/protocol/wire.py handles it (and lists it in HANDLED_FIELDS)."""
    assert len(ROOTS) == 7
    pool = official.pb2.DESCRIPTOR.pool
    assert not unhandled(pool.FindMessageTypeByName), "\n".join(
        unhandled(pool.FindMessageTypeByName)
    )


def test_the_walk_reports_a_field_added_to_the_proto(tmp_path: Path) -> None:
    """The same walk on a copy of protos/api.proto with one more field reports exactly it."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    proto = Path(__file__).resolve().parent.parent / "protos" / "api.proto"
    marker = "message CDIDevice {"
    text = proto.read_text()
    assert marker in text
    (tmp_path / "api.proto").write_text(text.replace(marker, marker + "\n  bool shared = 7;"))
    descriptor_set = tmp_path / "set.pb"
    args = ["protoc", f"-I{tmp_path}", f"--descriptor_set_out={descriptor_set}", "api.proto"]
    assert protoc.main(args) == 0
    pool = descriptor_pool.DescriptorPool()  # apart from the default pool: no clash
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    assert unhandled(pool.FindMessageTypeByName) == [
        "CDIDevice.shared = 7 (bool) is in protos/api.proto, wire.py handles None"
    ]


# ------------------------------------------------- messages generated from the descriptor

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: st.text(st.characters(blacklist_categories=("Cs",)), max_size=16),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
}


def field_values(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Values of one field, for the official message's constructor."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        return st.dictionaries(field_values(key), field_values(value), max_size=4)
    if message is not None:
        single: st.SearchStrategy[Any] = st.deferred(lambda: messages_of(message))
    elif field.type in _SCALARS:
        single = _SCALARS[field.type]
    else:
        raise AssertionError(f"{field.full_name}: no strategy for field type {field.type}")
    if field.is_repeated:
        return st.lists(single, max_size=5)
    return single


def messages_of(descriptor: Descriptor) -> st.SearchStrategy[Any]:
    """Official protobuf messages of `descriptor` with any field set (or not)."""
    cls = GetMessageClass(descriptor)
    fields = {f.name: st.one_of(st.nothing(), field_values(f)) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda kwargs: cls(**kwargs))


def descriptor_of(name: str) -> Descriptor:
    return load_api().pb2.DESCRIPTOR.message_types_by_name[name]


def without_unknown_fields(message: Any) -> Any:
    message.DiscardUnknownFields()
    return message


@pytest.mark.parametrize("message_type", list(ENCODERS), ids=lambda t: t.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_response_encoders_agree_with_official_protobuf_and_betterproto(
    message_type: type, data: st.DataObject
) -> None:
    descriptor = descriptor_of(message_type.__name__)
    message = data.draw(messages_of(descriptor))
    official_bytes = message.SerializeToString(deterministic=True)
    ours = ENCODERS[message_type](message_type.parse(official_bytes))
    assert GetMessageClass(descriptor).FromString(ours) == message
    assert ours == bytes(message_type.parse(official_bytes))


@pytest.mark.parametrize("message_type", list(DECODERS), ids=lambda t: t.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_request_decoders_agree_with_official_protobuf_and_betterproto(
    message_type: type, data: st.DataObject
) -> None:
    descriptor = descriptor_of(message_type.__name__)
    message = data.draw(messages_of(descriptor))
    official_bytes = message.SerializeToString()
    decoded = DECODERS[message_type](official_bytes)
    assert decoded == message_type.parse(official_bytes)
    assert GetMessageClass(descriptor).FromString(bytes(decoded)) == message


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
    decoded = DECODERS[bp.PreferredAllocationRequest](request.SerializeToString() + unknown)
    (container,) = decoded.container_requests
    assert container.available_deviceIDs[999] == "d999"
    assert (container.must_include_deviceIDs, container.allocation_size) == (["d7"], 3)


# ------------------------------------------------- fuzzing the decoders


def mutated(data: bytes, seed: int) -> bytes:
    """A valid encoding with a few bytes flipped, dropped, inserted, or cut short."""
    rng = random.Random(seed)
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(buffer) + 1)
        action = rng.randrange(4)
        if action == 0 and position < len(buffer):
            buffer[position] = rng.randrange(256)
        elif action == 1 and position < len(buffer):
            del buffer[position]
        elif action == 2:
            buffer.insert(position, rng.randrange(256))
        else:
            del buffer[position:]
    return bytes(buffer)


def check_decoder(message_type: type, data: bytes) -> None:
    """Only WireError may escape; a result equals what the official runtime reads."""
    decode: Callable[[bytes], Any] = DECODERS[message_type]
    try:
        decoded = decode(data)
    except WireError:
        return
    official_type = GetMessageClass(descriptor_of(message_type.__name__))
    try:
        expected = without_unknown_fields(official_type.FromString(data))
    except Exception:
        return
    assert official_type.FromString(bytes(decoded)) == expected


@pytest.mark.parametrize("message_type", list(DECODERS), ids=lambda t: t.__name__)
@settings(max_examples=400, deadline=None)
@given(data=st.binary(min_size=0, max_size=4096))
def test_request_decoders_survive_random_bytes(message_type: type, data: bytes) -> None:
    check_decoder(message_type, data)


@pytest.mark.parametrize("message_type", list(DECODERS), ids=lambda t: t.__name__)
@settings(max_examples=400, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_request_decoders_survive_damaged_encodings(
    message_type: type, data: st.DataObject, seed: int
) -> None:
    """Valid requests, often hundreds of bytes long, with a few bytes damaged."""
    descriptor = descriptor_of(message_type.__name__)
    message = data.draw(messages_of(descriptor))
    check_decoder(message_type, mutated(message.SerializeToString(), seed))


def test_request_decoders_read_a_large_official_request(official: Api) -> None:
    pb2 = official.pb2
    ids = [f"vendor-device-{i:05d}-ü" for i in range(5000)]
    request = pb2.AllocateRequest(
        container_requests=[pb2.ContainerAllocateRequest(devices_ids=ids)]
    )
    data = request.SerializeToString()
    assert len(data) > 100_000
    check_decoder(bp.AllocateRequest, data)
    assert DECODERS[bp.AllocateRequest](data).container_requests[0].devices_ids == ids
