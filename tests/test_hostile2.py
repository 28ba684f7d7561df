"""Findings of the second hostile pass (issue 17), each reproduced as the tester did it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from kdp_host.cli import main
from kdp_host.config import load_config_text
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership_bookings import OWNERSHIP_FILE
from kdp_host.release import ReleaseTracker
from kdp_host.release_state import STATE_FILE

from .conftest import glob_config, wait_until
from .kubelet_harness import healthy
from .test_release import _answer, _Commands, _tracker, host_yaml, release_lines, release_script
from .test_release import _registered as registered

FPGA = "vendor.example/fpga"


@pytest.mark.parametrize("name", [OWNERSHIP_FILE, STATE_FILE])
async def test_hostile2_6_a_fifo_as_a_state_file_neither_hangs_the_start_nor_sigterm(
    name: str, real_kubelet_factory, short_dir: Path, devices: Path
) -> None:
    """F6: a FIFO at `<stateDir>/ownership.json` or `release-state.json` held the start in a
    blocking open() for ever (nothing registered, SIGTERM ignored). It is read like every
    small file (non-blocking, regular files only): set aside with one error line, and the
    host serves, registers and stops on SIGTERM."""
    kubelet = real_kubelet_factory()
    state = short_dir / "state"
    state.mkdir()
    os.mkfifo(state / name)
    config = short_dir / "kdp.yaml"
    config.write_text(
        glob_config(kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]"))
        + "metrics: {listen: '127.0.0.1:0'}\n"
    )
    log_path = short_dir / "host.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kdp_host", "run", "--config", str(config),
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            await kubelet.await_for(healthy(FPGA, 2), what="two fpgas registered")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    unreadable = [line for line in log_path.read_text().splitlines() if "_unreadable" in line]
    assert len(unreadable) == 1, unreadable
    assert "not a regular file" in unreadable[0]
    assert (state / (name + ".unreadable")).is_fifo()


@pytest.mark.parametrize("change", ["timeout", "paths"])
async def test_hostile2_8_a_reload_that_restarts_the_resource_keeps_an_owed_release(
    change: str, real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """F8: a release that failed is owed; a reload that changes the resource (another
    `release.timeout`, one more pattern) restarted it from a clean state, and the next pod
    started on the device whose release never succeeded. It stays owed, exactly as across a
    SIGKILL: the next start runs it again and fails with its error (`onFailure: ignore`, so
    the device stays advertised and the start is what holds it back)."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    other = short_dir / "other"
    other.mkdir()
    config = short_dir / "config.yaml"
    config.write_text(
        host_yaml(kubelet.socket_dir, devices, short_dir / "state",
                  release_script(short_dir, fail=True), pod_resources=pod_resources,
                  extra="onFailure: ignore")
    )  # fmt: skip
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(registered(kubelet), what="fpga registered")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    await kubelet.acall(kubelet.release, "p1")
    await wait_until(
        lambda: running.host.resources[FPGA].release.view("fpga0")["state"] == "failed",
        what="the release of p1's use failed",
    )
    runs = len(release_lines(short_dir))
    text = config.read_text()
    if change == "timeout":
        text = text.replace("timeout: 10s", "timeout: 11s")
    else:
        text = text.replace(f'["{devices}/fpga0"]', f'["{devices}/fpga0", "{other}/x*"]')
    config.write_text(text)
    assert await running.host.reload_from(config) == "ok"
    await wait_until(
        lambda: (
            running.host.resources[FPGA].release.view("fpga0")["state"] in ("failed", "running")
        ),
        what="the restarted resource still owes fpga0's release",
    )
    await kubelet.await_for(registered(kubelet), what="fpga0 healthy again after the reload")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert "fpga fpga0 stuck in reset" in second["error"], second["error"]
    assert len(release_lines(short_dir)) > runs  # it ran again after the reload


async def test_hostile2_8_news_before_the_tracker_starts_never_wipes_the_kept_state(
    short_dir: Path,
) -> None:
    """F8, the tracker's side: a restarted resource's tracker is made while the old one
    runs; a PodResources answer handed to it before it started (subscribing hands over the
    last answer at once) wrote its empty state over the owed release the old one left."""
    commands = _Commands()
    old, table, store = _tracker(short_dir, commands)
    old.allocated(["fpga0"])
    old.holdings(_answer(10.0**9))  # nothing held: fpga0's release is owed
    await old.close()
    assert store.entries(FPGA)["fpga0"]["owed"]
    config = load_config_text(
        f"kubelet: {{socketDir: {short_dir}}}\nresources:\n  - name: {FPGA}\n"
        '    glob: {paths: ["/dev/fpga*"]}\n    release: {command: ["reset2", "{ids}"]}\n'
    )
    new = ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(),
    )  # fmt: skip
    new.holdings(_answer(10.0**9 + 1))
    assert store.entries(FPGA)["fpga0"]["owed"]
    new.start()
    assert new.view("fpga0")["state"] in ("pending", "running")
    await new.close()


async def test_hostile2_7_check_leaves_out_what_run_leaves_out(
    real_kubelet_factory, short_dir: Path, start_host, capsys: pytest.CaptureFixture[str]
) -> None:
    """F7: `check` listed a glob device whose path holds ',' as Healthy, while `run` leaves
    it out (`bad_name`: `{paths}` could not list it). Both go through the one reporter, so
    `check` shows exactly the devices the real kubelet is given."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "com,ma").touch()
    (dev / "ok0").touch()
    config = short_dir / "config.yaml"
    config.write_text(glob_config(kubelet.socket_dir, (FPGA, f"{dev}/*")))
    assert await asyncio.to_thread(main, ["check", "--config", str(config)]) == 0
    rows = [line.split()[2] for line in capsys.readouterr().out.splitlines()[2:]]
    await start_host(config.read_text())
    await kubelet.await_for(healthy(FPGA, 1), what="ok0 advertised")
    advertised = sorted(kubelet.resource(FPGA)["device_numa"])
    assert rows == advertised == ["ok0"]
