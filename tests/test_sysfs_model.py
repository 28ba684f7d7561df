"""The sysfs model: reading fake kernel-shaped trees, and the real /sys where there is one."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from kdp_host.allocation import AllocationBuilder
from kdp_host.config import AllocateConfig, GlobDriverConfig, ResourceConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.sysfs.entry import PCI, TEMPLATE_FIELDS, USB
from kdp_host.sysfs.model import SysfsDevice, SysfsScan, normalize_hex
from kdp_host.sysfs.reader import MAX_UNPLACED, SysfsReader
from tests.fake_sysfs import CH340, FakeSysfs, standard_machine


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path)


def scan(fake: FakeSysfs, **kwargs: object) -> dict[str, SysfsDevice]:
    result = SysfsReader(str(fake.sys), str(fake.dev)).scan(**kwargs)  # type: ignore[arg-type]
    return {device.name: device for device in result.devices}


def devnames(device: SysfsDevice) -> list[tuple[str, str]]:
    return [(node.devname, node.subsystem) for node in device.nodes]


def test_usb_serial_adapter_with_interface_and_tty(fake: FakeSysfs) -> None:
    standard_machine(fake)
    ftdi = scan(fake)["1-1"]
    assert (ftdi.source, ftdi.vendor, ftdi.product, ftdi.serial) == (
        "usb",
        "0403",
        "6001",
        "A10K4V2F",
    )
    assert ftdi.display_name == "FTDI FT232R USB UART"
    assert ftdi.port_path == "1-1"
    assert devnames(ftdi) == [("ttyUSB0", "tty"), ("bus/usb/001/002", "usb")]
    assert [n.host_path for n in ftdi.nodes] == ["/dev/ttyUSB0", "/dev/bus/usb/001/002"]
    assert all(node.present for node in ftdi.nodes)
    (interface,) = ftdi.interfaces
    assert (interface.name, interface.interface_class, interface.driver) == (
        "1-1:1.0",
        "ff",
        "ftdi_sio",
    )
    assert ftdi.numa == 0, "a USB device's NUMA node is its host controller's"
    assert ftdi.errors == {}


def test_usb_device_without_serial(fake: FakeSysfs) -> None:
    standard_machine(fake)
    ch340 = scan(fake)["1-2"]
    assert (ch340.vendor, ch340.product) == CH340
    assert ch340.serial is None
    assert "serial" not in ch340.errors, "a missing serial is normal, not an error"
    assert devnames(ch340) == [("ttyUSB1", "tty"), ("bus/usb/001/003", "usb")]


def test_pci_accelerator_with_card_and_render_nodes_and_numa(fake: FakeSysfs) -> None:
    standard_machine(fake)
    gpu = scan(fake)["0000:3b:00.0"]
    assert (gpu.vendor, gpu.product, gpu.driver, gpu.numa) == ("8086", "56a0", "i915", 1)
    assert normalize_hex(gpu.attributes["class"]) == "030000"
    assert devnames(gpu) == [("dri/card1", "drm"), ("dri/renderD129", "drm")]


def test_pci_device_bound_to_vfio_passes_its_group_and_the_container(fake: FakeSysfs) -> None:
    standard_machine(fake)
    vfio = scan(fake)["0000:5e:00.0"]
    assert (vfio.driver, vfio.iommu_group) == ("vfio-pci", "42")
    assert devnames(vfio) == [
        ("vfio/devices/vfio0", "vfio-dev"),
        ("vfio/42", "vfio"),
        ("vfio/vfio", "vfio"),
    ]


def test_pci_storage_with_block_nodes(fake: FakeSysfs) -> None:
    standard_machine(fake)
    nvme = scan(fake)["0000:01:00.0"]
    assert devnames(nvme) == [
        ("nvme0", "nvme"),
        ("nvme0n1", "block"),
        ("nvme0n1p1", "block"),
    ]


def test_nodes_stop_at_other_devices(fake: FakeSysfs) -> None:
    """A host controller does not own its USB devices' nodes; a hub not its children's."""
    machine = standard_machine(fake)
    controller = fake.usb_controller("0000:00:15.0")
    hub = fake.usb_device(controller, "2-1", devnum=2, vendor="05e3", product="0610")
    fake.usb_interface(hub, "1.0", "09", "hub")
    fake.usb_serial_adapter(controller, "2-1.3", devnum=3, tty="ttyUSB7", serial="X1")
    found = scan(fake)
    assert devnames(found["0000:00:14.0"]) == []
    assert devnames(found["usb1"]) == [("bus/usb/001/001", "usb")]
    assert devnames(found["2-1"]) == [("bus/usb/002/002", "usb")]
    assert devnames(found["2-1.3"]) == [("ttyUSB7", "tty"), ("bus/usb/002/003", "usb")]
    assert found["2-1.3"].path == str((hub / "2-1.3").resolve())
    assert machine["ftdi"].exists()


def test_missing_node_is_reported_not_present(fake: FakeSysfs) -> None:
    standard_machine(fake)
    fake.remove_node("ttyUSB0")
    ftdi = scan(fake)["1-1"]
    assert [(n.devname, n.present) for n in ftdi.nodes] == [
        ("ttyUSB0", False),
        ("bus/usb/001/002", True),
    ]


def test_unreadable_attribute_is_recorded_not_fatal(fake: FakeSysfs) -> None:
    machine = standard_machine(fake)
    serial = machine["ftdi"] / "serial"
    serial.unlink()
    serial.mkdir()  # reading it fails with EISDIR, as root too
    fifo = machine["ftdi"] / "manufacturer"
    fifo.unlink()
    os.mkfifo(fifo)  # opened non-blocking: no writer, no hang
    found = scan(fake)
    assert "serial" in found["1-1"].errors
    assert found["1-1"].serial is None
    assert found["1-1"].vendor == "0403"
    assert len(found) == 7


def test_a_missing_bus_is_a_problem_not_an_error(fake: FakeSysfs) -> None:
    result = SysfsReader(str(fake.sys), str(fake.dev)).scan(buses=["usb"], classes=["drm"])
    assert result.devices == ()
    assert [p.split(":")[0] for p in result.problems] == ["usb", "class/drm"]


def test_class_devices_and_extra_attributes(fake: FakeSysfs) -> None:
    controller = fake.usb_controller()
    camera = fake.usb_device(controller, "1-4", devnum=5, vendor="046d", product="0825")
    interface = fake.usb_interface(camera, "1.0", "0e", "uvcvideo")
    video = fake.node(
        interface / "video4linux" / "video0", "video0", klass="video4linux", major=81, minor=0
    )
    fake.attributes(video, name="UVC Camera (046d:0825)")
    found = scan(fake, buses=(), classes=["video4linux"], extra_attributes=["name"])
    video0 = found["video0"]
    assert video0.source == "class/video4linux"
    assert video0.attributes["name"] == "UVC Camera (046d:0825)"
    assert devnames(video0) == [("video0", "video4linux")]
    assert video0.numa == 0


def test_watch_dirs_cover_every_node_directory(fake: FakeSysfs) -> None:
    standard_machine(fake)
    result = SysfsReader(str(fake.sys), str(fake.dev)).scan()
    dev = str(fake.dev)
    assert {dev, f"{dev}/bus/usb/001", f"{dev}/dri", f"{dev}/vfio"} <= result.watch_dirs


def test_template_values(fake: FakeSysfs) -> None:
    standard_machine(fake)
    values = scan(fake)["1-1"].template_values()
    assert values["vendor"] == "0403"
    assert values["serial"] == "A10K4V2F"
    assert values["address"] == "1-1"
    assert values["nodes"] == "/dev/ttyUSB0,/dev/bus/usb/001/002"


def test_every_device_gives_exactly_the_template_fields_the_config_checks(fake: FakeSysfs) -> None:
    """`entry.TEMPLATE_FIELDS` (what the config's checks accept, without loading the model)
    are the fields every device's `template_values` has: USB and PCI devices alike."""
    standard_machine(fake)
    devices = scan(fake)
    assert {device.source for device in devices.values()} == {USB, PCI}
    for device in devices.values():
        assert set(device.template_values()) == TEMPLATE_FIELDS, device.name


@pytest.mark.parametrize(("raw", "normal"), [("0x10C4", "10c4"), ("10c4", "10c4"), ("0X03", "03")])
def test_normalize_hex(raw: str, normal: str) -> None:
    assert normalize_hex(raw) == normal


def test_allocation_passes_every_node_with_its_permissions() -> None:
    nodes = (
        DeviceNode("/dev/dri/card1", "/dev/dri/card1"),
        DeviceNode("/dev/dri/renderD129", "/dev/dri/renderD129", permissions="r"),
    )
    table = DeviceTable()
    table.publish([Device("0000:3b:00.0", nodes=nodes), Device("other", nodes=(nodes[0],))])
    resource = ResourceConfig(
        "vendor.example/gpu", GlobDriverConfig(paths=("/x",)), AllocateConfig(permissions="rwm")
    )
    response = AllocationBuilder(resource).container_response(table.snapshot, ["0000:3b:00.0"])
    assert [(d.host_path, d.permissions) for d in response.devices] == [
        ("/dev/dri/card1", "rwm"),
        ("/dev/dri/renderD129", "r"),
    ]
    compact = Device("x", nodes=(DeviceNode("/dev/x", "/dev/x", permissions="r"),), path="/dev/x")
    assert compact.nodes[0].permissions == "r", "a node with its own permissions is kept whole"


# ---------------------------------------------------------------------- the real /sys


def _real_pci_devices() -> list[str]:
    try:
        return sorted(os.listdir("/sys/bus/pci/devices"))
    except OSError:
        return []


@pytest.mark.skipif(
    not _real_pci_devices(),
    reason="no /sys/bus/pci/devices here (no sysfs, or a machine without PCI): "
    "the read-only check against a real kernel's tree needs one",
)
def test_real_sys_reads_pci_devices_and_their_block_nodes() -> None:
    """Read-only: the reader agrees with the kernel's own tree on this machine."""
    result = SysfsReader("/sys", "/dev").scan(buses=["pci"])
    by_name = {device.name: device for device in result.devices}
    assert sorted(by_name) == _real_pci_devices()
    for device in by_name.values():
        assert device.vendor is not None and len(device.vendor) == 4, device
        int(device.vendor, 16)
        assert device.product is not None and len(device.product) == 4, device
        assert os.path.isdir(device.path)
        for node in device.nodes:
            assert not node.devname.startswith("/"), node
    # Every block device the kernel lists whose directory lies below a PCI device must be
    # found beneath that PCI device (computed here independently from /sys/class/block).
    expected: set[tuple[str, str]] = set()
    for name in os.listdir("/sys/class/block") if os.path.isdir("/sys/class/block") else []:
        real = os.path.realpath(f"/sys/class/block/{name}")
        owners = [pci for pci, dev in by_name.items() if real.startswith(dev.path + "/")]
        if owners:
            # the innermost PCI device (a bridge's child, not the bridge)
            owner = max(owners, key=lambda pci: len(by_name[pci].path))
            expected.add((owner, name))
    found = {
        (device.name, node.devname)
        for device in by_name.values()
        for node in device.nodes
        if node.subsystem == "block"
    }
    assert expected <= found
    if not expected:
        pytest.skip("no block device below a PCI device on this machine (PCI devices read fine)")


def test_a_device_name_with_a_control_character_is_skipped_and_reported(fake: FakeSysfs) -> None:
    fake.pci_device("0000:5e:00.0", "10de", "1eb8")
    fake.pci_device("0000:5f:00.0\n- name: x", "10de", "1eb8", parent=fake.sys / "devices")
    result = SysfsReader(str(fake.sys), str(fake.dev)).scan(["pci"])
    assert [device.name for device in result.devices] == ["0000:5e:00.0"]
    assert [(Path(path).name, why) for path, why in result.skipped] == [
        ("0000:5f:00.0\n- name: x", "device name must not contain control character '\\n'")
    ]


@pytest.mark.parametrize("group", ["..", "4\n2", "-1", "noiommu-x", " 7"])
def test_a_bad_iommu_group_name_gives_no_vfio_node(fake: FakeSysfs, group: str) -> None:
    path = fake.pci_vfio(group=7)
    (path / "iommu_group").unlink()
    os.symlink(f"../{group}" if group != ".." else "../..", path / "iommu_group")
    result = SysfsReader(str(fake.sys), str(fake.dev)).scan(["pci"])
    vfio = next(d for d in result.devices if d.name == "0000:5e:00.0")
    assert vfio.iommu_group is None
    assert [name for name, _ in devnames(vfio)] == ["vfio/devices/vfio0"]
    assert "no vfio node" in vfio.errors["iommu_group"]
    assert [Path(path).name for path, _ in result.skipped] == ["iommu_group"]


@pytest.mark.parametrize("group", ["0", "42", "noiommu-3"])
def test_kernel_iommu_group_names_give_a_vfio_node(fake: FakeSysfs, group: str) -> None:
    path = fake.pci_vfio(group=7)
    (path / "iommu_group").unlink()
    os.symlink(f"../{group}", path / "iommu_group")
    vfio = scan(fake)["0000:5e:00.0"]
    assert (f"vfio/{group}", "vfio") in devnames(vfio)


# ---------------------------------------------------------------------- updates: O(changed)


def view(result: SysfsScan) -> dict[str, tuple[list[tuple[str, str, bool]], str | None]]:
    """What a scan says, comparable between a full scan and an update."""
    return {
        d.path: ([(n.devname, n.subsystem, n.present) for n in d.nodes], d.serial)
        for d in result.devices
    }


def late_input_node(fake: FakeSysfs, device: Path, number: int) -> str:
    """An input node the kernel adds below a USB device's interface once its driver binds."""
    interface = device / f"{device.name}:1.0"
    fake.node(
        interface / "input" / f"input{number}" / f"event{number}",
        f"input/event{number}",
        klass="input",
        major=13,
        minor=64 + number,
    )
    return f"input/event{number}"


def test_an_update_reads_only_what_changed(fake: FakeSysfs) -> None:
    """A new device, a late node of a listed one, a lost node: each update reads those
    devices again and keeps every other device as the same object; the result is what a
    full scan finds."""
    standard_machine(fake)
    controller = fake.usb_controller("0000:00:15.0")
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    first = reader.scan()
    stick = fake.usb_serial_adapter(controller, "2-1", devnum=2, tty="ttyUSB7", serial="NEW")
    second = reader.update(first, fake.nodes_of(stick))
    assert view(second) == view(SysfsReader(str(fake.sys), str(fake.dev)).scan())
    unchanged = {d.path: d for d in first.devices}
    assert all(unchanged[d.path] is d for d in second.devices if d.name != "2-1")
    devname = late_input_node(fake, stick, 5)
    third = reader.update(second, [devname])
    [updated] = [d for d in third.devices if d.name == "2-1"]
    assert ("input/event5", "input", True) in view(third)[updated.path][0]
    assert view(third) == view(SysfsReader(str(fake.sys), str(fake.dev)).scan())
    fake.remove_node("ttyUSB7")
    fourth = reader.update(third, ["ttyUSB7"])
    assert ("ttyUSB7", "tty", False) in view(fourth)[updated.path][0]
    fake.remove_device(stick)
    fifth = reader.update(fourth, [devname])
    assert "2-1" not in {d.name for d in fifth.devices}
    assert view(fifth) == view(SysfsReader(str(fake.sys), str(fake.dev)).scan())


def test_a_new_node_directory_is_watched_and_read(fake: FakeSysfs) -> None:
    """/dev/input appears with the first input node: it is watched from then on, and the
    nodes in it are placed."""
    controller = fake.usb_controller()
    stick = fake.usb_serial_adapter(controller, "1-1", devnum=2)
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    first = reader.scan()
    assert str(fake.dev / "input") not in first.watch_dirs
    late_input_node(fake, stick, 3)
    second = reader.update(first, ["input"])
    assert str(fake.dev / "input") in second.watch_dirs
    [device] = [d for d in second.devices if d.name == "1-1"]
    assert "input/event3" in {n.devname for n in device.nodes}


def test_every_node_directory_is_watched(fake: FakeSysfs) -> None:
    """Nodes may appear in any directory the kernel makes under /dev (input, snd, dri...),
    so all are watched, but not other mounts and udev's link farms."""
    standard_machine(fake)
    for directory in ("input", "snd", "pts", "disk/by-id", "net", ".udev"):
        (fake.dev / directory).mkdir(parents=True)
    watched = SysfsReader(str(fake.sys), str(fake.dev)).scan().watch_dirs
    dev = str(fake.dev)
    assert {f"{dev}/input", f"{dev}/snd", f"{dev}/net"} <= watched
    assert not {f"{dev}/pts", f"{dev}/disk", f"{dev}/disk/by-id", f"{dev}/.udev"} & watched


def test_a_real_device_node_is_placed_by_its_number(fake: FakeSysfs) -> None:
    """A node that is a real character device (here the host's /dev/null, linked into the
    fake dev root) is placed through `<sysfs>/dev/char/MAJ:MIN`, whatever its name."""
    null = os.stat("/dev/null")
    number = f"{os.major(null.st_rdev)}:{os.minor(null.st_rdev)}"
    controller = fake.usb_controller()
    stick = fake.usb_serial_adapter(controller, "1-1", devnum=2)
    target = fake.device_dir(stick / "1-1:1.0" / "misc" / "oddly-named")
    (target / "uevent").write_text(f"MAJOR={number.split(':')[0]}\nDEVNAME=whatever\n")
    (fake.sys / "dev" / "char").mkdir(parents=True, exist_ok=True)
    (fake.sys / "dev" / "char" / number).symlink_to(target)
    (fake.dev / "whatever").symlink_to("/dev/null")
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    assert reader.nodes.node_directory("whatever") == str(target)


@pytest.mark.parametrize("one_by_one", [False, True], ids=["together", "one_by_one"])
@pytest.mark.parametrize("seed", range(6))
def test_updates_agree_with_full_scans(fake: FakeSysfs, seed: int, one_by_one: bool) -> None:
    """Random plugs, unplugs, late nodes and lost nodes, each followed by an update with the
    names of the nodes that changed (all at once, or one update per node, the tty first:
    a new adapter is then found from its tty node alone): always what a full scan finds."""
    rng = random.Random(seed)
    controller = fake.usb_controller()
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    current = reader.scan()
    plugged: dict[int, Path] = {}
    for step in range(40):
        port = rng.randrange(1, 7)
        action = rng.choice(["plug", "unplug", "late", "lose"])
        changed: list[str] = []
        if port not in plugged and action in ("plug", "late"):
            plugged[port] = fake.usb_serial_adapter(
                controller, f"1-{port}", devnum=10 + step, tty=f"ttyUSB{step}", serial=f"S{step}"
            )
            changed = fake.nodes_of(plugged[port])
        elif port in plugged and action == "unplug":
            changed = fake.nodes_of(plugged[port])
            fake.remove_device(plugged.pop(port))
        elif port in plugged and action == "late":
            changed = [late_input_node(fake, plugged[port], step)]
        elif port in plugged and action == "lose":
            changed = fake.nodes_of(plugged[port])[-1:]
            fake.remove_node(changed[0])
        for names in [[name] for name in changed] if one_by_one else [changed]:
            current = reader.update(current, names)
        assert view(current) == view(SysfsReader(str(fake.sys), str(fake.dev)).scan()), step


def listed_while(reader_call: Callable[[], SysfsScan]) -> tuple[SysfsScan, list[str]]:
    """What `reader_call` returns, and the directories it listed."""
    listed: list[str] = []
    real = os.listdir

    def listdir(path: str) -> list[str]:
        listed.append(os.fspath(path))
        return real(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "listdir", listdir)
        return reader_call(), listed


def test_a_hot_plugged_device_is_found_from_its_node_not_by_listing_the_bus(
    fake: FakeSysfs,
) -> None:
    """The node names what changed: its device is found from the node upwards (by device
    number, or the class entry of its name), so a hot-plug costs the same whatever the bus
    holds. Only a node that is there, cannot be placed and is no new device's makes the
    update list the bus; a node no listed device had that is gone again makes it read
    nothing."""
    controller = fake.usb_controller()
    for port in range(1, 4):
        fake.usb_serial_adapter(controller, f"1-{port}", devnum=port + 1, tty=f"ttyUSB{port}")
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    first = reader.scan(buses=["usb"])
    bus = str(fake.sys / "bus" / "usb" / "devices")
    stick = fake.usb_serial_adapter(
        controller, "1-7", devnum=9, tty="ttyUSB7", serial="NEW", create_nodes=False
    )
    tty, usb_node = fake.nodes_of(stick)
    fake.create_node(tty)
    second, listed = listed_while(lambda: reader.update(first, [tty], buses=["usb"]))
    assert bus not in listed
    assert view(second) == view(SysfsReader(str(fake.sys), str(fake.dev)).scan(buses=["usb"]))
    [new] = [d for d in second.devices if d.name == "1-7"]
    assert (tty, "tty", True) in view(second)[new.path][0]
    assert [d for d in second.devices if d.name != "1-7"] == list(first.devices)
    fake.create_node(usb_node)
    third, listed = listed_while(lambda: reader.update(second, [usb_node], buses=["usb"]))
    assert bus not in listed
    assert (usb_node, "usb", True) in view(third)[new.path][0]
    other = fake.usb_serial_adapter(controller, "1-8", devnum=10, tty="ttyUSB8", serial="TWO")
    # Its USB node is a plain file here (no device number to place it by), but it is a node
    # of the device its tty node leads to.
    fourth, listed = listed_while(lambda: reader.update(third, fake.nodes_of(other), buses=["usb"]))
    assert bus not in listed
    assert view(fourth) == view(SysfsReader(str(fake.sys), str(fake.dev)).scan(buses=["usb"]))
    third = fourth
    fake.create_node("stray/node")  # a plain file: no device number, no class entry
    fourth, listed = listed_while(lambda: reader.update(third, ["stray/node"], buses=["usb"]))
    assert bus in listed
    assert [id(d) for d in fourth.devices] == [id(d) for d in third.devices]
    fake.remove_node("stray/node")
    fifth, listed = listed_while(lambda: reader.update(fourth, ["stray/node"], buses=["usb"]))
    assert bus not in listed
    assert [id(d) for d in fifth.devices] == [id(d) for d in fourth.devices]


def test_a_name_that_moved_to_another_device_is_read_there(fake: FakeSysfs) -> None:
    """ttyUSB0 belonged to the adapter at 1-1; that one left and the adapter at 1-2 got
    ttyUSB0: an update for their nodes reads the class entry where it points now."""
    controller = fake.usb_controller()
    first = fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="A")
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    before = reader.scan(buses=["usb"], classes=["tty"])
    changed = fake.nodes_of(first)
    fake.remove_device(first)
    second = fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB0", serial="B")
    changed += fake.nodes_of(second)
    after = reader.update(before, changed, buses=["usb"], classes=["tty"])
    assert view(after) == view(reader.scan(buses=["usb"], classes=["tty"]))
    [tty] = [d for d in after.devices if d.name == "ttyUSB0"]
    assert "/1-2/" in tty.path


