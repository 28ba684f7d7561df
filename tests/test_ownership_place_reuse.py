"""The place a pod's answer names stays that pod's while its booking lives (issue 17,
hostile7 F3): one glob resource, p1 holds n0 (its answer names the host path P = .../n0);
then another device's file comes to sit at P, renamed there (`mv n1 n0`) or made anew there
with the inode number n1 had (ext4 reuses a freed inode: the scan takes it for "n1 renamed
to n0"). kdp-host keeps n1's ID (a rename keeps the ID), so advertising it would give a
second pod an answer naming P: p1's container restart (the runtime resolves P again with the
kubelet's cached answer), p1's preStart and p1's release would all reach p2's device. It is
held (`place_booked`) until p1's booking ends, then advertised."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdp_host import (
    identity,
    ownership_canonical,
    ownership_claims,
    ownership_hand_out,
    ownership_reads,
)
from kdp_host.drivers import glob_paths
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

from .conftest import FAST
from .kubelet_harness import healthy

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

FPGA = "vendor.example/fpga"
OTHER = "vendor.example/other"


def _config(socket_dir: Path, dev: Path, state: Path, pod_resources: Path) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nresources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{dev}/n*"], gracePeriod: 0s}}\n'
    )


class _Reuse:
    """The identity seam of the glob scan and the ownership index (`identity_of`): a file
    named here is taken for the file that had `old`'s inode number (what ext4 does when
    it hands a freed inode number to a file made next)."""

    def __init__(self) -> None:
        self.as_if: dict[tuple[int, int], identity.Identity] = {}
        self.real = identity.identity_of

    def __call__(self, st: os.stat_result) -> identity.Identity:
        found = self.as_if.get((st.st_dev, st.st_ino))
        return found if found is not None else self.real(st)

    def reuse(self, new: Path, old: identity.Identity) -> None:
        st = new.stat()
        self.as_if[(st.st_dev, st.st_ino)] = old


@pytest.fixture
def reuse(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Reuse]:
    seam = _Reuse()
    modules = (identity, glob_paths, ownership_claims, ownership_canonical, ownership_reads)
    for module in (*modules, ownership_hand_out):  # (`handed_real`)
        monkeypatch.setattr(module, "identity_of", seam, raising=False)
    yield seam


def _move_in(dev: Path, how: str, reuse: _Reuse) -> None:
    """n1's file comes to sit at n0's path; n0's file is gone."""
    n0, n1 = dev / "n0", dev / "n1"
    if how == "rename":
        n1.rename(n0)  # (replaces n0)
        return
    made = dev.parent / "made"  # (made outside the scanned directory, then put there)
    made.touch()
    reuse.reuse(made, identity.identity_of(n1.stat()))
    n0.unlink()
    # n1 leaves the scan as if deleted; its inode stays taken (were it freed, the
    # filesystem could give that number to another file, which would then be "n1" too)
    n1.rename(dev.parent / "kept")
    made.rename(n0)


@pytest.mark.parametrize("how", ["rename", "inode_reuse"])
async def test_a_file_that_comes_to_sit_at_a_booked_path_is_held_while_the_booking_lives(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    reuse: _Reuse,
    how: str,
) -> None:
    kubelet = pod_resources_kubelet
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "n0").touch()
    running = await start_host(_config(socket_dir, dev, short_dir / "state", short_dir / "pr"))
    resource = kubelet.resource
    await kubelet.wait_for(lambda: resource(FPGA).healthy_ids == {"n0"})
    first = await kubelet.allocate(FPGA, 1, pod_uid="p1")
    assert first is not None
    place = str(dev / "n0")
    assert [d.host_path for d in first.devices] == [place]
    (dev / "n1").touch()
    await kubelet.wait_for(lambda: resource(FPGA).healthy_ids == {"n0", "n1"})

    _move_in(dev, how, reuse)
    await kubelet.wait_for(lambda: not resource(FPGA).healthy_ids)  # n1 held
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(FPGA, 1, pod_uid="p2")
    skipped = running.metrics.registry.get_sample_value(
        "kdp_driver_skipped_total", {"resource": FPGA, "reason": "node_owned"}
    )
    assert skipped == 1.0

    await kubelet.release("p1")  # p1's booking ends: the place is free again
    await kubelet.wait_for(lambda: resource(FPGA).healthy_ids == {"n1"}, timeout=30)
    second = await kubelet.allocate(FPGA, 1, pod_uid="p3")
    assert second is not None and [d.host_path for d in second.devices] == [place]


