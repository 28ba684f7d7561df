"""A device node's path that reaches a directory, a FIFO or a socket is never handed out as a
DeviceSpec (hostile16 F6).

A container runtime makes the container's device from a DeviceSpec's `PathOnHost` with mknod
semantics (runc, containerd: "not a device node"), so a pod given one is admitted and its
container never starts. Every driver's device with such a node is held by the ownership index
(`not_a_node`: logged, counted, shown by `check` and `/devices`), its path followed so it is
advertised once a node is there (and held again when it stops being one). A regular file
stays a device (tests and `make demo` hand one out), and a mount of such a path is fine."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError
from kdp_host.status import devices_document

from .conftest import RunningHost, wait_until
from .fake_nodes import indexed
from .fake_sysfs import FTDI, FakeSysfs
from .handed_setup import FPGA, PROBE, answering_hook, fpga_glob, head, made_dirs
from .kubelet_harness import healthy

ODD = "vendor.example/odd"
WHY = "a container runtime makes no device of it"


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    return made_dirs(short_dir, "odd")


def bound_socket(path: Path) -> None:
    """A socket file at `path` (it stays once the socket is closed)."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def odd_files(directory: Path) -> dict[str, Path]:
    """A directory, a FIFO, a socket and a regular file in `directory`, by device ID."""
    made = {n: directory / n.lower() for n in ("DIR", "FIFO", "SOCK", "FILE")}
    made["DIR"].mkdir()
    os.mkfifo(made["FIFO"])
    bound_socket(made["SOCK"])
    made["FILE"].touch()
    return made


def skipped(running: RunningHost, resource: str = ODD) -> float:
    return running.sample("kdp_driver_skipped_total", resource=resource, reason="not_a_node")


def held_back(running: RunningHost, resource: str = ODD) -> dict[str, str]:
    """`/devices`: the devices of `resource` shown held back, with the reason."""
    document = devices_document(running.host)
    [shown] = [r for r in document["resources"] if r["name"] == resource]
    return {d["id"]: d["heldBack"]["reason"] for d in shown["devices"] if "heldBack" in d}


