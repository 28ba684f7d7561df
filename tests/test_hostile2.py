"""Findings of the second hostile pass (issue 17), each reproduced as the tester did it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from kdp_host.cli import main
from kdp_host.config.outputs import spec_file_name
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.ownership_claims import Owner
from kdp_host.ownership_document import OWNERSHIP_FILE, SavedBooking, read_saved
from kdp_host.release_state import STATE_FILE

from .conftest import glob_config, wait_until
from .kubelet_harness import healthy
from .test_ownership_kubelet import host_paths
from .test_release import (
    _answer,
    _Commands,
    _successor,
    _tracker,
    host_yaml,
    release_lines,
    release_script,
)
from .test_release import _registered as registered

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

FPGA = "vendor.example/fpga"
PROBE = "c.example/probe"


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
    new = _successor(short_dir, table, store, commands)
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


async def test_hostile2_9_a_held_ids_cdi_entry_keeps_what_was_allocated(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """F9: the CDI spec was rewritten so a held ID's name pointed at a node its pod was never
    allocated (the probe moved the device to another node): a container restart, which
    resolves the CDI name again, would have got that node while the kubelet's checkpoint
    says the first. While the ID is booked its entry keeps what was allocated (the other
    device, which no pod holds, follows the probe in the same write); once no pod holds it,
    the entry follows the device, and the next pod is allocated (and resolves) the new node."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    dev = short_dir / "dev"
    for side in ("a", "b"):
        (dev / side).mkdir(parents=True)
        for name in ("x", "y"):
            (dev / side / name).touch()
    which = short_dir / "which"
    which.write_text("a\n")
    spec_dir = short_dir / "cdi"
    probe = "; ".join(f"echo {n} Healthy path={dev}/$(cat {which})/{n}:/dev/{n}" for n in "xy")
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
        f"  - name: {PROBE}\n"
        f'    shell: {{command: [sh, -c, "{probe}"], interval: 1s}}\n'
        f"    allocate: {{cdi: {{kind: c.example/dev, specDir: {spec_dir}, "
        "alsoDeviceSpecs: true}}\n"
    )
    await start_host(config)
    spec_path = spec_dir / spec_file_name(PROBE)

    def spec_nodes() -> dict[str, str]:
        try:
            devices = json.loads(spec_path.read_text())["devices"]
            return {
                d["name"].partition(":")[2]: node["hostPath"]  # the device part
                for d in devices
                for node in d["containerEdits"]["deviceNodes"]
            }
        except (OSError, ValueError, KeyError):
            return {}

    def on(side: str) -> dict[str, str]:
        return {n: str(dev / side / n) for n in "xy"}

    await kubelet.await_for(healthy(PROBE, 2), what="x and y advertised")
    await wait_until(lambda: spec_nodes() == on("a"), what="the spec names dev/a")
    first = await kubelet.acall(kubelet.allocate, "p1", {PROBE: 1})
    [held] = first["device_ids"][PROBE]
    assert first["error"] == "" and host_paths(first) == {on("a")[held]}
    [free] = {"x", "y"} - {held}

    which.write_text("b\n")
    await wait_until(
        lambda: spec_nodes().get(free) == on("b")[free], what="the probe's move written"
    )
    assert spec_nodes()[held] == on("a")[held], "p1's CDI name resolves a node it never got"

    await kubelet.acall(kubelet.release, "p1")
    await wait_until(lambda: spec_nodes() == on("b"), timeout=60, what="the entry follows")
    second = await kubelet.acall(kubelet.allocate, "p2", {PROBE: 2})
    assert second["error"] == "" and host_paths(second) == set(on("b").values())
    assert spec_nodes() == on("b")


