"""Issue 17, a clean device for every pod, across a kill between the Allocate's answer and
PreStartContainer (through the kubelet's real device manager, tests/kubelet_harness.py).

The answer waits for `handed-out.json` (and the booking); `release-state.json` takes the new
use after it (`ReleaseTracker.taken`), and PreStartContainer waits for that write. kdp-host
SIGKILLed in between left a state file without the use: the restarted host owed no release
when the pod ended, and the next pod was handed the device never reset. The write is held
back here by holding `release-state.json.lock` (which each write takes, as a hung state
directory would), so the kill lands in that window every run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kdp_host.release_state import STATE_FILE

from .conftest import KdpProcess
from .interop_kubelet import InteropPluginClient, load_official_api
from .kubelet_harness import RealKubelet, healthy
from .test_booked_moves_down import write_held
from .test_release import FPGA, host_yaml, release_lines, release_script

pytestmark = pytest.mark.fast

KUBELET_CHECKPOINT = "kubelet_internal_checkpoint"


def _holders(kubelet: RealKubelet, device: str) -> set[str]:
    """The UIDs of the pods the kubelet's checkpoint has `device` allocated to: their
    Allocate was answered (the kubelet writes it before it calls PreStartContainer)."""
    try:
        data = json.loads((kubelet.socket_dir / KUBELET_CHECKPOINT).read_text())
    except (OSError, ValueError):
        return set()
    return {
        entry["PodUID"]
        for entry in data.get("Data", {}).get("PodDeviceEntries") or ()
        if entry.get("ResourceName") == FPGA
        and any(device in ids for ids in entry["DeviceIDs"].values())
    }


async def _killed_at_the_seam(kubelet: RealKubelet, host: KdpProcess, pod: str) -> None:
    """`pod` is handed fpga0 while release-state.json's write is held back; kdp-host is
    killed once the kubelet recorded the answer, its PreStartContainer not answered (the
    harness drops a pod whose start failed)."""
    state = host.config.parent / "state"
    before = await kubelet.acall(_holders, kubelet, "fpga0")
    with write_held(state, STATE_FILE):
        start = asyncio.create_task(kubelet.acall(kubelet.allocate, pod, {FPGA: 1}))
        await kubelet.await_for(
            lambda k: _holders(k, "fpga0") - before, what=f"the kubelet recorded {pod}'s fpga0"
        )
        await host.stop()  # SIGKILL
        answer = await start
    assert "PreStartContainer" in answer["error"], answer


async def _pre_start(socket: Path, tmp_path: Path) -> None:
    """The kubelet's retried start of the container the harness dropped: its
    PreStartContainer, sent by a client of the test (official protobuf + grpcio)."""
    plugin = InteropPluginClient(load_official_api(tmp_path), socket)
    try:
        await plugin.pre_start(["fpga0"])
    finally:
        await plugin.close()


def _config(kubelet: RealKubelet, short_dir: Path, devices: Path, command: str) -> Path:
    """fpga0 alone, with a release command; PodResources off (with it, the kubelet's
    checkpoint, rewritten only at its next allocation, still shows an ended p1 holding fpga0
    to a host restarted before that: the first answer counts the use)."""
    (devices / "fpga1").unlink()
    config = short_dir / "kdp.yaml"
    config.write_text(
        host_yaml(
            kubelet.socket_dir, devices, short_dir / "state", command,
            pod_resources=None, interval="0s",
        )
    )  # fmt: skip
    return config


async def _restart(kubelet: RealKubelet, host: KdpProcess) -> str:
    """Start the killed host again; the socket it registered (the kubelet's event)."""
    before = await kubelet.acall(kubelet.last_seq)
    await host.start()
    await kubelet.acall(kubelet.registered_at, [FPGA], before)
    events = await kubelet.acall(kubelet.events, before)
    return next(e["plugin_socket"] for e in events if e["kind"] == "registered")


async def _p2_after_a_release(kubelet: RealKubelet, short_dir: Path) -> None:
    """p2 is handed fpga0, and its container started only after fpga0's release for p1 had
    run (PreStartContainer waits for an owed release): the old code owed none, and p2 got
    fpga0 as p1 left it."""
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"], second
    lines = release_lines(short_dir)
    assert [(line.split()[0], line.split()[-1]) for line in lines] == [
        ("fpga0", "start"),
        ("fpga0", "done"),
    ], lines


async def test_a_kill_between_the_answer_and_prestart_owes_the_release_after_a_restart(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process, tmp_path: Path
) -> None:
    """p1 is handed fpga0; kdp-host is killed once the kubelet recorded the answer, while
    its PreStartContainer waits for release-state.json. The kubelet retries the container's
    start (the harness drops a pod whose start failed, so the retried PreStartContainer is
    sent here by a client of the test, to the restarted host): nothing is owed (fpga0 was
    clean for p1). p1 ends; p2, handed fpga0 next, starts only after its release."""
    kubelet = real_kubelet_factory()
    host = await kdp_process(_config(kubelet, short_dir, devices, release_script(short_dir)))
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    await _killed_at_the_seam(kubelet, host, "p1")
    await _pre_start(kubelet.socket_dir / await _restart(kubelet, host), tmp_path)
    assert release_lines(short_dir) == []
    await kubelet.acall(kubelet.release, "p1")
    await _p2_after_a_release(kubelet, short_dir)


async def test_a_kill_while_release_state_is_stalled_owes_the_release_after_a_restart(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    """release-state.json's write stalls (its lock held, as a hung state directory would):
    p1's PreStartContainer answers after the write limit without it, p1's container runs on
    fpga0, kdp-host is killed (the write never landed). After the restart p1's container is
    restarted (its PreStartContainer answered by the restarted host), then p1 ends: p2,
    handed fpga0 next, starts only after its release."""
    kubelet = real_kubelet_factory()
    host = await kdp_process(_config(kubelet, short_dir, devices, release_script(short_dir)))
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    with write_held(short_dir / "state", STATE_FILE):
        first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
        assert first["error"] == "", first
        await host.stop()
    await _restart(kubelet, host)
    again = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})  # (no Allocate: restarted)
    assert again["error"] == "" and again["device_ids"][FPGA] == ["fpga0"], again
    assert release_lines(short_dir) == []
    assert (await kubelet.acall(kubelet.release, "p1"))["found"]
    await _p2_after_a_release(kubelet, short_dir)


async def test_a_kill_between_a_second_answer_and_prestart_releases_the_first_use(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process, tmp_path: Path
) -> None:
    """p1 used fpga0 and ended; p2 is handed fpga0 (its release for p1 owed, and started);
    kdp-host is killed mid-release, the kubelet having recorded the answer, before
    release-state.json took it. The restarted host's state says fpga0 used by p1's Allocate:
    the retried start of p2's container was refused for good (a node an earlier use was
    handed and no release since), where it must run the release and start."""
    kubelet = real_kubelet_factory()
    command = release_script(short_dir, sleep=2.0)
    host = await kdp_process(_config(kubelet, short_dir, devices, command))
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    assert (await kubelet.acall(kubelet.release, "p1"))["found"]
    await _killed_at_the_seam(kubelet, host, "p2")  # (its release runs 2 s: killed in it)
    await _pre_start(kubelet.socket_dir / await _restart(kubelet, host), tmp_path)
    assert host.logged("event=release_ok", "device=fpga0")(kubelet), release_lines(short_dir)