async def test_a_probe_path_that_is_a_directory_fifo_or_socket_is_held_until_a_node_is_there(
    dirs: Path, start_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Shell probe (`lines`): `path=` a directory, a FIFO, a socket: each device held
    (`device_held reason=not_a_node`, counted, in `/devices`), the regular file advertised
    and handed out. The directory replaced by a file: advertised (its path was followed);
    the file replaced by a FIFO: held again."""
    made = odd_files(dirs / "odd")
    listing = dirs / "p.txt"
    listing.write_text("".join(f"{d} Healthy path={p}\n" for d, p in made.items()))
    config = head(dirs) + (
        f"  - name: {ODD}\n    shell: {{command: [cat, {listing}], interval: 1s}}\n"
    )
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        with caplog.at_level("WARNING", logger="kdp_host"):
            running = await start_host(config)
            await wait_until(lambda: skipped(running) == 3, what="three held not_a_node")
            await sim.wait_for(lambda: sim.allocatable(ODD) == 1)
        assert sim.resource(ODD).healthy_ids == {"FILE"}
        assert held_back(running) == {
            "DIR": "not_a_node",
            "FIFO": "not_a_node",
            "SOCK": "not_a_node",
        }
        lines = [
            r.__dict__["kdp_fields"] for r in caplog.records if r.getMessage() == "device_held"
        ]
        assert {(f["device"], f["reason"], f["path"]) for f in lines} == {
            ("DIR", "not_a_node", str(made["DIR"])),
            ("FIFO", "not_a_node", str(made["FIFO"])),
            ("SOCK", "not_a_node", str(made["SOCK"])),
        }
        assert all(WHY in f["error"] for f in lines), lines
        response = await sim.allocate(ODD, 1)
        assert response is not None
        assert [d.host_path for d in response.devices] == [str(made["FILE"])]
        # the directory becomes a file handed as a device: advertised
        made["DIR"].rmdir()
        made["DIR"].touch()
        await sim.wait_for(lambda: sim.allocatable(ODD) == 2, timeout=30.0)
        assert "DIR" not in held_back(running)
        # and a FIFO made at the file's path: held again
        made["FILE"].unlink()
        os.mkfifo(made["FILE"])
        await wait_until(lambda: skipped(running) == 4, what="FILE held not_a_node")
        await sim.wait_for(lambda: sim.allocatable(ODD) == 1, timeout=30.0)
        assert sim.resource(ODD).healthy_ids == {"DIR"}


async def test_a_glob_match_that_is_a_fifo_or_socket_is_held(dirs: Path, start_host: Any) -> None:
    """Glob `paths`: a matched FIFO and a matched socket are held (`not_a_node`), a matched
    regular file is advertised (a matched directory is no device at all); the FIFO replaced
    by a file: advertised."""
    dev = dirs / "dev"
    (dev / "x0").touch()
    os.mkfifo(dev / "x1")
    bound_socket(dev / "x2")
    (dev / "x3").mkdir()
    config = head(dirs) + f"  - name: {ODD}\n    glob: {{paths: ['{dev}/x*']}}\n"
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(config)
        await wait_until(lambda: skipped(running) == 2, what="FIFO and socket held")
        await sim.wait_for(lambda: sim.allocatable(ODD) == 1)
        assert sim.resource(ODD).healthy_ids == {"x0"}
        assert held_back(running) == {"x1": "not_a_node", "x2": "not_a_node"}
        (dev / "x1").unlink()
        (dev / "x1").touch()
        await sim.wait_for(lambda: sim.allocatable(ODD) == 2, timeout=30.0)
        assert sim.resource(ODD).healthy_ids == {"x0", "x1"}


async def test_a_glob_group_member_that_is_a_fifo_is_held_and_a_mounted_one_is_not(
    dirs: Path, start_host: Any
) -> None:
    """Glob `group`: a member passed as a node that is a FIFO holds its group's device; the
    same kind of member with `mount: true` is a mount, fine."""
    dev = dirs / "dev"
    for key in ("0", "1"):
        (dev / f"card{key}").touch()
    os.mkfifo(dev / "ctl0")
    (dev / "ctl1").touch()
    (dev / "other0").touch()
    os.mkfifo(dev / "pipe0")
    config = head(dirs) + (
        f"  - name: {ODD}\n    glob:\n      group:\n"
        f"        - {{path: '{dev}/card{{key}}'}}\n"
        f"        - {{path: '{dev}/ctl{{key}}'}}\n"
        f"  - name: {PROBE}\n    glob:\n      group:\n"
        f"        - {{path: '{dev}/other{{key}}'}}\n"
        f"        - {{path: '{dev}/pipe{{key}}', mount: true}}\n"
    )
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(config)
        await wait_until(lambda: skipped(running) == 1, what="group 0 held")
        await sim.wait_for(lambda: sim.allocatable(ODD) == 1)
        assert sim.resource(ODD).healthy_ids == {"1"}
        assert held_back(running) == {"0": "not_a_node"}
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1)
        assert skipped(running, PROBE) == 0 and held_back(running, PROBE) == {}


async def test_in_the_index_a_node_that_is_no_node_is_held_and_a_mount_of_it_is_not(
    dirs: Path,
) -> None:
    """The rule is the index's, for every driver's device: a node of a socket or a
    directory holds its device (one of several nodes too), a mount of the same paths is
    advertised."""
    made = odd_files(dirs / "odd")
    (dirs / "odd" / "link").symlink_to(made["DIR"])
    devices = [
        Device(
            "mounts",
            mounts=(DeviceMount(str(made["SOCK"]), "/s"), DeviceMount(str(made["DIR"]), "/d")),
        ),
        Device("sock", nodes=None, path=str(made["SOCK"])),  # (the one-node device)
        Device("link", nodes=None, path=str(dirs / "odd" / "link")),  # (through a link)
        Device(
            "two", nodes=(DeviceNode(str(made["FILE"]), "/f"), DeviceNode(str(made["FIFO"]), "/p"))
        ),
    ]
    index, tables = await indexed({PROBE: devices})
    assert {d: why.reason for d, why in index.held_now(PROBE).items()} == {
        "sock": "not_a_node",
        "link": "not_a_node",
        "two": "not_a_node",
    }
    assert [d.id for d in tables[PROBE].snapshot.devices] == ["mounts"]


def test_kdp_host_check_warns_of_each_node_that_is_no_node(
    dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` says which devices a run would hold (`not_a_node`), with the path and why:
    a probe's, and a sysfs device whose node under `devRoot` is a FIFO."""
    made = odd_files(dirs / "odd")
    listing = dirs / "p.txt"
    listing.write_text("".join(f"{d} Healthy path={p}\n" for d, p in made.items()))
    fake = FakeSysfs(dirs / "host")
    fake.usb_serial_adapter(fake.usb_controller(), "1-1", devnum=2)
    tty = fake.dev / "ttyUSB0"
    tty.unlink()
    os.mkfifo(tty)
    config = dirs / "kdp.yaml"
    config.write_text(
        head(dirs)
        + f"  - name: {ODD}\n    shell: {{command: [cat, {listing}], interval: 1s}}\n"
        + f"  - name: {PROBE}\n    sysfs:\n"
        f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n"
        f'      usb: [{{vendor: "{FTDI[0]}", product: "{FTDI[1]}"}}]\n'
        "      nodes: {subsystems: [tty]}\n"
    )
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "(not_a_node)" in line]
    assert len(warned) == 4, err
    for device in ("DIR", "FIFO", "SOCK"):
        assert any(f"device {device} would not be" in w and str(made[device]) in w for w in warned)
    assert any(PROBE in w and str(tty) in w and WHY in w for w in warned), warned
    assert not any("device FILE " in w for w in warned)


