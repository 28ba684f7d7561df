"""NUMA topology: glob numaNode / numaNodeFile from a fake sysfs tree, TopologyInfo on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdp_host.api.v1beta1 import Device as WireDevice
from kdp_host.api.v1beta1 import ListAndWatchResponse, NumaNode, TopologyInfo
from kdp_host.config import GlobDriverConfig, load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.glob import GlobDriver
from kdp_host.inotify_watch import make_watcher
from kdp_host.logs import get_logger
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config

ACCEL = "vendor.example/accel"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """/dev/accel0..5 and a sysfs-like /sys/class/accel/<name>/device/numa_node."""
    dev = tmp_path / "dev"
    dev.mkdir()
    contents = {"accel0": "0\n", "accel1": "1\n", "accel2": "-1\n", "accel4": "junk\n"}
    contents["accel5"] = " 3 "
    for i in range(6):
        name = f"accel{i}"
        (dev / name).touch()
        device_dir = tmp_path / "sys" / "class" / "accel" / name / "device"
        device_dir.mkdir(parents=True)
        if name in contents:  # accel3 has no numa_node file at all
            (device_dir / "numa_node").write_text(contents[name])
    return tmp_path


def driver(config: GlobDriverConfig) -> GlobDriver:
    log = get_logger()
    return GlobDriver(config, DriverDeps(log, make_watcher(log, prefer_inotify=False)))


async def scan_numa(config: GlobDriverConfig) -> dict[str, int | None]:
    return {d.id: d.numa for d in await driver(config).scan()}


async def test_numa_node_file_by_name(tree: Path) -> None:
    config = GlobDriverConfig(
        paths=(f"{tree}/dev/accel[0-9]",),
        numa_node_file=f"{tree}/sys/class/accel/{{name}}/device/numa_node",
    )
    assert await scan_numa(config) == {
        "accel0": 0,
        "accel1": 1,
        "accel2": None,  # -1: the kernel's "no NUMA node"
        "accel3": None,  # missing file
        "accel4": None,  # unparsable
        "accel5": 3,
    }


async def test_numa_node_file_by_path(tree: Path) -> None:
    for i, node in ((0, "1"), (1, "0")):
        (tree / "dev" / f"accel{i}.numa").write_text(node)
    config = GlobDriverConfig(paths=(f"{tree}/dev/accel[0-1]",), numa_node_file="{path}.numa")
    assert await scan_numa(config) == {"accel0": 1, "accel1": 0}


async def test_fixed_numa_node_and_no_topology(tree: Path) -> None:
    pattern = (f"{tree}/dev/accel[0-9]",)
    assert set((await scan_numa(GlobDriverConfig(paths=pattern, numa_node=1))).values()) == {1}
    assert set((await scan_numa(GlobDriverConfig(paths=pattern))).values()) == {None}


def test_config_keys() -> None:
    base = "resources:\n  - name: vendor.example/accel\n    glob:\n      paths: [/dev/a*]\n"
    config = load_config_text(base + "      numaNodeFile: /sys/class/a/{name}/device/numa_node\n")
    driver_config = config.resources[0].driver
    assert isinstance(driver_config, GlobDriverConfig)
    assert driver_config.numa_node_file == "/sys/class/a/{name}/device/numa_node"
    config = load_config_text(base + "      numaNode: 2\n")
    assert isinstance(config.resources[0].driver, GlobDriverConfig)
    assert config.resources[0].driver.numa_node == 2


async def test_topology_in_list_and_watch_message() -> None:
    table = DeviceTable(replicas=2)
    table.publish([Device(id="a", numa=1), Device(id="b")])
    data = await ListAndWatchEncoder().encode(table.snapshot)
    message = ListAndWatchResponse.parse(data)
    by_id = {d.id: d for d in message.devices}
    assert sorted(by_id) == ["a::0", "a::1", "b::0", "b::1"]
    for replica in ("a::0", "a::1"):
        topology = by_id[replica].topology
        assert topology is not None and [n.id for n in topology.nodes] == [1]
    assert by_id["b::0"].topology is None or not by_id["b::0"].topology.nodes
    # the cached per-device encoding is byte-identical to encoding the message whole
    whole = ListAndWatchResponse(
        devices=[
            WireDevice(
                id=e.id,
                health="Healthy" if e.healthy else "Unhealthy",
                topology=None
                if e.device.numa is None
                else TopologyInfo(nodes=[NumaNode(id=e.device.numa)]),
            )
            for e in table.snapshot.advertised
        ]
    )
    assert bytes(whole) == data


async def test_kubelet_sees_topology(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    dev = short_dir / "dev"
    dev.mkdir()
    for i in range(4):
        (dev / f"accel{i}").touch()
        (dev / f"accel{i}.numa").write_text(str(i % 2) if i < 3 else "-1")
    yaml = glob_config(socket_dir, (ACCEL, f"{dev}/accel[0-9]"))
    yaml = yaml.replace("gracePeriod: 1s}", 'gracePeriod: 1s, numaNodeFile: "{path}.numa"}')
    await start_host(yaml)
    await kubelet.wait_for(lambda: kubelet.resource(ACCEL).allocatable == 4)
    devices = kubelet.resource(ACCEL).devices
    assert {i: d.numa for i, d in devices.items()} == {
        "accel0": (0,),
        "accel1": (1,),
        "accel2": (0,),
        "accel3": (),
    }
