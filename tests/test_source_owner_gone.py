"""A node of a device gone for good, left below an `allocate.mounts` source, through the
kubelet's real device manager (v1.32, tests/kubelet_harness.py; issue 17, hostile26 N3).

Resource A (`d/a*`) gives every pod the source `fw`; B's node `o/n0` is renamed into `fw`:
A is withheld (every answer mounting `fw` would hand out B's node, `source_clash`), right
while B may list n0 again. Then B is removed by a reload, or n0 stays missing past B's
gracePeriod. Before, A stayed withheld for good (the need line naming a device of a
resource that no longer existed) while a restarted host, which knows no claim of a node
that left its device's path, admitted A at once. Now the claim ends as the restart ends it
(`ownership_lingering._still_listed`), once PodResources shows no pod holding n0: A is
admitted again, with `fw` and the node in it. A pod that holds n0 keeps its claim, and A
withheld, for as long as it holds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import wait_until
from .kubelet_harness import healthy
from .test_shared_source_moved_node import A, B, admits, capacity, source_config

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

REASON = "allocate.mounts source reaches another device's node"


def _tree(root: Path) -> None:
    for directory in ("d", "o", "fw"):
        (root / directory).mkdir()
    for name in ("d/a0", "d/a1", "o/n0"):
        (root / name).touch()


async def _polls(running: Any, more: int) -> None:
    """Until `more` PodResources answers came (past `heard_after`: FAST polls 4 a second)."""
    polls = running.sample("kdp_pod_resources_polls_total", result="ok")
    await wait_until(
        lambda: running.sample("kdp_pod_resources_polls_total", result="ok") >= polls + more,
        what=f"{more} PodResources answers",
    )


@pytest.mark.parametrize("gone", ["reload_removes_b", "past_b_grace"])
async def test_a_source_node_of_a_device_gone_for_good_withholds_no_more(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, gone: str
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    _tree(root)
    config = root / "kdp.yaml"
    config.write_text(source_config(kubelet, root))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(A, 2), what="A advertised")
    await kubelet.await_for(healthy(B, 1), what="B advertised")

    os.rename(root / "o" / "n0", root / "fw" / "n0")
    await kubelet.await_for(healthy(A, 0), what="A withheld: every answer hands out n0")
    assert running.host.not_ready()[A] == REASON
    if gone == "reload_removes_b":
        config.write_text(source_config(kubelet, root).split(f"  - name: {B}\n")[0])
        assert await running.host.reload_from(config) == "ok"
    else:
        await kubelet.await_for(capacity(B, 0), what="n0 unlisted past B's gracePeriod")

    await kubelet.await_for(healthy(A, 2), timeout=20, what="A advertised again")
    await wait_until(lambda: A not in running.host.not_ready(), what="ready again")
    answer = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
    assert answer["error"] == "", answer
    assert [m["HostPath"] for m in answer["mounts"]] == [str(root / "fw")]


async def test_a_pod_holding_the_moved_device_keeps_its_claim(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """pb holds n0 (booked) when it is renamed into `fw`: past B's gracePeriod and several
    PodResources answers A stays withheld (pb reaches n0: a restart keeps its booking too);
    once pb is gone, A is admitted again."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    _tree(root)
    running = await start_host(source_config(kubelet, root))
    await kubelet.await_for(healthy(A, 2), what="A advertised")
    await kubelet.await_for(healthy(B, 1), what="B advertised")
    held = await kubelet.acall(kubelet.allocate, "pb", {B: 1})
    assert held["error"] == "", held

    os.rename(root / "o" / "n0", root / "fw" / "n0")
    await kubelet.await_for(capacity(B, 0), what="n0 unlisted past B's gracePeriod")
    await _polls(running, 8)
    assert kubelet.resource(A)["healthy"] == 0
    refused = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
    assert refused["error"] != "", f"p1 was given fw with n0 in it while pb holds n0: {refused}"

    await kubelet.acall(kubelet.release, "pb")
    await kubelet.await_for(admits(A), timeout=20, what="A admitted again once pb is gone")
