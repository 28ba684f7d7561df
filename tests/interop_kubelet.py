"""An independent gRPC stack that plays the kubelet: official protobuf + grpcio (grpc.aio).

The device plugin API classes are generated from ``protos/api.proto`` at test time with
``grpc_tools.protoc`` (``--python_out`` / ``--grpc_python_out``), so nothing here shares
code with the betterproto2/grpclib side under test. Point it at any plugin socket:

    api = load_official_api(tmp_dir)
    kubelet = InteropKubelet(socket_dir, api)
    await kubelet.start()                      # serves Registration on socket_dir/kubelet.sock
    ...                                        # a plugin registers; the kubelet dials back
    plugin = kubelet.plugins["vendor.example/fpga"]
    await plugin.wait_lists(1)
    response = await plugin.allocate(["dev0"])

or skip Register and talk to a plugin socket directly with ``await kubelet.connect(path)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import grpc.aio

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "protos" / "api.proto"
MODULE = "kdp_official_api"  # unique module name: the protobuf descriptor pool is global
PREFIX = "/v1beta1.DevicePlugin/"


@dataclass(frozen=True)
class OfficialApi:
    """The generated modules: ``pb2`` (messages) and ``grpc`` (stubs, servicers)."""

    pb2: ModuleType
    grpc: ModuleType
    directory: Path


_loaded: dict[str, OfficialApi] = {}


def load_official_api(tmp_dir: Path, proto: Path = PROTO) -> OfficialApi:
    """Generate (once per process) and import the official Python classes for ``proto``.

    The protobuf runtime registers a .proto file once per process, so later calls return
    the first generation whatever ``tmp_dir`` they pass.
    """
    if MODULE in _loaded:
        return _loaded[MODULE]
    from grpc_tools import protoc

    out = Path(tmp_dir) / "official-api"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(proto, out / f"{MODULE}.proto")
    args = [
        "grpc_tools.protoc",
        f"-I{out}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(out / f"{MODULE}.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {proto}")
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module(f"{MODULE}_pb2")
        grpc_mod = importlib.import_module(f"{MODULE}_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    api = OfficialApi(pb2=pb2, grpc=grpc_mod, directory=out)
    _loaded[MODULE] = api
    return api


def unix_target(path: Path) -> str:
    return f"unix:{Path(path).absolute()}"


class _Waitable:
    def __init__(self) -> None:
        self._cond = asyncio.Condition()

    async def _changed(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._cond:
                await self._cond.wait_for(lambda: bool(predicate()))


class InteropPluginClient(_Waitable):
    """A grpc.aio client of one plugin socket, as the kubelet's plugin client."""

    def __init__(self, api: OfficialApi, socket_path: Path) -> None:
        super().__init__()
        self.api = api
        self.socket_path = Path(socket_path)
        # grpc-go in the kubelet sends :authority localhost.
        self.channel = grpc.aio.insecure_channel(
            unix_target(self.socket_path), options=[("grpc.default_authority", "localhost")]
        )
        self.stub = api.grpc.DevicePluginStub(self.channel)
        self.options: Any = None
        self.lists: list[Any] = []  # ListAndWatchResponse messages received by watch()
        self.watch_ended = False
        self.watch_error: BaseException | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """A blocking dial like the kubelet's (``WithBlock``)."""
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    async def get_device_plugin_options(self, timeout: float | None = None) -> Any:
        return await self.stub.GetDevicePluginOptions(self.api.pb2.Empty(), timeout=timeout)

    def list_and_watch(self) -> Any:
        """The raw server stream (a grpc.aio call: iterate it, cancel() it)."""
        return self.stub.ListAndWatch(self.api.pb2.Empty())

    def start_watch(self) -> None:
        """Read ListAndWatch in the background into :attr:`lists` (the kubelet's Run)."""
        if self._watch_task is None:
            self._watch_task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        call = self.list_and_watch()
        try:
            async for message in call:
                self.lists.append(message)
                await self._changed()
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            self.watch_error = exc
        self.watch_ended = True
        await self._changed()

    async def wait_lists(self, count: int, timeout: float = 10.0) -> Any:
        """Wait until ``count`` lists arrived; returns the latest."""
        await self.wait_for(lambda: len(self.lists) >= count, timeout)
        return self.lists[-1]

    async def get_preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Any:
        pb2 = self.api.pb2
        request = pb2.PreferredAllocationRequest(
            container_requests=[
                pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        return await self.stub.GetPreferredAllocation(request)

    async def allocate(self, *containers: Sequence[str]) -> Any:
        """One ContainerAllocateRequest per argument (the kubelet always sends exactly one)."""
        pb2 = self.api.pb2
        request = pb2.AllocateRequest(
            container_requests=[
                pb2.ContainerAllocateRequest(devices_ids=list(c)) for c in containers
            ]
        )
        return await self.stub.Allocate(request)

    async def pre_start(self, device_ids: Sequence[str], timeout: float = 30.0) -> Any:
        request = self.api.pb2.PreStartContainerRequest(devices_ids=list(device_ids))
        return await self.stub.PreStartContainer(request, timeout=timeout)

    async def raw_unary(self, method: str, request: bytes) -> bytes:
        """Call ``/v1beta1.DevicePlugin/<method>`` with serialized bytes; get the wire bytes."""
        call = self.channel.unary_unary(PREFIX + method)
        response: bytes = await call(request)
        return response

    async def raw_list_and_watch(self) -> AsyncIterator[bytes]:
        """ListAndWatch as undecoded message bytes."""
        call = self.channel.unary_stream(PREFIX + "ListAndWatch")(b"")
        try:
            async for message in call:
                yield message
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        await self.channel.close()


class InteropKubelet(_Waitable):
    """A grpc.aio Registration server that dials plugins back inside Register, like the
    kubelet, and keeps one :class:`InteropPluginClient` per resource."""

    def __init__(self, socket_dir: Path, api: OfficialApi, *, dial_timeout: float = 10.0) -> None:
        super().__init__()
        self.socket_dir = Path(socket_dir)
        self.api = api
        self.dial_timeout = dial_timeout
        self.registrations: list[Any] = []  # RegisterRequest, valid or not
        self.plugins: dict[str, InteropPluginClient] = {}
        self._replaced: list[InteropPluginClient] = []
        self._server: grpc.aio.Server | None = None

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / "kubelet.sock"

    async def start(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        server = grpc.aio.server()
        self.api.grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port(unix_target(self.socket_path))
        await server.start()
        self._server = server

    async def stop(self) -> None:
        for client in [*self.plugins.values(), *self._replaced]:
            await client.close()
        self.plugins.clear()
        self._replaced.clear()
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def __aenter__(self) -> InteropKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def connect(self, socket_path: Path, timeout: float = 10.0) -> InteropPluginClient:
        """A client of any plugin socket, without Register."""
        client = InteropPluginClient(self.api, socket_path)
        try:
            await client.wait_ready(timeout)
        except BaseException:
            await client.close()
            raise
        self._replaced.append(client)
        return client

    async def wait_registered(self, resource: str, timeout: float = 10.0) -> InteropPluginClient:
        await self.wait_for(lambda: resource in self.plugins, timeout)
        return self.plugins[resource]

    # Convenience calls by resource name, on the registered plugin's client.
    def list_and_watch(self, resource: str) -> Any:
        return self.plugins[resource].list_and_watch()

    async def get_preferred_allocation(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Any:
        return await self.plugins[resource].get_preferred_allocation(available, must_include, size)

    async def allocate(self, resource: str, *containers: Sequence[str]) -> Any:
        return await self.plugins[resource].allocate(*containers)

    async def pre_start(self, resource: str, device_ids: Sequence[str]) -> Any:
        return await self.plugins[resource].pre_start(device_ids)

    async def register(
        self,
        kubelet_socket: Path,
        resource: str,
        endpoint: str,
        *,
        version: str = "v1beta1",
        pre_start_required: bool = False,
        get_preferred_allocation_available: bool = False,
        timeout: float = 30.0,
    ) -> Any:
        """Call Register on *another* kubelet (e.g. the simulator) as a grpcio plugin would.
        Raises ``grpc.aio.AioRpcError`` on refusal."""
        pb2 = self.api.pb2
        request = pb2.RegisterRequest(
            version=version,
            endpoint=endpoint,
            resource_name=resource,
            options=pb2.DevicePluginOptions(
                pre_start_required=pre_start_required,
                get_preferred_allocation_available=get_preferred_allocation_available,
            ),
        )
        async with grpc.aio.insecure_channel(unix_target(kubelet_socket)) as channel:
            return await self.api.grpc.RegistrationStub(channel).Register(request, timeout=timeout)

    async def _register(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.registrations.append(request)
        await self._changed()
        if request.version != "v1beta1":
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f'requested API version "{request.version}" is not supported by kubelet.'
                ' Supported version is ["v1beta1"]',
            )
        client = InteropPluginClient(self.api, self.socket_dir / request.endpoint)
        error: str | None = None
        try:
            await client.wait_ready(self.dial_timeout)
        except TimeoutError:
            error = "failed to dial device plugin: context deadline exceeded"
        if error is None:
            try:
                client.options = await client.get_device_plugin_options(self.dial_timeout)
            except grpc.aio.AioRpcError as exc:
                error = f"failed to get device plugin options: {exc.details()}"
        if error is not None:
            await client.close()
            await context.abort(grpc.StatusCode.UNKNOWN, error)
        old = self.plugins.get(request.resource_name)
        if old is not None:
            self._replaced.append(old)
        self.plugins[request.resource_name] = client
        client.start_watch()
        await self._changed()
        return self.api.pb2.Empty()


class _RegistrationServicer:
    def __init__(self, kubelet: InteropKubelet) -> None:
        self._kubelet = kubelet

    async def Register(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._kubelet._register(request, context)
