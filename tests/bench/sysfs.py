"""The sysfs driver: hot-plug -> ListAndWatch update (8 and 1,000 adapters present), CPU while
an adapter flaps, scan time of 1,000 USB devices, idle CPU.

Trees are fake but kernel-shaped (tests/fake_sysfs.py) under a temporary directory. A
hot-plug is what the kernel does: the device's sysfs entries exist, then devtmpfs creates its
nodes (the clock starts before the first node); an unplug removes the nodes, then the sysfs
entries (the clock starts before the first removal). kdp-host runs as a child process with
the kubelet's ListAndWatch stream open, as in the glob hot-plug benchmark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdp_host.config import SysfsDriverConfig, load_config_text
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.sysfs import SysfsDriver
from kdp_host.logs import get_logger
from kdp_host.sysfs.reader import SysfsReader
from kdp_host.watch import PollingWatcher

from ..fake_sysfs import FTDI, FakeSysfs, UsbController
from .harness import Figure, Options, make_workdir, remove_tree
from .hotplug import Arm, SimulatorArrivals, measure_hotplug
from .latency import served_host
from .scale import idle_cpu_percent

RESOURCE = "bench.kdp-host.io/usb-serial"
BASE_DEVICES = 8
DEVICES_PER_BUS = 120
MS = 1000.0


def build_adapters(fake: FakeSysfs, count: int) -> list[UsbController]:
    """`count` FTDI adapters with serials, spread over as many buses as USB needs."""
    controllers: list[UsbController] = []
    for index in range(count):
        bus, slot = divmod(index, DEVICES_PER_BUS)
        if bus == len(controllers):
            controllers.append(fake.usb_controller(f"0000:{bus + 1:02x}:00.0"))
        fake.usb_serial_adapter(
            controllers[bus],
            f"{controllers[bus].busnum}-{slot + 1}",
            devnum=slot + 2,
            tty=f"ttyUSB{index}",
            serial=f"SN{index:05d}",
        )
    return controllers


def resource(fake: FakeSysfs, **extra: Any) -> dict[str, Any]:
    sysfs: dict[str, Any] = {
        "usb": [{"vendor": FTDI[0], "product": FTDI[1]}],
        "sysfsRoot": str(fake.sys),
        "devRoot": str(fake.dev),
    }
    sysfs.update(extra)
    return {"name": RESOURCE, "sysfs": sysfs}


HOT_PORT, HOT_DEVNUM = f"1-{DEVICES_PER_BUS + 1}", DEVICES_PER_BUS + 7
"""The hot-plugged adapter's port and address on bus 1, beside every adapter `build_adapters`
makes there."""


def hotplug(opts: Options, present: int = BASE_DEVICES) -> list[Figure]:
    """Plug and unplug one adapter while `present` others are listed."""
    what = "sysfs hot-plug" if present == BASE_DEVICES else f"sysfs hot-plug, {present} present"
    plug = Figure(f"{what}: node appears -> update", "ms", target=5.0)
    unplug = Figure(f"{what}: removal -> update", "ms", target=5.0)
    worst = Figure(f"{what}: node appears -> update, max", "ms")
    workdir = make_workdir("sysfs-hotplug")
    try:
        fake = FakeSysfs(workdir / "root")
        controller = build_adapters(fake, present)[0]
        # A long grace period: an unplugged adapter stays listed Unhealthy, so each event
        # moves the healthy count by one.
        with served_host(workdir, "kdp-sysfs", [resource(fake, gracePeriod="1h")]) as served:
            arrivals = SimulatorArrivals(served.kubelet.plugins[RESOURCE])
            arm = hot_adapter(fake, controller)
            figures = (plug, unplug, worst)
            measure_hotplug(opts, arrivals, present, arm, figures, served.host.check_alive)
    finally:
        remove_tree(workdir)
    return [plug, unplug, worst]


def hot_adapter(fake: FakeSysfs, controller: UsbController) -> Arm:
    """The hot-plug of one adapter as the kernel does it: its sysfs entries (untimed), then
    its nodes; the unplug removes the nodes, then the entries."""

    def arm() -> tuple[Callable[[], None], Callable[[], None]]:
        device = plug_in(fake, controller, create_nodes=False)
        devnames = fake.nodes_of(device)

        def create_nodes() -> None:
            for devname in devnames:
                fake.create_node(devname)

        return create_nodes, lambda: fake.remove_device(device)

    return arm


def plug_in(fake: FakeSysfs, controller: UsbController, *, create_nodes: bool = True) -> Path:
    """The adapter that comes and goes (HOT_PORT)."""
    return fake.usb_serial_adapter(
        controller,
        HOT_PORT,
        devnum=HOT_DEVNUM,
        tty="ttyUSB9999",
        serial="HOT",
        create_nodes=create_nodes,
    )


def flapping(opts: Options) -> list[Figure]:
    """CPU of kdp-host while one adapter of 100 flaps (in and out every 50 ms). Beside it,
    the rate the loop achieved (a plug and an unplug each cost the fake's file work, so
    fewer than 10 a second, and fewer on a loaded machine) and kdp-host's CPU per flap:
    two runs compare by those, the percentage moves with the rate."""
    count = 100
    what = f"sysfs 1x{count} USB devices, one flapping every 50 ms"
    cpu = Figure(f"{what}: CPU", "% of a core", target=5.0, note=f"over {opts.idle_seconds:g}s")
    rate = Figure(f"{what}: flaps achieved", "per s", note="in and out; 10 at the rate asked")
    per_flap = Figure(f"{what}: CPU per flap", "ms", note="plug and unplug")
    workdir = make_workdir("sysfs-flap")
    try:
        fake = FakeSysfs(workdir / "root")
        controller = build_adapters(fake, count)[0]
        with served_host(workdir, "kdp-sysfs-flap", [resource(fake)]) as served:
            for _ in range(max(1, opts.scale_repeats)):
                before = served.host.cpu_seconds()
                started = time.monotonic()
                flaps = 0
                while time.monotonic() - started < opts.idle_seconds:
                    device = plug_in(fake, controller)
                    time.sleep(0.05)
                    fake.remove_device(device)
                    time.sleep(0.05)
                    flaps += 1
                spent = served.host.cpu_seconds() - before
                elapsed = time.monotonic() - started
                cpu.add(spent / elapsed * 100.0)
                rate.add(flaps / elapsed)
                per_flap.add(spent / flaps * MS)
                served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [cpu, rate, per_flap]


def scan_and_idle(opts: Options) -> list[Figure]:
    count = opts.scale_devices
    read = Figure(f"sysfs scan of {count} USB devices: sysfs read", "ms")
    full = Figure(f"sysfs scan of {count} USB devices: read + match + IDs", "ms")
    idle = Figure(
        f"sysfs 1x{count} USB devices: idle CPU",
        "% of a core",
        target=1.0,
        note=f"over {opts.idle_seconds:g}s; the default 30s rescan falls in it",
    )
    workdir = make_workdir("sysfs-scan")
    try:
        fake = FakeSysfs(workdir / "root")
        build_adapters(fake, count)
        reader = SysfsReader(str(fake.sys), str(fake.dev))
        text = "resources:\n  - " + _json_line(resource(fake)) + "\n"
        config = load_config_text(text).resources[0].driver
        assert isinstance(config, SysfsDriverConfig)
        log = get_logger()
        for _ in range(opts.repeats):
            started = time.perf_counter()
            scan = reader.scan(["usb"])
            read.add((time.perf_counter() - started) * MS)
            assert sum(d.vendor == FTDI[0] for d in scan.devices) == count
            driver = SysfsDriver(config, DriverDeps(log, PollingWatcher(log)))
            started = time.perf_counter()
            devices = asyncio.run(driver.scan())
            full.add((time.perf_counter() - started) * MS)
            assert len(devices) == count, len(devices)
        for _ in range(max(1, opts.scale_repeats)):
            with served_host(workdir, "kdp-sysfs-idle", [resource(fake)]) as served:
                time.sleep(opts.settle_seconds)
                idle.add(idle_cpu_percent(served.host, opts.idle_seconds))
                served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [read, full, idle]


def _json_line(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data)


def run(opts: Options) -> list[Figure]:
    many = 100 if opts.quick else 1000
    return [*hotplug(opts), *hotplug(opts, many), *flapping(opts), *scan_and_idle(opts)]
