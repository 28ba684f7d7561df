"""The plugin service: encoder, options, RPC edge cases, and the real host against grpcio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kdp_host.api.v1beta1 import (
    ContainerPreferredAllocationRequest,
    Device,
    Empty,
    ListAndWatchResponse,
    NumaNode,
    PreferredAllocationRequest,
    PreStartContainerRequest,
    TopologyInfo,
)
from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device as TableDevice
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.protocol.service import DevicePluginService

from .interop_kubelet import InteropKubelet, load_official_api


def service_for(yaml_text: str, table: DeviceTable) -> DevicePluginService:
    config = load_config_text(yaml_text).resources[0]
    return DevicePluginService(config, table, ListAndWatchEncoder(), Metrics(), get_logger())


RESOURCE = "resources: [{name: t.io/r, glob: {paths: [/dev/r*]}}]"


async def test_encoder_matches_betterproto_and_reuses_entries() -> None:
    table = DeviceTable(replicas=2)
    table.publish(
        [TableDevice(f"d{i}", healthy=i % 3 != 0, numa=i % 2 or None) for i in range(700)]
    )
    encoder = ListAndWatchEncoder()
    expected = ListAndWatchResponse(
        devices=[
            Device(
                id=e.id,
                health="Healthy" if e.healthy else "Unhealthy",
                topology=TopologyInfo(nodes=[NumaNode(id=e.device.numa)])
                if e.device.numa
                else None,
            )
            for e in table.snapshot.advertised
        ]
    )
    assert await encoder.encode(table.snapshot) == bytes(expected)
    table.set_check_result("d1", False)
    data = await encoder.encode(table.snapshot)
    assert ListAndWatchResponse.parse(data).devices[2].health == "Unhealthy"
    assert await encoder.encode(table.snapshot) is data


async def test_encoder_yields_to_the_loop_on_a_large_cold_build() -> None:
    table = DeviceTable()
    table.publish([TableDevice(f"d{i}") for i in range(3000)])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await ListAndWatchEncoder().encode(table.snapshot)
    task.cancel()
    assert ticks - before >= 3000 // 256 - 1


async def test_options_and_prestart() -> None:
    shared = service_for(RESOURCE.replace("}}]", "}, replicas: 2}]"), DeviceTable())
    options = await shared.get_device_plugin_options(Empty())
    assert options.get_preferred_allocation_available and not options.pre_start_required
    none = service_for(RESOURCE.replace("}}]", "}, replicas: 2, preferred: none}]"), DeviceTable())
    assert not (await none.get_device_plugin_options(Empty())).get_preferred_allocation_available
    response = await shared.pre_start_container(PreStartContainerRequest(devices_ids=["x"]))
    assert bytes(response) == b""


async def test_a_table_and_its_service_keep_no_event_nobody_waits_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19 (memory): each resource's table and service held asyncio Events (~0.7 KiB
    each with the deque of their waiters) only a waiter needs, and the table made a new one
    at every change. Now waiters bring their own, and the waits still end."""
    made: list[asyncio.Event] = []

    class Counted(asyncio.Event):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(asyncio, "Event", Counted)
    table = DeviceTable()
    service = service_for(RESOURCE, table)
    for i in range(5):
        table.publish([TableDevice(f"d{i}")])
    assert made == [table.published]  # (what the resource's start waits on)
    await asyncio.wait_for(service.end_streams(timeout=30), 30)  # no stream: at once
    assert made == [table.published]
    waiter = asyncio.create_task(table.wait_newer(table.snapshot.version))
    await asyncio.sleep(0)
    table.publish([TableDevice("x")])
    assert (await asyncio.wait_for(waiter, 30)).devices == (TableDevice("x"),)


GLOB_NUMA_FILE = RESOURCE.replace("/dev/r*]", '/dev/r*], numaNodeFile: "{path}.numa"')
GLOB_NUMA_NODE = RESOURCE.replace("/dev/r*]", "/dev/r*], numaNode: 1")
PROBE = "resources: [{name: t.io/r, shell: {command: [probe]}}]"


