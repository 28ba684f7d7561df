"""End to end through the kubelet simulator: shared devices, policies, NUMA, CDI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kdp_host.allocation import cdi_device_name
from kdp_host.config.outputs import spec_file_name
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

from .cdi_spec import read_spec_file
from .conftest import glob_config, wait_until

FPGA = "vendor.example/fpga"


def make_devices(short_dir: Path, count: int, numa: list[int] | None = None) -> Path:
    dev = short_dir / "dev"
    dev.mkdir()
    for i in range(count):
        (dev / f"fpga{i}").touch()
        if numa is not None:
            (dev / f"fpga{i}.numa").write_text(str(numa[i]))
    return dev


def config(socket_dir: Path, dev: Path, extra: str, *, numa_file: bool = False) -> str:
    yaml = glob_config(socket_dir, (FPGA, f"{dev}/fpga[0-9]"), extra=extra)
    if numa_file:
        yaml = yaml.replace("gracePeriod: 1s}", 'gracePeriod: 1s, numaNodeFile: "{path}.numa"}')
    return yaml


def physical_of(device_ids: tuple[str, ...] | list[str]) -> Counter[str]:
    return Counter(i.split("::")[0] for i in device_ids)


def last_allocation(kubelet: KubeletSimulator, pod: str) -> tuple[str, ...]:
    allocation = kubelet.allocation(pod, "c0", FPGA)
    assert allocation is not None
    return allocation.device_ids


async def test_replica_accounting_through_allocate_release_cycles(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    dev = make_devices(short_dir, 2)
    extra = 'replicas: 3\nallocate: {env: {DEVS: "{ids}", N: "{count}"}}'
    await start_host(config(socket_dir, dev, extra))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 6)
    assert kubelet.resource(FPGA).capacity == 6
    assert kubelet.resource(FPGA).healthy_ids == {f"fpga{p}::{k}" for p in (0, 1) for k in range(3)}

    # packed: fpga0 is filled before fpga1
    response = await kubelet.allocate(FPGA, 4, pod_uid="a")
    assert physical_of(last_allocation(kubelet, "a")) == {"fpga0": 3, "fpga1": 1}
    assert sorted(d.host_path for d in response.devices) == [f"{dev}/fpga0", f"{dev}/fpga1"]
    assert response.envs == {"DEVS": "fpga0,fpga1", "N": "2"}
    call = kubelet.preferred_allocation_calls[-1]
    assert call.size == 4 and call.must_include == () and len(call.available) == 6

    response = await kubelet.allocate(FPGA, 2, pod_uid="b")
    assert physical_of(last_allocation(kubelet, "b")) == {"fpga1": 2}
    assert [d.host_path for d in response.devices] == [f"{dev}/fpga1"]
    assert response.envs == {"DEVS": "fpga1", "N": "1"}
    with pytest.raises(SimulatorAllocationError, match="Requested: 1, Available: 0"):
        await kubelet.allocate(FPGA, 1, pod_uid="c")

    assert await kubelet.release("a") == 4
    response = await kubelet.allocate(FPGA, 3, pod_uid="c")
    assert physical_of(last_allocation(kubelet, "c")) == {"fpga0": 3}
    assert [d.host_path for d in response.devices] == [f"{dev}/fpga0"]

    await kubelet.release("b")
    await kubelet.release("c")
    assert kubelet.resource(FPGA).allocated_ids == frozenset()
    # cycles: whatever the order of admissions and releases, nothing leaks or doubles
    held: dict[str, int] = {}
    for round_ in range(12):
        pod = f"p{round_}"
        want = 1 + round_ % 3
        free = 6 - sum(held.values())
        if want > free:
            oldest = next(iter(held))
            await kubelet.release(oldest)
            del held[oldest]
            free = 6 - sum(held.values())
        if want <= free:
            await kubelet.allocate(FPGA, want, pod_uid=pod)
            held[pod] = want
        allocated = kubelet.resource(FPGA).allocated_ids
        assert len(allocated) == sum(held.values())
    assert all(c.error is None for c in kubelet.preferred_allocation_calls)
    assert all(c.error is None for c in kubelet.allocate_calls)
    # every preferred answer was used as is: the kubelet never had to fill in
    for call in kubelet.preferred_allocation_calls:
        assert call.response_ids is not None and len(call.response_ids) == call.size


async def test_spread_policy(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    dev = make_devices(short_dir, 2)
    await start_host(config(socket_dir, dev, "replicas: 4\npreferred: spread"))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 8)

    response = await kubelet.allocate(FPGA, 2, pod_uid="a")
    assert physical_of(last_allocation(kubelet, "a")) == {"fpga0": 1, "fpga1": 1}
    assert len(response.devices) == 2
    # one replica each: both devices have 3 free, the tie goes to fpga0
    await kubelet.allocate(FPGA, 1, pod_uid="b")
    assert physical_of(last_allocation(kubelet, "b")) == {"fpga0": 1}
    # now fpga1 is the less loaded device
    await kubelet.allocate(FPGA, 1, pod_uid="c")
    assert physical_of(last_allocation(kubelet, "c")) == {"fpga1": 1}
    await kubelet.release("a")
    await kubelet.allocate(FPGA, 3, pod_uid="d")
    assert physical_of(last_allocation(kubelet, "d")) == {"fpga0": 2, "fpga1": 1}


async def test_numa_policy_with_topology_manager(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    dev = make_devices(short_dir, 6, numa=[0, 1, 0, 1, 1, 1])
    await start_host(config(socket_dir, dev, "preferred: numa", numa_file=True))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 6)
    node_of = {i: d.numa for i, d in kubelet.resource(FPGA).devices.items()}

    # topology manager chose node 0 (2 devices) for 1: GetPreferredAllocation sees that subset
    await kubelet.allocate(FPGA, 1, pod_uid="a", numa_affinity=[0])
    call = kubelet.preferred_allocation_calls[-1]
    assert {node_of[i] for i in call.available} == {(0,)}
    assert {node_of[i] for i in last_allocation(kubelet, "a")} == {(0,)}

    # no topology manager affinity: all free devices offered, the policy keeps one node
    await kubelet.allocate(FPGA, 3, pod_uid="b")
    assert len(kubelet.preferred_allocation_calls[-1].available) == 5
    assert {node_of[i] for i in last_allocation(kubelet, "b")} == {(1,)}

    # 2 more: node 1 has 1 left, node 0 has 1 left: fewest nodes = both, no error
    await kubelet.allocate(FPGA, 2, pod_uid="c")
    assert {node_of[i] for i in last_allocation(kubelet, "c")} == {(0,), (1,)}


async def test_cdi_resource(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    dev = make_devices(short_dir, 2)
    spec_dir = short_dir / "cdi"
    extra = (
        "replicas: 2\n"
        "allocate:\n"
        f"  cdi: {{kind: {FPGA}, specDir: {spec_dir}}}\n"
        "  env: {DEVS: '{ids}', STATIC: 'yes'}\n"
    )
    host = await start_host(config(socket_dir, dev, extra))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 4)
    spec_path = spec_dir / spec_file_name(FPGA)

    def spec_devices() -> list[str]:
        try:
            devices = json.loads(spec_path.read_text())["devices"]
            return sorted(d["name"] for d in devices)
        except (OSError, ValueError):
            return []

    def names(*devices: str) -> list[str]:  # (one per kubelet ID: hostile14 N6)
        return sorted(cdi_device_name(FPGA, f"{d}::{k}") for d in devices for k in (0, 1))

    await wait_until(lambda: spec_devices() == names("fpga0", "fpga1"), what="CDI spec file")
    spec = read_spec_file(spec_path)
    assert spec["containerEdits"] == {"env": ["STATIC=yes"]}

    response = await kubelet.allocate(FPGA, 3, pod_uid="a")
    given = [c.name for c in response.cdi_devices]
    assert len(given) == 2 and all(n.startswith(f"{FPGA}=") for n in given)  # one per device
    assert response.devices == []
    assert response.envs == {"DEVS": "fpga0,fpga1", "STATIC": "yes"}
    assert {c.name.split("=", 1)[1] for c in response.cdi_devices} <= set(spec_devices())

    (dev / "fpga2").touch()
    await wait_until(lambda: spec_devices() == names("fpga0", "fpga1", "fpga2"), what="hot-plug")
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 6)

    await host.shutdown()  # (it keeps the entries of the IDs pod a holds, only those: hostile27 F5)
    kept = set(spec_devices())
    assert {c.name.split("=", 1)[1] for c in response.cdi_devices} <= kept
    assert not kept & set(names("fpga2"))


async def test_a_config_whose_devices_may_have_a_numa_node_offers_preferred_allocation(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """`numaNodeFile`: GetPreferredAllocation is advertised from the first registration,
    though no device has a NUMA node yet (the answer is then no preference). Devices with a
    NUMA node come and go: never a registration (it would refuse every admission of the
    resource until it is in: hostile25 F1), and the admissions get the policy's choice
    (packed: the NUMA devices first)."""
    dev = make_devices(short_dir, 2)
    await start_host(config(socket_dir, dev, "", numa_file=True))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    options = kubelet.options(FPGA)
    assert options is not None and options.get_preferred_allocation_available
    await kubelet.allocate(FPGA, 1, pod_uid="a")
    assert [call.error for call in kubelet.preferred_allocation_calls] == [None]
    registrations = kubelet.resource(FPGA).registrations

    for name in ("fpga2", "fpga3"):
        (dev / f"{name}.numa").write_text("0")
        (dev / name).touch()

    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 4, timeout=10)
    assert kubelet.resource(FPGA).registrations == registrations
    await kubelet.allocate(FPGA, 2, pod_uid="b")
    assert set(last_allocation(kubelet, "b")) == {"fpga2", "fpga3"}
    call = kubelet.preferred_allocation_calls[-1]
    assert call.error is None and call.size == 2 and len(call.available) == 3

    await kubelet.release("b")
    for name in ("fpga2", "fpga3"):
        (dev / name).unlink()
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=10)
    assert kubelet.resource(FPGA).registrations == registrations
