"""A probe that renames a device on the same node (issue 17 M3), through the simulator's
kubelet and its PodResources server: the device keeps its old ID only while a booking of
that ID holds its node (a pod has it under that ID); else, and once that booking ends, it
is advertised under the ID it is reported under, and the old ID is free for whatever device
reports it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

FPGA = "vendor.example/fpga"
WAIT = 30.0


@pytest.fixture
def sim(pod_resources_kubelet: KubeletSimulator) -> KubeletSimulator:
    return pod_resources_kubelet


def probe_list(listing: Path, devices: dict[str, Path]) -> None:
    """What the probe prints from now on (written whole: the probe never reads half)."""
    document = [{"id": name, "paths": [str(path)]} for name, path in devices.items()]
    temporary = listing.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, listing)


async def start(
    start_host: Callable[..., Any], sim: KubeletSimulator, short_dir: Path, listing: Path
) -> Any:
    return await start_host(
        f"kubelet: {{socketDir: {sim.socket_dir}, "
        f"podResourcesSocket: {short_dir}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"resources:\n  - name: {FPGA}\n"
        f'    shell: {{command: [sh, -c, "cat {listing}; echo >> {listing}.runs"],'
        " format: json, interval: 100ms}\n"
    )


async def listed_again(listing: Path) -> None:
    """Return once a run that started after now has been admitted (each run appends a line
    to `.runs` after printing; runs follow one another)."""
    runs = listing.with_suffix(".json.runs")
    seen = runs.read_text().count("\n") if runs.exists() else 0
    await wait_until(lambda: runs.read_text().count("\n") >= seen + 3, WAIT, "runs")


def healthy(sim: KubeletSimulator) -> set[str]:
    return set(sim.resource(FPGA).healthy_ids)


def nodes(running: Any) -> dict[str, str]:
    """Advertised ID -> its node, as the resource's table has it."""
    table = running.host.resources[FPGA].table
    return {d.id: os.path.basename(d.nodes[0].host_path) for d in table.snapshot.devices}


async def test_a_renamed_device_no_pod_holds_takes_its_new_id_and_frees_the_old_one(
    sim: KubeletSimulator, short_dir: Path, devices: Path, start_host: Callable[..., Any]
) -> None:
    """The probe now calls fpga0 `new` and reports fpga1 as `old`: nothing booked `old`, so
    the kubelet sees `new` (fpga0) and `old` (fpga1). Before, fpga0 stayed `old` for as long
    as it was listed and fpga1 was held as `id_taken`."""
    listing = short_dir / "list.json"
    probe_list(listing, {"old": devices / "fpga0"})
    running = await start(start_host, sim, short_dir, listing)
    await sim.wait_for(lambda: healthy(sim) == {"old"}, WAIT)

    probe_list(listing, {"new": devices / "fpga0"})
    await sim.wait_for(lambda: healthy(sim) == {"new"}, WAIT, description="its new ID")
    assert nodes(running) == {"new": "fpga0"}

    probe_list(listing, {"new": devices / "fpga0", "old": devices / "fpga1"})
    await sim.wait_for(lambda: healthy(sim) == {"new", "old"}, WAIT, description="old reused")
    assert nodes(running) == {"new": "fpga0", "old": "fpga1"}


async def test_a_renamed_device_a_pod_holds_keeps_the_booked_id_until_the_pod_ends(
    sim: KubeletSimulator,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pod holds `old` (fpga0) when the probe renames it: fpga0 stays `old` (the kubelet
    must not hand it out again as `new`) and the device now reported as `old` (fpga1) waits
    (`id_taken`). The pod ends: PodResources shows it, the booking goes, and fpga0 moves to
    `new` and fpga1 gets `old`, with no new list needed (the probe prints the same)."""
    listing = short_dir / "list.json"
    probe_list(listing, {"old": devices / "fpga0"})
    running = await start(start_host, sim, short_dir, listing)
    await sim.wait_for(lambda: healthy(sim) == {"old"}, WAIT)
    response = await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker")
    assert response is not None
    assert running.host.ownership.is_booked(FPGA, "old")

    probe_list(listing, {"new": devices / "fpga0", "old": devices / "fpga1"})
    skipped = running.metrics.registry.get_sample_value
    labels = {"resource": FPGA, "reason": "node_owned"}
    with caplog.at_level("WARNING", logger="kdp_host"):
        await wait_until(lambda: skipped("kdp_driver_skipped_total", labels), WAIT, "held")
    [held] = [r for r in caplog.records if r.getMessage() == "device_held"]
    fields = getattr(held, "kdp_fields", {})
    assert (fields.get("device"), fields.get("reason")) == ("old", "id_taken")
    assert "PodResources" in fields.get("action", ""), "what ends it: the pod"
    assert healthy(sim) == {"old"}
    assert nodes(running) == {"old": "fpga0"}, "the pod's node stays under its booked ID"

    await sim.release("train-7")
    await sim.wait_for(lambda: healthy(sim) == {"new", "old"}, WAIT, description="moved")
    assert nodes(running) == {"new": "fpga0", "old": "fpga1"}
    assert not running.host.ownership.is_booked(FPGA, "old")


async def test_the_end_of_a_booking_moves_a_renamed_device_with_no_new_list(
    sim: KubeletSimulator, short_dir: Path, devices: Path, start_host: Callable[..., Any]
) -> None:
    """Nothing is held and the probe prints the same list on every run (nothing to admit
    again): the PodResources answer that ends the booking is what moves fpga0 to `new`."""
    listing = short_dir / "list.json"
    probe_list(listing, {"old": devices / "fpga0"})
    running = await start(start_host, sim, short_dir, listing)
    await sim.wait_for(lambda: healthy(sim) == {"old"}, WAIT)
    assert await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker") is not None
    probe_list(listing, {"new": devices / "fpga0"})
    await listed_again(listing)
    assert healthy(sim) == {"old"}
    assert nodes(running) == {"old": "fpga0"}, "the pod's node stays under its booked ID"
    await sim.release("train-7")
    await sim.wait_for(lambda: healthy(sim) == {"new"}, WAIT, description="moved")
    assert nodes(running) == {"new": "fpga0"}
