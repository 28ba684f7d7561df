"""A listed device's node that reaches what every pod of a resource is handed by a detour,
through the kubelet's real device manager (v1.32, tests/kubelet_harness.py; issue 17,
hostile26 N2).

A's node `a1` leaves its path for a place nothing follows (`away/`), so `a1` is listed
missing (Unhealthy, its gracePeriod running, no pod holding it), then comes into A's
`allocate.mounts` source `fw`: moved in, or a directory holding it moved in, or `fw` swapped
for an empty directory while it held the node and swapped back, or a hard link made there;
or into what every device of C's glob group shares (the member without `{key}`: a directory
mounted, or a node renamed over), or into a group device's own mounted directory. Before,
the claim was released as gone while the node was in the unfollowed place, and back in the
source it was a file no device claims: every new pod was handed it. Now a listed missing
device's identity stays its claim wherever it is seen again: A is withheld (or C's devices
held) while the node is there, and once `a1` is found again as itself at its path, every pod
is admitted again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import healthy
from .test_shared_member_moved_node import C, started_group
from .test_shared_source_moved_node import A, admits, polled_head, source_config

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

GRACE = "60s"
"""Longer than every case: `a1` stays listed missing throughout."""


@pytest.mark.parametrize("how", ["out_then_in", "via_sub", "swap_dir", "hardlink"])
async def test_a_missing_devices_node_back_in_a_source_by_a_detour_goes_to_no_pod(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, how: str
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root, fw, away = short_dir, short_dir / "fw", short_dir / "away"
    for directory in ("d", "o", "fw", "away", "away/sub"):
        (root / directory).mkdir()
    (fw / "blob").write_text("firmware")  # (no device claims it: shared by design)
    for name in ("d/a0", "d/a1", "d/a2"):
        (root / name).touch()
    running = await start_host(source_config(kubelet, root, grace=GRACE))
    await kubelet.await_for(healthy(A, 3), what="A advertised")

    node = root / "d" / "a1"
    if how == "swap_dir":  # (in fw: withheld; fw swapped for an empty one: back; swapped back)
        os.rename(node, fw / "a1")
        await kubelet.await_for(healthy(A, 0), what="A withheld: a1's node in fw")
        os.rename(fw, root / "fw.old")
        fw.mkdir()
        await kubelet.await_for(healthy(A, 2), what="A back: fw holds no node")
        await running.host.ownership.quiet()  # (settled: its claim was released here before)
        fw.rmdir()
        os.rename(root / "fw.old", fw)
        there = fw / "a1"
    else:
        if how == "hardlink":
            os.link(node, away / "a1")
            node.unlink()
        else:
            os.rename(node, away / "sub" / "a1" if how == "via_sub" else away / "a1")
        await kubelet.await_for(healthy(A, 2), what="a1 missing (in a place nothing follows)")
        await running.host.ownership.quiet()  # (settled: its claim was released here before)
        if how == "hardlink":
            os.link(away / "a1", fw / "a1")
            there = fw / "a1"
        elif how == "via_sub":
            os.rename(away / "sub", fw / "sub")
            there = fw / "sub" / "a1"
        else:
            os.rename(away / "a1", fw / "a1")
            there = fw / "a1"

    await kubelet.await_for(healthy(A, 0), what="A withheld: a1's node in fw again")
    refused = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
    assert refused["error"] != "", f"p1 was given fw with a1's node in it: {refused}"
    assert running.host.not_ready()[A] == "allocate.mounts source reaches another device's node"

    os.rename(there, node)  # (found again as itself, at its path)

    await kubelet.await_for(healthy(A, 3), timeout=30, what="a1 found again, A back")
    await kubelet.await_for(admits(A), timeout=30, what="A admitted again")


@pytest.mark.parametrize("member", ["common", "vfio"])
async def test_a_missing_devices_node_into_a_shared_member_by_a_detour_goes_to_no_pod(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, member: str
) -> None:
    root = short_dir
    kubelet, shared, running = await started_group(
        real_kubelet_factory, root, start_host, member, GRACE
    )
    (root / "away").mkdir()

    os.rename(root / "d" / "a1", root / "away" / "a1")
    await kubelet.await_for(healthy(A, 1), what="a1 missing (in a place nothing follows)")
    await running.host.ownership.quiet()  # (settled: its claim was released here before)
    there = shared / "a1" if member == "common" else shared
    os.rename(root / "away" / "a1", there)

    await kubelet.await_for(healthy(C, 0), what="C held: every card would hand out a1's node")
    refused = await kubelet.acall(kubelet.allocate, "q1", {C: 1})
    assert refused["error"] != "", f"q1 was given {shared} with a1's node: {refused}"

    os.rename(there, root / "d" / "a1")  # (found again as itself, at its path)
    if member == "vfio":
        shared.touch()  # (a new shared node no device claims)

    await kubelet.await_for(healthy(A, 2), timeout=30, what="a1 found again")
    await kubelet.await_for(admits(C), timeout=30, what="C admitted again without the node")


@pytest.mark.parametrize("held_first", [False, True], ids=["free", "held_by_a_pod_first"])
async def test_a_missing_devices_node_into_a_devices_own_directory_by_a_detour(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, held_first: bool
) -> None:
    """C's devices are directories (`g/card{key}`, mounted); `a1` comes into `card0` by way of
    `away/` (a pod holding both cards first, ended after the move: the tree it held). Before,
    every later pod given card0 was handed a1's node in it; now card0 is held meanwhile."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    for directory in ("d", "away", "g", "g/card0", "g/card1"):
        (root / directory).mkdir()
    for name in ("d/a0", "d/a1", "g/card0/data", "g/card1/data"):
        (root / name).touch()
    running = await start_host(
        polled_head(kubelet, root) + f"  - name: {A}\n"
        f'    glob: {{paths: ["{root}/d/a*"], gracePeriod: {GRACE}}}\n'
        f"  - name: {C}\n"
        f'    glob: {{group: [{{path: "{root}/g/card{{key}}", mount: true}}]}}\n'
    )
    await kubelet.await_for(healthy(C, 2), what="C advertised")
    if held_first:
        held = await kubelet.acall(kubelet.allocate, "p1", {C: 2})
        assert held["error"] == "", held

    os.rename(root / "d" / "a1", root / "away" / "a1")
    await kubelet.await_for(healthy(A, 1), what="a1 missing (in a place nothing follows)")
    await running.host.ownership.quiet()  # (settled: its claim was released here before)
    os.rename(root / "away" / "a1", root / "g" / "card0" / "a1")
    if held_first:
        await kubelet.acall(kubelet.release, "p1")

    await kubelet.await_for(healthy(C, 1), what="card0 held: it would hand out a1's node")
    for pod in ("q1", "q2"):
        answer = await kubelet.acall(kubelet.allocate, pod, {C: 1})
        given = {mount["HostPath"] for mount in answer["mounts"] or ()}
        assert str(root / "g" / "card0") not in given, f"{pod} was given a1's node: {answer}"