@pytest.mark.parametrize(
    ("yaml_text", "extra", "advertised"),
    [
        (RESOURCE, "", False),
        (GLOB_NUMA_FILE, "", True),
        (RESOURCE, ", replicas: 2", True),
        (RESOURCE, ", preferred: spread", False),
        (GLOB_NUMA_NODE, ", preferred: numa", True),
        (GLOB_NUMA_NODE, ", preferred: none, replicas: 2", False),
        (PROBE, "", True),  # (a probe may report NUMA nodes and pairs at one path)
        (PROBE, ", preferred: none", True),  # (pairs at one path: steered)
    ],
)
async def test_get_preferred_allocation_is_advertised_by_the_config_alone(
    yaml_text: str, extra: str, advertised: bool
) -> None:
    """Advertised where the config can make it matter (`replicas` > 1, devices that may
    come with a NUMA node, devices that may share a container path), from the first
    registration: the device list never changes the options, so no list change calls for a
    registration (which refuses every admission of the resource until it is in: hostile25
    F1). With one ID per device and no NUMA node every policy answers what the kubelet picks
    alone: no GetPreferredAllocation, one RPC per container instead of two."""
    table = DeviceTable(replicas=2 if "replicas: 2" in extra else 1)
    service = service_for(yaml_text.replace("}}]", "}" + extra + "}]"), table)
    for devices in ([], [TableDevice("a")], [TableDevice("a"), TableDevice("b", numa=0)]):
        table.publish(devices)
        options = await service.get_device_plugin_options(Empty())
        assert options.get_preferred_allocation_available is advertised
        assert service.options == options


async def test_an_answer_without_anything_to_choose_by_is_no_preference() -> None:
    """Announced for NUMA nodes that a list does not have (yet): the answer is empty (the
    kubelet picks as it would alone), whatever was offered; with a NUMA node, the policy's."""
    table = DeviceTable()
    service = service_for(GLOB_NUMA_FILE, table)
    table.publish([TableDevice("a"), TableDevice("b")])
    request = PreferredAllocationRequest(
        container_requests=[
            ContainerPreferredAllocationRequest(
                available_deviceIDs=["b", "a"], must_include_deviceIDs=[], allocation_size=1
            )
        ]
    )
    answer = await service.get_preferred_allocation(request)
    assert [list(r.device_i_ds) for r in answer.container_responses] == [[]]
    table.publish([TableDevice("a"), TableDevice("b", numa=0)])
    answer = await service.get_preferred_allocation(request)
    assert [list(r.device_i_ds) for r in answer.container_responses] == [["b"]]


