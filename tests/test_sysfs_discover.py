"""`kdp-host discover`: every format, errors shown, and every suggested entry finds its device."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdp_host.cli import main
from kdp_host.config import SysfsDriverConfig, load_config_text
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.sysfs import SysfsDriver
from kdp_host.logs import get_logger
from kdp_host.sysfs.model import SysfsScan
from kdp_host.sysfs.reader import SysfsReader
from kdp_host.watch import PollingWatcher

from .fake_sysfs import CH340, SILABS_CP210X, FakeSysfs, standard_machine


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    fake = FakeSysfs(tmp_path)
    standard_machine(fake)
    return fake


def run_discover(fake: FakeSysfs, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`kdp-host discover` on the fake machine, without the host's ID databases (unless the
    test names one), so what this machine has installed never changes the output."""
    ids = [] if "--pci-ids" in args else ["--pci-ids", "", "--usb-ids", ""]
    roots = ["--sysfs-root", str(fake.sys), "--dev-root", str(fake.dev)]
    code = main(["discover", *roots, *ids, *args])
    assert code == 0
    return capsys.readouterr().out


def test_table_lists_devices_nodes_and_entries(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_discover(fake, capsys)
    lines = out.splitlines()
    assert lines[0].split() == [
        "SOURCE",
        "ADDRESS",
        "ID",
        "VENDOR:PRODUCT",
        "NUMA",
        "DRIVER",
        "DESCRIPTION",
    ]
    row = next(line for line in lines if line.startswith("usb     1-1 "))
    assert row.split()[:6] == ["usb", "1-1", "A10K4V2F", "0403:6001", "0", "ftdi_sio"]
    assert "FTDI FT232R USB UART" in row
    assert "#   node: /dev/ttyUSB0 (tty)" in lines
    assert "#   node: /dev/vfio/42 (vfio)" in lines
    assert '#   pin it to this one device: add serial: "A10K4V2F"' in lines
    assert '    - vendor: "0403"' in lines
    assert not any(line.startswith("usb     usb1") for line in lines), "root hubs only with --all"
    assert any(
        line.startswith("usb     usb1") for line in run_discover(fake, capsys, "--all").splitlines()
    )


def test_unreadable_attributes_and_hostile_strings_are_shown_not_fatal(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    ftdi = fake.sys / "bus" / "usb" / "devices" / "1-1"
    (ftdi / "serial").unlink()
    (ftdi / "serial").mkdir()
    (ftdi / "product").write_text("evil\x1b[2J\nforged line\n")
    out = run_discover(fake, capsys)
    assert "#   unreadable: serial: Is a directory" in out
    assert "\x1b" not in out
    assert not any(line.startswith("forged line") for line in out.splitlines())


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_structured_formats(fake: FakeSysfs, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    out = run_discover(fake, capsys, "--format", fmt, "--bus", "usb", "--bus", "pci")
    document = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    by_address = {d["address"]: d for d in document["devices"]}
    gpu = by_address["0000:3b:00.0"]
    assert (gpu["vendor"], gpu["product"], gpu["numa"], gpu["driver"]) == (
        "8086",
        "56a0",
        1,
        "i915",
    )
    assert [n["path"] for n in gpu["nodes"]] == ["/dev/dri/card1", "/dev/dri/renderD129"]
    assert by_address["0000:5e:00.0"]["iommuGroup"] == "42"
    assert by_address["1-1"]["serial"] == "A10K4V2F"
    assert by_address["1-1"]["interfaces"] == [
        {"name": "1-1:1.0", "class": "ff", "driver": "ftdi_sio"}
    ]
    assert document["problems"] == []


def test_every_suggested_entry_finds_its_device(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paste each entry into a config (with the test's roots): it validates, and the driver
    finds that device under the ID discover announced."""
    document = yaml.safe_load(run_discover(fake, capsys, "--format", "yaml", "--all"))
    assert len(document["devices"]) == 7
    for item in document["devices"]:
        entry = item["resource"]
        entry["sysfs"].update(sysfsRoot=str(fake.sys), devRoot=str(fake.dev))
        config = load_config_text(yaml.safe_dump({"resources": [entry]}))
        driver_config = config.resources[0].driver
        assert isinstance(driver_config, SysfsDriverConfig)
        log = get_logger()
        driver = SysfsDriver(driver_config, DriverDeps(log, PollingWatcher(log)))
        found = {device.id: device for device in asyncio.run(driver.scan())}
        assert item["id"] in found, (item["address"], sorted(found))
        assert [n.host_path for n in found[item["id"]].nodes] == [n["path"] for n in item["nodes"]]


def test_a_hung_sysfs_read_is_given_up_after_the_timeout(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read runs off the loop (the host's offload): a read stuck in the kernel is left
    on its daemon thread, and discover says so and exits."""
    release = threading.Event()

    def stuck(self: SysfsReader, *args: object) -> SysfsScan:
        release.wait(30)
        return SysfsScan(())

    monkeypatch.setattr(SysfsReader, "scan", stuck)
    try:
        code = main(
            [
                *("discover", "--sysfs-root", str(fake.sys), "--dev-root", str(fake.dev)),
                *("--timeout", "0.2"),
            ]
        )
    finally:
        release.set()
    assert code == 1
    assert capsys.readouterr().err == "kdp-host discover: sysfs: no answer within 0.2s\n"


def test_missing_bus_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = FakeSysfs(tmp_path)
    out = run_discover(empty, capsys)
    assert "# not read: usb: cannot list" in out
    assert "(no devices found)" in out


def test_classes_are_listed_with_their_name(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_discover(fake, capsys, "--bus", "none-such", "--class", "drm", "--format", "json")
    document = json.loads(out)
    assert sorted(d["address"] for d in document["devices"]) == ["card1", "renderD129"]
    assert document["devices"][0]["resource"]["sysfs"] == {
        "devices": [{"class": "drm", "name": "card1"}]
    }


def test_check_shows_sysfs_resources(
    fake: FakeSysfs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.remove_node("dri/renderD129")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
resources:
  - name: example.com/serial
    sysfs: {{usb: {{vendor: "0403"}}, sysfsRoot: {fake.sys}, devRoot: {fake.dev}}}
  - name: example.com/gpu
    sysfs: {{pci: {{class: "03"}}, sysfsRoot: {fake.sys}, devRoot: {fake.dev}}}
"""
    )
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        "example.com/serial  sysfs   A10K4V2F Healthy numa=0 /dev/ttyUSB0, /dev/bus/usb/001/002"
        in out
    )
    gpu_row = "0000:3b:00.0 Unhealthy numa=1 /dev/dri/card1, /dev/dri/renderD129"
    assert f"example.com/gpu     sysfs   {gpu_row}" in out


def test_a_hostile_device_name_never_becomes_yaml(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device directory named with a newline: skipped and reported (quoted), so no line
    of the output is YAML the tester wrote."""
    probe = "0000:5f:00.0\n- name: evil.example/probe\n  shell: {probe: id}"
    fake.pci_device(probe, "10de", "1eb8", parent=fake.sys / "devices")
    out = run_discover(fake, capsys)
    assert not any(line.startswith("- name: evil") for line in out.splitlines())
    assert not any(line.startswith("  shell:") for line in out.splitlines())
    assert "device name must not contain control character" in out
    document = yaml.safe_load(run_discover(fake, capsys, "--format", "yaml"))
    assert all("\n" not in d["address"] for d in document["devices"])


def test_entries_are_ready_to_paste(fake: FakeSysfs, capsys: pytest.CaptureFixture[str]) -> None:
    """Several devices of one product get distinct names; an unreadable ID gives no empty
    `vendor: ""` and no `None` in a name; the whole document loads as one config."""
    controller = fake.usb_controller("0000:00:15.0")
    for port, devnum in (("3-1", 2), ("3-2", 3), ("3-3", 4)):
        fake.usb_serial_adapter(controller, port, devnum=devnum, tty=f"ttyUSB{devnum + 5}")
    unreadable = fake.sys / "bus" / "usb" / "devices" / "3-3"
    for attribute in ("idVendor", "idProduct"):
        (unreadable / attribute).unlink()
        (unreadable / attribute).mkdir()
    fake.pci_device("0000:77:00.0", "8086", "0b25", parent=fake.sys / "devices")
    (fake.sys / "devices" / "0000:77:00.0" / "device").unlink()
    document = yaml.safe_load(run_discover(fake, capsys, "--format", "yaml", "--all"))
    entries = [d["resource"] for d in document["devices"] if d["resource"] is not None]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), names
    assert not any("none" in name.lower() for name in names), names
    for entry in entries:
        for match in (*entry["sysfs"].get("usb", []), *entry["sysfs"].get("pci", [])):
            assert all(value != "" for value in match.values()), entry
    by_address = {d["address"]: d for d in document["devices"]}
    assert by_address["3-3"]["resource"] is None
    [unread] = by_address["0000:77:00.0"]["resource"]["sysfs"]["pci"]
    assert unread["vendor"] == "8086" and "device" not in unread
    load_config_text(yaml.safe_dump({"resources": entries}))
    table = run_discover(fake, capsys)
    assert "# no entry: its vendor and product IDs could not be read" in table


@pytest.mark.parametrize(
    "args",
    [
        ("--domain", "Bad_Domain"),
        ("--domain", "a\nb"),
        ("--domain", "x/y"),
        ("--timeout", "0"),
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--bus", ".."),
        ("--bus", "../../etc"),
        ("--class", "a/b"),
    ],
)
def test_bad_arguments_are_refused(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["discover", "--sysfs-root", str(fake.sys), "--dev-root", str(fake.dev), *args])
    assert exited.value.code == 2
    assert "must" in capsys.readouterr().err


def entry_config(entry: dict[str, Any], fake: FakeSysfs) -> SysfsDriverConfig:
    entry = copy.deepcopy(entry)
    entry["sysfs"].update(sysfsRoot=str(fake.sys), devRoot=str(fake.dev))
    driver_config = load_config_text(yaml.safe_dump({"resources": [entry]})).resources[0].driver
    assert isinstance(driver_config, SysfsDriverConfig)
    return driver_config


def advertised(fake: FakeSysfs, entry: dict[str, Any]) -> list[list[str]]:
    """The node lists of the devices a pasted entry advertises, found by the driver."""
    log = get_logger()
    driver = SysfsDriver(entry_config(entry, fake), DriverDeps(log, PollingWatcher(log)))
    return [[n.host_path for n in d.nodes] for d in asyncio.run(driver.scan())]


def test_every_block_entry_matches_exactly_its_device(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`discover --class block`: pasting the entry printed for vdb exposes vdb, not every
    disk of the machine (the root disk among them)."""
    fake.virtio_disk("0000:00:05.0", index=2, disk="vda", partitions=2)
    fake.virtio_disk("0000:00:06.0", index=3, disk="vdb")
    out = run_discover(fake, capsys, "--bus", "none-such", "--class", "block", "--format", "yaml")
    document = yaml.safe_load(out)
    by_address = {d["address"]: d for d in document["devices"]}
    assert set(by_address) >= {"vda", "vda1", "vdb", "nvme0n1", "nvme0n1p1"}
    for address, item in by_address.items():
        assert item["matches"] == [address], item
        assert advertised(fake, item["resource"]) == [[n["path"] for n in item["nodes"]]]
    assert advertised(fake, by_address["vdb"]["resource"]) == [["/dev/vdb"]]


def test_an_entry_that_matches_several_devices_says_so(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sticks of one product: with serials each entry holds its serial; without, the
    entry says plainly which devices it matches."""
    controller = fake.usb_controller("0000:00:15.0")
    fake.usb_serial_adapter(controller, "2-1", devnum=2, tty="ttyUSB5", serial="B-ONE")
    for port, devnum, tty in (("2-2", 3, "ttyUSB6"), ("2-3", 4, "ttyUSB7")):
        fake.usb_serial_adapter(controller, port, devnum=devnum, tty=tty, ids=CH340, serial=None)
    document = yaml.safe_load(run_discover(fake, capsys, "--format", "yaml"))
    by_address = {d["address"]: d for d in document["devices"]}
    assert by_address["2-1"]["resource"]["sysfs"]["usb"] == [
        {"vendor": "0403", "product": "6001", "serial": "B-ONE"}
    ]
    assert by_address["2-1"]["matches"] == ["2-1"]
    assert sorted(by_address["2-2"]["matches"]) == ["1-2", "2-2", "2-3"]
    table = run_discover(fake, capsys)
    assert "#   matches 3 devices here, not only this one: 1-2, 2-2, 2-3" in table


@pytest.mark.parametrize("serial", ["A[12]", "*", "S?N", "[!x]"])
def test_the_pin_advice_matches_only_its_serial(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str], serial: str
) -> None:
    """A serial with glob characters: the `serial:` printed to pin the stick (as advice,
    or in the entry once others of its kind are present) matches that stick, never one
    whose serial the glob would match."""
    controller = fake.usb_controller("0000:00:15.0")
    fake.usb_serial_adapter(
        controller, "2-1", devnum=2, tty="ttyUSB5", serial=serial, ids=SILABS_CP210X
    )

    def section(table: str) -> str:
        return table.split("# usb 2-1:")[1].split("\n", 1)[1].split("\n\n")[0]

    alone = section(run_discover(fake, capsys))
    assert "matches only this serial" in alone
    advice = alone.split("add serial: ")[1].splitlines()[0]
    [entry] = yaml.safe_load(alone)
    entry["sysfs"]["usb"][0]["serial"] = json.loads(advice)
    for port, devnum, other in (("2-2", 3, "A1"), ("2-3", 4, "SxN"), ("2-4", 5, "y")):
        fake.usb_serial_adapter(
            controller,
            port,
            devnum=devnum,
            tty=f"ttyUSB{devnum + 4}",
            serial=other,
            ids=SILABS_CP210X,
        )
    pinned = [["/dev/ttyUSB5", "/dev/bus/usb/002/002"]]
    assert advertised(fake, entry) == pinned
    [narrowed] = yaml.safe_load(section(run_discover(fake, capsys)))
    assert narrowed["sysfs"]["usb"][0]["serial"] == json.loads(advice)
    assert advertised(fake, narrowed) == pinned


def test_names_come_from_the_id_databases(
    fake: FakeSysfs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a pci.ids / usb.ids (any path), entries say what the device is; without one,
    the built-in class names; a database named but unreadable is an error."""
    fake.virtio_disk("0000:00:05.0", index=2, disk="vda")
    controller = fake.usb_controller("0000:00:15.0")
    fake.usb_device(controller, "2-1", devnum=2, vendor="046d", product="c52b")
    pci_ids = tmp_path / "pci.ids"
    pci_ids.write_text(
        "# a comment\n1af4  Red Hat, Inc.\n\t1001  Virtio block device\n"
        "\t\t1af4 0002  Virtio disk\n8086  Intel Corporation\n"
        "C 01  Mass storage controller\n\t00  SCSI storage controller\n"
        "C 0c  Serial bus controller\n\t03  USB controller\n\t\t30  XHCI\n"
    )
    usb_ids = tmp_path / "usb.ids"
    usb_ids.write_text(
        "046d  Logitech, Inc.\n\tc52b  Unifying Receiver\nC 09  Hub\nHID 00  Undefined\n"
    )
    ids = ("--pci-ids", str(pci_ids), "--usb-ids", str(usb_ids), "--all", "--format", "json")
    by_address = {d["address"]: d for d in json.loads(run_discover(fake, capsys, *ids))["devices"]}
    assert by_address["0000:00:05.0"]["description"] == "Red Hat, Inc. Virtio block device"
    assert by_address["0000:00:15.0"]["description"] == "Intel Corporation USB controller"
    assert by_address["2-1"]["description"] == "Logitech, Inc. Unifying Receiver"
    assert by_address["0000:00:05.0"]["resource"]["name"] == "example.com/virtio-pci"
    plain = json.loads(run_discover(fake, capsys, "--all", "--format", "json"))["devices"]
    assert {d["address"]: d["description"] for d in plain}["0000:00:05.0"] == (
        "SCSI storage controller"
    )
    fifo = tmp_path / "fifo.ids"
    os.mkfifo(fifo)
    for unreadable in (tmp_path / "no", tmp_path, fifo):
        code = main(["discover", "--sysfs-root", str(fake.sys), "--pci-ids", str(unreadable)])
        assert code == 1
        assert "cannot read" in capsys.readouterr().err


def test_devices_without_a_node_need_all(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PCI device with no device node (a NIC, an SMBus controller) gets no entry unless
    asked: a resource of it would hand out nothing."""
    fake.pci_device("0000:02:00.0", "8086", "1533", pci_class="0x020000", driver="igb")
    plain = json.loads(run_discover(fake, capsys, "--format", "json"))["devices"]
    assert "0000:02:00.0" not in {d["address"] for d in plain}
    assert all(d["nodes"] for d in plain)
    everything = json.loads(run_discover(fake, capsys, "--all", "--format", "json"))["devices"]
    assert "0000:02:00.0" in {d["address"] for d in everything}


def root_on_vda2(fake: FakeSysfs, root_fs: Path, layout: str = "partition") -> None:
    """Disks vda (two partitions) and vdb; the filesystem of `root_fs` (the test's directory,
    named to the command by `--root-fs`) on vda2, directly or through device-mapper."""
    fake.virtio_disk("0000:00:05.0", index=2, disk="vda", partitions=2)
    fake.virtio_disk("0000:00:06.0", index=3, disk="vdb")
    vda2 = fake.sys / "dev" / "block" / "253:34"
    root = os.stat(root_fs).st_dev
    if layout == "device-mapper":
        dm = fake.node(fake.sys / "devices" / "virtual" / "block" / "dm-0", "dm-0", klass="block")
        (dm / "slaves").mkdir()
        (dm / "slaves" / "vda2").symlink_to(os.path.realpath(vda2))
        vda2 = dm
    (fake.sys / "dev" / "block" / f"{os.major(root)}:{os.minor(root)}").symlink_to(
        os.path.realpath(vda2)
    )


@pytest.mark.parametrize("layout", ["partition", "device-mapper"])
def test_check_warns_about_handing_out_the_root_disk(
    fake: FakeSysfs, tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    """The root filesystem (here: the one holding the test's directory, named to `check`
    by `--root-fs`) is on vda2, directly or through device-mapper: a resource of vda, or of
    the PCI device above it, is warned about; one of vdb is not."""
    root_on_vda2(fake, tmp_path, layout)
    roots = f"sysfsRoot: {fake.sys}, devRoot: {fake.dev}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
resources:
  - name: example.com/vda
    sysfs: {{devices: [{{class: block, name: vda}}], {roots}}}
  - name: example.com/virtio
    sysfs: {{pci: [{{vendor: "1af4"}}], {roots}}}
  - name: example.com/vdb
    sysfs: {{devices: [{{class: block, name: vdb}}], {roots}}}
"""
    )
    args = ["check", "--config", str(config), "--sysfs-root", str(fake.sys)]
    assert main([*args, "--root-fs", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "root filesystem" in line]
    assert warnings == [
        f"warning: example.com/{resource} hands out the root filesystem's disk: /dev/{node}"
        for resource in ("vda", "virtio")
        for node in ("vda", "vda1", "vda2")
    ]
    assert main([*args, "--root-fs", str(fake.sys / "none-such")]) == 0
    assert "root filesystem" not in capsys.readouterr().err


def test_a_serial_no_config_can_hold_is_not_offered_and_the_others_print(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile13 M10: a second stick of the FTDI product whose serial holds a control
    character (cheap clones report garbage): an entry pinned by it is one the config refuses,
    so it is not offered (nor as advice); the entry says which devices it matches, and every
    other device prints (discover died with a traceback)."""
    controller = fake.usb_controller("0000:00:15.0")
    fake.usb_serial_adapter(controller, "2-1", devnum=2, tty="ttyUSB5", serial="S\x1b[2J")
    document = yaml.safe_load(run_discover(fake, capsys, "--format", "yaml"))
    by_address = {d["address"]: d for d in document["devices"]}
    assert by_address["2-1"]["resource"]["sysfs"]["usb"] == [{"vendor": "0403", "product": "6001"}]
    assert sorted(by_address["2-1"]["matches"]) == ["1-1", "2-1"]
    assert by_address["1-1"]["matches"] == ["1-1"]
    table = run_discover(fake, capsys)
    assert "matches 2 devices here, not only this one: 1-1, 2-1" in table
    assert "\x1b" not in table


def test_discover_warns_on_the_entries_of_the_root_disk(
    fake: FakeSysfs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20 item 4: the entries that would hand out the root filesystem's disk (the disk
    and its partitions; the PCI entry of either virtio controller, which matches both) say
    so where they are printed, not only in `check`; vdb's do not."""
    root_on_vda2(fake, tmp_path)
    args = ("--bus", "pci", "--class", "block", "--root-fs", str(tmp_path))
    document = json.loads(run_discover(fake, capsys, *args, "--format", "json"))
    on_root = {d["address"]: d["rootDisk"] for d in document["devices"] if d["rootDisk"]}
    whole = ["/dev/vda", "/dev/vda1", "/dev/vda2"]
    assert on_root == {
        "0000:00:05.0": whole,
        "0000:00:06.0": whole,  # (vdb's controller: its entry matches vda's too)
        "vda": whole,
        "vda1": ["/dev/vda1"],
        "vda2": ["/dev/vda2"],
    }
    table = run_discover(fake, capsys, *args)
    vdb = table.split("# class/block vdb:")[1].split("\n\n")[0]
    vda = table.split("# class/block vda:")[1].split("\n\n")[0]
    warning = "#   WARNING: hands out the root filesystem's disk: /dev/vda, /dev/vda1, /dev/vda2 "
    assert warning in vda and "WARNING" not in vdb
    elsewhere = run_discover(fake, capsys, *args[:4], "--root-fs", str(fake.sys / "none-such"))
    assert "WARNING" not in elsewhere
