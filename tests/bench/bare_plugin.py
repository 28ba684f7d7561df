"""The least a device plugin on kdp-host's chosen stack does, for the floor of issue 19's
start-up and memory rows (`python -m tests.bench.startup_profile stack`).

uvloop, grpclib and betterproto2 (the project's generated API): per resource one grpclib
`Server` answering GetDevicePluginOptions and one ListAndWatch list of the files its glob
matches (listed in a thread), each registered over one shared grpclib channel. No
ownership, metrics, state files, watcher or config checks. `--stack` also imports the rest
of the chosen stack (PyYAML, prometheus-client) and does nothing with it. Invoked as
kdp-host is (`... run --config FILE ...`, the bench harness's `KDP_BENCH_COMMAND`); the
config is the harness's JSON.

It also answers Allocate, for the floor of issue 19's Allocate rows (`peer`): each container
request gets a DeviceSpec per ID (the matched file, at the same path in the container), built
by the generated messages and nothing else. `--plugin-server` serves through kdp-host's own
server (`protocol.server.PluginServer`: its codec and one write per answer) in place of a
plain grpclib `Server`: the floor of the stack as kdp-host uses it.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sys
from collections.abc import AsyncIterator

import grpclib.client
import grpclib.server
import uvloop

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateResponse,
    Device,
    DevicePluginBase,
    DevicePluginOptions,
    DeviceSpec,
    Empty,
    ListAndWatchResponse,
    RegisterRequest,
    RegistrationStub,
)


class _Plugin(DevicePluginBase):
    def __init__(self, devices: list[Device], directory: str) -> None:
        self.devices = devices
        self.directory = directory

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        responses = []
        for request in message.container_requests:
            paths = [os.path.join(self.directory, i) for i in request.devices_ids]
            specs = [DeviceSpec(container_path=p, host_path=p, permissions="rw") for p in paths]
            responses.append(ContainerAllocateResponse(devices=specs))
        return AllocateResponse(container_responses=responses)

    async def get_device_plugin_options(self, message: Empty) -> DevicePluginOptions:
        return DevicePluginOptions()

    async def list_and_watch(self, message: Empty) -> AsyncIterator[ListAndWatchResponse]:
        yield ListAndWatchResponse(devices=self.devices)
        await asyncio.Event().wait()


async def _serve(config: dict[str, object], plugin_server: bool) -> None:
    socket_dir = str(config["kubelet"]["socketDir"])  # type: ignore[index]
    kubelet = grpclib.client.Channel(path=os.path.join(socket_dir, "kubelet.sock"))
    stub = RegistrationStub(kubelet)

    async def one(index: int, resource: dict[str, object]) -> grpclib.server.Server:
        pattern = str(resource["glob"]["paths"][0])  # type: ignore[index]
        paths = await asyncio.to_thread(lambda: sorted(glob.glob(pattern)))
        devices = [Device(id=os.path.basename(path), health="Healthy") for path in paths]
        endpoint = f"bare-{index:03d}.sock"
        plugin = _Plugin(devices, os.path.dirname(pattern))
        if plugin_server:
            from kdp_host.protocol.server import PluginServer

            server: grpclib.server.Server = PluginServer([plugin])
        else:
            server = grpclib.server.Server([plugin])
        await server.start(path=os.path.join(socket_dir, endpoint))
        request = RegisterRequest(
            version="v1beta1",
            endpoint=endpoint,
            resource_name=str(resource["name"]),
            options=DevicePluginOptions(),
        )
        await stub.register(request)
        return server

    resources: list[dict[str, object]] = config["resources"]  # type: ignore[assignment]
    await asyncio.gather(*(one(i, r) for i, r in enumerate(resources)))
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    if "--stack" in argv:
        import prometheus_client  # noqa: F401 (imported as kdp-host's stack imports it)
        import yaml  # noqa: F401
    with open(argv[argv.index("--config") + 1]) as file:
        config = json.load(file)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(config, "--plugin-server" in argv))


if __name__ == "__main__":
    main(sys.argv[1:])
