"""A sysfs device's attributes are kept from read to read only while it is provably the
device read (`sysfs/device_read.py`), hostile25 F6 and F7:
- F7: a USB device's interfaces come after the device (the kernel sets its configuration
  after adding it): a device read before they came is read again once they are there, so
  `usb: [{interfaceClass: "02"}]` lists a hot-plugged CDC-ACM stick; and a configuration
  change without a new enumeration (its CDC interface goes) stops the match;
- F6: a stick plugged into the port another left, given the same address and node names
  (same `uevent`), is read as the new stick: never taken for the old one.
Through the reader and the driver's scanner, with the kernel's timing under the test's
control, and through the kubelet's real device manager."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.drivers.scanner import DirWatch, Listed, ScanResult
from kdp_host.drivers.sysfs import SysfsScanner
from kdp_host.sysfs import device_read
from kdp_host.sysfs.reader import SysfsReader

from .fake_sysfs import FTDI, SILABS_CP210X, FakeSysfs, UsbController
from .kubelet_harness import healthy
from .test_sysfs_driver import sysfs_config

CDC = 'usb: [{interfaceClass: "02"}]'
ZIGBEE = "example.com/zigbee"
STICK = "example.com/stick"


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "root")


@pytest.fixture(params=["ext4", "kernfs"])
def times(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fake tree's directory times as they are (a directory's change time moves when an
    entry is added in it), or as kernfs keeps them (it does not): then only what the reader
    lists and the inodes say that interfaces came or went."""
    if request.param == "kernfs":
        monkeypatch.setattr(device_read, "signature_of", lambda st: (st.st_ino, 0, 0))
    return str(request.param)


class Scans:
    """The driver's scanner, fed what changed under the dev root, as the scan loop does."""

    def __init__(self, fake: FakeSysfs, body: str) -> None:
        self.fake = fake
        self.scanner = SysfsScanner(
            sysfs_config(fake, body), SysfsReader(str(fake.sys), str(fake.dev))
        )
        self.last = self.scanner.scan(Listed(), DirWatch(), None)

    def changed(self, *devnames: str) -> ScanResult:
        listed = Listed(dict(self.last.devices), dict(self.last.places or {}))
        changed = frozenset(str(self.fake.dev / name) for name in devnames)
        self.last = self.scanner.scan(listed, DirWatch(), changed)
        return self.last

    def full(self) -> ScanResult:
        listed = Listed(dict(self.last.devices), dict(self.last.places or {}))
        self.last = self.scanner.scan(listed, DirWatch(), None)
        return self.last


def listed(result: ScanResult) -> dict[str, list[str]]:
    return {
        did: sorted(os.path.basename(node.host_path) for node in device.nodes)
        for did, device in result.devices.items()
    }


def acm_interface(fake: FakeSysfs, device: Path, number: str = "1.0", tty: str = "ttyACM0") -> Path:
    """The CDC-ACM interface of `device` and its tty (node made), as cdc_acm binds it."""
    interface = fake.usb_interface(device, number, "02", "cdc_acm")
    fake.node(interface / "tty" / tty, tty, klass="tty", major=166, minor=0)
    return interface


def bare_stick(fake: FakeSysfs, controller: UsbController, serial: str = "ZB1") -> Path:
    """A CP210x-ID stick at port 1-3 (bus node 001/005), its configuration not set yet:
    no interface (the kernel adds the device, devtmpfs its bus node, then the interfaces)."""
    vendor, product = SILABS_CP210X
    return fake.usb_device(
        controller, "1-3", devnum=5, vendor=vendor, product=product, serial=serial
    )


