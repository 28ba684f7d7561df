"""preStart acts on the device as it was handed to the container (issue 17, hostile6 M6):
after a reload moved a held device's node, a container restart's PreStartContainer renders
`{hostPaths}` with the node the Allocate handed out, as the release does."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdp_host.allocation import AllocationBuilder, AllocationError
from kdp_host.config import load_config_text
from kdp_host.devices import Device, DeviceTable
from kdp_host.handed_out import hand_out, handed_devices, let_go
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until

FPGA = "vendor.example/fpga"


def _config(socket_dir: Path, short_dir: Path, nodes: Path, log: Path) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {short_dir / 'state'}\n"
        f"resources:\n  - name: {FPGA}\n"
        f'    glob: {{paths: ["{nodes}/fpga*"], gracePeriod: 1s}}\n'
        f'    preStart: {{command: ["sh", "-c", "echo {{ids}} {{hostPaths}} >> {log}"]}}\n'
    )


async def test_pre_start_after_a_reload_moved_the_device_acts_on_the_node_handed_out(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    old, new, log = short_dir / "dev", short_dir / "dev2", short_dir / "prestart.log"
    for directory in (old, new):
        directory.mkdir()
        (directory / "fpga0").touch()
    config = short_dir / "kdp.yaml"
    config.write_text(_config(socket_dir, short_dir, old, log))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    config.write_text(_config(socket_dir, short_dir, new, log))
    assert await running.host.reload_from(config) == "ok"

    def moved() -> bool:
        runtime = running.host.resources.get(FPGA)
        listed = [] if runtime is None else runtime.table.snapshot.devices
        return [n.host_path for d in listed for n in d.nodes] == [str(new / "fpga0")]

    await wait_until(moved, what="fpga0 listed at its new node")
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.pre_start_container("p1", "c0", FPGA)  # p1's container restarts
    assert log.read_text().splitlines() == [f"fpga0 {old}/fpga0"] * 2


def _builder(replicas: int = 1) -> AllocationBuilder:
    config = load_config_text(
        f"resources:\n  - name: {FPGA}\n    glob: {{paths: ['/dev/fpga*']}}\n"
        f"    replicas: {replicas}\n"
    )
    return AllocationBuilder(config.resources[0])


def test_the_devices_handed_out_are_what_pre_start_takes_else_the_list() -> None:
    table = DeviceTable()
    table.publish([Device("fpga0", path="/dev/fpga0"), Device("fpga1", path="/dev/fpga1")])
    handed: dict[str, Device] = {}
    assert hand_out(handed, table.snapshot, ["fpga0"])
    assert not hand_out(handed, table.snapshot, ["fpga0"])  # the same: no change
    given = handed["fpga0"]
    table.publish([Device("fpga0", path="/dev2/fpga0"), Device("fpga1", path="/dev/fpga1")])
    devices = handed_devices(_builder(), table.snapshot, handed, ["fpga1", "fpga0"])
    assert devices == [given, table.snapshot.devices[1]]
    with pytest.raises(AllocationError, match="unknown device ID"):
        handed_devices(_builder(), table.snapshot, handed, ["fpga9"])


def test_a_device_none_of_whose_ids_is_booked_is_let_go() -> None:
    table = DeviceTable(replicas=2)
    table.publish([Device("fpga0", path="/dev/fpga0"), Device("fpga1", path="/dev/fpga1")])
    handed: dict[str, Device] = {}
    hand_out(handed, table.snapshot, ["fpga0::1", "fpga1::0"])
    let_go(handed, lambda advertised: advertised == "fpga0::1", 2)
    assert list(handed) == ["fpga0"]
