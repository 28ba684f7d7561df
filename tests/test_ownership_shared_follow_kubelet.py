"""A tree pods hold through a shared claim is followed, through the kubelet's real device
manager (v1.32, tests/kubelet_harness.py; issue 17, hostile21 F1, F5).

Resource GROUP is a glob group: each device is `g/<key>_u` and the key-less directory `fw`,
which every pod of it gets mounted (shared). Two pods hold GROUP's two devices (the second
sharer of `fw` is admitted). Then, while they hold `fw` mounted:
- F1: NODE's free node is hard-linked into `fw` (`ln`): both pods reach it. Before, NODE's
  device stayed advertised and went to a third pod; now it is held and the kubelet has none.
- F5: `fw` is renamed (`mv`, the pods' bind mounts follow it) into `c/1`, the directory
  DIR's device claims alone: a pod given it would reach what they reach. Before, it went to a
  third pod; now it is held. Both are advertised again once the pods are gone (and the
  link removed: fw, which GROUP's devices share, holds n0 while it is there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import healthy
from .test_shared_source_moved_node import polled_head

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

GROUP = "vendor.example/group"
NODE = "vendor.example/node"
DIR = "vendor.example/dir"


def _config(kubelet: Any, root: Path) -> str:
    return (
        polled_head(kubelet, root)
        + f"  - name: {GROUP}\n    glob:\n      gracePeriod: 0s\n      group:\n"
        f'        - {{path: "{root}/g/{{key}}_u"}}\n'
        f'        - {{path: "{root}/fw", containerPath: /fw}}\n'
        f"  - name: {NODE}\n"
        f'    glob: {{paths: ["{root}/b/n*"], gracePeriod: 0s}}\n'
        f"  - name: {DIR}\n"
        f'    glob: {{group: [{{path: "{root}/c/{{key}}", containerPath: "/c/{{key}}"}}], '
        "gracePeriod: 0s}\n"
    )


@pytest.mark.parametrize("how", ["ln_into_fw", "mv_fw_into_c1"])
async def test_a_tree_pods_hold_shared_is_followed(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, how: str
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    for directory in ("g", "b", "c/1", "fw"):
        (root / directory).mkdir(parents=True)
    (root / "fw" / "blob").touch()
    for name in ("g/1_u", "g/2_u", "b/n0"):
        (root / name).touch()
    await start_host(_config(kubelet, root))
    for resource in (GROUP, NODE, DIR):
        count = 2 if resource == GROUP else 1
        await kubelet.await_for(healthy(resource, count), what=f"{resource} advertised")
    for pod in ("p1", "p2"):  # (the second sharer of fw is admitted)
        answer = await kubelet.acall(kubelet.allocate, pod, {GROUP: 1})
        assert answer["error"] == "", answer
        assert [m["HostPath"] for m in answer["mounts"]] == [str(root / "fw")]

    if how == "ln_into_fw":
        os.link(root / "b" / "n0", root / "fw" / "evil")
        taken = NODE
    else:
        os.rename(root / "fw", root / "c" / "1" / "fw")
        taken = DIR
    await kubelet.await_for(healthy(taken, 0), what=f"{taken} held: p1 and p2 reach it")
    third = await kubelet.acall(kubelet.allocate, "p3", {taken: 1})
    assert third["error"] != "", f"a third pod got what p1 and p2 reach: {third}"

    for pod in ("p1", "p2"):
        await kubelet.acall(kubelet.release, pod)
    if how == "ln_into_fw":  # (while the link is there, fw holds n0: GROUP shares fw)
        (root / "fw" / "evil").unlink()
    await kubelet.await_for(healthy(taken, 1), timeout=60, what=f"{taken} free again")
