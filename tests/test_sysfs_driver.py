"""The sysfs driver: config, matching, stable IDs, health and grace, hot-plug end to end."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import ConfigError, SysfsDriverConfig, load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, Snapshot
from kdp_host.drivers import DriverDeps, DriverError, Skipped
from kdp_host.drivers.scanner import DirWatch, Listed
from kdp_host.drivers.sysfs import SysfsDriver
from kdp_host.identity import NOTHING
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership_canonical import checked_reach
from kdp_host.rules import device_id_problem
from kdp_host.simulator import KubeletSimulator
from kdp_host.sysfs.model import SysfsScan
from kdp_host.sysfs.nodes import NodeLooks
from kdp_host.sysfs.reader import SysfsReader
from kdp_host.testing import ManualClock, ManualWatcher, RecordingNotifier
from kdp_host.watch import PollingWatcher

from .conftest import reporter, wait_table, wait_until
from .fake_sysfs import CH340, FTDI, SILABS_CP210X, FakeSysfs, standard_machine

RESOURCE = "vendor.example/serial"


def sysfs_config(fake: FakeSysfs, body: str, resource: str = RESOURCE) -> SysfsDriverConfig:
    text = (
        f"resources:\n  - name: {resource}\n    sysfs:\n"
        f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n"
        + "".join(f"      {line}\n" for line in body.strip().splitlines())
    )
    driver = load_config_text(text).resources[0].driver
    assert isinstance(driver, SysfsDriverConfig)
    return driver


def make_driver(
    fake: FakeSysfs, body: str, clock: Callable[[], float] = time.monotonic
) -> SysfsDriver:
    log = get_logger().bind(resource=RESOURCE)
    return SysfsDriver(sysfs_config(fake, body), DriverDeps(log, PollingWatcher(log), clock))


async def step(driver: SysfsDriver) -> tuple[dict[str, Device], float | None, tuple[Skipped, ...]]:
    """One scan and merge, as the scan loop does it: the list published, when the next grace
    period ends, and what was left out."""
    notifier = RecordingNotifier()
    expiry = await driver.step(notifier)
    return notifier.devices, expiry, notifier.skipped


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path)


def summary(devices: list[Device] | dict[str, Device]) -> dict[str, tuple[bool, list[str]]]:
    items = devices.values() if isinstance(devices, dict) else devices
    return {d.id: (d.healthy, [n.host_path for n in d.nodes]) for d in items}


# ---------------------------------------------------------------------- config


def test_config_reads_every_section(fake: FakeSysfs) -> None:
    config = sysfs_config(
        fake,
        """
usb:
  - {vendor: "0x0403", product: "6001", serial: "A1*", interfaceClass: "ff"}
  - {manufacturer: "Silicon Labs", productName: "CP210*"}
pci: {vendor: "8086", class: "0x0300/0xff00", driver: i915}
devices:
  - {class: video4linux, attributes: {name: "UVC*"}}
nodes: {subsystems: [tty, drm], names: ["/dev/ttyUSB*", "dri/*"]}
gracePeriod: 5s
env: {SERIAL: "{serial}", WHERE: "{address}"}
""",
    )
    assert config.usb[0].vendor == "0x0403" and config.usb[0].serial == "A1*"
    assert config.usb[1].product_name == "CP210*"
    assert config.pci[0].pci_class == "0x0300/0xff00"
    assert config.devices[0].device_class == "video4linux"
    assert config.nodes is not None and config.nodes.names == ("ttyUSB*", "dri/*")
    assert config.grace_period == 5.0
    assert config.sysfs_root == str(fake.sys)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("usb: [{vendor: 0403}]", 'write hex IDs as quoted strings (vendor: "0403")'),
        ('usb: [{vendor: "xyz"}]', "must be hex digits"),
        ('usb: [{vendor: "12345"}]', "at most 4 hex digits"),
        ('pci: [{class: "030"}]', "2, 4 or 6 hex digits"),
        ("usb: [{}]", "must name at least one of"),
        ('usb: [{vendr: "0403"}]', "unknown key (did you mean 'vendor'?)"),
        ("devices: [{attributes: {name: x}}]", "needs exactly one of bus or class"),
        ('devices: [{bus: ".."}]', "must be a name under /sys/bus or /sys/class"),
        ("devices: [{class: a/b}]", "must be a name under /sys/bus or /sys/class"),
        ("devices: [{class: drm, attributes: {../x: y}}]", "attribute file below the device"),
        ('usb: {vendor: "0403"}\nenv: {X: "{colour}"}', "unknown template field {colour}"),
        ("gracePeriod: 1s", "needs at least one of usb, pci or devices"),
        ('usb: {vendor: "0403"}\ndevRoot: dev', "must be an absolute path"),
    ],
)
def test_config_errors(fake: FakeSysfs, body: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sysfs_config(fake, body)
    assert fragment in str(caught.value)
    assert "resources[0].sysfs" in str(caught.value)


# ---------------------------------------------------------------------- matching and IDs


async def test_usb_serial_adapters_by_vendor_and_product(fake: FakeSysfs) -> None:
    standard_machine(fake)
    driver = make_driver(
        fake,
        f"""
