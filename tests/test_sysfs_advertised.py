"""What a sysfs resource advertises, updated from the devices that changed
(`drivers/sysfs_advertised.Advertising`), is what deciding over the whole read gives: nesting
over the whole set, one device per ID (the one listed under it keeps it), IOMMU groups."""

from __future__ import annotations

import functools
import random

import pytest

from kdp_host.config import SysfsDriverConfig, SysfsMatchConfig, UsbMatchConfig
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers.sysfs_advertised import MAX_UPDATE, Advertising
from kdp_host.drivers.sysfs_match import matches
from kdp_host.sysfs.model import USB, NodeInfo, SysfsDevice, device_id

CONFIG = SysfsDriverConfig(
    usb=(UsbMatchConfig(vendor="0403"),),
    devices=(SysfsMatchConfig(device_class="block", attributes={"m": "y"}),),
)
PORTS = ["1-1", "1-2", "1-1.1", "1-1.2", "1-1.1.3", "1-2.4", "2-1", "2-1.1"]
BLOCK = ["x/a", "x/a/b", "x/a/b/c", "x/a/d", "x/a/b/d", "y/b", "y/b/q", "y/b/q/r/s/c", "y/c"]
"""Class devices nested in each other (a partition below its disk is folded into it), with
kernel names (the last part) shared between places, so IDs collide."""


def usb(port: str, version: int, rng: random.Random) -> SysfsDevice:
    """A USB device at `port` (nested ports are below their hub's directory); some match,
    some share a serial."""
    parts = port.split("-")[1].split(".")
    bus = port.split("-")[0]
    path = f"/sys/devices/usb{bus}/" + "/".join(
        f"{bus}-{'.'.join(parts[: i + 1])}" for i in range(len(parts))
    )
    vendor = "0403" if rng.random() < 0.7 else "1d6b"
    serial = rng.choice(["A", "B", f"S{port}", f"S{port}", ""])
    attributes = {"idVendor": vendor, "idProduct": "6001", "serial": serial, "v": str(version)}
    tty = f"ttyUSB{PORTS.index(port)}"
    return SysfsDevice(
        USB, port, path, attributes, nodes=(NodeInfo(tty, "tty", present=version % 3 != 0),)
    )


def block(where: str, version: int, rng: random.Random) -> SysfsDevice:
    name = where.rsplit("/", 1)[-1]
    attributes = {"m": "y" if rng.random() < 0.75 else "n", "v": str(version)}
    nodes = (NodeInfo(f"{name}{BLOCK.index(where)}", "block", present=True),)
    return SysfsDevice("class/block", name, f"/sys/devices/{where}", attributes, nodes=nodes)


def build(device: SysfsDevice, did: str) -> Device:
    nodes = tuple(DeviceNode(n.host_path, n.host_path) for n in device.nodes)
    return Device(did, healthy=all(n.present for n in device.nodes), nodes=nodes)


def advertising() -> Advertising:
    return Advertising(CONFIG, functools.partial(matches, CONFIG), device_id, build)


@pytest.mark.parametrize("seed", range(20))
def test_updates_agree_with_deciding_over_the_whole_read(seed: int) -> None:
    rng = random.Random(seed)
    present: dict[str, SysfsDevice] = {}
    kept = advertising()
    answer = kept.decide([], {})
    updated = 0
    for step in range(80):
        changed: dict[str, SysfsDevice | None] = {}
        for _ in range(rng.choice([1, 1, 2, 3, MAX_UPDATE + 1])):
            if rng.random() < 0.5:
                port = rng.choice(PORTS)
                make = functools.partial(usb, port)
            else:
                make = functools.partial(block, rng.choice(BLOCK))
            path = make(0, rng).path
            if path in present and rng.random() < 0.4:
                del present[path]
                changed[path] = None
            else:
                present[path] = changed[path] = make(step, rng)
        places = answer.places
        devices = list(present.values())
        answer = kept.update(changed, places) or kept.decide(devices, places)
        updated += len(changed) <= MAX_UPDATE
        expected = advertising().decide(devices, places)
        assert answer.devices == expected.devices, f"step {step}"
        assert answer.places == expected.places
        assert set(answer.skipped) == set(expected.skipped)
    assert updated > 40


def test_an_unchanged_device_keeps_its_objects_and_a_hot_plug_builds_one() -> None:
    rng = random.Random(1)
    built: list[str] = []

    def counting(device: SysfsDevice, did: str) -> Device:
        built.append(did)
        return build(device, did)

    kept = Advertising(CONFIG, functools.partial(matches, CONFIG), device_id, counting)
    devices = [usb(port, 1, rng) for port in ("1-1", "1-2", "2-1")]
    devices = [d for d in devices if matches(CONFIG, d)] or devices
    first = kept.decide(devices, {})
    built.clear()
    new = SysfsDevice(USB, "2-1.1", "/sys/devices/usb2/2-1.5", {"idVendor": "0403", "serial": "N"})
    second = kept.update({new.path: new}, first.places)
    assert second is not None
    assert second.devices is not first.devices, "a new mapping each time"
    for did, device in first.devices.items():
        assert second.devices[did] is device
    assert built == (["N"] if "N" in second.devices else [])