async def test_a_booked_device_made_anew_at_its_own_path_keeps_its_id_and_is_not_held(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """The same ID's device made anew (a hot-plug: another inode at the same path) is
    still that ID's: the kubelet keeps it for p1, nothing else is held."""
    kubelet = pod_resources_kubelet
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "n0").touch()
    await start_host(_config(socket_dir, dev, short_dir / "state", short_dir / "pr"))
    resource = kubelet.resource
    await kubelet.wait_for(lambda: resource(FPGA).healthy_ids == {"n0"})
    assert await kubelet.allocate(FPGA, 1, pod_uid="p1") is not None
    (dev / "n0").unlink()
    await kubelet.wait_for(lambda: "n0" not in resource(FPGA).healthy_ids)
    (dev / "n0").touch()
    await kubelet.wait_for(lambda: resource(FPGA).healthy_ids == {"n0"})
    assert resource(FPGA).allocated_ids == {"n0"}


async def test_through_the_real_kubelet_a_file_renamed_onto_a_booked_path_is_held(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """hostile7 t12 (MODE=file): the same through the kubelet's device manager (v1.32)."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "n0").touch()
    await start_host(_config(kubelet.socket_dir, dev, short_dir / "state", pod_resources))
    await kubelet.await_for(healthy(FPGA, 1), what="n0 advertised")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == "", first
    (dev / "n1").touch()
    await kubelet.await_for(healthy(FPGA, 2), what="n1 advertised besides n0 held by p1")
    (dev / "n1").rename(dev / "n0")
    await kubelet.await_for(healthy(FPGA, 0), what="n1 held at p1's place")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] != "", "p2 was handed p1's place"

    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(FPGA, 1), timeout=60, what="n1 once p1 is gone")
    third = await kubelet.acall(kubelet.allocate, "p3", {FPGA: 1})
    assert third["error"] == "", third
    assert {d["PathOnHost"] for d in third["devices"]} == {str(dev / "n0")}


async def test_through_the_real_kubelet_a_pod_gone_at_once_frees_the_place_it_was_handed(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """The same, p1 gone within `allocation_settle` of its Allocate, no PodResources answer
    having shown it, and the kubelet's checkpoint written meanwhile without it (here another
    pod's Allocate; in CI the write of the list that held n1, which the release overtook):
    too soon to count, and the kubelet writes none unasked. kdp-host asks for a write and
    ends p1's booking on it; it held n0's ID, and so n1, for ever (CI failed on the test
    above so)."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    dev, other = short_dir / "dev", short_dir / "other"
    dev.mkdir()
    other.mkdir()
    (dev / "n0").touch()
    (other / "o0").touch()
    text = _config(kubelet.socket_dir, dev, short_dir / "state", pod_resources)
    text += f'  - name: {OTHER}\n    glob: {{paths: ["{other}/o*"], gracePeriod: 0s}}\n'
    # (a window wide enough for the steps up to p3's Allocate; the others kept after it)
    timings = dataclasses.replace(FAST, allocation_settle=2.0, gone_after=2.5, heard_after=3.0)
    await start_host(text, timings=timings)
    await kubelet.await_for(healthy(FPGA, 1), what="n0 advertised")
    await kubelet.await_for(healthy(OTHER, 1), what="o0 advertised")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    (dev / "n1").touch()
    await kubelet.await_for(healthy(FPGA, 2), what="n1 advertised besides n0 held by p1")
    (dev / "n1").rename(dev / "n0")
    await kubelet.await_for(healthy(FPGA, 0), what="n1 held at p1's place")
    await kubelet.acall(kubelet.release, "p1")
    # the kubelet writes its checkpoint at this Allocate, without p1
    assert (await kubelet.acall(kubelet.allocate, "p3", {OTHER: 1}))["error"] == ""
    await kubelet.await_for(healthy(FPGA, 1), timeout=60, what="n1 once p1 is gone")
