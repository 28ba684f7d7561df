"""Wire agreement between our betterproto2/grpclib code and official protobuf/grpcio.

Both stacks come from protos/api.proto, so a wire mistake in that file would be invisible to
tests that use one generated package on both sides. Here the official classes are generated
at test time (tests/interop_kubelet.py) and play the kubelet; the .proto itself is also
checked against the kubelet's field table.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import betterproto2
import grpc
import grpc.aio
import pytest
from grpclib.client import Channel
from grpclib.encoding.proto import ProtoCodec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdp_host.api import v1beta1 as bp
from kdp_host.protocol.server import PluginServer
from kdp_host.simulator import KubeletSimulator

try:
    from tests.interop_kubelet import InteropKubelet, OfficialApi, load_official_api
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from interop_kubelet import InteropKubelet, OfficialApi, load_official_api  # type: ignore[no-redef]

RES = "vendor.example/fpga"


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> OfficialApi:
    return load_official_api(tmp_path_factory.mktemp("proto"))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kdp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- rich messages


def rich_list_bp() -> bp.ListAndWatchResponse:
    return bp.ListAndWatchResponse(
        devices=[
            bp.Device(
                id="fpga0", health="Healthy", topology=bp.TopologyInfo(nodes=[bp.NumaNode(id=0)])
            ),
            bp.Device(
                id="fpga1",
                health="Unhealthy",
                topology=bp.TopologyInfo(nodes=[bp.NumaNode(id=0), bp.NumaNode(id=1)]),
            ),
            bp.Device(id="fpga-ü", health="Healthy"),
            bp.Device(
                id="odd",
                health="",
                topology=bp.TopologyInfo(nodes=[bp.NumaNode(id=-1), bp.NumaNode(id=2**40)]),
            ),
            bp.Device(id="empty-topology", health="Healthy", topology=bp.TopologyInfo()),
        ]
    )


def rich_list_pb(pb2: Any) -> Any:
    return pb2.ListAndWatchResponse(
        devices=[
            pb2.Device(
                ID="fpga0", health="Healthy", topology=pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=0)])
            ),
            pb2.Device(
                ID="fpga1",
                health="Unhealthy",
                topology=pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=0), pb2.NUMANode(ID=1)]),
            ),
            pb2.Device(ID="fpga-ü", health="Healthy"),
            pb2.Device(
                ID="odd",
                health="",
                topology=pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=-1), pb2.NUMANode(ID=2**40)]),
            ),
            pb2.Device(ID="empty-topology", health="Healthy", topology=pb2.TopologyInfo()),
        ]
    )


def rich_container_bp(ids: Sequence[str]) -> bp.ContainerAllocateResponse:
    return bp.ContainerAllocateResponse(
        envs={"FPGA_IDS": ",".join(ids), "EMPTY": "", "UNICODE": "ü"},
        mounts=[
            bp.Mount(container_path="/opt/fpga", host_path="/srv/fpga", read_only=True),
            bp.Mount(container_path="/tmp/x", host_path="/tmp/y"),
        ],
        devices=[
            bp.DeviceSpec(container_path=f"/dev/{i}", host_path=f"/dev/{i}", permissions="rw")
            for i in ids
        ],
        annotations={"vendor.example/fpga": ",".join(ids), "b": "2"},
        cdi_devices=[bp.CdiDevice(name=f"vendor.example/fpga={i}") for i in ids],
    )


def rich_container_pb(pb2: Any, ids: Sequence[str]) -> Any:
    return pb2.ContainerAllocateResponse(
        envs={"FPGA_IDS": ",".join(ids), "EMPTY": "", "UNICODE": "ü"},
        mounts=[
            pb2.Mount(container_path="/opt/fpga", host_path="/srv/fpga", read_only=True),
            pb2.Mount(container_path="/tmp/x", host_path="/tmp/y"),
        ],
        devices=[
            pb2.DeviceSpec(container_path=f"/dev/{i}", host_path=f"/dev/{i}", permissions="rw")
            for i in ids
        ],
        annotations={"vendor.example/fpga": ",".join(ids), "b": "2"},
        cdi_devices=[pb2.CDIDevice(name=f"vendor.example/fpga={i}") for i in ids],
    )


# --------------------------------------------------------------------------- the .proto itself

# The kubelet's own definition (k8s.io/kubelet pkg/apis/deviceplugin/v1beta1/api.proto):
# message -> [(field, number, type, repeated)]. Types: protobuf FieldDescriptor.TYPE_*.
S, I64, I32, B, M = 9, 3, 5, 8, 11
KUBELET_API = {
    "DevicePluginOptions": [
        ("pre_start_required", 1, B, False),
        ("get_preferred_allocation_available", 2, B, False),
    ],
    "RegisterRequest": [
        ("version", 1, S, False),
        ("endpoint", 2, S, False),
        ("resource_name", 3, S, False),
        ("options", 4, M, False),
    ],
    "Empty": [],
    "ListAndWatchResponse": [("devices", 1, M, True)],
    "TopologyInfo": [("nodes", 1, M, True)],
    "NUMANode": [("ID", 1, I64, False)],
    "Device": [("ID", 1, S, False), ("health", 2, S, False), ("topology", 3, M, False)],
    "PreStartContainerRequest": [("devices_ids", 1, S, True)],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [("container_requests", 1, M, True)],
    "ContainerPreferredAllocationRequest": [
        ("available_deviceIDs", 1, S, True),
        ("must_include_deviceIDs", 2, S, True),
        ("allocation_size", 3, I32, False),
    ],
    "PreferredAllocationResponse": [("container_responses", 1, M, True)],
    "ContainerPreferredAllocationResponse": [("deviceIDs", 1, S, True)],
    "AllocateRequest": [("container_requests", 1, M, True)],
    "ContainerAllocateRequest": [("devices_ids", 1, S, True)],
    "CDIDevice": [("name", 1, S, False)],
    "AllocateResponse": [("container_responses", 1, M, True)],
    "ContainerAllocateResponse": [
        ("envs", 1, M, True),
        ("mounts", 2, M, True),
        ("devices", 3, M, True),
        ("annotations", 4, M, True),
        ("cdi_devices", 5, M, True),
    ],
    "Mount": [
        ("container_path", 1, S, False),
        ("host_path", 2, S, False),
        ("read_only", 3, B, False),
    ],
    "DeviceSpec": [
        ("container_path", 1, S, False),
        ("host_path", 2, S, False),
        ("permissions", 3, S, False),
    ],
}
KUBELET_SERVICES = {
    "Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": (
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            False,
        ),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == field.LABEL_REPEATED)


def test_proto_matches_the_kubelet_api(official: OfficialApi) -> None:
    file = official.pb2.DESCRIPTOR
    assert file.package == "v1beta1"
    assert set(file.message_types_by_name) == set(KUBELET_API)
    for name, fields in KUBELET_API.items():
        message = file.message_types_by_name[name]
        actual = [(f.name, f.number, f.type, _is_repeated(f)) for f in message.fields]
        assert actual == fields, name
    for map_field in ("envs", "annotations"):
        entry = file.message_types_by_name["ContainerAllocateResponse"].fields_by_name[map_field]
        assert entry.message_type.GetOptions().map_entry
        key, value = entry.message_type.fields
        assert (key.type, value.type) == (S, S)
    assert set(file.services_by_name) == set(KUBELET_SERVICES)
    for service, methods in KUBELET_SERVICES.items():
        descriptor = file.services_by_name[service]
        actual_methods = {
            m.name: (m.input_type.name, m.output_type.name, m.server_streaming)
            for m in descriptor.methods
        }
        assert actual_methods == methods
        assert not any(m.client_streaming for m in descriptor.methods)


_BP_TYPES = {S: "string", I64: "int64", I32: "int32", B: "bool", M: "message"}


def test_betterproto2_fields_match_the_official_descriptor(official: OfficialApi) -> None:
    renamed = {"CDIDevice": "CdiDevice", "NUMANode": "NumaNode"}
    for name, message in official.pb2.DESCRIPTOR.message_types_by_name.items():
        cls = getattr(bp, renamed.get(name, name))
        meta = cls._betterproto.meta_by_field_name
        by_number = {m.number: (field_name, m) for field_name, m in meta.items()}
        assert set(by_number) == {f.number for f in message.fields}, name
        for field in message.fields:
            _, m = by_number[field.number]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                assert m.proto_type == "map", (name, field.name)
                continue
            assert m.proto_type == _BP_TYPES[field.type], (name, field.name)
            assert m.repeated == _is_repeated(field), (name, field.name)


# --------------------------------------------------------------------------- encodings


def test_list_and_watch_response_is_byte_identical(official: OfficialApi) -> None:
    pb2 = official.pb2
    ours = bytes(rich_list_bp())
    theirs = rich_list_pb(pb2).SerializeToString()
    assert ours == theirs
    parsed = pb2.ListAndWatchResponse()
    parsed.ParseFromString(ours)
    assert parsed == rich_list_pb(pb2)
    assert parsed.devices[3].topology.nodes[0].ID == -1
    assert parsed.devices[4].HasField("topology") and not parsed.devices[2].HasField("topology")
    back = bp.ListAndWatchResponse.parse(theirs)
    assert back == rich_list_bp()
    assert back.devices[2].topology is None and back.devices[4].topology is not None


def test_allocate_response_agrees_both_ways(official: OfficialApi) -> None:
    pb2 = official.pb2
    ids = ["fpga0", "fpga1"]
    ours = bp.AllocateResponse(
        container_responses=[rich_container_bp(ids), bp.ContainerAllocateResponse()]
    )
    theirs = pb2.AllocateResponse(
        container_responses=[rich_container_pb(pb2, ids), pb2.ContainerAllocateResponse()]
    )
    parsed = pb2.AllocateResponse()
    parsed.ParseFromString(bytes(ours))
    assert parsed == theirs
    assert dict(parsed.container_responses[0].envs) == {
        "FPGA_IDS": "fpga0,fpga1",
        "EMPTY": "",
        "UNICODE": "ü",
    }
    assert bp.AllocateResponse.parse(theirs.SerializeToString()) == ours
    # Map entries are emitted in dict order: with sorted keys the bytes equal the official
    # deterministic encoding, field by field.
    sorted_ours = rich_container_bp(ids)
    sorted_ours.envs = dict(sorted(sorted_ours.envs.items()))
    sorted_ours.annotations = dict(sorted(sorted_ours.annotations.items()))
    assert bytes(sorted_ours) == rich_container_pb(pb2, ids).SerializeToString(deterministic=True)


def _other_messages(pb2: Any) -> list[tuple[betterproto2.Message, Any]]:
    return [
        (
            bp.RegisterRequest(
                version="v1beta1",
                endpoint="fpga.sock",
                resource_name=RES,
                options=bp.DevicePluginOptions(
                    pre_start_required=True, get_preferred_allocation_available=True
                ),
            ),
            pb2.RegisterRequest(
                version="v1beta1",
                endpoint="fpga.sock",
                resource_name=RES,
                options=pb2.DevicePluginOptions(
                    pre_start_required=True, get_preferred_allocation_available=True
                ),
            ),
        ),
        (
            bp.RegisterRequest(version="v1beta1", options=bp.DevicePluginOptions()),
            pb2.RegisterRequest(version="v1beta1", options=pb2.DevicePluginOptions()),
        ),
        (
            bp.DevicePluginOptions(get_preferred_allocation_available=True),
            pb2.DevicePluginOptions(get_preferred_allocation_available=True),
        ),
        (bp.Empty(), pb2.Empty()),
        (
            bp.PreferredAllocationRequest(
                container_requests=[
                    bp.ContainerPreferredAllocationRequest(
                        available_deviceIDs=["a", "b", "c"],
                        must_include_deviceIDs=["a"],
                        allocation_size=2,
                    )
                ]
            ),
            pb2.PreferredAllocationRequest(
                container_requests=[
                    pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=["a", "b", "c"],
                        must_include_deviceIDs=["a"],
                        allocation_size=2,
                    )
                ]
            ),
        ),
        (
            bp.PreferredAllocationResponse(
                container_responses=[
                    bp.ContainerPreferredAllocationResponse(device_i_ds=["b", "c"])
                ]
            ),
            pb2.PreferredAllocationResponse(
                container_responses=[pb2.ContainerPreferredAllocationResponse(deviceIDs=["b", "c"])]
            ),
        ),
        (
            bp.AllocateRequest(
                container_requests=[bp.ContainerAllocateRequest(devices_ids=["a", "b"])]
            ),
            pb2.AllocateRequest(
                container_requests=[pb2.ContainerAllocateRequest(devices_ids=["a", "b"])]
            ),
        ),
        (
            bp.PreStartContainerRequest(devices_ids=["a", "ü"]),
            pb2.PreStartContainerRequest(devices_ids=["a", "ü"]),
        ),
        (bp.PreStartContainerResponse(), pb2.PreStartContainerResponse()),
    ]


def test_every_other_message_is_byte_identical(official: OfficialApi) -> None:
    for ours, theirs in _other_messages(official.pb2):
        assert bytes(ours) == theirs.SerializeToString(), type(ours).__name__
        assert type(ours).parse(theirs.SerializeToString()) == ours
        parsed = type(theirs)()
        parsed.ParseFromString(bytes(ours))
        assert parsed == theirs


_device = st.tuples(
    st.text(max_size=12),
    st.sampled_from(["Healthy", "Unhealthy", "", "healthy", "Hëalthy"]),
    st.none() | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_device, max_size=8))
def test_random_device_lists_are_byte_identical(
    official: OfficialApi, devices: list[tuple[str, str, list[int] | None]]
) -> None:
    pb2 = official.pb2
    ours = bp.ListAndWatchResponse(
        devices=[
            bp.Device(
                id=i,
                health=h,
                topology=None
                if n is None
                else bp.TopologyInfo(nodes=[bp.NumaNode(id=x) for x in n]),
            )
            for i, h, n in devices
        ]
    )
    theirs = pb2.ListAndWatchResponse()
    for i, h, n in devices:
        device = theirs.devices.add(ID=i, health=h)
        if n is not None:
            device.topology.SetInParent()
            device.topology.nodes.extend(pb2.NUMANode(ID=x) for x in n)
    assert bytes(ours) == theirs.SerializeToString()
    assert bp.ListAndWatchResponse.parse(theirs.SerializeToString()) == ours


# --------------------------------------------------------------------------- end to end


class RichPlugin(bp.DevicePluginBase):
    """A minimal betterproto2/grpclib plugin serving the rich messages."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.register_returned = False
        self.options_before_register_returned: list[bool] = []
        self.done = asyncio.Event()
        self.pre_start_ids: list[list[str]] = []

    async def get_device_plugin_options(self, message: bp.Empty) -> bp.DevicePluginOptions:
        self.calls.append("GetDevicePluginOptions")
        self.options_before_register_returned.append(not self.register_returned)
        return bp.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )

    async def list_and_watch(self, message: bp.Empty) -> AsyncIterator[bp.ListAndWatchResponse]:
        self.calls.append("ListAndWatch")
        yield rich_list_bp()
        await self.done.wait()

    async def get_preferred_allocation(
        self, message: bp.PreferredAllocationRequest
    ) -> bp.PreferredAllocationResponse:
        self.calls.append("GetPreferredAllocation")
        return bp.PreferredAllocationResponse(
            container_responses=[
                bp.ContainerPreferredAllocationResponse(
                    device_i_ds=sorted(r.available_deviceIDs, reverse=True)[: r.allocation_size]
                )
                for r in message.container_requests
            ]
        )

    async def allocate(self, message: bp.AllocateRequest) -> bp.AllocateResponse:
        self.calls.append("Allocate")
        return bp.AllocateResponse(
            container_responses=[
                rich_container_bp(r.devices_ids) for r in message.container_requests
            ]
        )

    async def pre_start_container(
        self, message: bp.PreStartContainerRequest
    ) -> bp.PreStartContainerResponse:
        self.calls.append("PreStartContainer")
        self.pre_start_ids.append(list(message.devices_ids))
        return bp.PreStartContainerResponse()