usb:
  - {{vendor: "0x{FTDI[0].upper()}", product: "{FTDI[1]}"}}
  - {{vendor: "{CH340[0]}", product: "{CH340[1]}"}}
env: {{SERIAL: "{{serial}}", PORT: "{{address}}", IDS: "{{vendor}}:{{product}}"}}
""",
    )
    devices = {d.id: d for d in await driver.scan()}
    assert summary(devices) == {
        "A10K4V2F": (True, ["/dev/ttyUSB0", "/dev/bus/usb/001/002"]),
        "1-2": (True, ["/dev/ttyUSB1", "/dev/bus/usb/001/003"]),
    }, "ID: the serial when there is one, else the port path; every node beneath"
    assert devices["A10K4V2F"].env == {"SERIAL": "A10K4V2F", "PORT": "1-1", "IDS": "0403:6001"}
    assert devices["1-2"].env["SERIAL"] == ""
    assert devices["A10K4V2F"].numa == 0
    assert devices["A10K4V2F"].primary_path == "/dev/ttyUSB0"


async def test_usb_match_on_strings_interface_class_and_serial_glob(fake: FakeSysfs) -> None:
    controller = fake.usb_controller()
    fake.usb_acm_device(
        controller,
        "1-3",
        devnum=4,
        serial="ZB-1",
        manufacturer="Silicon Labs",
        product_name="CP2102N Zigbee",
    )
    fake.usb_serial_adapter(controller, "1-4", devnum=5, tty="ttyUSB3", serial="A99")
    by_class = make_driver(fake, 'usb: [{interfaceClass: "02"}]')
    assert [d.id for d in await by_class.scan()] == ["ZB-1"]
    by_name = make_driver(fake, 'usb: [{manufacturer: "Silicon*", productName: "*Zigbee"}]')
    assert [d.id for d in await by_name.scan()] == ["ZB-1"]
    by_serial = make_driver(fake, 'usb: [{serial: "A*"}]')
    assert [d.id for d in await by_serial.scan()] == ["A99"]
    nothing = make_driver(fake, f'usb: [{{vendor: "{SILABS_CP210X[0]}", serial: "nope"}}]')
    assert await nothing.scan() == []


async def test_pci_match_by_class_driver_and_node_selection(fake: FakeSysfs) -> None:
    standard_machine(fake)
    gpus = make_driver(fake, 'pci: [{class: "03", driver: i915}]')
    assert summary(await gpus.scan()) == {
        "0000:3b:00.0": (True, ["/dev/dri/card1", "/dev/dri/renderD129"])
    }
    render_only = make_driver(
        fake, 'pci: [{vendor: "8086", class: "0x030000/0xff0000"}]\nnodes: {names: [dri/renderD*]}'
    )
    (gpu,) = await render_only.scan()
    assert (gpu.id, gpu.numa, [n.host_path for n in gpu.nodes]) == (
        "0000:3b:00.0",
        1,
        ["/dev/dri/renderD129"],
    )
    vfio = make_driver(fake, "pci: [{driver: vfio-pci}]\nnodes: {subsystems: [vfio]}")
    assert summary(await vfio.scan()) == {
        "0000:5e:00.0": (True, ["/dev/vfio/42", "/dev/vfio/vfio"])
    }
    storage = make_driver(fake, 'pci: [{class: "0108"}]\nnodes: {subsystems: [block]}')
    assert summary(await storage.scan()) == {
        "0000:01:00.0": (True, ["/dev/nvme0n1", "/dev/nvme0n1p1"])
    }


async def test_generic_class_match(fake: FakeSysfs) -> None:
    controller = fake.usb_controller()
    camera = fake.usb_device(controller, "1-4", devnum=5, vendor="046d", product="0825")
    interface = fake.usb_interface(camera, "1.0", "0e", "uvcvideo")
    for index, name in ((0, "UVC Camera"), (1, "UVC Metadata")):
        video = fake.node(
            interface / "video4linux" / f"video{index}",
            f"video{index}",
            klass="video4linux",
            major=81,
            minor=index,
        )
        fake.attributes(video, name=name)
    driver = make_driver(fake, 'devices: [{class: video4linux, attributes: {name: "*Camera"}}]')
    assert summary(await driver.scan()) == {"video0": (True, ["/dev/video0"])}


async def test_a_device_matched_twice_is_listed_once(fake: FakeSysfs) -> None:
    """The PCI GPU and its drm card both match: the card is part of the GPU, not a second
    device (one physical device is advertised once, whatever the matches)."""
    standard_machine(fake)
    driver = make_driver(
        fake,
        'pci: [{driver: i915}]\ndevices: [{class: drm}, {class: drm, attributes: {dev: "226:*"}}]',
    )
    assert summary(await driver.scan()) == {
        "0000:3b:00.0": (True, ["/dev/dri/card1", "/dev/dri/renderD129"])
    }
    cards_only = make_driver(fake, "devices: [{class: drm}]")
    assert sorted(d.id for d in await cards_only.scan()) == ["card1", "renderD129"]


async def test_nesting_is_decided_over_the_whole_set(fake: FakeSysfs) -> None:
    """A device inside a matched device is part of it even when a matched sibling sorts
    between them (`serial8250.1` sorts between `serial8250` and `serial8250/tty/ttyS0`):
    every node is in exactly one device."""
    platform = fake.sys / "devices" / "platform"
    for name in ("serial8250", "serial8250.1"):
        fake.device_dir(platform / name, bus="platform")
    fake.node(platform / "serial8250" / "tty" / "ttyS0", "ttyS0", klass="tty", major=4, minor=64)
    fake.node(platform / "serial8250.1" / "tty" / "ttyS1", "ttyS1", klass="tty", major=4, minor=65)
    driver = make_driver(fake, "devices: [{bus: platform}, {class: tty}]")
    assert summary(await driver.scan()) == {
        "serial8250": (True, ["/dev/ttyS0"]),
        "serial8250.1": (True, ["/dev/ttyS1"]),
    }


async def test_a_matched_bridge_never_swallows_the_device_behind_it(fake: FakeSysfs) -> None:
    """A PCIe bridge and the GPU behind it both match: the GPU is a device of its own with
    its nodes (the bridge has none of them), never hidden inside the bridge."""
    bridge = fake.pci_device(
        "0000:00:01.0", "8086", "1901", pci_class="0x060400", driver="pcieport"
    )
    fake.pci_accelerator("0000:01:00.0", parent=bridge)
    driver = make_driver(fake, 'pci: [{vendor: "8086"}]')
    assert summary(await driver.scan()) == {
        "0000:00:01.0": (True, []),
        "0000:01:00.0": (True, ["/dev/dri/card1", "/dev/dri/renderD129"]),
    }
    gpus_only = make_driver(fake, 'pci: [{vendor: "8086", class: "03"}]')
    assert list(summary(await gpus_only.scan())) == ["0000:01:00.0"]


def gpu_with_audio(fake: FakeSysfs, audio_driver: str = "vfio-pci") -> None:
    """A GPU (0000:65:00.0) and its HDMI audio function (0000:65:00.1) in IOMMU group 7."""
    fake.pci_vfio("0000:65:00.0", group=7, pci_class="0x030000", vfio_dev=1)
    if audio_driver == "vfio-pci":
        fake.pci_vfio(
            "0000:65:00.1", group=7, ids=("10de", "10f8"), pci_class="0x040300", vfio_dev=2
        )
    else:
        fake.pci_device(
            "0000:65:00.1",
            "10de",
            "10f8",
            pci_class="0x040300",
            driver=audio_driver,
            iommu_group=7,
        )


@pytest.mark.parametrize(
    "match", ["{driver: vfio-pci}", '{class: "03", driver: vfio-pci}', '{class: "0403"}']
)
async def test_an_iommu_group_is_one_device(fake: FakeSysfs, match: str) -> None:
    """Two functions of one IOMMU group pass the same /dev/vfio/<group>: they are one device
    (the group is what a container gets), named by its first matched function, with every
    function's nodes, whichever of them the config matches."""
    gpu_with_audio(fake)
    devices = await make_driver(fake, f"pci: [{match}]").scan()
    assert len(devices) == 1
    assert sorted(n.host_path for n in devices[0].nodes) == [
        "/dev/vfio/7",
        "/dev/vfio/devices/vfio1",
        "/dev/vfio/devices/vfio2",
        "/dev/vfio/vfio",
    ]
    assert devices[0].id == ("0000:65:00.1" if "0403" in match else "0000:65:00.0")


