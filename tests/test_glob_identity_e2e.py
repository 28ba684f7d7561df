"""One device never reaches two pods through the kubelet simulator: a `by-id` link that
appears after the kubelet allocated the node, or vanishes while a pod holds it, or is there
at a restart, never advertises the device under a second Healthy ID."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

FPGA = "vendor.example/fpga"


def config(socket_dir: Path, root: Path) -> str:
    return f"""\
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: {FPGA}
    glob:
      paths: ["{root}/by-id/*", "{root}/fpga*"]
      gracePeriod: 1m
"""


async def settled(kubelet: KubeletSimulator, since: int) -> None:
    """Wait for the list the host sends after a change (the node's container path moves
    between the link and the node, so a list is sent though the ID stays)."""
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).list_and_watch_messages > since)


async def assert_one_device_held(kubelet: KubeletSimulator, pod: str) -> None:
    resource = kubelet.resource(FPGA)
    assert (resource.healthy_ids, resource.unhealthy_ids) == ({"fpga1"}, frozenset())
    assert resource.allocated_ids == {"fpga1"}
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(FPGA, 1, pod_uid=pod)


@pytest.mark.parametrize("link_first", [False, True], ids=["link-appears", "link-vanishes"])
async def test_a_link_change_after_allocation_never_frees_the_device_again(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    link_first: bool,
) -> None:
    (short_dir / "by-id").mkdir()
    (short_dir / "fpga1").touch()
    link = short_dir / "by-id" / "usb-FTDI_1"
    if link_first:
        link.symlink_to("../fpga1")
    await start_host(config(socket_dir, short_dir))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).healthy_ids == {"fpga1"})
    response = await kubelet.allocate(FPGA, 1, pod_uid="podA")
    assert response is not None
    assert [d.host_path for d in response.devices] == [str(short_dir / "fpga1")]

    since = kubelet.resource(FPGA).list_and_watch_messages
    if link_first:
        link.unlink()
    else:
        link.symlink_to("../fpga1")
    await settled(kubelet, since)
    await assert_one_device_held(kubelet, "podB")


async def test_a_restart_with_the_link_present_keeps_the_checkpointed_id(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    (short_dir / "by-id").mkdir()
    (short_dir / "fpga1").touch()
    host = await start_host(config(socket_dir, short_dir))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).healthy_ids == {"fpga1"})
    assert await kubelet.allocate(FPGA, 1, pod_uid="podA") is not None
    await host.shutdown()
    (short_dir / "by-id" / "usb-FTDI_1").symlink_to("../fpga1")
    await start_host(config(socket_dir, short_dir))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).registrations == 2)
    await kubelet.wait_for(lambda: bool(kubelet.resource(FPGA).healthy_ids))
    await assert_one_device_held(kubelet, "podB")