async def test_betterproto2_plugin_against_grpcio_kubelet(
    official: OfficialApi, sock_dir: Path
) -> None:
    pb2 = official.pb2
    plugin = RichPlugin()
    # grpclib's own ProtoCodec: plain betterproto2 messages, not kdp-host's codec. The
    # server is a PluginServer only to close the kubelet's connections at the end: a bare
    # grpclib Server's wait_closed() never returns on Python 3.12+ while one is open.
    server = PluginServer([plugin], codec=ProtoCodec())
    await server.start(path=str(sock_dir / "fpga.sock"))
    kubelet = InteropKubelet(sock_dir, official, dial_timeout=5.0)
    await kubelet.start()
    try:
        # The plugin registers through grpclib; the grpcio kubelet dials back before returning.
        channel = Channel(path=str(kubelet.socket_path))
        try:
            await bp.RegistrationStub(channel).register(
                bp.RegisterRequest(
                    version="v1beta1",
                    endpoint="fpga.sock",
                    resource_name=RES,
                    options=bp.DevicePluginOptions(
                        pre_start_required=True, get_preferred_allocation_available=True
                    ),
                ),
                timeout=10,
            )
        finally:
            channel.close()
        plugin.register_returned = True
        assert plugin.options_before_register_returned == [True]
        [request] = kubelet.registrations
        assert (request.version, request.endpoint, request.resource_name) == (
            "v1beta1",
            "fpga.sock",
            RES,
        )
        assert request.options.get_preferred_allocation_available
        client = kubelet.plugins[RES]
        assert client.options == pb2.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )

        first = await client.wait_lists(1)
        assert first == rich_list_pb(pb2)

        raw_stream = client.raw_list_and_watch()
        raw = await anext(raw_stream)
        await raw_stream.aclose()
        assert raw == rich_list_pb(pb2).SerializeToString()

        preferred = await kubelet.get_preferred_allocation(RES, ["fpga0", "fpga1", "x"], [], 2)
        assert list(preferred.container_responses[0].deviceIDs) == ["x", "fpga1"]

        response = await kubelet.allocate(RES, ["fpga0", "fpga1"])
        assert response == pb2.AllocateResponse(
            container_responses=[rich_container_pb(pb2, ["fpga0", "fpga1"])]
        )
        raw_request = pb2.AllocateRequest(
            container_requests=[pb2.ContainerAllocateRequest(devices_ids=["fpga0"])]
        ).SerializeToString()
        raw_response = await client.raw_unary("Allocate", raw_request)
        expected = bp.AllocateResponse(container_responses=[rich_container_bp(["fpga0"])])
        assert raw_response == bytes(expected)

        await kubelet.pre_start(RES, ["fpga0", "fpga1"])
        assert plugin.pre_start_ids == [["fpga0", "fpga1"]]
        assert plugin.calls[0] == "GetDevicePluginOptions"

        # The plugin ending its stream is seen as a clean end by grpc-core.
        plugin.done.set()
        await client.wait_for(lambda: client.watch_ended)
        assert client.watch_error is None
    finally:
        plugin.done.set()
        await kubelet.stop()
        server.close()
        server.close_connections()
        async with asyncio.timeout(10):
            await server.wait_closed()


