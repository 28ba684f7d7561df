"""Glob groups end to end through the kubelet simulator: a group appears member by member,
a required member vanishes (Unhealthy at once, dropped after the grace period), an optional
member is missing (Healthy, not passed), Allocate passes every node and mount."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from kdp_host.drivers.glob_groups import GlobGroupScan
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

XDMA = "vendor.example/xdma"


def group_config(socket_dir: Path, dev: Path, fw: Path) -> str:
    return f"""\
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: {XDMA}
    glob:
      gracePeriod: 1s
      group:
        - path: "{dev}/xdma{{key}}_user"
        - path: "{dev}/xdma{{key}}_c2h_*"
          containerPath: "/dev/xdma/{{key}}/{{name}}"
        - path: "{dev}/xdma{{key}}_events"
          optional: true
        - path: "{fw}"
          containerPath: /lib/firmware/xdma
    allocate:
      env: {{XDMA_PATHS: "{{paths}}", XDMA_IDS: "{{ids}}"}}
"""


async def test_group_lifecycle_and_allocation(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    dev = short_dir / "dev"
    dev.mkdir()
    fw = short_dir / "fw"
    fw.mkdir()
    await start_host(group_config(socket_dir, dev, fw))
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).registrations == 1)
    assert kubelet.resource(XDMA).capacity == 0

    # member by member: nothing until the required members are all there
    (dev / "xdma0_user").touch()
    (dev / "xdma1_user").touch()
    (dev / "xdma1_c2h_0").touch()
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).healthy_ids == {"1"})
    assert kubelet.resource(XDMA).capacity == 1
    (dev / "xdma0_c2h_0").touch()
    (dev / "xdma0_c2h_1").touch()
    (dev / "xdma0_events").touch()
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).healthy_ids == {"0", "1"})

    # every node of both devices (xdma1 has no events node: optional, not passed), one mount
    response = await kubelet.allocate(XDMA, 2, pod_uid="a")
    assert response is not None
    assert [(d.host_path, d.container_path) for d in response.devices] == [
        (f"{dev}/xdma0_user", f"{dev}/xdma0_user"),
        (f"{dev}/xdma0_c2h_0", "/dev/xdma/0/xdma0_c2h_0"),
        (f"{dev}/xdma0_c2h_1", "/dev/xdma/0/xdma0_c2h_1"),
        (f"{dev}/xdma0_events", f"{dev}/xdma0_events"),
        (f"{dev}/xdma1_user", f"{dev}/xdma1_user"),
        (f"{dev}/xdma1_c2h_0", "/dev/xdma/1/xdma1_c2h_0"),
    ]
    assert [(m.host_path, m.container_path, m.read_only) for m in response.mounts] == [
        (str(fw), "/lib/firmware/xdma", True)
    ]
    assert response.envs == {
        "XDMA_IDS": "0,1",
        "XDMA_PATHS": ",".join(d.container_path for d in response.devices),
    }
    await kubelet.release("a")

    # an optional member that goes: still Healthy, no longer passed
    # (the list is sent again when a device's nodes change, though its ID and health do not)
    messages = kubelet.resource(XDMA).list_and_watch_messages
    (dev / "xdma0_events").unlink()
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).list_and_watch_messages > messages)
    assert kubelet.resource(XDMA).healthy_ids == {"0", "1"}
    response = await kubelet.allocate(XDMA, 2, pod_uid="b")
    assert response is not None
    assert f"{dev}/xdma0_events" not in [d.host_path for d in response.devices]
    assert len(response.devices) == 5
    await kubelet.release("b")

    # a required member that goes: Unhealthy at once, dropped after the grace period
    (dev / "xdma1_c2h_0").unlink()
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).unhealthy_ids == {"1"})
    assert kubelet.resource(XDMA).healthy_ids == {"0"}
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(XDMA, 2, pod_uid="c")
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).capacity == 1, timeout=10)
    assert kubelet.resource(XDMA).healthy_ids == {"0"}


async def test_colliding_container_paths_are_invalid_argument(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """Issue 10 item 5 end to end: two devices whose per-device container paths collide
    (`/dev/{name}` over two directories) cannot be allocated together; alone they can."""
    for card in ("a", "b"):
        (short_dir / card).mkdir()
        (short_dir / card / "ctl").touch()
    config = f"""\
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: vendor.example/ctl
    glob: {{paths: ["{short_dir}/a/ctl", "{short_dir}/b/ctl"], containerPath: "/dev/{{name}}"}}
"""
    await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource("vendor.example/ctl").allocatable == 2)
    with pytest.raises(SimulatorAllocationError, match="/dev/ctl is claimed twice"):
        await kubelet.allocate("vendor.example/ctl", 2, pod_uid="a")
    response = await kubelet.allocate("vendor.example/ctl", 1, pod_uid="b")
    assert response is not None and len(response.devices) == 1


async def test_an_optional_member_that_goes_never_withdraws_its_device(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The glob driver's scan of an optional member's removal and the ownership index's
    recheck of the same path (`ownership_watching`) both follow the watcher's event. Here the
    scan waits until the index is quiet (the order `test_group_lifecycle_and_allocation` meets
    about 1 run in 10 under load): the kubelet must still never see the device withdrawn
    (README: a missing optional member leaves the device Healthy)."""
    gate, entered = threading.Event(), threading.Event()
    armed = [False]
    scan = GlobGroupScan.scan

    def gated(self: GlobGroupScan, *args: Any) -> Any:
        if armed[0]:  # (in the scan's thread: the loop and the index go on meanwhile)
            entered.set()
            gate.wait(30)
        return scan(self, *args)

    monkeypatch.setattr(GlobGroupScan, "scan", gated)
    dev = short_dir / "dev"
    dev.mkdir()
    fw = short_dir / "fw"
    fw.mkdir()
    for name in ("xdma0_user", "xdma0_c2h_0", "xdma0_events"):
        (dev / name).touch()
    running = await start_host(group_config(socket_dir, dev, fw))
    await kubelet.wait_for(lambda: kubelet.resource(XDMA).healthy_ids == {"0"})
    before = len(kubelet.list_and_watch_updates)
    armed[0] = True
    (dev / "xdma0_events").unlink()
    try:
        assert await asyncio.to_thread(entered.wait, 30), "the scan of the change began"
        await running.host.ownership.quiet()
    finally:
        gate.set()
    await kubelet.wait_for(lambda: len(kubelet.list_and_watch_updates) > before)
    await running.host.ownership.quiet()
    assert [u.total for u in kubelet.list_and_watch_updates[before:]][:1] == [1]
    assert kubelet.resource(XDMA).healthy_ids == {"0"}
