"""The first list the kubelet sees is the full one (kdp_host/first_list.py; README,
"Start-up"): a resource registers once its first list is complete, however long a first scan
that makes progress takes, and only a first attempt that fails (a scan or probe past its own
timeout) registers it earlier, with no devices.

A slow first scan stands in for a host at scale (100 resources x 1,000 devices take seconds
to scan and resolve): the scan is made slow, not the tree large."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdp_host.config import DriverConfig, GlobDriverConfig
from kdp_host.drivers import Driver, DriverDeps, make_driver
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.scanner import DirWatch, Listed, Scanner, ScanResult
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, wait_until
from .kubelet_harness import RealKubelet, healthy

FPGA = "vendor.example/fpga"

SLOW_FIRST_SCAN = 3.0
"""Seconds the first scan takes: longer than the 2 s wall-clock wait that registered a
resource with an empty list before its scan was done."""


class HeldFirstScan:
    """A scanner whose first scan waits (`delay` seconds, or until `release` is set) first."""

    def __init__(
        self, inner: Scanner, delay: float = 0.0, release: threading.Event | None = None
    ) -> None:
        self._inner = inner
        self._delay = delay
        self._release = release
        self._first = True
        self.first_done = threading.Event()

    def scan(self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None) -> ScanResult:
        if self._first:
            self._first = False
            if self._release is not None:
                self._release.wait(60.0)
            else:
                time.sleep(self._delay)
            self.first_done.set()
        return self._inner.scan(listed, dirs, changed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def holding_first_scans(
    made: list[HeldFirstScan], scan_timeout: float = 30.0, **hold: Any
) -> Callable[[DriverConfig, DriverDeps], Driver]:
    """A driver factory: glob drivers whose first scan is held (`HeldFirstScan`)."""

    def make(config: DriverConfig, deps: DriverDeps) -> Driver:
        if not isinstance(config, GlobDriverConfig):
            return make_driver(config, deps)
        driver = GlobDriver(config, deps, scan_timeout=scan_timeout)
        held = HeldFirstScan(driver.scanner, **hold)
        driver.scanner = held  # type: ignore[assignment]
        made.append(held)
        return driver

    return make


async def test_a_slow_first_scan_registers_with_its_full_list_not_an_empty_one(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    """Issue 17: at 100 x 1,000 every resource registered with an empty first list, the
    kubelet saw 0 devices for seconds. The kubelet learns of the resource with its devices."""
    made: list[HeldFirstScan] = []
    await start_host(
        glob_config(socket_dir, (FPGA, f"{devices}/fpga[0-9]*")),
        drivers=holding_first_scans(made, delay=SLOW_FIRST_SCAN),
    )
    await wait_until(
        lambda: any(u.resource == FPGA for u in kubelet.list_and_watch_updates),
        what="a first list at the kubelet",
    )
    assert made and made[0].first_done.is_set()
    updates = [u for u in kubelet.list_and_watch_updates if u.resource == FPGA]
    assert (updates[0].total, updates[0].healthy) == (2, 2)
    assert all(u.total == 2 for u in updates)


async def test_a_first_scan_that_hangs_registers_the_resource_with_no_devices_at_its_timeout(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    """The wait ends when the scan is given up on (its own timeout), not later: the kubelet
    learns of the resource (0 devices, the truth) while the scan still hangs, and gets the
    devices as soon as the hung scan returns (its return wakes the scan loop)."""
    release = threading.Event()
    made: list[HeldFirstScan] = []
    try:
        await start_host(
            glob_config(socket_dir, (FPGA, f"{devices}/fpga[0-9]*")),
            drivers=holding_first_scans(made, scan_timeout=0.3, release=release),
        )
        await wait_until(
            lambda: any(u.resource == FPGA for u in kubelet.list_and_watch_updates),
            what="a first list at the kubelet",
        )
        assert not made[0].first_done.is_set()  # still hanging
        first = next(u for u in kubelet.list_and_watch_updates if u.resource == FPGA)
        assert first.total == 0
        assert [a.resource for a in kubelet.register_attempts] == [FPGA]
    finally:
        release.set()
    await wait_until(
        lambda: any(u.resource == FPGA and u.healthy == 2 for u in kubelet.list_and_watch_updates),
        timeout=15.0,  # (half the safety net's 30 s: the scan's return itself wakes the loop)
        what="the devices once the scan that hung returned",
    )


async def test_a_first_probe_that_fails_registers_the_resource_at_once(
    kubelet: KubeletSimulator, socket_dir: Path, start_host
) -> None:
    """A failed first attempt (here a probe that exits 1) ends the wait: registered with no
    devices, the log saying why."""
    config = "\n".join(
        [
            f"kubelet: {{socketDir: {socket_dir}}}",
            f"stateDir: {socket_dir.parent}/state",
            "resources:",
            f"  - name: {FPGA}",
            "    shell: {command: [/bin/false], interval: 1h, format: lines}",
        ]
    )
    running = await start_host(config + "\n")
    await wait_until(
        lambda: any(u.resource == FPGA for u in kubelet.list_and_watch_updates),
        what="a first list at the kubelet",
    )
    first = next(u for u in kubelet.list_and_watch_updates if u.resource == FPGA)
    assert first.total == 0
    assert running.host.resources[FPGA].status.registered


async def test_a_restarted_host_gives_the_real_kubelet_its_full_list_first(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """Issue 17, through the kubelet's real device manager: kdp-host stops (the kubelet marks
    the devices unhealthy: allocatable 0 while no plugin runs, docs/kubelet-contract.md §4)
    and starts again with a first scan slower than the old 2 s wait. From the new
    registration on, the kubelet never sees allocatable 0: its first list from the new
    instance carries both devices, and so does every list after it."""
    kubelet: RealKubelet = real_kubelet_factory()
    config = glob_config(kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]*"))
    first = await start_host(config)
    await kubelet.await_for(healthy(FPGA, 2), what="two healthy fpgas")
    await first.shutdown()
    stopped = await kubelet.acall(kubelet.last_seq)

    made: list[HeldFirstScan] = []
    await start_host(config, drivers=holding_first_scans(made, delay=SLOW_FIRST_SCAN))

    def listed_both(events: list[dict[str, Any]]) -> bool:
        return any(
            e["kind"] == "list_and_watch" and e["resource"] == FPGA and e["healthy"] == 2
            for e in events
        )

    # (the event, not /capacity: the kubelet records a list after its checkpoint write)
    events = await kubelet.acall(kubelet.wait_events, listed_both, stopped, what="both listed")
    assert made and made[0].first_done.is_set()
    events = [e for e in events if e["resource"] == FPGA]
    kinds = [e["kind"] for e in events]
    assert "registered" in kinds
    after = events[kinds.index("registered") :]
    lists = [e for e in after if e["kind"] in ("list_and_watch", "capacity_changed")]
    assert [(e["capacity"], e["allocatable"]) for e in lists] == [(2, 2)] * len(lists)
    assert "disconnected" not in [e["kind"] for e in after]
    seen = await kubelet.acall(kubelet.resource, FPGA)
    assert seen is not None and (seen["capacity"], seen["allocatable"]) == (2, 2)