async def test_an_iommu_group_held_by_a_host_driver_is_refused(fake: FakeSysfs) -> None:
    """A group whose audio function is bound to snd_hda_intel cannot be assigned: the GPU
    is not advertised, and the reason names the function and its driver."""
    gpu_with_audio(fake, audio_driver="snd_hda_intel")
    driver = make_driver(fake, "pci: [{driver: vfio-pci}]")
    result = await driver.scan_once()
    assert result.devices == {}
    [skip] = result.skipped
    assert skip.reason == "incomplete_group"
    assert "0000:65:00.1" in skip.message and "snd_hda_intel" in skip.message
    fake.unbind(fake.sys / "bus" / "pci" / "devices" / "0000:65:00.1")
    assert [d.id for d in await driver.scan()] == ["0000:65:00.0"]


async def test_duplicate_serials_never_move_an_id(fake: FakeSysfs) -> None:
    """Two sticks with one serial: the first keeps it, the second is not advertised (never
    under another ID); when the first goes, the second takes the serial after the grace."""
    clock = ManualClock()
    controller = fake.usb_controller()
    first = fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="0001")
    fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial="0001")
    driver = make_driver(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\ngracePeriod: 10s', clock)
    devices, _, skipped = await step(driver)
    assert summary(devices) == {"0001": (True, ["/dev/ttyUSB0", "/dev/bus/usb/001/002"])}
    assert [(s.reason, "1-1" in s.message, "1-2" in s.message) for s in skipped] == [
        ("id_collision", True, True)
    ], "the twin is skipped, logged with both port paths"
    fake.remove_device(first)
    clock.advance(1)
    devices, _, skipped = await step(driver)
    assert summary(devices) == {"0001": (True, ["/dev/ttyUSB1", "/dev/bus/usb/001/003"])}
    assert skipped == ()


async def test_an_id_never_depends_on_the_other_devices_present(fake: FakeSysfs) -> None:
    """The restart case: stick 1-2 alone gets the serial; its twin 1-1 is plugged in; after
    a restart the twin must not push 1-2 onto another ID (podB would get 1-2's node while
    the kubelet believes podA holds it)."""
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial="SAME")
    body = f'usb: [{{vendor: "{FTDI[0]}"}}]'
    before = make_driver(fake, body)
    assert [d.id for d in await before.scan()] == ["SAME"]
    fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="SAME")
    assert [d.id for d in await before.scan()] == ["SAME"]
    restarted = make_driver(fake, body)
    result = await restarted.scan_once()
    assert list(result.devices) == ["SAME"], "no device is listed under its port path"
    assert [s.reason for s in result.skipped] == ["id_collision"]


