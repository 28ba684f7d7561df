"""The release of a use resets the node that use was handed (its identity), wherever the
driver lists it now (issue 17, hostile20 F5): p1 holds n0; a driver reload swaps the two
cards' nodes (n0's path reaches n1's node now, n1's path the node p1 used); p1 ends. The
release was refused for ever (`place_changed`: the path handed out reaches another device
now), while the node p1 used was listed at n1's path, held for the owed release: both cards
out of service. It runs on that node at its path now, and both cards come back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

R1 = "vendor.example/one"


def _config(socket_dir: Path, root: Path, log: Path) -> str:
    hook = f'[sh, -c, "echo {{ids}} {{hostPaths}} >> {log}"]'
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{root}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root}/state\nresources:\n"
        f"  - name: {R1}\n"
        f'    glob: {{paths: ["{root}/a/n*"], gracePeriod: 0s}}\n'
        f"    release: {{command: {hook}}}\n"
    )


def _runs(running: Any, result: str) -> float:
    found = running.metrics.registry.get_sample_value(
        "kdp_release_runs_total", {"resource": R1, "result": result}
    )
    return found or 0.0


async def test_a_release_runs_on_the_node_handed_out_where_a_reload_lists_it_now(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    kubelet, a, log = pod_resources_kubelet, short_dir / "a", short_dir / "hooks.log"
    a.mkdir()
    (a / "n0").touch()
    (a / "n1").touch()
    running = await start_host(_config(socket_dir, short_dir, log))
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0", "n1"})
    answer = await kubelet.allocate(R1, 1, pod_uid="p1")
    assert answer is not None
    mine = Path(answer.devices[0].host_path)
    other, used = a / ({"n0": "n1", "n1": "n0"}[mine.name]), mine.stat().st_ino
    # the reload: each path reaches the other card's node now (the same files, swapped)
    os.rename(mine, a / "swap")
    os.rename(other, mine)
    os.rename(a / "swap", other)
    assert other.stat().st_ino == used
    await wait_until(
        lambda: other.name not in kubelet.resource(R1).healthy_ids, timeout=60, what="held"
    )
    await kubelet.release("p1")
    await wait_until(
        lambda: _runs(running, "ok") >= 1 or _runs(running, "place_changed") >= 3,
        timeout=60,
        what="the release of p1's use tried",
    )
    assert _runs(running, "ok") == 1, "the release was refused: both cards stay out"
    assert log.read_text().split() == [mine.name, str(other)]  # (p1's node, there now)
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0", "n1"})
