"""One device never reaches two pods through the kubelet simulator: a `by-id` link that
appears after the kubelet allocated the node, or vanishes while a pod holds it, or is there
at a restart, never advertises the device under a second Healthy ID."""

from __future__ import annotations

import os
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


async def test_two_paths_that_swap_devices_both_stay_advertised(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """hostile16 F7 through the host: `fpga0` and `fpga1` swap their devices by two renames
    with a list between (files stand for device numbers; no grace period). Each card is
    advertised Healthy: the one seen at both paths under its ID, the other under the ID of
    its path and identity. The ownership index took the new device at `fpga1` for what its
    path reached before (its claims were kept by path) and held it for good (`owned`)."""
    card_a, card_b = short_dir / "fpga0", short_dir / "fpga1"
    card_a.write_text("a")
    card_b.write_text("b")
    text = config(socket_dir, short_dir).replace("gracePeriod: 1m", "gracePeriod: 0s")
    await start_host(text)

    def healthy() -> frozenset[str]:
        return kubelet.resource(FPGA).healthy_ids

    await kubelet.wait_for(lambda: healthy() == {"fpga0", "fpga1"})
    os.link(card_b, short_dir / ".b")
    os.link(card_a, short_dir / ".a")
    os.replace(short_dir / ".b", card_a)  # fpga0 is card b; card a is nowhere matched
    await kubelet.wait_for(lambda: healthy() == {"fpga1"})
    os.replace(short_dir / ".a", card_b)  # fpga1 is card a
    await kubelet.wait_for(lambda: len(healthy()) == 2)
    assert "fpga1" in healthy() and not kubelet.resource(FPGA).unhealthy_ids
    handed = set()
    for pod in ("p1", "p2"):
        response = await kubelet.allocate(FPGA, 1, pod_uid=pod)
        assert response is not None
        [spec] = response.devices
        handed.add(os.stat(spec.host_path).st_ino)
    assert handed == {os.stat(card_a).st_ino, os.stat(card_b).st_ino}