async def test_usb_id_from_port_identifies_sticks_by_port(fake: FakeSysfs) -> None:
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="SAME")
    fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial="SAME")
    driver = make_driver(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\nusbIdFrom: port')
    result = await driver.scan_once()
    assert sorted(result.devices) == ["1-1", "1-2"]
    assert result.skipped == ()


async def test_a_stick_moved_to_another_port_keeps_its_serial_id(fake: FakeSysfs) -> None:
    clock = ManualClock()
    controller = fake.usb_controller()
    stick = fake.usb_acm_device(controller, "1-1", devnum=2, serial="ZW-7")
    driver = make_driver(fake, 'usb: [{serial: "ZW-*"}]\ngracePeriod: 30s', clock)
    assert list((await step(driver))[0]) == ["ZW-7"]
    fake.remove_device(stick)
    clock.advance(1)
    fake.usb_acm_device(controller, "1-4", devnum=3, serial="ZW-7", tty="ttyACM1")
    devices, _, _ = await step(driver)
    assert summary(devices) == {"ZW-7": (True, ["/dev/ttyACM1", "/dev/bus/usb/001/003"])}


# ---------------------------------------------------------------------- health and grace


async def test_lost_node_is_unhealthy_for_the_grace_period(fake: FakeSysfs) -> None:
    clock = ManualClock()
    machine = standard_machine(fake)
    driver = make_driver(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\ngracePeriod: 5s', clock)
    devices, _, _ = await step(driver)
    assert devices["A10K4V2F"].healthy
    # The serial driver is unbound: the tty goes from sysfs and from /dev.
    fake.remove_device(machine["ftdi"] / "1-1:1.0" / "ttyUSB0")
    clock.advance(1)
    devices, expiry, _ = await step(driver)
    assert summary(devices) == {"A10K4V2F": (False, ["/dev/bus/usb/001/002"])}
    assert expiry == clock.now + 5
    clock.advance(5)
    devices, expiry, _ = await step(driver)
    assert summary(devices) == {"A10K4V2F": (True, ["/dev/bus/usb/001/002"])}
    assert expiry is None


async def test_node_listed_in_sysfs_but_missing_in_dev_is_unhealthy(fake: FakeSysfs) -> None:
    clock = ManualClock()
    standard_machine(fake)
    fake.remove_node("dri/renderD129")
    driver = make_driver(fake, "pci: [{driver: i915}]\ngracePeriod: 0s", clock)
    devices, _, _ = await step(driver)
    assert summary(devices) == {"0000:3b:00.0": (False, ["/dev/dri/card1", "/dev/dri/renderD129"])}
    fake.create_node("dri/renderD129")
    devices, _, _ = await step(driver)
    assert devices["0000:3b:00.0"].healthy


async def test_no_node_passing_the_filter_is_unhealthy(fake: FakeSysfs) -> None:
    standard_machine(fake)
    driver = make_driver(fake, "pci: [{driver: i915}]\nnodes: {subsystems: [tty]}")
    assert summary(await driver.scan()) == {"0000:3b:00.0": (False, [])}
    unfiltered = make_driver(fake, 'pci: [{class: "0c03"}]')
    assert summary(await unfiltered.scan()) == {"0000:00:14.0": (True, [])}


async def test_a_stuck_read_times_out_and_is_not_repeated(fake: FakeSysfs) -> None:
    release = threading.Event()

    class StuckReader(SysfsReader):
        def scan(self, *args: object, **kwargs: object) -> SysfsScan:
            release.wait(30)
            return SysfsScan(())

    config = sysfs_config(fake, 'usb: [{vendor: "0403"}]\nscanTimeout: 200ms')
    log = get_logger()
    driver = SysfsDriver(
        config,
        DriverDeps(log, PollingWatcher(log)),
        reader=StuckReader(str(fake.sys), str(fake.dev)),
    )
    try:
        with pytest.raises(DriverError, match=r"within 0\.2s \(a hung") as caught:
            await driver.scan()
        assert caught.value.reason == "timeout"
        with pytest.raises(DriverError, match="still stuck") as caught:
            await driver.scan()
        assert caught.value.reason == "timeout"
    finally:
        release.set()
    await asyncio.sleep(0.05)


async def test_safety_rescan_is_skipped_while_no_node_directory_changed(
    fake: FakeSysfs,
) -> None:
    standard_machine(fake)
    for directory in (fake.dev, *(p for p in fake.dev.rglob("*") if p.is_dir())):
        os.utime(directory, (1_000_000, 1_000_000))  # not "just changed"
    driver = make_driver(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]')
    assert not driver.unchanged_since_scan(), "never scanned: scan"
    await step(driver)  # scans and subscribes to its directories, as the run loop does
    assert driver.unchanged_since_scan(), "the first scan's directories count as well"
    fake.create_node("ttyUSB9")
    assert not driver.unchanged_since_scan(), "a node appeared: rescan"


# ---------------------------------------------------------------------- hot-plug


async def test_hot_plug_through_inotify(fake: FakeSysfs) -> None:
    """A device appears (sysfs, then its nodes), its tty appears later, it vanishes."""
    controller = fake.usb_controller()
    log = get_logger().bind(resource=RESOURCE)
    watcher = InotifyWatcher(log)
    config = sysfs_config(
        fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\ngracePeriod: 1s\nrescanInterval: 1h'
    )
    driver = SysfsDriver(config, DriverDeps(log, watcher))
    table = DeviceTable()
    async with asyncio.TaskGroup() as group:
        watching = group.create_task(watcher.run())
        driving = group.create_task(driver.run(reporter(table, resource=RESOURCE)))
        async with asyncio.timeout(15):
            await table.published.wait()
        assert table.snapshot.devices == ()
        # plugged in: the kernel adds the device and its bus node, the tty comes a moment later
        device = fake.usb_device(
            controller, "1-1", devnum=2, vendor=FTDI[0], product=FTDI[1], serial="HOT1"
        )
        snap = await wait_table(table, lambda s: [d.id for d in s.devices] == ["HOT1"])
        assert snap.devices[0].healthy
        interface = fake.usb_interface(device, "1.0", "ff", "ftdi_sio")
        fake.node(interface / "ttyUSB0" / "tty" / "ttyUSB0", "ttyUSB0", klass="tty")
        await wait_table(table, lambda s: s.devices[0].nodes[0].host_path == "/dev/ttyUSB0")
        fake.remove_device(device)
        await wait_table(table, lambda s: not s.devices[0].healthy)
        await wait_table(table, lambda s: s.devices == ())
        driving.cancel()
        await asyncio.wait([driving])
        watching.cancel()


@pytest.mark.parametrize("directory_exists", [True, False])
async def test_a_late_node_below_a_listed_device_is_seen_at_once(
    fake: FakeSysfs, directory_exists: bool
) -> None:
    """A USB device's interface binds late and the kernel adds /dev/input/event5 below it,
    in a directory that holds no node of this resource (or that did not exist yet): the
    device's list gains the node at once, not at the safety-net rescan (an hour here)."""
    controller = fake.usb_controller()
    if directory_exists:
        fake.create_node("input/mice")  # another device's node: /dev/input exists already
    device = fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="KBD")
    log = get_logger().bind(resource=RESOURCE)
    watcher = InotifyWatcher(log)
    config = sysfs_config(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\nrescanInterval: 1h')
    driver = SysfsDriver(config, DriverDeps(log, watcher))
    table = DeviceTable()
    async with asyncio.TaskGroup() as group:
        watching = group.create_task(watcher.run())
        driving = group.create_task(driver.run(reporter(table, resource=RESOURCE)))
        await wait_table(table, lambda s: [d.id for d in s.devices] == ["KBD"])
        fake.node(
            device / "1-1:1.0" / "input" / "input5" / "event5",
            "input/event5",
            klass="input",
            major=13,
            minor=69,
        )
        snap = await wait_table(
            table, lambda s: "/dev/input/event5" in {n.host_path for n in s.devices[0].nodes}
        )
        assert snap.devices[0].healthy
        driving.cancel()
        await asyncio.wait([driving])
        watching.cancel()


class CountingReader(SysfsReader):
    """A reader that counts the devices it reads (its public `read_device`)."""

    def __init__(self, fake: FakeSysfs) -> None:
        super().__init__(str(fake.sys), str(fake.dev))
        self.reads = 0

    def read_device(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self.reads += 1
        return super().read_device(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_hot_plug_reads_what_changed_not_every_device(fake: FakeSysfs) -> None:
    """With 40 adapters listed, plugging in, losing a node of and unplugging one more reads
    that adapter (and nothing else) each time, and the list is what a full scan finds."""
    controller = fake.usb_controller()
    for port in range(1, 41):
        fake.usb_serial_adapter(
            controller, f"1-{port}", devnum=port + 1, tty=f"ttyUSB{port}", serial=f"S{port}"
        )
    log = get_logger().bind(resource=RESOURCE)
    watcher = InotifyWatcher(log)
    config = sysfs_config(
        fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\ngracePeriod: 1h\nrescanInterval: 1h'
    )
    reader = CountingReader(fake)
    driver = SysfsDriver(config, DriverDeps(log, watcher), reader=reader)
    table = DeviceTable()

    def healthy(snap: Snapshot) -> set[str]:
        return {d.id for d in snap.devices if d.healthy}

    async with asyncio.TaskGroup() as group:
        watching = group.create_task(watcher.run())
        driving = group.create_task(driver.run(reporter(table, resource=RESOURCE)))
        await wait_table(table, lambda s: len(s.devices) == 40)
        reads = reader.reads
        hot = fake.usb_serial_adapter(controller, "1-50", devnum=60, tty="ttyUSB50", serial="HOT")
        await wait_table(table, lambda s: "HOT" in healthy(s))
        fake.remove_node("ttyUSB50")
        await wait_table(table, lambda s: "HOT" not in healthy(s))
        fake.remove_device(hot)
        await wait_table(table, lambda s: [d.id for d in s.devices if not d.healthy] == ["HOT"])
        assert reader.reads - reads <= 6, reader.reads - reads
        fresh = SysfsDriver(config, DriverDeps(log, PollingWatcher(log)))
        assert {d.id for d in await fresh.scan()} == healthy(table.snapshot)
        driving.cancel()
        await asyncio.wait([driving])
        watching.cancel()


def test_an_update_says_it_read_a_node_only_if_it_read_every_device_holding_it(
    fake: FakeSysfs,
) -> None:
    """Two vfio devices share /dev/vfio/vfio: an update that reads one of them again looked
    at that node, but the other still lists what an earlier read saw of it, so the update
    does not count as having read it (a change to it would be lost); an update told that
    node reads both."""
    fake.pci_vfio("0000:5e:00.0", group=41, vfio_dev=1)
    fake.pci_vfio("0000:5f:00.0", group=42, vfio_dev=2)
    reader = SysfsReader(str(fake.sys), str(fake.dev))
    count = iter(range(100, 1000))
    looks = NodeLooks(lambda: next(count))
    scan = reader.scan(["pci"], (), (), looks)
    assert {"vfio/41", "vfio/42", "vfio/vfio"} <= looks.at.keys()
    looks = NodeLooks(lambda: next(count))
    scan = reader.update(scan, ["vfio/41"], ["pci"], (), (), looks)
    assert looks.at.keys() == {"vfio/41", "vfio/devices/vfio1"}
    looks = NodeLooks(lambda: next(count))
    reader.update(scan, ["vfio/vfio"], ["pci"], (), (), looks)
    assert looks.at.keys() == {
        "vfio/41",
        "vfio/42",
        "vfio/devices/vfio1",
        "vfio/devices/vfio2",
        "vfio/vfio",
    }


def test_a_scan_hands_the_index_what_the_paths_it_read_reach(fake: FakeSysfs) -> None:
    """A scan hands on, with its list, what each node path and device directory it looked
    at reaches, as the ownership index would resolve it (`checked_reach`: the index takes
    it instead of resolving those paths again, issue 19); an update of unplugged nodes
    says nothing is there, and where the device went, its directory too. A node that is a
    link is left to the index."""
    controller = fake.usb_controller("0000:00:14.0")
    kept = fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="A")
    hot = fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial="B")
    scanner = make_driver(fake, f"usb: [{{vendor: '{FTDI[0]}'}}]").scanner
    count = iter(range(1000))
    dirs = DirWatch(clock=lambda: next(count))
    first = scanner.scan(Listed(), dirs, None)
    paths = [n.seen for d in first.devices.values() for n in d.nodes]
    paths += [d.sysfs_path for d in first.devices.values() if d.sysfs_path is not None]
    assert len(paths) == 6
    assert first.reached is not None
    for path in paths:
        assert first.reached[path] == checked_reach(path), path
    assert str(kept) in first.reached and first.reached[str(kept)][0][0] == "d"

    nodes = fake.nodes_of(hot)
    fake.remove_device(hot)
    gone = {str(fake.dev / devname) for devname in nodes} | {str(hot)}
    listed = Listed(dict(first.devices), dict(first.places or {}))
    update = scanner.scan(listed, DirWatch(clock=lambda: next(count)), frozenset(gone))
    assert update.reached is not None
    for path in gone:
        assert update.reached[path] == checked_reach(path) == ((NOTHING, path), path), path

    os.rename(fake.dev / "ttyUSB0", fake.dev / "real-ttyUSB0")
    os.symlink("real-ttyUSB0", fake.dev / "ttyUSB0")
    linked = str(fake.dev / "ttyUSB0")
    again = scanner.scan(Listed(), DirWatch(clock=lambda: next(count)), None)
    assert again.reached is not None and linked not in again.reached
    assert any(n.seen == linked for d in again.devices.values() for n in d.nodes)


class HeldReader(SysfsReader):
    """A reader whose updates record the names they are told, and can be held before they
    read (`before`) or after (`after`)."""

    def __init__(self, fake: FakeSysfs) -> None:
        super().__init__(str(fake.sys), str(fake.dev))
        self.told: list[list[str]] = []
        self.before, self.after = threading.Event(), threading.Event()
        self.before.set()
        self.after.set()
        self.reading = self.read = 0

    def update(self, previous: SysfsScan, changed: Iterable[str], *args: Any) -> SysfsScan:
        self.told.append(sorted(changed))
        self.reading += 1
        self.before.wait(30)
        result = super().update(previous, changed, *args)
        self.read += 1
        self.after.wait(30)
        return result


async def test_a_node_event_during_the_scan_that_reads_it_makes_no_scan(fake: FakeSysfs) -> None:
    """Issue 19, sysfs flapping: an adapter's bus node wakes a scan; its tty node, and more
    events of both nodes, named before that scan reads the adapter, are in its answer: no
    scan follows (each made one more). A node removed after the scan read it makes one more
    scan, which lists the adapter without it (nothing lost)."""
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="S0")
    log = get_logger().bind(resource=RESOURCE)
    watcher = ManualWatcher()
    config = sysfs_config(
        fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\ngracePeriod: 1h\nrescanInterval: 1h'
    )
    reader = HeldReader(fake)
    driver = SysfsDriver(config, DriverDeps(log, watcher), reader=reader)
    notifier = RecordingNotifier()
    task = asyncio.create_task(driver.run(notifier))
    dev, usb = str(fake.dev), str(fake.dev / "bus" / "usb" / "001")

    def nodes(device_id: str) -> tuple[bool, list[str]]:
        found = notifier.devices[device_id]
        return found.healthy, sorted(os.path.basename(n.host_path) for n in found.nodes)

    try:
        await wait_until(lambda: "S0" in notifier.devices and usb in watcher.directories)
        hot = fake.usb_serial_adapter(
            controller, "1-2", devnum=3, tty="ttyUSB1", serial="HOT", create_nodes=False
        )
        bus_node, tty_node = sorted(fake.nodes_of(hot))
        assert (bus_node, tty_node) == ("bus/usb/001/003", "ttyUSB1")
        fake.create_node(bus_node)
        reader.before.clear()
        watcher.change(usb, "003")
        await wait_until(lambda: reader.reading == 1, what="the scan of the bus node")
        fake.create_node(tty_node)
        for _ in range(5):  # the tty node made, its permissions, the bus node's again
            watcher.change(dev, "ttyUSB1")
            watcher.change(usb, "003")
        reader.before.set()
        await wait_until(lambda: "HOT" in notifier.devices, what="the adapter listed")
        assert nodes("HOT") == (True, ["003", "ttyUSB1"])
        watcher.change(dev, "mark")  # a scan still to come would come before this one
        await wait_until(lambda: "mark" in reader.told[-1], what="the scan of the mark")
        assert reader.told == [["bus/usb/001/003"], ["mark"]]
        # removed after the scan read it: one more scan, and the adapter lost its tty
        reader.after.clear()
        watcher.change(dev, "ttyUSB1")
        await wait_until(lambda: reader.read == 3, what="a scan that read the tty")
        fake.remove_node(tty_node)
        watcher.change(dev, "ttyUSB1")
        reader.after.set()
        await wait_until(lambda: nodes("HOT") == (False, ["003", "ttyUSB1"]), what="tty lost")
        assert reader.told[2:] == [["ttyUSB1"], ["ttyUSB1"]]
    finally:
        reader.before.set()
        reader.after.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_node_s_mode_or_a_write_to_it_wakes_no_scan(fake: FakeSysfs) -> None:
    """Issue 19/20, sysfs flapping: devtmpfs makes a node, then udev sets its mode and
    owner (the fake's node made is also closed after a write): the mode, the write change
    nothing the driver reads (a node is there or not), so they wake no scan (each made
    one, ~1 more scan per node plugged). Counted through what the reader is told."""
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="S0")
    log = get_logger().bind(resource=RESOURCE)
    watcher = InotifyWatcher(log)
    config = sysfs_config(
        fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\ngracePeriod: 1h\nrescanInterval: 1h'
    )
    reader = HeldReader(fake)
    driver = SysfsDriver(config, DriverDeps(log, watcher), reader=reader)
    notifier = RecordingNotifier()
    usb = str(fake.dev / "bus" / "usb" / "001")
    async with asyncio.TaskGroup() as group:
        watching = group.create_task(watcher.run())
        driving = group.create_task(driver.run(notifier))
        await wait_until(lambda: "S0" in notifier.devices and usb in watcher.directories)
        for path in (fake.dev / "ttyUSB0", fake.dev / "bus" / "usb" / "001" / "002"):
            path.chmod(0o660)
            path.write_text("x")
        fake.create_node("mark")
        await wait_until(
            lambda: any("mark" in told for told in reader.told) and len(notifier.scans) > 1,
            what="the scan of the mark, done",  # (told as it begins, counted once it ends)
        )
        assert reader.told == [["mark"]]
        assert len(notifier.scans) == 2  # (the first, full, then the mark's)
        driving.cancel()
        watching.cancel()


