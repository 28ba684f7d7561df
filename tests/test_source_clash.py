"""An `allocate.mounts` source that reaches another device's node, through the kubelet's real
device manager (v1.32, tests/kubelet_harness.py; issue 17, hostile24 F1): every Allocate of
the resource was refused by the index while its devices stayed Healthy in the kubelet and
/readyz said ok, so the scheduler kept sending pods that failed admission. Now the index is
asked, by its own rule, whether an answer with no device that mounts the sources is refused
(`source_clash`): the need `mounts` is unmet meanwhile (every device Unhealthy, /readyz
names it, one line), and met again once the source is fixed; where one device of the resource
is in the way (a hard link of its node in the source), that device alone stays Healthy. A
new device of another resource whose node is in the source (a hard link, a link to it) has
the index ask at once, as what arrives below the source does (hostile26 N5)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import wait_until
from .kubelet_harness import healthy
from .test_shared_source_moved_node import A, B, source_config

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

REASON = "allocate.mounts source reaches another device's node"


def _tree(root: Path) -> None:
    for directory in ("d", "fw"):
        (root / directory).mkdir()
    (root / "fw" / "blob").write_text("firmware")
    for name in ("a0", "a1", "a2"):
        (root / "d" / name).touch()


def _unmet(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    records = [r.__dict__["kdp_fields"] for r in caplog.records if r.msg == "answer_need_unmet"]
    return [fields for fields in records if fields.get("need") == "mounts"]


@pytest.mark.parametrize("how", ["link_to_the_device_tree", "node_moved_in"])
async def test_a_source_that_reaches_device_nodes_is_an_unmet_need(
    real_kubelet_factory: Any,
    short_dir: Path,
    start_host: Any,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """Serving (p1 holds a device and fw), fw is replaced by a link to the device tree (a
    vendor tree's `ln -sfn` gone wrong), or a free device's node is moved into it while no
    pod holds it: every answer would be refused, so the kubelet sees no healthy device and
    /readyz names the need; Healthy again once fw is a directory of its own again."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    _tree(root)
    running = await start_host(source_config(kubelet, root))
    await kubelet.await_for(healthy(A, 3), what="A advertised")
    if how == "link_to_the_device_tree":
        first = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
        assert first["error"] == "", first
        os.rename(root / "fw", root / "fw.old")
        os.symlink(root / "d", root / "fw")
        left = 3
    else:
        os.rename(root / "d" / "a1", root / "fw" / "a1")  # (no pod holds fw)
        left = 2  # (a1 unlisted)
    await kubelet.await_for(healthy(A, 0), what="A withheld: every answer would be refused")
    assert running.host.not_ready()[A] == REASON
    assert running.sample("kdp_answer_need_unmet", resource=A, need="mounts") == 1
    [line] = _unmet(caplog)
    assert "is refused" in line["reason"], line

    if how == "link_to_the_device_tree":
        os.unlink(root / "fw")
        os.rename(root / "fw.old", root / "fw")
    else:
        os.rename(root / "fw" / "a1", root / "a1")  # (out of fw: a claim of no one there)
    await kubelet.await_for(healthy(A, left), what="A Healthy again")
    await wait_until(lambda: A not in running.host.not_ready(), what="ready again")
    answer = await kubelet.acall(kubelet.allocate, "p2", {A: 1})
    assert answer["error"] == "", answer


async def test_a_hard_link_of_one_node_in_the_source_holds_every_other_device(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """fw holds a hard link of a1's node from the start: only the answer for a1 itself is
    not refused, so the kubelet sees a1 alone Healthy from its first list on (never three),
    and /readyz names the need; once the link is removed, all three."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    _tree(root)
    os.link(root / "d" / "a1", root / "fw" / "a1-copy")
    running = await start_host(source_config(kubelet, root))
    await kubelet.await_for(lambda k: (k.resource(A) or {}).get("capacity") == 3, what="listed")
    assert kubelet.resource(A)["healthy"] == 1
    assert running.host.not_ready()[A] == REASON
    answer = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
    assert answer["error"] == "" and answer["device_ids"] == {A: ["a1"]}, answer

    os.unlink(root / "fw" / "a1-copy")
    await kubelet.await_for(healthy(A, 3), what="all three Healthy")
    await wait_until(lambda: A not in running.host.not_ready(), what="ready again")
    shutil.rmtree(root / "d")


@pytest.mark.parametrize("how", ["hard_link", "link_to_it"])
async def test_another_resources_new_device_in_the_source_withholds_at_once(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, how: str
) -> None:
    """B lists a new device whose node is `fw/blob`: a hard link of it in B's directory, or
    a link to it that B's pattern matches. Nothing below `fw` changed, yet every answer of A
    is refused from then on: A is withheld before any pod comes (before, A stayed Healthy,
    /readyz 200, until its first pod was refused); Healthy again once that device is gone."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root = short_dir
    _tree(root)
    (root / "o").mkdir()
    running = await start_host(source_config(kubelet, root))
    await kubelet.await_for(healthy(A, 3), what="A advertised")
    (os.link if how == "hard_link" else os.symlink)(root / "fw" / "blob", root / "o" / "n5")
    await kubelet.await_for(healthy(B, 1), what="B lists n5")
    await kubelet.await_for(healthy(A, 0), timeout=10, what="A withheld before any pod")
    assert running.host.not_ready()[A] == REASON

    os.unlink(root / "o" / "n5")
    await kubelet.await_for(healthy(A, 3), timeout=20, what="A Healthy again")
