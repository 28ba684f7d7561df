"""Per-device health commands: substitution, flipping a device unhealthy and back, limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kdp_host.config import HealthCheckConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode, Snapshot
from kdp_host.health import HealthChecker, health_argv
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.process import ProcessRunner

from .conftest import script, wait_table, wait_until

RESOURCE = "vendor.example/card"
LOGGER = "test_health"


def checker_for(
    config: HealthCheckConfig,
    table: DeviceTable,
    metrics: Metrics | None = None,
    kill_grace: float = 1.0,
    concurrency: int = 8,
) -> HealthChecker:
    return HealthChecker(
        config,
        table,
        resource=RESOURCE,
        log=get_logger(LOGGER, resource=RESOURCE),
        metrics=metrics or Metrics(),
        commands=ProcessRunner(kill_grace=kill_grace),
        concurrency=concurrency,
    )


def failures(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "kdp_health_check_failures_total", {"resource": RESOURCE}
    )
    return value or 0.0


def health(snapshot: Snapshot) -> dict[str, bool]:
    return {d.id: d.healthy for d in snapshot.devices}


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "kdp_fields", {}) for r in caplog.records if r.getMessage() == name]


@contextlib.asynccontextmanager
async def checking(checker: HealthChecker) -> AsyncIterator[None]:
    task = asyncio.create_task(checker.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})  # unlike `await task`, never swallows our own cancellation
        if not task.cancelled():
            task.result()  # a task that crashed fails the test


def test_argv_substitution_is_per_element_and_single_pass() -> None:
    device = Device(id="card{path}", nodes=(DeviceNode("/dev/card0", "/dev/x"),))
    argv = health_argv(("check", "--id={id}", "{path}", "{other}", "{id}:{path}"), device)
    assert argv == [
        "check",
        "--id=card{path}",
        "/dev/card0",
        "{other}",
        "card{path}:/dev/card0",
    ]


def test_argv_path_prefers_the_matched_path() -> None:
    device = Device(id="d", nodes=(DeviceNode("/dev/real", "/dev/x"),), path="/dev/link")
    assert health_argv(("{path}",), device) == ["/dev/link"]
    assert health_argv(("{path}",), Device(id="d")) == [""]


async def test_flag_file_flips_a_device_unhealthy_and_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    flags = tmp_path / "flags"
    flags.mkdir()
    check = script(
        tmp_path,
        "check",
        'if [ -e "$1" ]; then echo "card $2 reports ECC errors" >&2; exit 1; fi\n',
    )
    table = DeviceTable()
    table.publish([Device(id="c0", nodes=(DeviceNode("/dev/c0", "/dev/c0"),)), Device(id="c1")])
    metrics = Metrics()
    config = HealthCheckConfig(command=(check, f"{flags}/{{id}}.bad", "{path}"), interval=0.05)
    checker = checker_for(config, table, metrics)
    async with checking(checker):
        (flags / "c0.bad").touch()
        await wait_table(table, lambda s: health(s) == {"c0": False, "c1": True})
        await wait_until(lambda: failures(metrics) >= 3)
        assert health(table.snapshot) == {"c0": False, "c1": True}
        (flags / "c0.bad").unlink()
        await wait_table(table, lambda s: health(s) == {"c0": True, "c1": True})
    (failed,) = events(caplog, "device_check_failed")
    assert failed["device"] == "c0"
    assert failed["error"] == "exited with status 1 (stderr: card /dev/c0 reports ECC errors)"
    (recovered,) = events(caplog, "device_healthy_again")
    assert recovered["device"] == "c0"


async def test_timeout_and_missing_command_are_unhealthy(tmp_path: Path) -> None:
    table = DeviceTable()
    device = Device(id="c0")
    table.publish([device])
    hang = checker_for(
        HealthCheckConfig(command=(script(tmp_path, "hang", "exec sleep 1000\n"),), timeout=0.1),
        table,
        kill_grace=0.1,
    )
    problem = await hang.check(device)
    assert problem is not None and problem.startswith("timeout: timed out after 0.1s")
    missing = checker_for(HealthCheckConfig(command=(str(tmp_path / "nope"), "{id}")), table)
    problem = await missing.check(device)
    assert problem is not None and problem.startswith("spawn: cannot run")
    await missing.check_all()
    assert health(table.snapshot) == {"c0": False}


async def test_checks_run_concurrently_but_bounded(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    seen = tmp_path / "seen"
    seen.mkdir()
    check = script(
        tmp_path,
        "check",
        f'touch "{running}/$1"\nls "{running}" | wc -l > "{seen}/$1"\nsleep 0.1\n'
        f'rm "{running}/$1"\n',
    )
    table = DeviceTable()
    table.publish([Device(id=f"d{i}") for i in range(9)])
    checker = checker_for(HealthCheckConfig(command=(check, "{id}")), table, concurrency=3)
    await checker.check_all()
    peaks = [int(p.read_text()) for p in seen.iterdir()]
    assert len(peaks) == 9
    assert 2 <= max(peaks) <= 3
    assert table.snapshot.healthy_count == 9


async def test_results_for_vanished_devices_are_ignored(tmp_path: Path) -> None:
    table = DeviceTable()
    table.publish([Device(id="a"), Device(id="b")])
    gate = tmp_path / "gate"
    check = script(tmp_path, "check", f'while [ ! -e "{gate}" ]; do sleep 0.01; done\nexit 1\n')
    checker = checker_for(HealthCheckConfig(command=(check,)), table)
    round_ = asyncio.create_task(checker.check_all())
    table.publish([Device(id="b")])
    gate.touch()
    await round_
    assert health(table.snapshot) == {"b": False}