async def test_sysfs_resource_end_to_end(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    fake = FakeSysfs(short_dir)
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="A10K4V2F")
    await start_host(
        f"""
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: {RESOURCE}
    sysfs:
      sysfsRoot: {fake.sys}
      devRoot: {fake.dev}
      usb: [{{vendor: "{FTDI[0]}", product: "{FTDI[1]}"}}]
      gracePeriod: 1s
      env: {{SERIAL_NUMBER: "{{serial}}"}}
    allocate:
      env: {{DEVICES: "{{ids}}"}}
"""
    )
    await kubelet.wait_for(lambda: kubelet.resource(RESOURCE).allocatable == 1)
    response = await kubelet.allocate(RESOURCE, 1, pod_uid="p1")
    assert sorted((d.host_path, d.container_path) for d in response.devices) == [
        ("/dev/bus/usb/001/002", "/dev/bus/usb/001/002"),
        ("/dev/ttyUSB0", "/dev/ttyUSB0"),
    ]
    assert response.envs == {"DEVICES": "A10K4V2F", "SERIAL_NUMBER": "A10K4V2F"}
    # hot-plug a second adapter, then unplug it
    second = fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial="B2")
    await kubelet.wait_for(lambda: "B2" in kubelet.resource(RESOURCE).healthy_ids, timeout=10)
    fake.remove_device(second)
    await kubelet.wait_for(lambda: "B2" in kubelet.resource(RESOURCE).unhealthy_ids, timeout=10)
    await kubelet.wait_for(lambda: kubelet.resource(RESOURCE).capacity == 1, timeout=10)