def test_a_device_read_before_its_interfaces_came_is_read_again_when_they_come(
    fake: FakeSysfs, times: str
) -> None:
    """F7: the bus node's event reads the stick with no interface yet; its CDC interface
    and ttyACM0 come (0.001-0.3 s later on a real machine): the tty's event reads the
    stick again, interfaces included, and the CDC-ACM resource lists it (it never did)."""
    controller = fake.usb_controller()
    scans = Scans(fake, CDC)
    stick = bare_stick(fake, controller)
    assert listed(scans.changed("bus/usb/001/005")) == {}
    acm_interface(fake, stick)
    assert listed(scans.changed("ttyACM0")) == {"ZB1": ["005", "ttyACM0"]}
    assert listed(scans.full()) == {"ZB1": ["005", "ttyACM0"]}


def test_a_configuration_change_without_a_new_enumeration_stops_the_match(
    fake: FakeSysfs, times: str, tmp_path: Path
) -> None:
    """F7, r11: a listed CDC stick's configuration changes (its CDC interface and ttyACM0
    go, a mass-storage interface comes, same `uevent`): it no longer matches, and is not
    listed (it stayed listed, Unhealthy, for good)."""
    controller = fake.usb_controller()
    stick = bare_stick(fake, controller)
    interface = acm_interface(fake, stick)
    scans = Scans(fake, CDC)
    assert listed(scans.last) == {"ZB1": ["005", "ttyACM0"]}
    fake.remove_device(interface, aside=tmp_path / "gone")
    fake.usb_interface(stick, "1.0", "08", "usb-storage")
    assert listed(scans.changed("ttyACM0")) == {}
    assert listed(scans.full()) == {}


def test_a_rescan_sees_interfaces_change_where_no_node_did(
    fake: FakeSysfs, times: str, tmp_path: Path
) -> None:
    """The interfaces alone say it: a CDC stick with no driver bound to its interface (no
    tty) changes its configuration to a mass-storage one, with no node made or gone: the
    next full rescan no longer lists it (on kernfs, only the listing of the stick's
    directory changed)."""
    controller = fake.usb_controller()
    stick = bare_stick(fake, controller)
    interface = fake.usb_interface(stick, "1.0", "02", None)
    scans = Scans(fake, CDC)
    assert listed(scans.last) == {"ZB1": ["005"]}
    fake.remove_device(interface, aside=tmp_path / "gone")
    fake.usb_interface(stick, "1.0", "08", None)
    assert listed(scans.full()) == {}


@pytest.mark.parametrize("match", ["vendor", "serial"])
def test_a_stick_in_the_port_another_left_with_its_node_names_is_the_new_stick(
    fake: FakeSysfs, times: str, tmp_path: Path, match: str
) -> None:
    """F6: S1 (port 1-1, bus node 001/002, ttyUSB0) is unplugged; S2 is plugged into the
    same port and given the same address and tty: the same node names and `uevent`. S2 is
    listed as S2 (with `serial: S1`: nothing is), never as S1 with S2's nodes."""
    controller = fake.usb_controller()
    first = fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="S1")
    body = f'usb: [{{vendor: "{FTDI[0]}"}}]' if match == "vendor" else 'usb: [{serial: "S1"}]'
    scans = Scans(fake, body)
    assert listed(scans.last) == {"S1": ["002", "ttyUSB0"]}
    nodes = fake.nodes_of(first)
    fake.remove_device(first, aside=tmp_path / "gone")
    assert listed(scans.changed(*nodes)) == {}
    fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="S2")
    expected = {"S2": ["002", "ttyUSB0"]} if match == "vendor" else {}
    assert listed(scans.changed(*nodes)) == expected
    assert listed(scans.full()) == expected


def test_a_stick_with_no_interface_yet_in_the_port_another_left_is_the_new_stick(
    fake: FakeSysfs, times: str, tmp_path: Path
) -> None:
    """F6 where no interface tells them apart (neither configured yet): the new stick's
    directory is a new one (a new inode), so it is read as the new stick."""
    controller = fake.usb_controller()
    first = bare_stick(fake, controller, serial="S1")
    scans = Scans(fake, 'usb: [{serial: "S1"}]')
    assert listed(scans.last) == {"S1": ["005"]}
    fake.remove_device(first, aside=tmp_path / "gone")
    assert listed(scans.changed("bus/usb/001/005")) == {}
    bare_stick(fake, controller, serial="S2")
    assert listed(scans.changed("bus/usb/001/005")) == {}
    assert listed(scans.full()) == {}


