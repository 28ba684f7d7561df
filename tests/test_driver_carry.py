"""What a stopped driver hands its successor (`drivers.carry`; issue 17, hostile28 G3): the
devices its list has missing and the nodes its devices lost, each counted from when it went
missing with the successor's gracePeriod, where the new config lists it under the same ID."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from kdp_host.backoff import Retry
from kdp_host.config import DriverConfig, GlobDriverConfig, GlobGroupMemberConfig, ShellDriverConfig
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers import Driver, DriverDeps, Notifier, make_driver
from kdp_host.drivers.carry import carry, left_by
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.glob_walk import matches
from kdp_host.drivers.scanner import ScanResult
from kdp_host.logs import get_logger
from kdp_host.simulator import KubeletSimulator
from kdp_host.supervisor import RestartPolicy
from kdp_host.testing import ManualClock, driver_deps

from .conftest import glob_config, wait_until

FPGA = "vendor.example/fpga"


def _gone(driver: GlobDriver, clock: ManualClock, *present: str) -> None:
    """`driver` lists /dev/fpga0-2 present, then only `present` (the rest missing)."""
    everything = {
        f"fpga{i}": Device(f"fpga{i}", nodes=None, path=f"/dev/fpga{i}") for i in range(3)
    }
    driver.tracker.merge(ScanResult(everything))
    clock.advance(10)
    driver.tracker.merge(ScanResult({i: everything[i] for i in present}))


def _driver(config: GlobDriverConfig, clock: ManualClock) -> GlobDriver:
    driver = make_driver(config, driver_deps(clock=clock))
    assert isinstance(driver, GlobDriver)
    return driver


def test_a_missing_device_stays_missing_across_a_restart_counted_from_when_it_went() -> None:
    clock = ManualClock()
    old = GlobDriverConfig(paths=("/dev/fpga*",), grace_period=60.0)
    before = _driver(old, clock)
    _gone(before, clock, "fpga0", "fpga2")
    went = clock.now
    clock.advance(20)
    new = GlobDriverConfig(paths=("/dev/fpga*",), grace_period=45.0)  # (a gracePeriod change)
    after = _driver(new, clock)
    carry(left_by(before, old), after, new, get_logger())

    present = {i: Device(i, nodes=None, path=f"/dev/{i}") for i in ("fpga0", "fpga2")}
    listed, expiry = after.tracker.merge(ScanResult(present))
    assert not listed["fpga1"].healthy, "dropped by the restart"
    assert expiry == went + 45.0, "the new gracePeriod, from when it went missing"
    clock.advance(25)  # (45 s since it went: its grace is over)
    listed, expiry = after.tracker.merge(ScanResult(present))
    assert "fpga1" not in listed and expiry is None
    # found again as itself within the grace: Healthy, no longer missing
    again = _driver(new, clock)
    carry(left_by(before, old), again, new, get_logger())
    listed, expiry = again.tracker.merge(
        ScanResult({**present, "fpga1": Device("fpga1", nodes=None, path="/dev/fpga1")})
    )
    assert listed["fpga1"].healthy and expiry is None


def test_only_what_the_new_config_lists_under_the_same_id_is_carried() -> None:
    clock = ManualClock()
    old = GlobDriverConfig(paths=("/dev/fpga*",), grace_period=60.0)
    before = _driver(old, clock)
    _gone(before, clock, "fpga0")
    for paths, kept in [
        (("/dev/fpga[01]",), ["fpga1"]),  # (fpga2 no longer matched)
        (("/dev/fpga*", "/dev/other/x*"), ["fpga1", "fpga2"]),  # (same base: same IDs)
        (("/dev/fpga*", "/opt/x*"), []),  # (the common base is / now: renamed `dev-fpga1`)
    ]:
        new = GlobDriverConfig(paths=paths, grace_period=60.0)
        after = _driver(new, clock)
        carry(left_by(before, old), after, new, get_logger())
        listed, _ = after.tracker.merge(ScanResult({}))
        assert sorted(listed) == kept, paths


def test_a_group_carries_its_missing_devices_and_lost_nodes_only_with_the_same_scan() -> None:
    clock = ManualClock()
    old = GlobDriverConfig(
        group=(GlobGroupMemberConfig(path="/dev/c{key}"), GlobGroupMemberConfig(path="/dev/r{key}"))
    )
    before = _driver(old, clock)
    two = {
        key: Device(key, nodes=(DeviceNode(f"/dev/c{key}", "/c"), DeviceNode(f"/dev/r{key}", "/r")))
        for key in ("0", "1")
    }
    one = Device("0", nodes=(DeviceNode("/dev/c0", "/c"),))
    before.tracker.merge(ScanResult(two))
    before.tracker.merge(ScanResult({"0": one}))  # (0 lost r0, 1 is gone)
    for new, carried in [(old, True), (GlobDriverConfig(group=old.group[:1]), False)]:
        after = _driver(new, clock)
        carry(left_by(before, old), after, new, get_logger())
        listed, _ = after.tracker.merge(ScanResult({"0": one}))
        assert ("1" in listed) is carried and listed["0"].healthy is not carried


def test_a_probe_leaves_nothing_and_a_pattern_matches_as_the_glob_walk_does() -> None:
    probe = make_driver(ShellDriverConfig(command=("true",)), driver_deps())
    assert left_by(probe, ShellDriverConfig(command=("true",))) is None
    assert matches("/dev/fpga*", "/dev/fpga1") and not matches("/dev/fpga*", "/dev/x/fpga1")
    assert not matches("/dev/*", "/dev/.hidden") and matches("/dev/.h*", "/dev/.hidden")
    assert matches("/dev/bus/usb/*/*", "/dev/bus/usb/001/002")


async def test_a_resource_restarted_after_a_crash_keeps_its_missing_device(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host: Any
) -> None:
    """The runtime the supervisor starts after a crash takes over what the crashed one had
    missing, as a reload's does (before: fpga1, unplugged, was dropped by the restart)."""
    crash = asyncio.Event()
    made: list[GlobDriver] = []

    class CrashingOnce(GlobDriver):
        async def run(self, notifier: Notifier) -> None:
            running = asyncio.ensure_future(super().run(notifier))
            await asyncio.wait(
                {running, asyncio.ensure_future(crash.wait())}, return_when="FIRST_COMPLETED"
            )
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            raise RuntimeError("driver bug")

    def drivers(config: DriverConfig, deps: DriverDeps) -> Driver:
        assert isinstance(config, GlobDriverConfig)
        made.append((CrashingOnce if not made else GlobDriver)(config, deps))
        return made[-1]

    config = glob_config(socket_dir, (FPGA, f"{devices}/fpga[0-9]*")).replace("1s", "60s")
    running = await start_host(
        config, drivers=drivers, restart_policy=RestartPolicy(Retry(first=0.05, maximum=0.1))
    )
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    (devices / "fpga1").unlink()
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1)
    crash.set()
    await wait_until(lambda: len(made) == 2 and running.host.resources[FPGA].status.listed)
    missing = running.host.resources[FPGA].table.snapshot.device("fpga1")
    assert missing is not None and not missing.healthy, "fpga1 dropped by the restart"
    assert running.metrics.resource_restarts.labels(FPGA).value == 1
