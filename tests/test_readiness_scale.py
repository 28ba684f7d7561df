"""/readyz work grows with the resources that change, not with all of them (Issue 19: every
status change used to walk every resource, O(resources²) while they start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdp_host.services import ResourceStatus
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, wait_until

RESOURCES = 60


async def test_a_status_change_works_out_its_own_resource_only(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    start_host,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each resource changes its status a few times while it starts (started, serving,
    registered): each change looks at that resource, so the readiness of all is looked at
    a few times per resource, not a few times per resource for each resource."""
    looks = [0]
    real = ResourceStatus.ready

    def counted(status: ResourceStatus) -> bool:
        looks[0] += 1
        return bool(real.fget(status))  # type: ignore[attr-defined]

    monkeypatch.setattr(ResourceStatus, "ready", property(counted))
    names = [f"vendor.example/r{i}" for i in range(RESOURCES)]
    running = await start_host(
        glob_config(socket_dir, *((name, f"{devices}/fpga[0-9]*") for name in names))
    )
    health = running.host.health
    await wait_until(
        lambda: len(running.host.resources) == RESOURCES and not health.not_ready,
        what="every resource ready on /readyz",
    )
    assert looks[0] < 10 * RESOURCES  # (a walk of all per change: ~3 x RESOURCES² / 2)
    assert running.host.not_ready() == {}  # the entries kept one by one match a full look
    await kubelet.stop()
    await wait_until(lambda: set(health.not_ready) == set(names), what="none ready")
    assert health.not_ready == running.host.not_ready()
