"""A held ID is the device the kubelet booked, not another one that shares a node with it
(hostile16 F2, F3), through the kubelet's real device manager: while a pod holds ID X, a
different device that comes to have one of X's nodes (another stick given the held stick's
tty number in its port, another key's glob group with the node the held group kept) is
not advertised under X, Healthy, as the pod's own: it is held while the booking holds
that node, and X is `missing` (counted by `kdp_devices_held_missing`, shown so in
`/devices`), since the pod's own device is gone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.status import devices_document

from .fake_sysfs import FakeSysfs
from .kubelet_harness import RealKubelet, healthy
from .test_ownership_kubelet import booked_head, grants
from .test_status_held import two_answers

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

STICK = "example.com/stick"
GROUP = "example.com/grp"


def _missing(running: Any, resource: str) -> float | None:
    registry = running.metrics.registry
    return registry.get_sample_value("kdp_devices_held_missing", {"resource": resource})


def _shown(running: Any, resource: str) -> dict[str, dict[str, Any]]:
    (found,) = [r for r in devices_document(running.host)["resources"] if r["name"] == resource]
    return {d["id"]: d for d in found["devices"]}


async def _settled(running: Any, resource: str, listed: str) -> None:
    """Until the driver lists `listed`, then two PodResources answers."""
    poller = running.host.pod_resources
    await two_answers(poller, lambda: running.host.ownership.lists(resource, listed))


async def _not_advertised(kubelet: RealKubelet, resource: str, held: str) -> None:
    seen = (await kubelet.acall(kubelet.capacity))["resources"][resource]
    assert seen["healthy"] == 0 and held not in seen["device_numa"], seen


async def p1_holds_a10k(kubelet: Any, short_dir: Path, start_host: Any) -> tuple[Any, ...]:
    """Stick A10K (port 1-1: ttyUSB0, bus node 001/002) served from a fake sysfs and held by
    p1; returns the fake tree, its controller, the stick and the host."""
    fake = FakeSysfs(short_dir / "root")
    controller = fake.usb_controller()
    first = fake.usb_serial_adapter(controller, "1-1", devnum=2, serial="A10K")
    running = await start_host(
        booked_head(kubelet, short_dir)
        + f'  - name: {STICK}\n    sysfs:\n      usb: [{{vendor: "0403"}}]\n'
        f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n      gracePeriod: 0s\n"
    )
    await kubelet.await_for(healthy(STICK, 1), what="A10K advertised")
    assert await grants(kubelet, STICK, "p1") == [{"/dev/ttyUSB0", "/dev/bus/usb/001/002"}]
    return fake, controller, first, running


async def test_another_stick_given_the_held_sticks_tty_number_is_not_the_held_stick(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """F3: stick A10K (port 1-1, ttyUSB0 and bus node 001/002) is p1's; it is unplugged
    and stick B20K is plugged into the same port: the kernel gives it ttyUSB0 again (the
    same node: here the same file) and bus node 001/003. B20K shares a node with p1's
    booking but is not A10K: held, and A10K is missing."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    fake, controller, first, running = await p1_holds_a10k(kubelet, short_dir, start_host)
    tty = fake.dev / "ttyUSB0"
    kept = short_dir / "tty-node"
    os.link(tty, kept)  # (the node's identity, which the kernel gives the next stick)
    fake.remove_device(first)
    await kubelet.await_for(healthy(STICK, 0), what="A10K unplugged")
    fake.usb_serial_adapter(controller, "1-1", devnum=3, serial="B20K", create_nodes=False)
    fake.create_node("bus/usb/001/003")
    os.link(kept, tty)  # ttyUSB0 again: 188:0, the node p1's container has
    await _settled(running, STICK, "B20K")

    await _not_advertised(kubelet, STICK, "A10K")
    assert await grants(kubelet, STICK, "p2") == [], "p1's container has ttyUSB0"
    shown = _shown(running, STICK)
    assert shown["A10K"]["health"] == "missing", shown
    assert [h["pod"] for h in shown["A10K"]["holders"]] == ["p1"]
    assert "keptAs" not in shown["A10K"], shown
    assert shown["B20K"]["health"] == "held", shown
    assert _missing(running, STICK) == 1
    await kubelet.acall(kubelet.release, "p1")  # p1 ends: B20K is free, under its own ID
    await kubelet.await_for(healthy(STICK, 1), what="B20K advertised")
    assert "B20K" in kubelet.resource(STICK)["device_numa"]


async def test_another_keys_group_with_the_node_the_held_group_kept_is_not_the_held_group(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """F2: group `1` (d1 required, d1x optional) is p1's; d1 goes. Group `1x` (d1x
    required) now matches: it shares d1x with p1's booking but is not group 1: held, and
    `1` is missing, as a group that lost its required node is."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "d1").touch()
    (dev / "d1x").touch()
    running = await start_host(
        booked_head(kubelet, short_dir) + f"  - name: {GROUP}\n    glob:\n"
        "      gracePeriod: 0s\n      group:\n"
        f'        - {{path: "{dev}/d{{key}}", containerPath: "/dev/m1-{{key}}"}}\n'
        f'        - {{path: "{dev}/d{{key}}x", optional: true, containerPath: "/dev/m2-{{key}}"}}\n'
    )
    await kubelet.await_for(healthy(GROUP, 1), what="group 1 advertised")
    both = {str(dev / "d1"), str(dev / "d1x")}
    assert await grants(kubelet, GROUP, "p1") == [both]
    (dev / "d1").unlink()  # the held group's required node
    await _settled(running, GROUP, "1x")

    await _not_advertised(kubelet, GROUP, "1")
    assert await grants(kubelet, GROUP, "p2") == [], "p1's container has d1x"
    shown = _shown(running, GROUP)
    assert shown["1"]["health"] == "missing", shown
    assert shown["1x"]["health"] == "held", shown
    assert _missing(running, GROUP) == 1
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(GROUP, 1), what="group 1x advertised")
    assert "1x" in kubelet.resource(GROUP)["device_numa"]


async def test_the_held_stick_plugged_in_again_with_a_new_bus_node_is_missing(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """The held stick itself (its serial: the held one) plugged in again gets ttyUSB0 back
    but bus node 001/003: p1's container has 001/002, which reaches nothing now. A node
    the Allocate handed out that the listed device no longer has is looked at too
    (`held_replaced`): A10K is missing while p1 holds it, though listed Healthy."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    fake, controller, first, running = await p1_holds_a10k(kubelet, short_dir, start_host)
    tty, kept = fake.dev / "ttyUSB0", short_dir / "tty-node"
    os.link(tty, kept)
    fake.remove_device(first)
    await kubelet.await_for(healthy(STICK, 0), what="A10K unplugged")
    fake.usb_serial_adapter(controller, "1-1", devnum=3, serial="A10K", create_nodes=False)
    fake.create_node("bus/usb/001/003")
    os.link(kept, tty)
    await kubelet.await_for(healthy(STICK, 1), what="A10K listed again")
    poller = running.host.pod_resources
    await two_answers(poller, lambda: _missing(running, STICK) == 1)
    shown = _shown(running, STICK)
    assert shown["A10K"]["health"] == "missing", shown
    assert [h["pod"] for h in shown["A10K"]["holders"]] == ["p1"]
