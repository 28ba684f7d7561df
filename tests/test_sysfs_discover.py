"""`kdp-host discover`: every format, errors shown, and every suggested entry finds its device."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
import yaml

from kdp_host.cli import main
from kdp_host.config import SysfsDriverConfig, load_config_text
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.sysfs import SysfsDriver
from kdp_host.logs import get_logger
from kdp_host.sysfs import SysfsReader, SysfsScan
from kdp_host.watch import PollingWatcher

from .fake_sysfs import FakeSysfs, standard_machine


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    fake = FakeSysfs(tmp_path)
    standard_machine(fake)
    return fake


def run_discover(fake: FakeSysfs, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["discover", "--sysfs-root", str(fake.sys), "--dev-root", str(fake.dev), *args])
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
    assert document["devices"][0]["resource"]["sysfs"] == {"devices": [{"class": "drm"}]}


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
    assert by_address["0000:77:00.0"]["resource"]["sysfs"]["pci"] == [{"vendor": "8086"}]
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
    ],
)
def test_bad_arguments_are_refused(
    fake: FakeSysfs, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["discover", "--sysfs-root", str(fake.sys), "--dev-root", str(fake.dev), *args])
    assert exited.value.code == 2
    assert "must" in capsys.readouterr().err