@pytest.mark.parametrize(
    ("available", "must", "size"),
    [([], [], 0), ([], [], 5), (["nope"], ["also-nope"], 3), (["a", "a", "b"], ["b"], -1)],
)
async def test_preferred_allocation_never_fails(
    available: list[str], must: list[str], size: int
) -> None:
    table = DeviceTable()
    table.publish([TableDevice("a"), TableDevice("b")])
    service = service_for(RESOURCE, table)
    request = PreferredAllocationRequest(
        container_requests=[
            ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )
    response = await service.get_preferred_allocation(request)
    (answer,) = response.container_responses
    assert set(answer.device_i_ds) <= set(available) | set(must)
    assert set(must) <= set(answer.device_i_ds)


async def test_list_and_watch_waits_with_no_task_of_its_own_and_ends_when_the_host_closes() -> None:
    """Between versions a stream is one suspended generator: a new table version (or
    end_streams) wakes it with no task of its own (memory per resource, one loop turn less
    per update); only the host ends it. The table's listeners can be removed (the stream
    removes its own when it ends)."""
    table = DeviceTable()
    table.publish([TableDevice("a")])
    service = service_for(RESOURCE, table)
    stream = service.device_lists()
    first = await anext(stream)
    assert first.message_type is ListAndWatchResponse
    assert ListAndWatchResponse.parse(first.data).devices[0].id == "a"
    before = asyncio.all_tasks()
    pending = asyncio.ensure_future(anext(stream))
    for _ in range(5):  # let it reach its wait
        await asyncio.sleep(0)
    assert not pending.done()
    assert asyncio.all_tasks() - before == {pending}
    table.publish([TableDevice("a"), TableDevice("b")])
    second = await asyncio.wait_for(pending, 5)
    assert len(ListAndWatchResponse.parse(second.data).devices) == 2
    closing = asyncio.ensure_future(anext(stream))
    await service.end_streams(timeout=0.01)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(closing, 5)
    seen: list[int] = []
    stop = table.add_listener(lambda snapshot: seen.append(snapshot.version))
    table.publish([TableDevice("c")])
    stop()
    table.publish([TableDevice("d")])
    assert len(seen) == 1


async def test_real_host_against_the_grpcio_kubelet(
    short_dir: Path, socket_dir: Path, start_host
) -> None:
    """grpcio + official protobuf play the kubelet: a wire mistake cannot hide here."""
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1"):
        (dev / name).touch()
    (short_dir / "x").mkdir()  # (a mount source kdp-host cannot see is never handed out)
    api = load_official_api(short_dir / "api")
    kubelet = InteropKubelet(socket_dir, api, dial_timeout=5)
    await kubelet.start()
    try:
        text = f"""
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: vendor.example/fpga
    glob: {{paths: ["{dev}/fpga*"], numaNode: 1}}
    allocate:
      env: {{IDS: "{{ids}}", COUNT: "{{count}}"}}
      annotations: {{a.io/p: "{{paths}}"}}
      mounts: [{{hostPath: {short_dir}/x, containerPath: /x}}]
      cdi: {{kind: vendor.example/fpga, alsoDeviceSpecs: true, specDir: "{short_dir}/cdi"}}
"""
        await start_host(text)
        client = await kubelet.wait_registered("vendor.example/fpga")
        request = kubelet.registrations[-1]
        assert request.version == "v1beta1" and request.resource_name == "vendor.example/fpga"
        assert request.options == client.options
        assert client.options.get_preferred_allocation_available
        listed = await client.wait_lists(1)
        while len(listed.devices) < 2:
            listed = await client.wait_lists(len(client.lists) + 1)
        assert [(d.ID, d.health, [n.ID for n in d.topology.nodes]) for d in listed.devices] == [
            ("fpga0", "Healthy", [1]),
            ("fpga1", "Healthy", [1]),
        ]
        preferred = await client.get_preferred_allocation(["fpga1", "fpga0"], ["fpga1"], 2)
        assert list(preferred.container_responses[0].deviceIDs) == ["fpga1", "fpga0"]
        response = await client.allocate(["fpga0", "fpga1"])
        (container,) = response.container_responses
        assert dict(container.envs) == {"IDS": "fpga0,fpga1", "COUNT": "2"}
        assert dict(container.annotations) == {"a.io/p": f"{dev}/fpga0,{dev}/fpga1"}
        assert [(m.host_path, m.container_path, m.read_only) for m in container.mounts] == [
            (f"{short_dir}/x", "/x", True)
        ]
        assert [d.host_path for d in container.devices] == [f"{dev}/fpga0", f"{dev}/fpga1"]
        assert [c.name for c in container.cdi_devices] == [
            "vendor.example/fpga=vendor.example_fpga:fpga0",
            "vendor.example/fpga=vendor.example_fpga:fpga1",
        ]
        await client.pre_start(["fpga0"])
        (dev / "fpga2").touch()
        listed = await client.wait_lists(len(client.lists) + 1)
        assert [d.ID for d in listed.devices] == ["fpga0", "fpga1", "fpga2"]
    finally:
        await kubelet.stop()