async def test_hostile2_14_a_failed_release_keeps_a_replugged_device_unhealthy(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """F14: with `onFailure: unhealthy` a device whose release failed is Unhealthy until a
    release succeeds; unplugged and plugged in again it was advertised Healthy (the table
    dropped the mark with the device), so the kubelet admitted pods that then failed at
    their start. The mark now outlives the device's absence."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    config = host_yaml(
        kubelet.socket_dir, devices, short_dir / "state", release_script(short_dir, fail=True),
        pod_resources=pod_resources,
    ).replace("gracePeriod: 1s", "gracePeriod: 0s")  # fmt: skip
    await start_host(config)
    await kubelet.await_for(registered(kubelet), what="fpga registered")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(
        lambda k: k.resource(FPGA)["unhealthy"] == 1, what="fpga0 Unhealthy after its release"
    )

    (devices / "fpga0").unlink()
    await kubelet.await_for(lambda k: not k.resource(FPGA)["device_numa"], what="unplugged")
    (devices / "fpga0").touch()
    await kubelet.await_for(lambda k: k.resource(FPGA)["device_numa"], what="plugged in again")
    seen = kubelet.resource(FPGA)
    assert (seen["healthy"], seen["unhealthy"]) == (0, 1), seen
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert "no healthy devices" in second["error"], second["error"]


def test_hostile2_14_a_kept_check_outlives_the_device_and_a_plain_one_does_not() -> None:
    table = DeviceTable()
    table.publish([Device("a", path="/dev/a"), Device("b", path="/dev/b")])
    assert table.set_check_result("a", False, keep=True)
    assert table.set_check_result("b", False)
    table.publish([])
    table.publish([Device("a", path="/dev/a"), Device("b", path="/dev/b")])
    assert [d.healthy for d in table.snapshot.devices] == [False, True]
    table.set_check_result("z", False, keep=True)  # a release failed while z was gone
    table.publish([Device(i, path=f"/dev/{i}") for i in "abz"])
    assert [d.healthy for d in table.snapshot.devices] == [False, True, False]
    assert table.set_check_result("a", True)  # a release succeeded: lifted for good
    table.publish([])
    table.publish([Device("a", path="/dev/a")])
    assert [d.healthy for d in table.snapshot.devices] == [True]


async def test_hostile2_12_a_booking_whose_device_is_not_its_id_is_refused(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """F12: a well-typed `ownership.json` booking `gone-id` for a device `zz` (neither that
    ID nor a device it is a replica of) held fpga0 by a phantom owner for good once the
    booking ended, or advertised fpga0 as `zz`. Such a file does not have the shape of
    bookings: it is set aside with one error line, like any bad state file, and fpga0 is
    advertised under its own ID."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state = short_dir / "state"
    state.mkdir()
    node = str(devices / "fpga0")
    claim = {"kind": "path", "key": node, "path": node, "real": node}
    booking = {"resource": FPGA, "id": "gone-id", "device": "zz", "claims": [claim]}
    text = json.dumps({"version": 1, "bookings": [booking]})
    (state / OWNERSHIP_FILE).write_text(text)
    config = glob_config(kubelet.socket_dir, (FPGA, f"{devices}/fpga0"))
    config = config.replace(
        "}\n", f", podResourcesSocket: {short_dir}/pr/kubelet.sock, podResourcesInterval: 1s}}\n", 1
    )
    await start_host(config)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    assert sorted(kubelet.resource(FPGA)["device_numa"]) == ["fpga0"]  # not as "zz"
    assert (state / (OWNERSHIP_FILE + ".unreadable")).read_text() == text


@pytest.mark.parametrize(
    ("booked", "device", "valid"),
    [("r0", "r0", True), ("r0::1", "r0", True), ("gone-id", "zz", False), ("r0", "r0::1", False)],
)
def test_hostile2_12_a_bookings_id_is_its_device_or_a_replica_of_it(
    booked: str, device: str, valid: bool
) -> None:
    entry = {"resource": FPGA, "id": booked, "device": device, "claims": []}
    document = {"version": 1, "bookings": [entry]}
    if valid:
        assert read_saved(document) == [SavedBooking(Owner(FPGA, booked), device, (), ())]
    else:
        with pytest.raises(ValueError, match="replica"):
            read_saved(document)