async def test_a_serial_that_looks_like_a_port_path_takes_no_other_device_id(
    fake: FakeSysfs,
) -> None:
    """A serial "1-2" and a serial-less device at port 1-2 want one ID: one is advertised
    (the first by kernel name), the others are skipped, none gets a second ID."""
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="1-2")
    fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial=None)
    fake.usb_serial_adapter(controller, "1-3", devnum=4, tty="ttyUSB2", serial="1-2")
    driver = make_driver(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]')
    result = await driver.scan_once()
    devices = list(result.devices.values())
    assert {d.nodes[0].host_path: d.id for d in devices} == {"/dev/ttyUSB0": "1-2"}
    assert len(result.skipped) == 2
    for device in devices:
        assert device_id_problem(device.id) is None


async def test_skipped_twins_and_bad_names_are_counted(fake: FakeSysfs) -> None:
    """A twin serial (`id_collision`) and a vfio group name no node can have (`bad_name`)
    reach the reporter: logged and counted, while the rest is listed."""
    controller = fake.usb_controller()
    fake.usb_serial_adapter(controller, "1-1", devnum=2, tty="ttyUSB0", serial="SAME")
    fake.usb_serial_adapter(controller, "1-2", devnum=3, tty="ttyUSB1", serial="SAME")
    vfio = fake.pci_vfio(group=7)
    (vfio / "iommu_group").unlink()
    os.symlink("../..", vfio / "iommu_group")
    driver = make_driver(fake, f'usb: [{{vendor: "{FTDI[0]}"}}]\npci: [{{driver: vfio-pci}}]')
    table = DeviceTable()
    metrics = Metrics()
    async with asyncio.TaskGroup() as group:
        driving = group.create_task(driver.run(reporter(table, metrics, resource=RESOURCE)))
        snap = await wait_table(table, lambda s: len(s.devices) == 2)
        driving.cancel()
    assert {d.id: [n.host_path for n in d.nodes] for d in snap.devices} == {
        "SAME": ["/dev/ttyUSB0", "/dev/bus/usb/001/002"],
        "0000:5e:00.0": ["/dev/vfio/devices/vfio0"],
    }
    for reason in ("id_collision", "bad_name"):
        value = metrics.registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": RESOURCE, "reason": reason}
        )
        assert value == 1, reason
