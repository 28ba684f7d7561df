"""Another plugin's pod handed a link (generic-device-plugin serving `serial/by-id/*`, the
usual pattern for serial adapters) holds what the link reaches now as well as what it
reached when booked: the kubelet re-creates the pod's container from the answer it kept (the
link's path), which the runtime resolves again (issue 17, hostile27 F9). Before, the booking
held only the node the link reached when the checkpoint was read: once udev re-pointed the
link at another node kdp-host serves, kdp-host listed that node Healthy and handed it to its
own pod, and a restart of the peer's container put it in both pods. The same for a CDI
name another plugin hands out whose spec's `hostPath` is a link (hostile27 F3's booking)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import GenericDevicePlugin, gdp_device, harness_binary, missing_reason
from .test_checkpoint_bookings import GDEV, OTHER, config_text, healthy_count
from .test_foreign_cdi_kubelet import GPU, A, CdiPlugin, serving, setup, write_spec

pytestmark = pytest.mark.fast


def repoint(link: Path, target: str) -> None:
    """As udev re-points a link: a new link renamed over it."""
    made = link.with_name(".tmp")
    os.symlink(target, made)
    os.replace(made, link)


@contextlib.asynccontextmanager
async def peer_through_link(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    by_id: Path,
    host_first: bool = True,
) -> AsyncIterator[Any]:
    """kdp-host serving `dev/*` as OTHER (n0 there), generic-device-plugin serving the links
    `by_id/*` as GDEV (`usb-X` -> n0), pod p1 given usb-X by GDP, n0 held: the kubelet.
    `host_first` False: kdp-host starts after p1 was given usb-X (booked at start)."""
    if harness_binary("generic-device-plugin") is None:
        pytest.skip(missing_reason("generic-device-plugin"))
    (short_dir / "dev").mkdir()
    (short_dir / "dev" / "n0").touch()
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config = config_text(kubelet, short_dir, (OTHER, f"{short_dir / 'dev'}/*"))
    if host_first:
        await start_host(config)
        await kubelet.await_for(healthy_count(OTHER, 1), what="kdp-host serves n0")
    gdp = GenericDevicePlugin(
        kubelet.socket_dir, [gdp_device("gdev", f"{by_id}/*")], short_dir / "g"
    )
    gdp.start()
    try:
        await kubelet.await_for(healthy_count(GDEV, 1), what="GDP serves usb-X")
        p1 = await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1})
        assert [d["PathOnHost"] for d in p1["devices"]] == [str(by_id / "usb-X")], p1
        if not host_first:
            await start_host(config)
            await kubelet.await_for(lambda k: k.resource(OTHER) is not None, what="registered")
        await kubelet.await_for(healthy_count(OTHER, 0), what="n0 held for p1")
        yield kubelet
    finally:
        gdp.stop()


@pytest.mark.parametrize("host_first", [True, False], ids=["running", "booked_at_start"])
async def test_a_peers_link_re_pointed_holds_its_new_target(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, host_first: bool
) -> None:
    """udev re-points p1's `by-id/usb-X` from n0 to n1 (stick X re-enumerated): n1 is held
    while p1 lives (before: listed Healthy and handed to p2), n0 too; whether p1 was given
    usb-X while kdp-host ran or before it started (its booking made before the watcher)."""
    by_id = short_dir / "by-id"
    by_id.mkdir()
    (by_id / "usb-X").symlink_to("../dev/n0")
    peer = peer_through_link(real_kubelet_factory, start_host, short_dir, by_id, host_first)
    async with peer as kubelet:
        (short_dir / "dev" / "n1").touch()
        await kubelet.await_for(healthy_count(OTHER, 1), what="n1 listed")
        repoint(by_id / "usb-X", "../dev/n1")
        await both_held_while_p1_lives(kubelet)


async def test_a_link_further_along_a_peers_chain_re_pointed_holds_its_new_target(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """p1 was handed `ser/by-id/usb-X`, a link to `../by-path/pci-1`, itself a link to n0
    (an admin's stable name pointing at udev's own link); udev re-points the link it owns,
    `by-path/pci-1`, at n1 (usb-X unchanged): n1 is held while p1 lives (before: only the
    first link's directory was followed, n1 listed Healthy and handed to p2; hostile29 H4),
    then the middle link made anew at n2: n2 is held too."""
    by_id, by_path = short_dir / "ser" / "by-id", short_dir / "ser" / "by-path"
    by_id.mkdir(parents=True)
    by_path.mkdir()
    (by_path / "pci-1").symlink_to("../../dev/n0")
    (by_id / "usb-X").symlink_to("../by-path/pci-1")
    async with peer_through_link(real_kubelet_factory, start_host, short_dir, by_id) as kubelet:
        (short_dir / "dev" / "n1").touch()
        await kubelet.await_for(healthy_count(OTHER, 1), what="n1 listed")
        repoint(by_path / "pci-1", "../../dev/n1")
        await kubelet.await_for(healthy_count(OTHER, 0), timeout=10, what="n1 held for p1")
        (short_dir / "dev" / "n2").touch()
        await kubelet.await_for(healthy_count(OTHER, 1), what="n2 listed")
        (by_path / "pci-1").unlink()  # (udev: remove, then add)
        (by_path / "pci-1").symlink_to("../../dev/n2")
        await both_held_while_p1_lives(kubelet, 3)


async def test_a_link_on_the_way_to_a_peers_place_re_pointed_holds_its_new_target(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """p1 was handed `ser/by-id/usb-X` with `ser` a link to `ser.a`; `ser` re-pointed at
    `ser.b`, whose `by-id/usb-X` reaches n1: n1 is held (a directory on the way followed);
    then `ser.b/by-id/usb-X` re-pointed at n2: n2 is held (followed where `ser` leads now),
    n1 too (a container of p1 started while the link reached it has it)."""
    for tree, node in (("ser.a", "n0"), ("ser.b", "n1")):
        (short_dir / tree / "by-id").mkdir(parents=True)
        (short_dir / tree / "by-id" / "usb-X").symlink_to(f"../../dev/{node}")
    (short_dir / "ser").symlink_to("ser.a")
    by_id = short_dir / "ser" / "by-id"
    async with peer_through_link(real_kubelet_factory, start_host, short_dir, by_id) as kubelet:
        (short_dir / "dev" / "n1").touch()
        await kubelet.await_for(healthy_count(OTHER, 1), what="n1 listed")
        repoint(short_dir / "ser", "ser.b")
        await kubelet.await_for(healthy_count(OTHER, 0), timeout=10, what="n1 held for p1")
        (short_dir / "dev" / "n2").touch()  # (ser.b/by-id followed now, not ser.a/by-id)
        await kubelet.await_for(healthy_count(OTHER, 1), what="n2 listed")
        repoint(by_id / "usb-X", "../../dev/n2")  # (n1 stays held: p1 may have it now)
        await both_held_while_p1_lives(kubelet, 3)


async def both_held_while_p1_lives(kubelet: Any, nodes: int = 2) -> None:
    """The node p1's link reaches now is held (no kdp-host pod gets it), n0 stays held; all
    `nodes` are listed again once p1 ends."""
    await kubelet.await_for(healthy_count(OTHER, 0), timeout=10, what="held for p1")
    p2 = await kubelet.acall(kubelet.allocate, "p2", {OTHER: 1})
    assert p2["error"] and not p2["device_ids"], p2
    assert (await kubelet.acall(kubelet.release, "p1"))["found"]
    await kubelet.await_for(healthy_count(OTHER, nodes), timeout=30, what="listed again")


async def test_a_cdi_host_path_through_a_link_re_pointed_holds_its_new_target(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """Another plugin hands g0 a CDI name whose spec's `hostPath` is the link `by-id/usb-X`
    (-> fpga0): fpga0 is held; the link re-pointed at fpga1, fpga1 is held too (the runtime
    resolves the name, then the link, at g0's next container start)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config, _ = setup(kubelet, short_dir)
    (short_dir / "by-id").mkdir()
    link = short_dir / "by-id" / "usb-X"
    link.symlink_to("../dev/fpga0")
    write_spec(short_dir / "cdi", {"gpu0": str(link)})
    await start_host(config)
    await kubelet.await_for(healthy_count(A, 2), what="kdp-host lists both")
    async with serving(kubelet, CdiPlugin({"gpu0": str(link)}, "cdi"), GPU):
        await kubelet.await_for(healthy_count(GPU, 1), what="the other plugin lists")
        g0 = await kubelet.acall(kubelet.allocate, "g0", {GPU: 1})
        assert g0["error"] == "", g0
        await kubelet.await_for(healthy_count(A, 1), what="fpga0 held for g0")
        repoint(link, "../dev/fpga1")
        await kubelet.await_for(healthy_count(A, 0), timeout=10, what="fpga1 held for g0")
        p1 = await kubelet.acall(kubelet.allocate, "p1", {A: 1})
        assert p1["error"] and not p1["device_ids"], p1