async def test_through_the_real_kubelet_only_the_file_is_allocatable(
    real_kubelet_factory: Any, dirs: Path, start_host: Any
) -> None:
    """hostile16 F6 with the kubelet's real device manager: of a probe's directory, FIFO,
    socket and file only the file is healthy, the first Allocate hands it out, the second
    finds nothing (no DeviceSpec of a directory, FIFO or socket)."""
    made = odd_files(dirs / "odd")
    listing = dirs / "p.txt"
    listing.write_text("".join(f"{d} Healthy path={p}\n" for d, p in made.items()))
    kubelet = real_kubelet_factory()
    await start_host(
        head(dirs) + f"  - name: {ODD}\n    shell: {{command: [cat, {listing}], interval: 1s}}\n"
    )
    await kubelet.await_for(healthy(ODD, 1), what="only the file healthy")
    first = await kubelet.acall(kubelet.allocate, "p1", {ODD: 1})
    assert first["error"] == "" and first["device_ids"][ODD] == ["FILE"], first
    assert [d["PathOnHost"] for d in first["devices"]] == [str(made["FILE"])]
    second = await kubelet.acall(kubelet.allocate, "p2", {ODD: 1})
    assert "Available: 0" in second["error"], second


async def test_an_allocate_command_handing_a_fifo_as_a_device_node_is_refused(
    dirs: Path, start_host: Any
) -> None:
    """The same rule for what an Allocate answer hands out besides the devices: an
    `allocate.command` printing a FIFO among `paths` (DeviceSpecs) refuses the Allocate
    (`invalid`), from what the answer's paths were resolved to; as a mount it is fine."""
    pipe = dirs / "odd" / "pipe"
    os.mkfifo(pipe)
    hook = answering_hook(dirs, {"paths": [f"{pipe}:/dev/pipe"]})
    config = head(dirs) + fpga_glob(dirs) + f"    allocate: {{command: [{hook}]}}\n"
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(config)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
        with pytest.raises(SimulatorAllocationError, match="the path of a DeviceSpec is a FIFO"):
            await sim.allocate(FPGA, 1, pod_uid="p1")
        assert running.sample("kdp_allocations_total", resource=FPGA, result="invalid") == 1
        answering_hook(dirs, {"mounts": [{"hostPath": str(pipe), "containerPath": "/run/p"}]})
        response = await sim.allocate(FPGA, 1, pod_uid="p2")
        assert response is not None
        assert [m.host_path for m in response.mounts] == [str(pipe)]