# --------------------------------------------------------------------------- simulator via grpcio


class GrpcioPlugin:
    """A plugin served by grpcio with the official classes, for the simulator's client."""

    def __init__(self, pb2: Any) -> None:
        self.pb2 = pb2
        self.done = asyncio.Event()
        self.preferred_requests: list[Any] = []
        self.allocate_requests: list[Any] = []
        self.pre_start_requests: list[Any] = []

    async def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return self.pb2.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )

    async def ListAndWatch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield rich_list_pb(self.pb2)
        await self.done.wait()

    async def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        self.preferred_requests.append(request)
        return self.pb2.PreferredAllocationResponse(
            container_responses=[
                self.pb2.ContainerPreferredAllocationResponse(deviceIDs=["fpga-ü"])
            ]
        )

    async def Allocate(self, request: Any, context: Any) -> Any:
        self.allocate_requests.append(request)
        return self.pb2.AllocateResponse(
            container_responses=[
                rich_container_pb(self.pb2, list(r.devices_ids)) for r in request.container_requests
            ]
        )

    async def PreStartContainer(self, request: Any, context: Any) -> Any:
        self.pre_start_requests.append(request)
        return self.pb2.PreStartContainerResponse()


async def test_simulator_against_grpcio_plugin_and_client(
    official: OfficialApi, sock_dir: Path
) -> None:
    pb2 = official.pb2
    sim = KubeletSimulator(sock_dir, dial_timeout=0.5)
    await sim.start()
    kubelet = InteropKubelet(sock_dir / "unused", official)  # only its Register client is used
    plugin = GrpcioPlugin(pb2)
    server = grpc.aio.server()
    official.grpc.add_DevicePluginServicer_to_server(plugin, server)
    server.add_insecure_port(f"unix:{sock_dir / 'grpcio.sock'}")
    await server.start()
    try:
        # The simulator's errors reach a grpc-core client as codes.Unknown + the message.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kubelet.register(sim.socket_path, "foo", "grpcio.sock")
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert info.value.details() == 'the ResourceName "foo" is invalid'
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kubelet.register(sim.socket_path, RES, "missing.sock")
        assert info.value.details() == "failed to dial device plugin: context deadline exceeded"

        await kubelet.register(sim.socket_path, RES, "grpcio.sock")
        await sim.wait_for(lambda: sim.capacity(RES) == 5, description="devices from grpcio")
        snap = sim.resource(RES)
        assert snap.allocatable == 3
        assert snap.unhealthy_ids == {"fpga1", "odd"}
        assert snap.devices["odd"].numa == (-1, 2**40)
        assert snap.devices["empty-topology"].numa == ()

        response = await sim.allocate(RES, 2, pod_uid="pod")
        [preferred] = plugin.preferred_requests
        creq = preferred.container_requests[0]
        assert sorted(creq.available_deviceIDs) == ["empty-topology", "fpga-ü", "fpga0"]
        assert (list(creq.must_include_deviceIDs), creq.allocation_size) == ([], 2)
        [allocate] = plugin.allocate_requests
        ids = list(allocate.container_requests[0].devices_ids)
        assert "fpga-ü" in ids and len(ids) == 2
        assert response == rich_container_bp(ids)
        assert [list(r.devices_ids) for r in plugin.pre_start_requests] == [ids]
    finally:
        plugin.done.set()
        await sim.stop()
        await server.stop(None)
        with contextlib.suppress(Exception):
            await kubelet.stop()
