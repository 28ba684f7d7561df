"""A device reachable at a booked path under a second name is held while the booking lives
(issue 17, hostile19 F9): p1 holds the device handed out at P; then P is made to reach
another device's identity while that device's own path stays (a hard link of its file, a
symlink to its directory; of another resource or of the same one). A restart of p1's
container opens P again (the kubelet hands it the answer it cached), so the other device
is held `place_booked` until P no longer reaches it or p1's booking ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

A = "vendor.example/a"
B = "vendor.example/b"


def _config(socket_dir: Path, root: Path, pod_resources: Path) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root / 'state'}\nresources:\n"
        f"  - name: {A}\n"
        f'    glob: {{group: [{{path: "{root}/a/{{key}}"}}], gracePeriod: 0s}}\n'
        f"  - name: {B}\n"
        f'    glob: {{group: [{{path: "{root}/b/{{key}}"}}], gracePeriod: 0s}}\n'
    )


@pytest.mark.parametrize(
    "how", ["file_link_other_resource", "file_link_same_resource", "dir_symlink_same_resource"]
)
async def test_a_device_reached_at_a_booked_path_under_a_second_name_is_held(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    how: str,
) -> None:
    """(A directory member that is a symlink out of its pattern's directory is never
    mounted: `unsafe_mount`; within it, a symlink to another member's directory.)"""
    kubelet, root = pod_resources_kubelet, short_dir
    a, b, aside = root / "a", root / "b", root / "aside"
    for directory in (a, b, aside):
        directory.mkdir()
    dirs, same = how.startswith("dir"), how.endswith("same_resource")
    (a / "0").mkdir() if dirs else (a / "0").touch()
    await start_host(_config(socket_dir, root, root / "pr"))
    resource = kubelet.resource
    await kubelet.wait_for(lambda: resource(A).healthy_ids == {"0"})
    first = await kubelet.allocate(A, 1, pod_uid="p1")
    assert first is not None
    place = a / "0"
    other, owner = (a / "1", A) if same else (b / "1", B)  # (plugged after p1's Allocate)
    if dirs:
        other.mkdir()
        (other / "f").touch()
    else:
        other.touch()
    await kubelet.wait_for(lambda: "1" in resource(owner).healthy_ids)

    place.rename(aside / "0")
    if dirs:
        os.symlink(other, place)
    else:
        os.link(other, place)
    # p1's cached answer names `place`, which reaches `other` now: `other` is not handed out
    await kubelet.wait_for(lambda: "1" not in resource(owner).healthy_ids, timeout=30)
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(owner, 1, pod_uid="p2")

    place.unlink()  # `place` reaches it no more: it is advertised again
    await kubelet.wait_for(lambda: "1" in resource(owner).healthy_ids, timeout=30)
    if dirs:
        os.symlink(other, place)
    else:
        os.link(other, place)
    await kubelet.wait_for(lambda: "1" not in resource(owner).healthy_ids, timeout=30)
    await kubelet.release("p1")  # p1's booking ends: one of the two names is advertised
    if owner == A:  # (one resource: the incumbent of the one file, "0" or "1")
        await kubelet.wait_for(lambda: len(resource(A).healthy_ids) == 1, timeout=30)
    else:
        await kubelet.wait_for(lambda: "1" in resource(B).healthy_ids, timeout=30)
