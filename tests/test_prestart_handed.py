"""preStart acts on the device as it was handed to the container (issue 17, hostile6 M6):
after a reload moved a held device's node, or after kdp-host restarted with the device
elsewhere, a container restart's PreStartContainer renders `{hostPaths}` with the node the
Allocate handed out, as the release does: one record (`handed_out`, `handed-out.json`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import pytest

from kdp_host.allocation import AllocationBuilder, AllocationError
from kdp_host.api.v1beta1 import AllocateRequest, ContainerAllocateRequest
from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.handed_out import HANDED_FILE, HandedRecord
from kdp_host.hooks import handed_devices
from kdp_host.identity import Identity
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.protocol.service import DevicePluginService
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .conftest import wait_until

FPGA = "vendor.example/fpga"


def _config(socket_dir: Path, short_dir: Path, nodes: Path, log: Path) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {short_dir / 'state'}\n"
        f"resources:\n  - name: {FPGA}\n"
        f'    glob: {{paths: ["{nodes}/fpga*"], gracePeriod: 1s}}\n'
        f'    preStart: {{command: ["sh", "-c", "echo {{ids}} {{hostPaths}} >> {log}"]}}\n'
    )


def _dirs(short_dir: Path) -> tuple[Path, Path, Path]:
    old, new, log = short_dir / "dev", short_dir / "dev2", short_dir / "prestart.log"
    for directory in (old, new):
        directory.mkdir()
        (directory / "fpga0").touch()
    return old, new, log


async def test_pre_start_after_a_reload_moved_the_device_acts_on_the_node_handed_out(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    old, new, log = _dirs(short_dir)
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


async def _restarted(running, start_host, text: str, kubelet: KubeletSimulator):  # type: ignore[no-untyped-def]
    """kdp-host exits and a new process starts on the same stateDir with `text`."""
    await running.shutdown()
    again = await start_host(text)

    def registered() -> bool:
        runtime = again.host.resources.get(FPGA)
        return runtime is not None and runtime.status.registered

    await wait_until(registered, what="the new kdp-host registered")
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    return again


async def test_pre_start_after_a_kdp_host_restart_acts_on_the_node_handed_out(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    """fpga0 is handed to p1 at dev/fpga0; kdp-host exits; while it is down the device moves
    (the new config finds it at dev2/fpga0); a new kdp-host process starts on the same
    stateDir. p1's container restarts: its preStart acts on dev/fpga0, what p1 has."""
    old, new, log = _dirs(short_dir)
    running = await start_host(_config(socket_dir, short_dir, old, log))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    text = _config(socket_dir, short_dir, new, log)
    await _restarted(running, start_host, text, kubelet)
    record = json.loads((short_dir / "state" / HANDED_FILE).read_text())
    assert record["resources"][FPGA]["fpga0"]["nodes"] == [[f"{old}/fpga0"] * 2 + [None]]
    await kubelet.pre_start_container("p1", "c0", FPGA)  # p1's container restarts
    assert log.read_text().splitlines() == [f"fpga0 {old}/fpga0"] * 2


