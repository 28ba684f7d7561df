"""A host path where nothing is in kdp-host's view is never handed out (hostile9 H5).

In the chart kdp-host runs in a container that sees only its volumes. A mount source it cannot
see was taken "by its place" and handed out, but the host's runtime resolves it on the host,
where it may be anything (the kubelet's `pods` directory through the "kubelet on the data
disk" layout, a link to `/`), and creates a missing source: nothing failed. So a device with
such a node or mount is not advertised (`unsafe_mount`), an Allocate answer with one is
refused, and `kdp-host check` warns of a config's mount source that is missing (the host may
make it later: the config stays valid)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.config import load_config, never_handed
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.ownership_claims import Unresolvable
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .conftest import wait_until
from .fake_nodes import indexed
from .fake_sysfs import FTDI, FakeSysfs
from .handed_setup import FPGA, PROBE, fpga_glob, head, left_out, made_dirs, probe

UNSEEN = "does not exist in kdp-host's view"
HINT = "mount it into kdp-host's container: chart hostMounts.extra"


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    return made_dirs(short_dir, "data")


def test_the_rule_refuses_a_path_where_nothing_is(dirs: Path) -> None:
    """The one rule (`NeverHanded`): a path where nothing is is refused, with what to do; a
    config's mount source is judged by its place only (`later`: the host may make it)."""
    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + f"  - name: {FPGA}\n    glob: {{paths: ['{dirs}/dev/f*']}}\n")
    rule = never_handed(load_config(config), str(config))
    missing = f"{dirs}/data/kubelet/pods"
    why = rule.path_problem(missing)
    assert why is not None and UNSEEN in why and HINT in why, why
    assert rule.path_problem(missing, later=True) is None
    assert rule.path_problem(f"{dirs}/data") is None
    (dirs / "data" / "lnk").symlink_to(dirs / "data" / "gone")  # (a dangling link: the same)
    assert UNSEEN in (rule.path_problem(f"{dirs}/data/lnk") or "")


async def test_a_device_mounting_a_missing_source_is_not_advertised_nor_handed_out(
    dirs: Path,
) -> None:
    """In the index: a device whose mount source is missing is held; an answer handing a
    missing path out is refused."""
    missing = str(dirs / "data" / "pods")
    device = Device("v0", mounts=(DeviceMount(missing, "/pods"),))
    index, tables = await indexed({PROBE: [device], FPGA: [Device("f0", path=f"{dirs}/dev/fpga0")]})
    assert tables[PROBE].snapshot.devices == ()
    with pytest.raises(Unresolvable, match=UNSEEN):
        await index.hand_out(FPGA, ["f0"], [f"{dirs}/dev/fpga0", missing])


async def test_hostile9_h5_a_mount_source_kdp_host_cannot_see_is_never_handed_out(
    dirs: Path, start_host: Any
) -> None:
    """Through the host: a probe's device mounting a missing source is left out (counted
    `unsafe_mount`) until the source is there; while an `allocate.mounts` source is missing
    its resource's devices are advertised Unhealthy (hostile22 F2: `answer_needs`; the answer
    that would hand it out is refused: the index's test above), and it is handed out once
    it is there."""
    probe_source, mount_source = dirs / "data" / "pods", dirs / "data" / "fw"
    listed = [{"id": "v0", "mounts": [{"hostPath": str(probe_source), "containerPath": "/p"}]}]
    (dirs / "p.json").write_text(json.dumps(listed))
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(
            head(dirs)
            + probe(dirs)
            + fpga_glob(dirs)
            + f"    allocate: {{mounts: [{{hostPath: {mount_source}, containerPath: /fw}}]}}\n"
        )
        await left_out(running, 1, "the probe's device left out")
        await sim.wait_for(lambda: sim.capacity(FPGA) == 1)
        assert sim.allocatable(FPGA) == sim.allocatable(PROBE) == 0
        with pytest.raises(SimulatorAllocationError):
            await sim.allocate(FPGA, 1)
        assert UNSEEN not in str(running.host.not_ready())  # (no host path in /readyz)
        assert "allocate.mounts[0]" in running.host.not_ready()[FPGA]
        # once the host made them (here: kdp-host sees them), both are handed out
        probe_source.mkdir()
        mount_source.mkdir()
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
        response = await sim.allocate(FPGA, 1)
        assert response is not None
        assert [m.host_path for m in response.mounts] == [str(mount_source)]
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1, timeout=30.0)
        response = await sim.allocate(PROBE, 1)
        assert response is not None
        assert [m.host_path for m in response.mounts] == [str(probe_source)]