def test_a_flood_of_unrelated_nodes_costs_one_full_read(fake: FakeSysfs) -> None:
    """Hundreds of nodes no listed device has (a tool creating loop devices, a bind-mounted
    junk directory): past MAX_UNPLACED the update is one full read, not a lookup each."""
    standard_machine(fake)
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    before = reader.scan()
    flood = [f"flood/n{index}" for index in range(MAX_UNPLACED + 1)]
    for name in flood:
        fake.create_node(name)
    after = reader.update(before, flood)
    assert view(after) == view(before)
    assert not {id(d) for d in after.devices} & {id(d) for d in before.devices}
    few = reader.update(after, flood[:3])
    assert [id(d) for d in few.devices] == [id(d) for d in after.devices]


def test_a_device_read_again_and_found_the_same_is_no_change(fake: FakeSysfs) -> None:
    """Issue 20: a node's second event (created, then its permissions set) reads its device
    again and finds it the same: the update keeps the very object and names no change, and
    the scanner gives the very list it gave (what follows compares it by identity: a flapping
    device's repeated events cost no list work downstream)."""
    from kdp_host.drivers.scanner import DirWatch, Listed
    from kdp_host.drivers.sysfs import SysfsScanner

    from .fake_sysfs import FTDI
    from .test_sysfs_driver import sysfs_config

    controller = fake.usb_controller()
    for slot in range(3):
        fake.usb_serial_adapter(
            controller, f"1-{slot + 1}", devnum=slot + 2, tty=f"ttyUSB{slot}", serial=f"S{slot}"
        )
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    config = sysfs_config(fake, f"usb: [{{vendor: '{FTDI[0]}', product: '{FTDI[1]}'}}]")
    scanner = SysfsScanner(config, reader)
    scanner.scan(Listed(), DirWatch(), None)
    stick = fake.usb_serial_adapter(controller, "1-9", devnum=20, tty="ttyUSB9", serial="HOT")
    names = frozenset(str(fake.dev / name) for name in fake.nodes_of(stick))
    plugged = scanner.scan(Listed(), DirWatch(), names)
    assert len(plugged.devices) == 4
    first = reader.update(reader.scan(), [n.removeprefix(f"{fake.dev}/") for n in names])
    second = reader.update(first, [n.removeprefix(f"{fake.dev}/") for n in names])
    assert second.changed == {}
    assert all(a is b for a, b in zip(first.devices, second.devices, strict=True))
    places = dict(plugged.places or {})
    again = scanner.scan(Listed(plugged.devices, places), DirWatch(), names)
    assert again.devices is plugged.devices


def test_an_update_reads_the_attributes_of_an_enumeration_once(
    fake: FakeSysfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: attribute values are kept while a device is the one read, from one update
    to the next as from one scan to the next: the second event of a node (its device read
    again) reads no attribute file; a new enumeration (a new `uevent`) reads them again."""
    from unittest import mock

    from kdp_host.sysfs import device_read

    spy = mock.Mock(wraps=device_read.read_text)
    monkeypatch.setattr(device_read, "read_text", spy)
    controller = fake.usb_controller()
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    scan = reader.scan()
    stick = fake.usb_serial_adapter(controller, "1-9", devnum=20, tty="ttyUSB9", serial="HOT")
    names = fake.nodes_of(stick)
    scan = reader.update(scan, names)
    assert any(call.args[0].startswith(str(stick)) for call in spy.call_args_list)
    spy.reset_mock()
    scan = reader.update(scan, names)
    assert spy.call_args_list == []
    fake.remove_device(stick)
    scan = reader.update(scan, names)
    stick = fake.usb_serial_adapter(controller, "1-9", devnum=21, tty="ttyUSB9", serial="NEXT")
    scan = reader.update(scan, names)
    assert [d.serial for d in scan.devices if d.name == "1-9"] == ["NEXT"]
