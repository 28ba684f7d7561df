"""A release or a preStart acts only on what was handed out (issue 17, hostile7 F3/t12b,
t18): p1 holds n0 of R1 (its answer names P = .../a/n0), p2 holds m0 of R2; n0's file goes
and a hard link of m0's file is made at P. R1's device at P is held (m0 owns that file),
but p1's cached answer still names P: p1's release, and the preStart of p1's container
restart, would act on p2's device. They are not run (`place_changed`, counted, logged) while
P reaches another device; the release runs once P reaches nothing of another's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .fake_nodes import FakeNodes, indexed, node
from .release_setup import R1, R2, release_config

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)


def _runs(running: Any, family: str, result: str) -> float:
    found = running.metrics.registry.get_sample_value(family, {"resource": R1, "result": result})
    return found or 0.0


async def test_release_and_pre_start_do_not_act_on_another_pods_device_at_the_path_handed_out(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    kubelet = pod_resources_kubelet
    a, b, log = short_dir / "a", short_dir / "b", short_dir / "hooks.log"
    a.mkdir()
    b.mkdir()
    (a / "n0").touch()
    (b / "m0").touch()
    running = await start_host(
        release_config(socket_dir, short_dir, log, pre_start=True, second=True)
    )
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0"})
    await kubelet.wait_for(lambda: kubelet.resource(R2).healthy_ids == {"m0"})
    place = str(a / "n0")
    first = await kubelet.allocate(R1, 1, pod_uid="p1")  # (its preStart runs: one line)
    assert first is not None and [d.host_path for d in first.devices] == [place]
    assert await kubelet.allocate(R2, 1, pod_uid="p2") is not None
    assert log.read_text().splitlines() == [f"n0 {place}"]

    (a / "n0").unlink()
    (a / "n0").hardlink_to(b / "m0")  # p2's file, at the path p1's answer names
    await kubelet.wait_for(lambda: not kubelet.resource(R1).healthy_ids)  # held: m0 owns it

    with pytest.raises(SimulatorAllocationError, match="reaches another device"):
        await kubelet.pre_start_container("p1", "c0", R1)  # p1's container restarts
    assert _runs(running, "kdp_pre_start_calls_total", "place_changed") == 1.0

    await kubelet.release("p1")
    await wait_until(
        lambda: _runs(running, "kdp_release_runs_total", "place_changed") >= 1,
        what="the release of n0 refused to act on p2's file",
    )
    assert log.read_text().splitlines() == [f"n0 {place}"], "a hook acted on p2's device"

    (a / "n0").unlink()  # the link goes: nothing of another's is at P any more
    await wait_until(
        lambda: _runs(running, "kdp_release_runs_total", "ok") >= 1,
        timeout=60,
        what="the release retried and run",
    )
    assert log.read_text().splitlines() == [f"n0 {place}"] * 2


async def test_changed_places_passes_what_was_handed_out_the_ids_own_device_and_nothing() -> None:
    """`OwnershipIndex.changed_places`, what a release and a preStart ask before acting: a
    path passes where it reaches what the booking of one of the IDs holds, a claim only
    those IDs own (the ID's device made anew there), or nothing; it fails where it reaches
    another device's claim, what no device owns, or does not answer."""
    watcher = ManualWatcher()
    nodes = FakeNodes({"/d/n0": ("c", 1), "/d/m0": ("c", 2)}, nothing=True)
    index, _ = await indexed({R1: [node("/d/n0")], R2: [node("/d/m0")]}, nodes, watcher=watcher)
    await index.book(R1, ["n0"])
    assert await index.changed_places(R1, ["n0"], ["/d/n0", "/d/gone"]) == {}
    nodes.nodes["/d/n0"] = ("c", 3)  # n0 made anew with another number: n0's own once claimed
    watcher.change("/d", "n0")
    await asyncio.sleep(0)  # (the recheck starts in the next turn of the loop)
    await index.quiet()
    assert await index.changed_places(R1, ["n0"], ["/d/n0"]) == {}
    nodes.nodes["/d/n0"] = ("c", 2)  # m0's node, at the path n0 was handed out at
    assert await index.changed_places(R1, ["n0"], ["/d/n0"]) == {
        "/d/n0": f"/d/n0 is device m0 of {R2}"
    }
    nodes.nodes["/d/n0"] = ("c", 9)  # a node no device owns
    assert await index.changed_places(R1, ["n0"], ["/d/n0"]) == {
        "/d/n0": "/d/n0 is not what was handed out"
    }
