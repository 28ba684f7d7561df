"""A device's node moved into an `allocate.mounts` source a running pod holds mounted, through
the kubelet's real device manager (v1.32, tests/kubelet_harness.py; issue 17, hostile24 F2).

Resource A (`d/a*`, gracePeriod 3 s) gives every pod the source `fw`; p1 holds one of A's
devices and `fw` (a file there, `blob`, that no device claims: shared by design). Then another
device's node is renamed into `fw` (`mv`): A's other free device (`whose=a`) or B's device
(`whose=b`). p1 reaches that node now; no new pod may be given it. Before, the moved device's
claim lapsed once PodResources showed no pod holding its ID (`heard_after` after it stopped
being claimed), and from then on every new pod of A was handed `fw` with the node in it (only
p1's booking of `fw` held it, and that one is exempt as the shared source). Now the claim
stays while the node is below `fw`, past the device's gracePeriod end (p1 has it: a pod
holding the tree keeps it, hostile26 N3): every answer mounting
`fw` is refused, and so A's devices are withheld (the need `mounts`: `source_clash`); once
the node is moved out again, A's pods are admitted again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import healthy

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

A = "vendor.example/a"
B = "vendor.example/b"


def polled_head(kubelet: Any, root: Path) -> str:
    """A config's head: the kubelet's PodResources polled every second, `root/state`."""
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
        f"stateDir: {root / 'state'}\nresources:\n"
    )


def source_config(kubelet: Any, root: Path, grace: str = "3s") -> str:
    """A (`d/a*`) mounts `fw` in every pod; B (`o/n*`) does not; gracePeriod 3 s."""
    return (
        polled_head(kubelet, root) + f"  - name: {A}\n"
        f'    glob: {{paths: ["{root}/d/a*"], gracePeriod: {grace}}}\n'
        f'    allocate: {{mounts: [{{hostPath: "{root}/fw", containerPath: /fw}}]}}\n'
        f"  - name: {B}\n"
        f'    glob: {{paths: ["{root}/o/n*"], gracePeriod: 3s}}\n'
    )


def admits(resource: str, pod: str = "p4") -> Callable[[Any], bool]:
    """Whether the kubelet admits `pod` asking one device of `resource` (asked at each look)."""
    return lambda kubelet: bool(kubelet.allocate(pod, {resource: 1})["error"] == "")


def capacity(resource: str, count: int) -> Any:
    """Whether the kubelet sees `resource` with `count` devices, healthy or not."""

    def check(kubelet: Any) -> bool:
        seen = kubelet.resource(resource)
        return seen is not None and seen["capacity"] == count

    return check


@pytest.mark.parametrize("whose", ["a", "b"])
async def test_a_node_moved_into_a_shared_source_goes_to_no_new_pod(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, whose: str
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    for directory in ("d", "o", "fw"):
        (root / directory).mkdir()
    (root / "fw" / "blob").write_text("firmware")
    for name in ("d/a0", "d/a1", "d/a2", "o/n0"):
        (root / name).touch()
    running = await start_host(source_config(kubelet, root))
    await kubelet.await_for(healthy(A, 3), what="A advertised")
    await kubelet.await_for(healthy(B, 1), what="B advertised")
    first = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
    assert first["error"] == "", first
    assert [m["HostPath"] for m in first["mounts"]] == [str(root / "fw")]

    held = first["devices"][0]["PathOnHost"]
    moved = [root / "o" / "n0"] if whose == "b" else [p for p in (root / "d").iterdir()]
    source = next(p for p in moved if str(p) != held)
    resource, left = (B, 0) if whose == "b" else (A, 2)
    os.rename(source, root / "fw" / source.name)  # (p1 reaches it now, through fw)
    gone = healthy(B, 0) if whose == "b" else healthy(A, 0)  # (A: every answer mounts fw)
    await kubelet.await_for(gone, what=f"{source.name} gone from its path")
    early = await kubelet.acall(kubelet.allocate, "p2", {A: 1})
    assert early["error"] != "", f"p2 was given fw with {source.name} in it: {early}"
    # past the moved device's gracePeriod (its device unlisted) and its `heard_after`
    await kubelet.await_for(capacity(resource, left), timeout=30, what="the device unlisted")
    late = await kubelet.acall(kubelet.allocate, "p3", {A: 1})
    assert late["error"] != "", f"p3 was given fw with {source.name} in it (p1 has it): {late}"
    await kubelet.await_for(healthy(A, 0), what="A withheld: every answer mounts fw")
    assert running.host.not_ready()[A] == "allocate.mounts source reaches another device's node"

    os.rename(root / "fw" / source.name, root / source.name)  # (out of fw: shared no more)

    await kubelet.await_for(admits(A), timeout=30, what="A admitted again without the node")