def test_kdp_host_check_warns_of_a_missing_mount_source_with_its_line(
    dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check`: the config is valid (exit 0), with a warning naming the key and its line;
    a probe's device mounting a missing source would not be advertised."""
    (dirs / "p.json").write_text(
        json.dumps(
            [{"id": "v0", "mounts": [{"hostPath": f"{dirs}/data/x", "containerPath": "/x"}]}]
        )
    )
    config = dirs / "kdp.yaml"
    config.write_text(
        head(dirs)
        + fpga_glob(dirs)
        + f"    allocate: {{mounts: [{{hostPath: {dirs}/data/fw, containerPath: /fw}}]}}\n"
        + probe(dirs)
    )
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: line 6: resources[0].allocate.mounts[0].hostPath: {dirs}/data/fw {UNSEEN}"
    ) in err, err
    assert f"every Allocate of {FPGA} is refused while it is missing" in err
    assert f"warning: {PROBE}: device v0 would not be advertised (unsafe_mount)" in err
    assert f"{dirs}/data/x" in err


async def test_hostile9_l1_a_sysfs_node_is_claimed_where_kdp_host_sees_it(
    dirs: Path, start_host: Any
) -> None:
    """With a `devRoot` other than /dev, a sysfs device's node is claimed as the node found
    there (it was claimed at kdp-host's own /dev/<name>, where nothing is): a glob resource
    listing the same node another way clashes with it, so only one of the two is
    advertised; the sysfs device's DeviceSpec keeps the host's spelling, /dev/<name>."""
    fake = FakeSysfs(dirs / "host")
    fake.usb_serial_adapter(fake.usb_controller(), "1-1", devnum=2, serial="A10K4V2F")
    [node] = [p for p in fake.dev.rglob("ttyUSB*") if p.is_file()]
    (dirs / "gdev").mkdir()
    os.link(node, dirs / "gdev" / "g0")  # (the same node, as a second node of its number)
    serial = "vendor.example/serial"
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(
            head(dirs) + f"  - name: {serial}\n    sysfs:\n"
            f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n"
            f'      usb: [{{vendor: "{FTDI[0]}", product: "{FTDI[1]}"}}]\n'
            f"  - name: {FPGA}\n    glob: {{paths: ['{dirs}/gdev/*']}}\n"
        )

        def held() -> float:
            return sum(
                running.sample("kdp_driver_skipped_total", resource=r, reason="node_owned")
                for r in (serial, FPGA)
            )

        await sim.wait_for(lambda: sim.allocatable(serial) + sim.allocatable(FPGA) >= 1)
        await wait_until(lambda: held() == 1, what="the other one held")
        assert sim.allocatable(serial) + sim.allocatable(FPGA) == 1
        if sim.allocatable(serial) == 1:
            response = await sim.allocate(serial, 1)
            assert response is not None
            # (the adapter's own node, /dev/bus/usb/..., is handed out beside the tty)
            paths = [d.host_path for d in response.devices]
            assert f"/dev/{node.name}" in paths
            assert all(path.startswith("/dev/") for path in paths), paths


async def test_a_mount_source_that_goes_holds_its_device_until_it_is_back(
    dirs: Path, start_host: Any
) -> None:
    """A probe's device advertised with its mount source; the source is removed (the probe
    still lists it): the device is held, as it would be at the start; made again, it is
    advertised again."""
    source = dirs / "data" / "fw"
    source.mkdir()
    listed = [{"id": "v0", "mounts": [{"hostPath": str(source), "containerPath": "/fw"}]}]
    (dirs / "p.json").write_text(json.dumps(listed))
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(head(dirs) + probe(dirs))
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1)
        source.rmdir()
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 0, timeout=30.0)
        assert (
            running.sample("kdp_driver_skipped_total", resource=PROBE, reason="unsafe_mount") == 1
        )
        source.mkdir()
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1, timeout=30.0)
        response = await sim.allocate(PROBE, 1)
        assert response is not None
        assert [m.host_path for m in response.mounts] == [str(source)]


async def test_an_unhealthy_device_whose_node_went_is_held_once_listed_healthy(
    dirs: Path,
) -> None:
    """An Unhealthy device with a node where nothing is stays advertised (a grace period);
    listed Healthy with the node still missing, it is held (its cached claim is resolved
    again, not taken as owned)."""
    path = str(dirs / "dev" / "gone0")
    sick = Device("gone0", healthy=False, nodes=(DeviceNode(path, path),))
    index, tables = await indexed({FPGA: [sick]})
    assert [(d.id, d.healthy) for d in tables[FPGA].snapshot.devices] == [("gone0", False)]
    index.publish(FPGA, {"gone0": Device("gone0", nodes=(DeviceNode(path, path),))})
    await index.quiet()
    assert tables[FPGA].snapshot.devices == ()
