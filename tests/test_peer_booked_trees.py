"""Issue 17, hostile23 F4: two hosts on one stateDir (a `maxSurge` rolling update renaming a
resource), through the kubelet's real device manager (tests/kubelet_harness.py). One host
serves the node `dev/fpga0` as example.com/a, the other the directory `grp/card0` (a glob
group member, mounted) that holds `n`, another node of fpga0's number. A pod that gets one
through its host reaches the other device's node: the other host holds that device (not
advertised) while the pod lives, as one host serving both names does, and advertises it
again once the pod ended. Before, the other host took the booking in but kept advertising the
device Healthy (/readyz ok) while refusing every Allocate of it: each pod sent there failed
admission. So too for a directory of example.com/a inside card0's tree (a tree a pod holds
mounted, inside another host's mounted directory)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import KdpProcess
from .kubelet_harness import RealKubelet, healthy
from .test_ownership_kubelet import booked_head

NODE, CARD = "example.com/a", "example.com/b"


def _both_live(kubelet: RealKubelet) -> bool:
    return healthy(NODE, 1)(kubelet) and healthy(CARD, 1)(kubelet)


def _unbooked(state: Path) -> Callable[[RealKubelet], bool]:
    def check(_: RealKubelet) -> bool:
        file = state / OWNERSHIP_FILE
        return file.exists() and not json.loads(file.read_text())["bookings"]

    return check


@pytest.mark.parametrize(
    ("inner", "first"), [("node", NODE), ("node", CARD), ("dir", NODE)], ids=["a", "b", "a-dir"]
)
async def test_a_device_reaching_another_hosts_booked_node_is_held_while_the_pod_lives(
    real_kubelet_factory, short_dir: Path, inner: str, first: str
) -> None:
    """p0 gets `first`'s device through its host: the other name's device (its tree holds
    the node, or its node is in the tree) goes unadvertised on the other host while p0
    lives, and p1 of that name is refused; once p0 ended, it is advertised again and p2 of
    that name gets it. `dir`: example.com/a is the directory `grp/card0/sub0` (a group
    member, mounted) instead of the node, inside card0's tree."""
    dev, card = short_dir / "dev", short_dir / "grp" / "card0"
    dev.mkdir()
    card.mkdir(parents=True)
    if inner == "node":
        try:
            for node in (dev / "fpga0", card / "n"):
                os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(240, 0))
        except PermissionError:
            pytest.skip("mknod needs CAP_MKNOD")
        held = f'glob: {{paths: ["{dev}/fpga*"]}}'
    else:
        (card / "sub0").mkdir()
        held = f"glob: {{group: [{{path: '{card}/sub{{key}}', mount: true}}]}}"
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    entries = {
        NODE: f"  - name: {NODE}\n    {held}\n",
        CARD: f"  - name: {CARD}\n    glob: {{group: [{{path: '{card.parent}/card{{key}}', "
        "mount: true}]}\n",
    }
    hosts = []
    for name, entry in entries.items():
        config = short_dir / f"{name.rsplit('/', 1)[1]}.yaml"
        config.write_text(booked_head(kubelet, short_dir) + entry)
        hosts.append(KdpProcess(config, short_dir / f"{config.stem}.log", fast=True))
    other = CARD if first == NODE else NODE
    try:
        for host in hosts:
            await host.start()
        await kubelet.await_for(_both_live, what="each host advertises its device", timeout=30)
        p0 = await kubelet.acall(kubelet.allocate, "p0", {first: 1})
        assert p0["error"] == "", p0
        await kubelet.await_for(
            healthy(other, 0), what=f"{other} held while p0 holds {first}", timeout=15
        )
        p1 = await kubelet.acall(kubelet.allocate, "p1", {other: 1})
        assert p1["error"] != "", f"p0 ({first}) and p1 ({other}) reach one node: {p1}"
        await kubelet.acall(kubelet.release, "p1")
        await kubelet.acall(kubelet.release, "p0")
        state = short_dir / "state"
        await kubelet.await_for(_unbooked(state), what="p0's booking ended", timeout=40)
        await kubelet.await_for(healthy(other, 1), what=f"{other} free once p0 ended", timeout=40)
        p2 = await kubelet.acall(kubelet.allocate, "p2", {other: 1})
        assert p2["error"] == "", p2
    finally:
        for host in hosts:
            await host.stop()
