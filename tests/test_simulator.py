"""The kubelet simulator against tiny in-test grpclib plugins.

Section numbers (§N) refer to docs/kubelet-contract.md.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateResponse,
    ContainerPreferredAllocationResponse,
    Device,
    DevicePluginBase,
    DevicePluginOptions,
    Empty,
    ListAndWatchResponse,
    Mount,
    NumaNode,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
    PreStartContainerRequest,
    PreStartContainerResponse,
    RegisterRequest,
    RegistrationStub,
    TopologyInfo,
)
from kdp_host.k8s_names import is_extended_resource_name
from kdp_host.simulator import (
    CHECKPOINT_NAME,
    KUBELET_SOCKET_NAME,
    DeviceView,
    KubeletSimulator,
    PluginOptions,
    SimulatorAllocationError,
    checkpoint_checksum,
    go_quote,
    run_simulator,
)
from kdp_host.simulator.checkpoint import CheckpointEncoder, CheckpointFile
from kdp_host.simulator.listwire import WireError, decode_device_list
from kdp_host.simulator.plugins import READ_AHEAD
from kdp_host.simulator.transport import PluginClient

from .conftest import wait_until

RES = "vendor.example/fpga"
WAIT = 10.0


# --------------------------------------------------------------------------- helpers


def dev(dev_id: str, health: str = "Healthy", numa: Sequence[int] = ()) -> Device:
    topology = TopologyInfo(nodes=[NumaNode(id=n) for n in numa]) if numa else None
    return Device(id=dev_id, health=health, topology=topology)


def devs(*ids: str) -> list[Device]:
    return [dev(i) for i in ids]


class FakePlugin(DevicePluginBase):
    """A minimal device plugin: a queue feeds ListAndWatch, None ends the stream."""

    def __init__(
        self,
        devices: list[Device],
        *,
        pre_start: bool = False,
        preferred: bool = False,
        preferred_answer: Callable[[Any], list[str]] | None = None,
        allocate_answer: Callable[[Any], Any] | None = None,
    ) -> None:
        self.options = DevicePluginOptions(
            pre_start_required=pre_start, get_preferred_allocation_available=preferred
        )
        self.devices = devices
        self.updates: asyncio.Queue[list[Device] | None] = asyncio.Queue()
        self.calls: list[str] = []
        self.preferred_requests: list[Any] = []
        self.allocate_requests: list[Any] = []
        self.pre_start_requests: list[Any] = []
        self.preferred_answer = preferred_answer
        self.allocate_answer = allocate_answer
        self.options_gate: asyncio.Event | None = None
        self.options_seen_before: list[bool] = []
        self.register_returned = False

    def push(self, devices: list[Device]) -> None:
        self.updates.put_nowait(devices)

    def end_stream(self) -> None:
        self.updates.put_nowait(None)

    async def get_device_plugin_options(self, message: Empty) -> DevicePluginOptions:
        self.calls.append("GetDevicePluginOptions")
        self.options_seen_before.append(self.register_returned)
        if self.options_gate is not None:
            await self.options_gate.wait()
        return self.options

    async def list_and_watch(self, message: Empty) -> AsyncIterator[ListAndWatchResponse]:
        self.calls.append("ListAndWatch")
        yield ListAndWatchResponse(devices=self.devices)
        while True:
            item = await self.updates.get()
            if item is None:
                return
            yield ListAndWatchResponse(devices=item)

    async def get_preferred_allocation(
        self, message: PreferredAllocationRequest
    ) -> PreferredAllocationResponse:
        self.calls.append("GetPreferredAllocation")
        self.preferred_requests.append(message)
        ids = self.preferred_answer(message) if self.preferred_answer else []
        return PreferredAllocationResponse(
            container_responses=[ContainerPreferredAllocationResponse(device_i_ds=ids)]
        )

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        self.calls.append("Allocate")
        self.allocate_requests.append(message)
        if self.allocate_answer is not None:
            answer: AllocateResponse = self.allocate_answer(message)
            return answer
        return AllocateResponse(
            container_responses=[
                ContainerAllocateResponse(
                    envs={"FPGA_IDS": ",".join(req.devices_ids)},
                    mounts=[Mount(container_path="/data", host_path="/srv", read_only=True)],
                )
                for req in message.container_requests
            ]
        )

    async def pre_start_container(
        self, message: PreStartContainerRequest
    ) -> PreStartContainerResponse:
        self.calls.append("PreStartContainer")
        self.pre_start_requests.append(message)
        return PreStartContainerResponse()


class Env:
    """A simulator plus plugin servers on one short socket dir; torn down sim first."""

    def __init__(self, sock_dir: Path, **sim_kwargs: Any) -> None:
        self.dir = sock_dir
        self.sim = KubeletSimulator(sock_dir, **sim_kwargs)
        self.servers: list[Server] = []

    async def serve(self, plugin: FakePlugin, endpoint: str) -> Server:
        server = Server([plugin])
        await server.start(path=str(self.dir / endpoint))
        self.servers.append(server)
        return server

    async def stop_server(self, server: Server) -> None:
        server.close()
        await server.wait_closed()
        self.servers.remove(server)

    async def register(
        self,
        endpoint: str,
        resource: str = RES,
        *,
        version: str = "v1beta1",
        plugin: FakePlugin | None = None,
    ) -> None:
        channel = Channel(path=str(self.dir / KUBELET_SOCKET_NAME))
        try:
            await RegistrationStub(channel).register(
                RegisterRequest(version=version, endpoint=endpoint, resource_name=resource),
                timeout=30,
            )
        finally:
            channel.close()
        if plugin is not None:
            plugin.register_returned = True

    async def serve_and_register(
        self, plugin: FakePlugin, endpoint: str, resource: str = RES
    ) -> Server:
        server = await self.serve(plugin, endpoint)
        await self.register(endpoint, resource, plugin=plugin)
        return server

    async def aclose(self) -> None:
        await self.sim.stop()
        for server in list(self.servers):
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kdp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def env(sock_dir: Path) -> AsyncIterator[Env]:
    environment = Env(sock_dir, dial_timeout=3.0)
    await environment.sim.start()
    try:
        yield environment
    finally:
        await environment.aclose()


async def register_error(env: Env, endpoint: str, resource: str, version: str = "v1beta1") -> str:
    with pytest.raises(GRPCError) as info:
        await env.register(endpoint, resource, version=version)
    assert info.value.status is Status.UNKNOWN
    return str(info.value.message)


# -------------------------------------------------------- validation (docs/kubelet-contract.md §1)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("vendor.example/fpga", True),
        ("example.com/My_Device.v2", True),
        ("a/b", True),
        ("nvidia.com/gpu", True),
        ("foo", False),
        ("kubernetes.io/foo", False),
        ("foo.kubernetes.io/bar", False),
        ("requests.foo", False),
        ("requests.vendor.example/foo", False),
        ("vendor.example/", False),
        ("/fpga", False),
        ("a/b/c", False),
        ("Vendor.Example/fpga", False),
        ("vendor_example/fpga", False),
        ("vendor.example/-fpga", False),
        ("vendor.example/fpga-", False),
        ("vendor.example/" + "x" * 63, True),
        ("vendor.example/" + "x" * 64, False),
        ("vendor.example/fpga\n", False),
        ("x" * 236 + ".example/fpga", True),  # len("requests." + prefix) == 253
        ("x" * 237 + ".example/fpga", False),
    ],
)
def test_is_extended_resource_name(name: str, valid: bool) -> None:
    assert is_extended_resource_name(name) is valid


def test_go_quote() -> None:
    assert go_quote("v1") == '"v1"'
    assert go_quote('a"b\\c\n\x00é') == '"a\\"b\\\\c\\n\\x00é"'


async def test_register_rejects_unsupported_version(env: Env) -> None:
    message = await register_error(env, "p.sock", RES, version="v1alpha")
    assert message == (
        'requested API version "v1alpha" is not supported by kubelet.'
        ' Supported version is ["v1beta1"]'
    )
    assert env.sim.register_attempts[-1].error == message
    assert env.sim.snapshot() == {}


@pytest.mark.parametrize(
    "name", ["foo", "kubernetes.io/foo", "requests.foo", "requests.vendor.example/foo"]
)
async def test_register_rejects_invalid_resource_name(env: Env, name: str) -> None:
    message = await register_error(env, "p.sock", name)
    assert message == f'the ResourceName "{name}" is invalid'
    assert name not in env.sim.snapshot()


async def test_version_is_checked_before_name(env: Env) -> None:
    message = await register_error(env, "p.sock", "foo", version="")
    assert message.startswith('requested API version "" is not supported')


# ------------------------------------------------------ dial-back (docs/kubelet-contract.md §1-§3)


async def test_register_dials_back_before_returning(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b"), pre_start=True, preferred=True)
    await env.serve(plugin, "p.sock")
    await env.register("p.sock", plugin=plugin)
    # Options were fetched inside Register, before it returned, exactly once.
    assert plugin.calls[0] == "GetDevicePluginOptions"
    assert plugin.options_seen_before == [False]
    snap = env.sim.resource(RES)
    assert snap.registrations == 1
    assert snap.options == PluginOptions(True, True)
    assert snap.socket_path == env.dir / "p.sock"
    assert not snap.endpoint_stopped
    await env.sim.wait_for(lambda: env.sim.capacity(RES) == 2)
    assert plugin.calls.count("GetDevicePluginOptions") == 1
    assert env.sim.register_attempts[-1].error is None


async def test_register_fails_when_plugin_socket_is_not_served(sock_dir: Path) -> None:
    environment = Env(sock_dir, dial_timeout=0.5)
    await environment.sim.start()
    try:
        start = time.monotonic()
        message = await register_error(environment, "missing.sock", RES)
        elapsed = time.monotonic() - start
        assert message == "failed to dial device plugin: context deadline exceeded"
        assert 0.4 <= elapsed < 5.0
        # A socket file nobody listens on is no better.
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(sock_dir / "dead.sock"))
            message = await register_error(environment, "dead.sock", RES)
        assert message.startswith("failed to dial device plugin:")
        assert RES not in environment.sim.snapshot()
    finally:
        await environment.aclose()


async def test_register_succeeds_when_plugin_starts_serving_during_the_dial(env: Env) -> None:
    plugin = FakePlugin(devs("a"))
    registering = asyncio.create_task(env.register("late.sock"))
    await env.sim.wait_for(lambda: env.sim.plugin_clients().get(RES) == env.dir / "late.sock")
    await env.serve(plugin, "late.sock")
    await asyncio.wait_for(registering, WAIT)
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 1)


async def test_blocking_get_device_plugin_options_on_register_deadlocks(sock_dir: Path) -> None:
    environment = Env(sock_dir, dial_timeout=0.5)
    await environment.sim.start()
    try:
        plugin = FakePlugin(devs("a"))
        plugin.options_gate = asyncio.Event()  # released only once Register returns: wrong
        await environment.serve(plugin, "p.sock")
        message = await register_error(environment, "p.sock", RES)
        plugin.options_gate.set()
        assert message == "failed to get device plugin options: context deadline exceeded"
        assert environment.sim.snapshot().get(RES) is None
    finally:
        await environment.aclose()


async def test_options_error_fails_the_registration(env: Env) -> None:
    class NoOptions(FakePlugin):
        async def get_device_plugin_options(self, message: Empty) -> DevicePluginOptions:
            raise GRPCError(Status.UNIMPLEMENTED, "nope")

    await env.serve(NoOptions(devs("a")), "p.sock")
    message = await register_error(env, "p.sock", RES)
    assert message == (
        "failed to get device plugin options: rpc error: code = Unimplemented desc = nope"
    )


# ------------------------------------------------------ ListAndWatch (docs/kubelet-contract.md §4)


async def test_every_message_is_a_full_list(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b", "c"))
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.capacity(RES) == 3)
    plugin.push(devs("a", "c"))
    await sim.wait_for(lambda: sim.resource(RES).list_and_watch_messages == 2)
    snap = sim.resource(RES)
    assert set(snap.devices) == {"a", "c"}
    assert (snap.capacity, snap.allocatable) == (2, 2)
    plugin.push(devs("d"))
    await sim.wait_for(lambda: sim.resource(RES).list_and_watch_messages == 3)
    assert set(sim.resource(RES).devices) == {"d"}
    plugin.push([])
    await sim.wait_for(lambda: sim.resource(RES).list_and_watch_messages == 4)
    snap = sim.resource(RES)
    assert snap.known and snap.capacity == 0 and not snap.endpoint_stopped


async def test_only_exact_healthy_string_is_healthy(env: Env) -> None:
    healths = ["Healthy", "healthy", "Unhealthy", "", "HEALTHY", " Healthy"]
    plugin = FakePlugin([dev(f"d{i}", h) for i, h in enumerate(healths)])
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.capacity(RES) == 6)
    snap = env.sim.resource(RES)
    assert snap.allocatable == 1
    assert snap.healthy_ids == {"d0"}
    assert {d.id: d.health for d in snap.devices.values()} == {
        f"d{i}": h for i, h in enumerate(healths)
    }
    # An unhealthy device changing back to healthy counts again.
    plugin.push([dev("d0"), dev("d1", "Healthy")])
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    assert env.sim.capacity(RES) == 2


async def test_topology_is_recorded(env: Env) -> None:
    plugin = FakePlugin([dev("a", numa=[0]), dev("b", numa=[0, 1]), dev("c")])
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.capacity(RES) == 3)
    devices = env.sim.resource(RES).devices
    assert devices["a"].numa == (0,)
    assert devices["b"].numa == (0, 1)
    assert devices["c"].numa == ()


async def test_stream_end_drops_allocatable_and_never_reconnects(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b", "c", "d"))
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    plugin.end_stream()
    await sim.wait_for(lambda: sim.resource(RES).endpoint_stopped)
    snap = sim.resource(RES)
    assert (snap.capacity, snap.allocatable) == (4, 0)
    assert snap.unhealthy_ids == {"a", "b", "c", "d"}
    assert snap.stopped_at is not None
    with pytest.raises(SimulatorAllocationError) as info:
        await sim.allocate(RES, 1)
    assert str(info.value) == f"no healthy devices present; cannot allocate unhealthy devices {RES}"
    assert plugin.calls.count("ListAndWatch") == 1
    # Only a new Register brings it back.
    await env.register("p.sock")
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    assert sim.resource(RES).registrations == 2
    assert not sim.resource(RES).endpoint_stopped
    assert sim.stale_disconnects == 0


async def test_grace_period_deletes_a_stopped_resource(sock_dir: Path) -> None:
    now = [1000.0]
    environment = Env(sock_dir, dial_timeout=3.0, clock=lambda: now[0])
    await environment.sim.start()
    sim = environment.sim
    try:
        plugin = FakePlugin(devs("a", "b"))
        await environment.serve_and_register(plugin, "p.sock")
        await sim.wait_for(lambda: sim.allocatable(RES) == 2)
        assert await sim.get_capacity() == ({RES: 2}, {RES: 2}, [])
        plugin.end_stream()
        await sim.wait_for(lambda: sim.resource(RES).endpoint_stopped)
        now[0] += 299
        assert await sim.get_capacity() == ({RES: 2}, {RES: 0}, [])
        now[0] += 2
        assert await sim.get_capacity() == ({}, {}, [RES])
        assert not sim.resource(RES).known
        checkpoint = await sim.read_checkpoint()
        assert checkpoint is not None
        assert checkpoint["Data"]["RegisteredDevices"] == {}
    finally:
        await environment.aclose()


# ----------------------------------------------------- allocation (docs/kubelet-contract.md §5-§8)


async def test_allocation_errors(env: Env) -> None:
    sim = env.sim
    with pytest.raises(
        SimulatorAllocationError, match=r"^cannot allocate unregistered device x/y$"
    ):
        await sim.allocate("x/y", 1)
    plugin = FakePlugin(devs("a", "b", "c", "d"))
    await env.serve_and_register(plugin, "p.sock")
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    with pytest.raises(SimulatorAllocationError) as info:
        await sim.allocate(RES, 5)
    assert str(info.value) == (
        f"requested number of devices unavailable for {RES}. Requested: 5, Available: 4"
    )
    await sim.allocate(RES, 3, pod_uid="p1")
    with pytest.raises(SimulatorAllocationError) as info:
        await sim.allocate(RES, 2, pod_uid="p2")
    assert str(info.value).endswith("Requested: 2, Available: 1")
    with pytest.raises(SimulatorAllocationError, match="changed request"):
        await sim.allocate(RES, 2, pod_uid="p1")
    assert plugin.calls.count("Allocate") == 1


async def test_allocate_sends_one_container_request_and_records(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b", "c"))
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 3)
    response = await sim.allocate(RES, 2, pod_uid="pod-a", container="main")
    [request] = plugin.allocate_requests
    assert len(request.container_requests) == 1
    ids = list(request.container_requests[0].devices_ids)
    assert len(ids) == 2 and set(ids) <= {"a", "b", "c"}
    assert response.envs == {"FPGA_IDS": ",".join(ids)}
    allocation = sim.allocation("pod-a", "main", RES)
    assert allocation is not None and set(allocation.device_ids) == set(ids)
    assert sim.resource(RES).allocated_ids == set(ids)
    assert sim.allocate_calls[-1].device_ids == tuple(ids)
    # Allocatable is not reduced by allocations (the scheduler accounts for them).
    assert sim.allocatable(RES) == 3
    # A container that already has its devices gets no new RPC.
    again = await sim.allocate(RES, 2, pod_uid="pod-a", container="main")
    assert again == response and len(plugin.allocate_requests) == 1
    assert plugin.calls.count("PreStartContainer") == 0  # not required
    # Releasing the pod frees the devices.
    assert await sim.release("pod-a") == 2
    await sim.allocate(RES, 3, pod_uid="pod-b")
    assert sim.resource(RES).allocated_ids == {"a", "b", "c"}


async def test_allocate_without_container_responses_is_an_error(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b"), allocate_answer=lambda _req: AllocateResponse())
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    with pytest.raises(SimulatorAllocationError) as info:
        await env.sim.allocate(RES, 1)
    assert str(info.value).startswith("no containers return in allocation response")
    assert env.sim.allocations == []
    # Like the kubelet, the device stays counted as allocated until pods are cleaned up.
    assert len(env.sim.resource(RES).allocated_ids) == 1


async def test_allocate_rpc_error_restores_devices(env: Env) -> None:
    def fail(_request: Any) -> Any:
        raise GRPCError(Status.INTERNAL, "boom")

    plugin = FakePlugin(devs("a", "b"), allocate_answer=fail)
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    with pytest.raises(SimulatorAllocationError) as info:
        await env.sim.allocate(RES, 2)
    assert str(info.value) == "rpc error: code = Internal desc = boom"
    assert env.sim.resource(RES).allocated_ids == set()
    assert env.sim.allocate_calls[-1].error == "rpc error: code = Internal desc = boom"


async def test_preferred_allocation_call_pattern(env: Env) -> None:
    plugin = FakePlugin(
        devs("d0", "d1", "d2", "d3"),
        pre_start=True,
        preferred=True,
        preferred_answer=lambda req: ["d3", "bogus"],
    )
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    await sim.allocate(RES, 2, pod_uid="p1")
    assert plugin.calls[-3:] == ["GetPreferredAllocation", "Allocate", "PreStartContainer"]
    [pref] = plugin.preferred_requests
    assert len(pref.container_requests) == 1
    creq = pref.container_requests[0]
    assert sorted(creq.available_deviceIDs) == ["d0", "d1", "d2", "d3"]
    assert list(creq.must_include_deviceIDs) == []
    assert creq.allocation_size == 2
    # The answer is intersected with the available set and the kubelet fills the rest.
    chosen = set(plugin.allocate_requests[-1].container_requests[0].devices_ids)
    assert "d3" in chosen and "bogus" not in chosen and len(chosen) == 2
    assert set(plugin.pre_start_requests[-1].devices_ids) == chosen
    call = sim.preferred_allocation_calls[-1]
    assert call.response_ids == ("d3", "bogus") and call.size == 2
    # The next pod only gets the remaining devices offered.
    await sim.allocate(RES, 1, pod_uid="p2")
    offered = set(plugin.preferred_requests[-1].container_requests[0].available_deviceIDs)
    assert offered == {"d0", "d1", "d2", "d3"} - chosen
    assert plugin.preferred_requests[-1].container_requests[0].allocation_size == 1
    # PreStartContainer again at a container restart, with all of its devices.
    await sim.pre_start_container("p1", "c0", RES)
    assert set(plugin.pre_start_requests[-1].devices_ids) == chosen


async def test_no_preferred_allocation_call_unless_advertised(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b"), preferred_answer=lambda req: ["b"])
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    await env.sim.allocate(RES, 1)
    assert "GetPreferredAllocation" not in plugin.calls
    assert env.sim.preferred_allocation_calls == []


async def test_preferred_allocation_error_fails_the_allocation(env: Env) -> None:
    def fail(_request: Any) -> list[str]:
        raise GRPCError(Status.UNAVAILABLE, "busy")

    plugin = FakePlugin(devs("a", "b"), preferred=True, preferred_answer=fail)
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    with pytest.raises(SimulatorAllocationError) as info:
        await env.sim.allocate(RES, 1)
    assert str(info.value) == (
        "device plugin GetPreferredAllocation rpc failed with err:"
        " rpc error: code = Unavailable desc = busy"
    )
    assert "Allocate" not in plugin.calls


async def test_numa_affinity_aligned_and_unaligned(env: Env) -> None:
    devices = [dev("n0a", numa=[0]), dev("n0b", numa=[0]), dev("n1a", numa=[1])]
    devices += [dev("n1b", numa=[1]), dev("free")]
    plugin = FakePlugin(devices, preferred=True)
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 5)
    # needed (1) < aligned (2): only the aligned devices are offered.
    await sim.allocate(RES, 1, pod_uid="p1", numa_affinity={1})
    creq = plugin.preferred_requests[-1].container_requests[0]
    assert sorted(creq.available_deviceIDs) == ["n1a", "n1b"]
    alloc = sim.allocation("p1", "c0", RES)
    assert alloc is not None and alloc.device_ids[0].startswith("n1")
    assert alloc.devices_per_numa == {1: alloc.device_ids}
    # needed (3) >= aligned (2): aligned taken first, then everything is offered with them
    # as must-include.
    await sim.allocate(RES, 3, pod_uid="p2", numa_affinity={0})
    creq = plugin.preferred_requests[-1].container_requests[0]
    assert sorted(creq.must_include_deviceIDs) == ["n0a", "n0b"]
    remaining_n1 = {"n1a", "n1b"} - set(alloc.device_ids)
    assert sorted(creq.available_deviceIDs) == sorted({"n0a", "n0b", "free"} | remaining_n1)
    assert creq.allocation_size == 3
    alloc2 = sim.allocation("p2", "c0", RES)
    assert alloc2 is not None and {"n0a", "n0b"} <= set(alloc2.device_ids)
    # Without an affinity the preferred call offers every available device.
    await sim.release("p2")
    await sim.allocate(RES, 1, pod_uid="p3")
    creq = plugin.preferred_requests[-1].container_requests[0]
    assert len(creq.available_deviceIDs) == 4


# ------------------------------------------- PreStartContainer (docs/kubelet-contract.md §8)


class PreStartPlugin(FakePlugin):
    """A plugin whose PreStartContainer handler sees the call's stream (its deadline) and can
    be told to fail or hang, and that counts how many calls run at once."""

    def __init__(self, devices: list[Device], *, pre_start: bool = True) -> None:
        super().__init__(devices, pre_start=pre_start)
        self.remaining: list[float] = []
        self.deadlines: list[float] = []
        """The deadline each call had, as the plugin got it (time.monotonic())."""
        self.failure: GRPCError | None = None
        self.hang = False
        self.cancelled = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.release_when = 1  # calls in flight before any of them answers
        self.enough = asyncio.Event()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        mapping["/v1beta1.DevicePlugin/PreStartContainer"] = grpclib.const.Handler(
            self._pre_start,
            Cardinality.UNARY_UNARY,
            PreStartContainerRequest,
            PreStartContainerResponse,
        )
        return mapping

    async def _pre_start(
        self, stream: grpclib.server.Stream[PreStartContainerRequest, PreStartContainerResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        self.calls.append("PreStartContainer")
        self.pre_start_requests.append(request)
        assert stream.deadline is not None, "the kubelet sends its deadline with the call"
        left = stream.deadline.time_remaining()
        self.remaining.append(left)
        self.deadlines.append(time.monotonic() + left)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.release_when:
            self.enough.set()
        try:
            await asyncio.wait_for(self.enough.wait(), WAIT)
            if self.hang:
                await asyncio.Event().wait()
            if self.failure is not None:
                raise self.failure
            await stream.send_message(PreStartContainerResponse())
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.in_flight -= 1


async def test_pre_start_follows_allocate_with_the_containers_devices_and_deadline(
    env: Env,
) -> None:
    plugin = PreStartPlugin(devs("a", "b", "c", "d"))
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    called = time.monotonic()
    await sim.allocate(RES, 2, pod_uid="p1", container="main")
    await sim.allocate(RES, 1, pod_uid="p1", container="side")
    assert plugin.calls[-4:] == ["Allocate", "PreStartContainer", "Allocate", "PreStartContainer"]
    main = sim.allocation("p1", "main", RES)
    side = sim.allocation("p1", "side", RES)
    assert main is not None and side is not None
    first, second = plugin.pre_start_requests
    assert list(first.devices_ids) == list(main.device_ids) and len(main.device_ids) == 2
    assert list(second.devices_ids) == list(side.device_ids) and len(side.device_ids) == 1
    # The kubelet's 30 s deadline travels with the call, never shorter (as grpc-go sends it):
    # a plugin that works to its deadline is not cut off before the kubelet's passes.
    assert all(25.0 < left <= 30.0 for left in plugin.remaining), plugin.remaining
    assert plugin.deadlines[0] >= called + 30.0
    assert [(c.container, c.error, c.timeout) for c in sim.pre_start_calls] == [
        ("main", None, 30.0),
        ("side", None, 30.0),
    ]
    # A container restart calls it again with the same devices, and allocates nothing.
    await sim.pre_start_container("p1", "main", RES)
    assert plugin.calls[-1] == "PreStartContainer" and plugin.calls.count("Allocate") == 2
    assert list(plugin.pre_start_requests[-1].devices_ids) == list(main.device_ids)
    # Admission alone (no container start yet) does not call it.
    await sim.allocate(RES, 1, pod_uid="p2", pre_start=False)
    assert plugin.calls[-1] == "Allocate"


async def test_no_pre_start_unless_the_options_ask_for_it(env: Env) -> None:
    plugin = PreStartPlugin(devs("a", "b"), pre_start=False)
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    await env.sim.allocate(RES, 1, pod_uid="p1")
    await env.sim.pre_start_container("p1", "c0", RES)
    assert "PreStartContainer" not in plugin.calls
    assert env.sim.pre_start_calls == []


async def test_pre_start_error_fails_the_container_start_not_the_admission(env: Env) -> None:
    plugin = PreStartPlugin(devs("a", "b"))
    plugin.failure = GRPCError(Status.INTERNAL, "bitstream did not load")
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 2)
    with pytest.raises(SimulatorAllocationError) as info:
        await sim.allocate(RES, 1, pod_uid="p1")
    text = "rpc error: code = Internal desc = bitstream did not load"
    assert str(info.value) == f"device plugin PreStartContainer rpc failed with err: {text}"
    assert sim.pre_start_calls[-1].error == text
    # The devices stay allocated to the container: only its start failed.
    allocation = sim.allocation("p1", "c0", RES)
    assert allocation is not None
    assert list(plugin.pre_start_requests[-1].devices_ids) == list(allocation.device_ids)


async def test_pre_start_hang_ends_at_the_kubelet_deadline(sock_dir: Path) -> None:
    environment = Env(sock_dir, dial_timeout=3.0, pre_start_timeout=0.3)
    await environment.sim.start()
    try:
        plugin = PreStartPlugin(devs("a"))
        plugin.hang = True
        await environment.serve_and_register(plugin, "p.sock")
        sim = environment.sim
        await sim.wait_for(lambda: sim.allocatable(RES) == 1)
        called = time.monotonic()
        with pytest.raises(SimulatorAllocationError) as info:
            await sim.allocate(RES, 1)
        # the kubelet's own context expires first (the plugin's copy is not shorter), so the
        # kubelet reports its deadline, not the plugin's DEADLINE_EXCEEDED status
        assert plugin.deadlines[0] >= called + 0.3
        assert str(info.value) == (
            "device plugin PreStartContainer rpc failed with err:"
            " rpc error: code = DeadlineExceeded desc = context deadline exceeded"
        )
        assert 0.0 < plugin.remaining[0] <= 0.3
        assert sim.pre_start_calls[-1].timeout == 0.3
        # The plugin's handler is cancelled when the deadline passes.
        await asyncio.wait_for(plugin.cancelled.wait(), WAIT)
    finally:
        await environment.aclose()


async def test_container_starts_run_concurrently(env: Env) -> None:
    plugin = PreStartPlugin(devs("a", "b", "c"))
    plugin.release_when = 3  # no call answers before all three are in flight
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.allocatable(RES) == 3)
    for pod in ("p1", "p2", "p3"):
        await sim.allocate(RES, 1, pod_uid=pod, pre_start=False)
    await asyncio.gather(*(sim.pre_start_container(pod, "c0", RES) for pod in ("p1", "p2", "p3")))
    assert plugin.most_in_flight == 3
    assert sorted(d for r in plugin.pre_start_requests for d in r.devices_ids) == ["a", "b", "c"]


# ------------------------------------------------------- checkpoint (docs/kubelet-contract.md §10)


async def test_checkpoint_contents(env: Env) -> None:
    plugin = FakePlugin([dev("a", numa=[1]), dev("b"), dev("c", "Unhealthy")])
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.capacity(RES) == 3)
    checkpoint = await sim.read_checkpoint()
    assert checkpoint is not None
    assert checkpoint["Data"] == {"PodDeviceEntries": None, "RegisteredDevices": {RES: ["a", "b"]}}
    assert checkpoint["Checksum"] == checkpoint_checksum(checkpoint["Data"])
    response = await sim.allocate(RES, 2, pod_uid="uid-1", container="ctr")
    checkpoint = await sim.read_checkpoint()
    assert checkpoint is not None
    [entry] = checkpoint["Data"]["PodDeviceEntries"]
    assert entry["PodUID"] == "uid-1"
    assert entry["ContainerName"] == "ctr"
    assert entry["ResourceName"] == RES
    assert entry["DeviceIDs"] == {"1": ["a"], "-1": ["b"]}
    stored = ContainerAllocateResponse.parse(base64.b64decode(entry["AllocResp"]))
    assert stored == response
    assert checkpoint["Checksum"] == checkpoint_checksum(checkpoint["Data"])
    # The file is replaced atomically: no temp file is left behind.
    assert set(os.listdir(env.dir)) == {CHECKPOINT_NAME, KUBELET_SOCKET_NAME, "p.sock"}


async def test_checkpoint_is_read_by_kdp_host_as_the_kubelets(env: Env) -> None:
    """The simulator's checksum is the real kubelet's (FNV-32a over the go-spew rendering):
    kdp-host's reader takes its file as usable, not `kubelet_checkpoint_unusable`."""
    from kdp_host.kubelet_checkpoint import parse_checkpoint

    plugin = FakePlugin([dev("a", numa=[1]), dev("b"), dev("c", "Unhealthy")])
    await env.serve_and_register(plugin, "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.capacity(RES) == 3)
    assert parse_checkpoint((env.dir / CHECKPOINT_NAME).read_bytes()) == []  # nothing handed out
    await sim.allocate(RES, 2, pod_uid="uid-1", container="ctr")
    await sim.read_checkpoint()  # (every write asked for has landed)
    [handed] = parse_checkpoint((env.dir / CHECKPOINT_NAME).read_bytes())
    assert (handed.resource, handed.ids) == (RES, ("a", "b"))
    # Release does not rewrite the checkpoint.
    await sim.release("uid-1")
    checkpoint = await sim.read_checkpoint()
    assert checkpoint is not None and len(checkpoint["Data"]["PodDeviceEntries"]) == 1


# ----------------------------------------------------------- restart (docs/kubelet-contract.md §9)


async def test_restart_cleans_directory_and_keeps_checkpoint(env: Env) -> None:
    sim = env.sim
    plugin = FakePlugin(devs("a", "b", "c", "d"))
    server = await env.serve_and_register(plugin, "p.sock")
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    await sim.allocate(RES, 1, pod_uid="keep")
    (env.dir / "stray.txt").write_text("x")
    (env.dir / "sub").mkdir()
    (env.dir / "sub" / "inner.sock").write_text("y")
    checkpoint_before = (env.dir / CHECKPOINT_NAME).read_bytes()

    await sim.restart()

    assert set(os.listdir(env.dir)) == {CHECKPOINT_NAME, KUBELET_SOCKET_NAME, "sub"}
    assert (env.dir / "sub" / "inner.sock").read_text() == "y"
    assert (env.dir / CHECKPOINT_NAME).read_bytes() == checkpoint_before
    assert sorted(sim.removed_at_start) == ["p.sock", "stray.txt"]
    assert not (env.dir / "DEPRECATION").exists()
    # Capacity 0 and a stopped endpoint until the plugin registers again.
    snap = sim.resource(RES)
    assert snap.known and snap.capacity == 0 and snap.endpoint_stopped
    assert snap.options is None
    with pytest.raises(SimulatorAllocationError, match="no healthy devices present"):
        await sim.allocate(RES, 1, pod_uid="new")
    restored = sim.allocation("keep", "c0", RES)
    assert restored is not None and len(restored.device_ids) == 1
    # The plugin notices its socket is gone, serves again and re-registers.
    await env.stop_server(server)
    await env.serve_and_register(plugin, "p.sock")
    await sim.wait_for(lambda: sim.allocatable(RES) == 4)
    assert sim.resource(RES).registrations == 2
    assert sim.resource(RES).allocated_ids == set(restored.device_ids)
    assert sim.starts == 2


async def test_stop_marks_resources_unhealthy_and_removes_socket(env: Env) -> None:
    plugin = FakePlugin(devs("a", "b"))
    await env.serve_and_register(plugin, "p.sock")
    await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
    await env.sim.stop()
    assert not (env.dir / KUBELET_SOCKET_NAME).exists()
    snap = env.sim.resource(RES)
    assert (snap.capacity, snap.allocatable, snap.endpoint_stopped) == (2, 0, True)
    await env.sim.stop()  # idempotent


async def test_a_stopped_kubelet_takes_no_register_on_a_connection_kept_open(env: Env) -> None:
    """grpc-go's Stop closes every connection; grpclib's close leaves a client's connection
    open. A Register sent on it after the stop must fail UNAVAILABLE and change nothing: it
    once dialled the plugin back and connected it to the next start's fresh state."""
    plugin = FakePlugin(devs("a", "b"))
    await env.serve(plugin, "p.sock")
    channel = Channel(path=str(env.dir / KUBELET_SOCKET_NAME))
    try:
        stub = RegistrationStub(channel)
        request = RegisterRequest(version="v1beta1", endpoint="p.sock", resource_name=RES)
        await stub.register(request, timeout=30)
        await env.sim.wait_for(lambda: env.sim.allocatable(RES) == 2)
        await env.sim.stop()
        attempts = len(env.sim.register_attempts)
        with pytest.raises(GRPCError) as info:
            await stub.register(request, timeout=30)
    finally:
        channel.close()
    assert (info.value.status, info.value.message) == (Status.UNAVAILABLE, "transport is closing")
    assert len(env.sim.register_attempts) == attempts
    snap = env.sim.resource(RES)
    assert (snap.registrations, snap.endpoint_stopped, snap.allocatable) == (1, True, 0)


async def test_cleanup_sockets_only_option(sock_dir: Path) -> None:
    (sock_dir / "notes.txt").write_text("x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_dir / "old.sock"))
    sim = KubeletSimulator(sock_dir, cleanup_sockets_only=True)
    await sim.start()
    try:
        assert set(os.listdir(sock_dir)) == {KUBELET_SOCKET_NAME, "notes.txt"}
    finally:
        await sim.stop()


# --------------------------------------------------- re-registration (docs/kubelet-contract.md §9)


async def test_old_stream_ending_after_new_registration_disconnects_new_client(env: Env) -> None:
    sim = env.sim
    old = FakePlugin(devs("a", "b"))
    new = FakePlugin(devs("a", "b", "c"))
    await env.serve_and_register(old, "old.sock")
    await sim.wait_for(lambda: sim.capacity(RES) == 2)
    await env.serve_and_register(new, "new.sock")
    await sim.wait_for(lambda: sim.capacity(RES) == 3)
    assert sim.resource(RES).socket_path == env.dir / "new.sock"
    # The old stream keeps feeding the same resource: the kubelet does not close it.
    old.push(devs("x"))
    await sim.wait_for(lambda: set(sim.resource(RES).devices) == {"x"})
    new.push(devs("a", "b", "c"))
    await sim.wait_for(lambda: sim.capacity(RES) == 3)
    # The old plugin now ends its stream: the kubelet disconnects the NEW client.
    old.end_stream()
    await sim.wait_for(lambda: sim.stale_disconnects == 1)
    event = sim.stale_disconnect_events[0]
    assert event.ended_socket == env.dir / "old.sock"
    assert event.disconnected_socket == env.dir / "new.sock"
    snap = sim.resource(RES)
    assert snap.endpoint_stopped and snap.allocatable == 0 and snap.capacity == 3
    with pytest.raises(SimulatorAllocationError, match="no healthy devices present"):
        await sim.allocate(RES, 1)


async def test_stopping_the_old_stream_first_avoids_the_bug(env: Env) -> None:
    sim = env.sim
    old = FakePlugin(devs("a", "b"))
    new = FakePlugin(devs("a", "b", "c"))
    await env.serve_and_register(old, "old.sock")
    await sim.wait_for(lambda: sim.capacity(RES) == 2)
    old.end_stream()
    await sim.wait_for(lambda: sim.resource(RES).endpoint_stopped)
    await env.serve_and_register(new, "new.sock")
    await sim.wait_for(lambda: sim.allocatable(RES) == 3)
    assert sim.stale_disconnects == 0
    assert not sim.resource(RES).endpoint_stopped


async def test_two_resources_register_concurrently(env: Env) -> None:
    first = FakePlugin(devs("a"))
    second = FakePlugin(devs("x", "y"))
    await env.serve(first, "one.sock")
    await env.serve(second, "two.sock")
    await asyncio.gather(
        env.register("one.sock", "vendor.example/one"),
        env.register("two.sock", "vendor.example/two"),
    )
    await env.sim.wait_for(
        lambda: (
            env.sim.allocatable("vendor.example/one") == 1
            and env.sim.allocatable("vendor.example/two") == 2
        )
    )
    assert set(env.sim.snapshot()) == {"vendor.example/one", "vendor.example/two"}


# --------------------------------------------------------------------------- helpers & CLI


async def test_wait_for_times_out_with_a_description(env: Env) -> None:
    with pytest.raises(TimeoutError, match="never happens"):
        await env.sim.wait_for(lambda: False, timeout=0.05, description="never happens")
    # A predicate that looks up an unknown resource is just false.
    with pytest.raises(TimeoutError):
        await env.sim.wait_for(lambda: env.sim.resource("no/such").capacity, timeout=0.05)


async def test_run_simulator_prints_changes(sock_dir: Path) -> None:
    lines: list[str] = []
    printed = asyncio.Event()

    def print_fn(line: str) -> None:
        lines.append(line)
        printed.set()

    async def expect(fragment: str) -> str:
        async with asyncio.timeout(WAIT):
            while True:
                for line in lines:
                    if fragment in line:
                        return line
                printed.clear()
                await printed.wait()

    task = asyncio.create_task(run_simulator(sock_dir, print_fn=print_fn))
    await expect("kubelet simulator serving")
    plugin = FakePlugin([dev("a"), dev("b", "Unhealthy")])
    server = Server([plugin])
    await server.start(path=str(sock_dir / "p.sock"))
    try:
        channel = Channel(path=str(sock_dir / KUBELET_SOCKET_NAME))
        try:
            await RegistrationStub(channel).register(
                RegisterRequest(version="v1beta1", endpoint="p.sock", resource_name=RES)
            )
            with pytest.raises(GRPCError):
                await RegistrationStub(channel).register(
                    RegisterRequest(version="v1beta1", endpoint="p.sock", resource_name="foo")
                )
        finally:
            channel.close()
        line = await expect("capacity=2")
        assert f"resource={RES}" in line and "allocatable=1" in line and "unhealthy=[b]" in line
        assert "is invalid" in await expect("register resource=foo")
        assert (await expect(f"register resource={RES}")).endswith(" ok")
        plugin.push([dev("a")])
        await expect("capacity=1 allocatable=1 unhealthy=[]")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()
        await server.wait_closed()
    assert not (sock_dir / KUBELET_SOCKET_NAME).exists()
    # One line per change: the same state is never printed twice in a row.
    state_lines = [line for line in lines if line.startswith(f"resource={RES}")]
    assert all(a != b for a, b in itertools.pairwise(state_lines))


def test_checkpoint_checksum_is_stable() -> None:
    data = {"RegisteredDevices": {"a/b": ["x"]}, "PodDeviceEntries": None}
    same = json.loads(json.dumps(data))
    assert checkpoint_checksum(data) == checkpoint_checksum(same)
    assert checkpoint_checksum(data) != checkpoint_checksum({**data, "RegisteredDevices": {}})


def test_the_simulator_shares_no_code_with_the_product() -> None:
    """The oracle imports only the generated messages and the kubelet's rules from kdp_host
    (its checkpoint's checksum: the kubelet's own, so kdp-host reads the file as the real
    kubelet's)."""
    package = Path(__file__).resolve().parent.parent / "kdp_host" / "simulator"
    allowed = ("kdp_host.api", "kdp_host.rules", "kdp_host.k8s_names", "kdp_host.kubelet_checksum")
    imported: set[str] = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    product = {name for name in imported if name.split(".")[0] == "kdp_host"}
    assert product and all(name.startswith(allowed) for name in product), product


def test_checkpoint_encoder_is_canonical_and_follows_replaced_sets() -> None:
    encoder = CheckpointEncoder()
    healthy = {"b.io/y": {"2", "1"}, "a.io/x": {"z\u00e9", 'q"'}}
    text = encoder.data_text([], healthy)
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert data == {
        "PodDeviceEntries": None,
        "RegisteredDevices": {"a.io/x": ['q"', "z\u00e9"], "b.io/y": ["1", "2"]},
    }
    healthy["b.io/y"] = {"3"}  # the device manager replaces a changed set
    del healthy["a.io/x"]
    assert json.loads(encoder.data_text([], healthy))["RegisteredDevices"] == {"b.io/y": ["3"]}


# ------------------------------------------------------------- ListAndWatch decoding (listwire)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
DEVICES = st.lists(
    st.tuples(st.text(max_size=20), st.text(max_size=12), st.none() | st.lists(INT64, max_size=3)),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(DEVICES)
def test_listwire_decodes_what_the_generated_classes_encode(
    devices: list[tuple[str, str, list[int] | None]],
) -> None:
    message = ListAndWatchResponse(
        devices=[
            Device(
                id=device_id,
                health=health,
                topology=None if numa is None else TopologyInfo([NumaNode(id=n) for n in numa]),
            )
            for device_id, health, numa in devices
        ]
    )
    assert decode_device_list(bytes(message)) == [
        DeviceView(device_id, health, tuple(numa or ())) for device_id, health, numa in devices
    ]


def test_listwire_skips_unknown_fields_and_refuses_broken_input() -> None:
    device = bytes(Device(id="a", health="Healthy", topology=TopologyInfo([NumaNode(id=-1)])))
    unknown = b"\x20\x96\x01" + b"\x29" + bytes(8) + b"\x35" + bytes(4) + b"\x42\x02hi"
    message = b"\x0a" + bytes([len(device) + len(unknown)]) + device + unknown + unknown
    assert decode_device_list(message) == [DeviceView("a", "Healthy", (-1,))]
    for broken in (b"\x0a\x05ab", b"\x0a\x03\x0a\x01\xff", b"\x0f", b"\x08\xff"):
        with pytest.raises(WireError):
            decode_device_list(broken)


async def test_a_message_the_kubelet_cannot_decode_ends_the_stream(env: Env) -> None:
    class Garbage(FakePlugin):
        def __mapping__(self) -> dict[str, grpclib.const.Handler]:
            mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
            mapping["/v1beta1.DevicePlugin/ListAndWatch"] = grpclib.const.Handler(
                self._garbage, Cardinality.UNARY_STREAM, Empty, RawBytes
            )
            return mapping

        async def _garbage(self, stream: grpclib.server.Stream[Empty, RawBytes]) -> None:
            await stream.recv_message()
            await stream.send_message(RawBytes(bytes(ListAndWatchResponse(devices=devs("a")))))
            await stream.send_message(RawBytes(b"\x0a\x03\x0a\x01\xff"))  # invalid UTF-8 ID
            await asyncio.Event().wait()

    await env.serve_and_register(Garbage(devs()), "p.sock")
    sim = env.sim
    await sim.wait_for(lambda: sim.resource(RES).endpoint_stopped)
    snap = sim.resource(RES)
    assert (snap.capacity, snap.allocatable) == (1, 0)


class RawBytes:
    """A message that is its bytes (grpclib's message protocol), to send broken input."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> RawBytes:
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


async def test_the_kubelet_reads_a_stream_no_further_ahead_than_it_applies(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet's client receives a ListAndWatch message once it has applied the last one
    (its `Recv` loop; every message is decoded and checkpointed:
    docs/kubelet-contract.md §4), so a plugin that sends faster is held back by the stream's
    flow control and sends its newest list next. The simulator read every message off the
    stream at once and applied the backlog long after the plugin stopped: 10,000 devices
    unplugged and plugged again made ~900 lists, applied a minute late (the `large` bench
    section timed out)."""
    sim = env.sim
    applied_when_read: list[int] = []
    receive = PluginClient.list_and_watch

    async def counted(client: PluginClient) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(receive(client)) as messages:
            async for raw in messages:
                applied_when_read.append(len(sim.list_and_watch_updates))
                yield raw

    write = CheckpointFile.write
    gate = asyncio.Event()
    gate.set()

    async def slow_write(self: CheckpointFile, data: Callable[[], str]) -> None:
        await gate.wait()  # (the kubelet busy with a message: a long decode, a slow disk)
        await write(self, data)

    monkeypatch.setattr(PluginClient, "list_and_watch", counted)
    monkeypatch.setattr(CheckpointFile, "write", slow_write)
    plugin = FakePlugin(devs("a"))
    await env.serve_and_register(plugin, "p.sock")
    await sim.wait_for(lambda: len(sim.list_and_watch_updates) == 1)
    gate.clear()
    lists = [devs(*(f"d{i}-{j}" for j in range(5))) for i in range(20)]
    for devices in lists:
        plugin.push(devices)
    await wait_until(lambda: plugin.updates.empty(), what="the plugin sent every list")
    gate.set()
    await sim.wait_for(lambda: set(sim.resource(RES).devices) == {d.id for d in lists[-1]})
    assert len(applied_when_read) == 1 + len(lists)
    ahead = [read - applied for read, applied in enumerate(applied_when_read)]
    assert max(ahead) <= READ_AHEAD, ahead