def test_the_same_stick_read_again_reads_no_attribute_file(
    fake: FakeSysfs, times: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is kept stays kept: a rescan of unchanged devices, and an update reading a
    device again after its node's second event, read no attribute file (issue 20)."""
    controller = fake.usb_controller()
    stick = bare_stick(fake, controller)
    acm_interface(fake, stick)
    pci = fake.pci_accelerator("0000:3b:00.0")
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    scan = reader.scan(["usb", "pci"])
    assert {d.path for d in scan.devices} >= {str(stick), str(pci)}
    read: list[str] = []
    monkeypatch.setattr(device_read, "read_text", lambda path: read.append(path) or "")
    scan = reader.scan(["usb", "pci"])
    reader.update(scan, ["ttyACM0", "bus/usb/001/005"], ["usb", "pci"])
    assert read == []


# ---------------------------------------------------------------- the kubelet's device manager


def _config(kubelet: Any, short_dir: Path, fake: FakeSysfs, resource: str, body: str) -> str:
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        f"stateDir: {short_dir / 'state'}\n"
        "resources:\n"
        f"  - name: {resource}\n"
        f"    sysfs: {{{body}, sysfsRoot: {fake.sys}, devRoot: {fake.dev}, gracePeriod: 0s}}\n"
    )


@pytest.mark.fast
async def test_a_stick_whose_interfaces_come_late_reaches_the_kubelet(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """F7 through the kubelet: kdp-host reads the stick before its interfaces are there
    (they come once its configuration is set); when its CDC interface and ttyACM0 come, the
    kubelet is told the stick, and a pod is handed its nodes (it never was)."""
    kubelet = real_kubelet_factory()
    fake = FakeSysfs(short_dir / "root")
    stick = bare_stick(fake, fake.usb_controller())
    await start_host(_config(kubelet, short_dir, fake, ZIGBEE, CDC))
    await kubelet.await_for(healthy(ZIGBEE, 0), what="the CDC resource listed, empty")
    acm_interface(fake, stick)
    await kubelet.await_for(healthy(ZIGBEE, 1), timeout=10, what="the stick listed")
    answer = await kubelet.acall(kubelet.allocate, "p1", {ZIGBEE: 1})
    assert answer["error"] == "", answer
    assert sorted(d["PathOnHost"] for d in answer["devices"]) == [
        "/dev/bus/usb/001/005",
        "/dev/ttyACM0",
    ]


@pytest.mark.fast
async def test_a_stick_in_the_port_another_left_reaches_the_kubelet_as_itself(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """F6 through the kubelet: S1 is unplugged and S2 plugged into its port with the same
    address and tty; the kubelet is told S2, and a pod is handed S2's nodes as S2 (it was
    told S1 Healthy, and the pod got S2's nodes as S1)."""
    kubelet = real_kubelet_factory()
    fake = FakeSysfs(short_dir / "root")
    controller = fake.usb_controller()
    first = fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="S1")
    body = f'usb: [{{vendor: "{FTDI[0]}"}}]'
    await start_host(_config(kubelet, short_dir, fake, STICK, body))
    await kubelet.await_for(healthy(STICK, 1), what="S1 listed")
    fake.remove_device(first, aside=short_dir / "gone")
    await kubelet.await_for(healthy(STICK, 0), what="S1 unplugged")
    fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="S2")
    await kubelet.await_for(healthy(STICK, 1), what="a stick listed again")
    seen = await kubelet.acall(kubelet.resource, STICK)
    assert list(seen["device_numa"]) == ["S2"], seen