async def test_a_corrupt_record_fails_closed_after_a_restart(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    """The record is unreadable at the next start (set aside): what p1 was handed is not
    known, so its container's preStart is refused (never run on what fpga0 names now)."""
    old, new, log = _dirs(short_dir)
    running = await start_host(_config(socket_dir, short_dir, old, log))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await running.shutdown()
    path = short_dir / "state" / HANDED_FILE
    path.write_text('{"version": 1, "resources": {"x": 3}}')
    text = _config(socket_dir, short_dir, new, log)
    again = await start_host(text)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await wait_until(lambda: FPGA in again.host.resources, what="the resource runs")
    with pytest.raises(SimulatorAllocationError, match="is not known"):
        await kubelet.pre_start_container("p1", "c0", FPGA)
    assert log.read_text().splitlines() == [f"fpga0 {old}/fpga0"]  # the first start only
    assert (short_dir / "state" / f"{HANDED_FILE}.unreadable").exists()


def _builder(replicas: int = 1) -> AllocationBuilder:
    config = load_config_text(
        f"resources:\n  - name: {FPGA}\n    glob: {{paths: ['/dev/fpga*']}}\n"
        f"    replicas: {replicas}\n"
    )
    return AllocationBuilder(config.resources[0])


def test_the_devices_handed_out_are_what_pre_start_takes_else_the_list() -> None:
    table = DeviceTable()
    table.publish([Device("fpga0", path="/dev/fpga0"), Device("fpga1", path="/dev/fpga1")])
    handed = HandedRecord().of(FPGA)
    assert handed.hand_out(table.snapshot, ["fpga0"])
    given = handed.devices["fpga0"]
    table.publish([Device("fpga0", path="/dev2/fpga0"), Device("fpga1", path="/dev/fpga1")])
    devices = handed_devices(_builder(), table.snapshot, handed, ["fpga1", "fpga0"])
    assert devices == [given, table.snapshot.devices[1]]
    with pytest.raises(AllocationError, match="unknown device ID"):
        handed_devices(_builder(), table.snapshot, handed, ["fpga9"])


def test_a_device_none_of_whose_ids_is_booked_is_let_go() -> None:
    table = DeviceTable(replicas=2)
    table.publish([Device("fpga0", path="/dev/fpga0"), Device("fpga1", path="/dev/fpga1")])
    handed = HandedRecord().of(FPGA)
    handed.hand_out(table.snapshot, ["fpga0::1", "fpga1::0"])
    handed.let_go(lambda advertised: advertised == "fpga0::1")
    assert list(handed.devices) == ["fpga0"]


class _Bookings:
    """Books every answered ID, counts the questions whether one is booked, and unbooks."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.asked = 0
        self.gone = 0

    async def book(
        self,
        resource: str,
        ids: Iterable[str],
        places: Mapping[str, Collection[str]] | None = None,
        cdi_names: Mapping[str, Collection[str]] | None = None,
        *,
        wait: bool = True,
        handed_as: Mapping[str, Collection[Identity]] | None = None,
    ) -> None:
        self.ids.update(ids)

    async def bookings_written(self) -> None:
        pass

    def fenced(
        self, resource: str, ids: object, reached: object, real: object
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # (alone on its stateDir)

    async def hand_out_reaching(
        self,
        resource: str,
        ids: Iterable[str],
        paths: Collection[str],
        read_only: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, str], dict[str, Identity]]:
        return {path: path for path in paths}, {}

    def is_booked(self, resource: str, advertised_id: str) -> bool:
        self.asked += 1
        return advertised_id in self.ids

    def drops(self) -> int:
        return self.gone

    def unbook(self, advertised_id: str) -> None:
        self.ids.discard(advertised_id)
        self.gone += 1


def _allocate(device_id: str) -> AllocateRequest:
    return AllocateRequest(container_requests=[ContainerAllocateRequest(devices_ids=[device_id])])


async def test_an_allocate_looks_at_its_own_ids_not_at_every_device_handed_out() -> None:
    """Issue 19: every answer walked every device handed out so far, each of its IDs, to
    let go of the unbooked ones (1,000 devices handed out: ~3 ms per Allocate, on the
    loop); now only after a booking went."""
    table = DeviceTable()
    table.publish([Device(f"fpga{i}", path=f"/dev/fpga{i}") for i in range(40)])
    bookings = _Bookings()
    handed = HandedRecord().of(FPGA)
    service = DevicePluginService(
        _builder().resource,
        table,
        ListAndWatchEncoder(),
        Metrics(),
        get_logger(),
        bookings=bookings,
        handed=handed,
    )
    for i in range(40):
        await service.allocate(_allocate(f"fpga{i}"))
    assert len(handed.devices) == 40
    bookings.asked = 0
    await service.allocate(_allocate("fpga7"))
    assert bookings.asked <= 1
    bookings.unbook("fpga3")
    await service.allocate(_allocate("fpga7"))
    assert "fpga3" not in handed.devices  # let go once its booking went
    assert len(handed.devices) == 39


def test_an_id_handed_out_unbooked_is_let_go_at_the_next_answer() -> None:
    table = DeviceTable()
    table.publish([Device("fpga0", path="/dev/fpga0"), Device("fpga1", path="/dev/fpga1")])
    handing = HandedRecord().of(FPGA)
    booked = {"fpga1"}
    handing.answered(table.snapshot, ["fpga0"], booked.__contains__, 0)  # fpga0 not booked
    assert list(handing.devices) == ["fpga0"]
    handing.answered(table.snapshot, ["fpga1"], booked.__contains__, 0)
    assert list(handing.devices) == ["fpga1"]
    handing.answered(table.snapshot, ["fpga0"])  # no bookings: kept as handed out
    assert sorted(handing.devices) == ["fpga0", "fpga1"]
