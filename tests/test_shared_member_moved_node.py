"""A device's node moved into what every device of a glob group shares, through the kubelet's
real device manager (v1.32, tests/kubelet_harness.py; issue 17, hostile24 F2 (b), (c)).

Resource A (`d/a*`, gracePeriod 3 s); resource C, a glob group of `g/card{key}` and a member
without `{key}` that every card passes: a directory mounted (`common`) or a node (`vfio`, the
`/dev/vfio/vfio` shape). A's node `a1` is renamed into `g/common/`, or over `g/vfio`. Before,
the moved device's claim lapsed once PodResources showed no pod holding its ID (`common`: C
was held that long, then every new pod of C was handed `common` with `a1` in it), or it was
released as gone at once (`vfio`: the new inode at the shared path was no one's, and every
new pod of C was handed `a1`'s node as `g/vfio`). Now the claim stays while the node sits
there and a1 may come back (within A's gracePeriod): C's devices, which would hand it to
every pod, are held. Once a1 is gone for good (unlisted past the grace), no pod holding it,
the claim ends as a restarted host knows none (hostile26 N3: `_still_listed`), and C's
pods are admitted again; so they are once the node is moved out (and a new shared node
made) within the grace. No pod holds C first (a tree a pod holds mounted keeps the claim:
`_pod_may_reach`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import healthy
from .test_shared_source_moved_node import admits, capacity, polled_head

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

A = "vendor.example/a"
C = "vendor.example/c"


def group_config(kubelet: Any, root: Path, member: str, grace: str = "3s") -> str:
    """A (`d/a*`, gracePeriod 3 s); C: `g/card{key}` with the shared `g/<member>`."""
    shared = f'{{path: "{root}/g/{member}"' + (", mount: true}" if member == "common" else "}")
    return (
        polled_head(kubelet, root) + f"  - name: {A}\n"
        f'    glob: {{paths: ["{root}/d/a*"], gracePeriod: {grace}}}\n'
        f"  - name: {C}\n"
        f'    glob: {{group: [{{path: "{root}/g/card{{key}}"}}, {shared}]}}\n'
    )


def group_tree(root: Path, member: str) -> Path:
    """A's `d/a0`, `d/a1`; C's `g/card0/n`, `g/card1/n` and the shared `g/<member>` (a
    directory with a file no device claims, or a file), which it returns."""
    for directory in ("d", "g", "g/card0", "g/card1"):
        (root / directory).mkdir()
    for name in ("d/a0", "d/a1", "g/card0/n", "g/card1/n"):
        (root / name).touch()
    shared = root / "g" / member
    if member == "common":
        shared.mkdir()
        (shared / "lib.so").touch()  # (no device claims it: shared by design)
    else:
        shared.touch()
    return shared


async def started_group(
    real_kubelet_factory: Any, root: Path, start_host: Any, member: str, grace: str = "3s"
) -> tuple[Any, Path, Any]:
    """The kubelet and a host of `group_config` on `group_tree` (A and C advertised), the
    shared member's path, and the running host."""
    kubelet = real_kubelet_factory(pod_resources_dir=root / "pr")
    shared = group_tree(root, member)
    running = await start_host(group_config(kubelet, root, member, grace))
    await kubelet.await_for(healthy(A, 2), what="A advertised")
    await kubelet.await_for(healthy(C, 2), what="C advertised")
    return kubelet, shared, running


@pytest.mark.parametrize("out", ["moved_out", "gone_for_good"])
@pytest.mark.parametrize("member", ["common", "vfio"])
async def test_a_node_moved_into_a_shared_member_goes_to_no_pod(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, member: str, out: str
) -> None:
    root = short_dir
    kubelet, shared, _ = await started_group(real_kubelet_factory, root, start_host, member)

    there = shared / "a1" if member == "common" else shared
    os.rename(root / "d" / "a1", there)
    await kubelet.await_for(healthy(A, 1), what="a1 gone from its path")
    await kubelet.await_for(healthy(C, 0), what="C held: every card hands out a1's node")
    for pod in ("q1", "q2"):
        early = await kubelet.acall(kubelet.allocate, pod, {C: 1})
        assert early["error"] != "", f"{pod} was given {shared} with a1's node: {early}"

    if out == "gone_for_good":  # (past a1's gracePeriod, unlisted: as after a restart)
        await kubelet.await_for(capacity(A, 1), timeout=30, what="a1 unlisted")
    else:
        os.rename(there, root / "a1")  # (out of the shared member)
        if member == "vfio":
            shared.touch()  # (a new shared node no device claims)

    await kubelet.await_for(admits(C), timeout=30, what="C admitted again")
