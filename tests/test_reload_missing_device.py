"""A live reload that changes a resource does not end the grace period of its missing devices,
through the kubelet's real device manager (v1.32, tests/kubelet_harness.py; issue 17,
hostile28 G3).

A's node `a1` leaves its path for a place nothing follows (`away/`): `a1` is listed missing
(Unhealthy, its gracePeriod running). A reload then changes A (an `allocate.env`, or its
`gracePeriod`), which restarts its driver. Before, the new driver's first list had only what
was present: `a1` was dropped at once, and with it its identity's claim, so once its node came
into A's `allocate.mounts` source `fw` every new pod was handed it. Now the new driver's list
inherits `a1`, missing since it went (`drivers.carry`): A is withheld while the node is in
`fw`, and admitted again once `a1` is found again as itself at its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import healthy
from .test_shared_source_moved_node import A, admits, capacity, source_config

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

GRACE = "60s"
"""Longer than the test: `a1` stays listed missing throughout."""


def _changed(text: str, change: str) -> str:
    if change == "env":
        return text.replace("allocate: {mounts:", "allocate: {env: {X: y}, mounts:")
    return text.replace(f"gracePeriod: {GRACE}", "gracePeriod: 2m")


@pytest.mark.parametrize("change", ["env", "grace"])
async def test_a_reload_that_changes_a_resource_keeps_its_missing_device_and_claim(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, change: str
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    root, fw, away = short_dir, short_dir / "fw", short_dir / "away"
    for directory in ("d", "o", "fw", "away"):
        (root / directory).mkdir()
    (fw / "blob").write_text("firmware")  # (no device claims it: shared by design)
    for name in ("d/a0", "d/a1", "d/a2"):
        (root / name).touch()
    config = root / "config.yaml"
    config.write_text(source_config(kubelet, root, grace=GRACE))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(A, 3), what="A advertised")
    before = running.host.resources[A]

    node = root / "d" / "a1"
    os.rename(node, away / "a1")
    await kubelet.await_for(healthy(A, 2), what="a1 missing (in a place nothing follows)")
    await running.host.ownership.quiet()

    config.write_text(_changed(config.read_text(), change))
    assert await running.host.reload_from(config) == "ok"
    after = running.host.resources[A]
    assert after is not before, "the reload did not restart A"
    await kubelet.await_for(lambda _: after.status.listed, what="A's new driver listed")
    await running.host.ownership.quiet()
    kept = after.table.snapshot.device("a1")
    assert kept is not None and not kept.healthy, "a1 dropped by the reload"
    await kubelet.await_for(capacity(A, 3), what="a1 still listed (Unhealthy) to the kubelet")

    os.rename(away / "a1", fw / "a1")

    await kubelet.await_for(healthy(A, 0), what="A withheld: a1's node in fw")
    refused = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
    assert refused["error"] != "", f"p1 was given fw with a1's node in it: {refused}"
    assert running.host.not_ready()[A] == "allocate.mounts source reaches another device's node"

    os.rename(fw / "a1", node)  # (found again as itself, at its path)

    await kubelet.await_for(healthy(A, 3), timeout=30, what="a1 found again, A back")
    await kubelet.await_for(admits(A), timeout=30, what="A admitted again")
