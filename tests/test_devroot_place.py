"""A sysfs node seen below a `devRoot` is handed out as /dev/<name>: that host path is
claimed by place too (hostile10 L4, `ownership_claims.PLACE`).

The node was claimed by the device number found at devRoot/<name> only. Where devRoot is not
really the host's /dev, the number there is not the one /dev/<name> has, so a glob resource
on /dev/<name> claimed another number and both were advertised: two pods got the same host
path. Now the host path is claimed by place: the two clash (the later one held, logged and
counted as any clash), a booking holds the place, and `kdp-host check` warns when
devRoot/<name> and /dev/<name> are not the same node."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.devices import Device, DeviceNode
from kdp_host.ownership_bookings import PLACE_BOOKED
from kdp_host.ownership_claims import PLACE, device_claims
from kdp_host.ownership_document import OWNERSHIP_FILE
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .fake_nodes import FakeNodes
from .fake_sysfs import FTDI, FakeSysfs
from .test_ownership import dev, restarted

STICK, GLOB = "vendor.example/stick", "vendor.example/g"
HANDED = "/dev/zero"
"""The host path both hand out (kdp-host's own /dev/zero: present without root)."""


def stick(seen: str = "/tdev/zero", device_id: str = "A10K") -> Device:
    """A sysfs device whose node kdp-host sees at `seen` and hands out as /dev/zero."""
    node = DeviceNode(HANDED, HANDED, seen_path=seen)
    return Device(device_id, nodes=(node,), path=HANDED, sysfs_path="/tsys/A10K")


NODES = {"/tdev/zero": ("c", 231), HANDED: ("c", 5), "/tsys/A10K": ("d", 9)}


def test_a_node_seen_elsewhere_claims_its_host_path_by_place() -> None:
    claims = device_claims(stick(), FakeNodes(NODES))
    assert ((PLACE, HANDED), HANDED, HANDED) in claims.exclusive
    assert (("c", 231), "/tdev/zero", "/tdev/zero") in claims.exclusive
    plain = Device("n", nodes=(DeviceNode(HANDED, HANDED),), path=HANDED)
    assert [c[0] for c in device_claims(plain, FakeNodes(NODES)).all()] == [("c", 5)]


@pytest.mark.parametrize("first", [STICK, GLOB])
async def test_two_resources_handing_out_one_host_path_clash_whichever_lists_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    """Before, both were advertised (the numbers differ)."""
    caplog.set_level(logging.INFO)
    host, _ = restarted(tmp_path, FakeNodes(NODES))
    devices = {STICK: stick(), GLOB: dev("zero", HANDED)}
    later = GLOB if first == STICK else STICK
    host.publish(first, devices[first])
    host.publish(later, devices[later])
    assert (host.ids(first), host.ids(later)) == ([devices[first].id], [])
    [held] = [r.__dict__["kdp_fields"] for r in caplog.records if r.getMessage() == "device_held"]
    assert (held["resource"], held["reason"], held["path"]) == (later, "owned", HANDED)
    labels = {"resource": later, "reason": "node_owned"}
    assert host.metrics.registry.get_sample_value("kdp_driver_skipped_total", labels) == 1


async def test_a_booking_holds_the_host_path_it_handed_out_after_its_device_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stick is booked (a pod has /dev/zero) and unplugged: the glob device on /dev/zero
    is held by place until the pod ends, also after a restart (the file keeps the place as
    a claim by path, the shape older versions read)."""
    caplog.set_level(logging.INFO)
    nodes = FakeNodes(NODES)
    host, state = restarted(tmp_path, nodes)
    host.publish(STICK, stick())
    await host.index.book(STICK, ["A10K"])
    del nodes.nodes["/tdev/zero"], nodes.nodes["/tsys/A10K"]  # unplugged
    host.publish(STICK)
    host.publish(GLOB, dev("zero", HANDED))
    assert host.ids(GLOB) == [], "the pod's answer named /dev/zero"
    await state.flush()
    claims = json.loads((tmp_path / OWNERSHIP_FILE).read_text())["bookings"][0]["claims"]
    assert {"kind": "path", "key": HANDED, "path": HANDED, "real": HANDED} in claims
    caplog.clear()
    again, _ = restarted(tmp_path, nodes)
    again.publish(GLOB, dev("zero", HANDED))
    assert again.ids(GLOB) == []
    reasons = [r.__dict__["kdp_fields"]["reason"] for r in caplog.records
               if r.getMessage() == "device_held"]  # fmt: skip
    assert reasons in (["booked"], [PLACE_BOOKED])


def _sysfs_config(dirs: Path, fake: FakeSysfs, head: str) -> str:
    return (
        head + f"resources:\n  - name: {STICK}\n    sysfs:\n"
        f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n"
        f'      usb: [{{vendor: "{FTDI[0]}", product: "{FTDI[1]}"}}]\n'
        "      nodes: {subsystems: [tty]}\n"
        f'  - name: {GLOB}\n    glob: {{paths: ["{HANDED}"]}}\n'
    )


def _fake_zero(base: Path) -> FakeSysfs:
    """A USB serial adapter whose tty is named `zero`: found at devRoot/zero (a file),
    handed out as /dev/zero (kdp-host's own, another node)."""
    fake = FakeSysfs(base)
    fake.usb_serial_adapter(fake.usb_controller(), "1-1", devnum=2, tty="zero")
    return fake


def test_check_warns_when_devroot_and_dev_are_not_the_same_node(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _fake_zero(short_dir / "host")
    config = short_dir / "kdp.yaml"
    config.write_text(_sysfs_config(short_dir, fake, f"kubelet: {{socketDir: {short_dir}/dp}}\n"))
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert (
        f"{fake.dev}/zero (devRoot) and {HANDED}, the path its DeviceSpec names, are not the" in err
    )
    assert f"{HANDED} is reachable from {STICK}" in err, "the overlap by place"
    other = FakeSysfs(short_dir / "other")  # /dev/ttyUSB0 not there: nothing to compare
    other.usb_serial_adapter(other.usb_controller(), "1-1", devnum=2)
    config.write_text(_sysfs_config(short_dir, other, f"kubelet: {{socketDir: {short_dir}/dp}}\n"))
    assert main(["check", "--config", str(config)]) == 0
    assert "(devRoot)" not in capsys.readouterr().err


def _head(dirs: Path, pod_resources: Path | None = None) -> str:
    pr = "" if pod_resources is None else f", podResourcesSocket: {pod_resources}"
    return f"kubelet: {{socketDir: {dirs}/dp{pr}}}\nstateDir: {dirs}/state\n"


async def test_with_the_simulator_one_of_the_two_is_advertised(
    short_dir: Path, start_host: Any
) -> None:
    fake = _fake_zero(short_dir / "host")
    async with KubeletSimulator(short_dir / "dp", dial_timeout=5.0) as sim:
        await start_host(_sysfs_config(short_dir, fake, _head(short_dir)))
        await sim.wait_for(lambda: sim.allocatable(STICK) + sim.allocatable(GLOB) >= 1)
        await wait_until(
            lambda: all(sim.options(r) is not None for r in (STICK, GLOB)), what="both registered"
        )
        assert sim.allocatable(STICK) + sim.allocatable(GLOB) == 1


async def test_through_the_kubelet_two_pods_never_get_one_host_path(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """hostile10 L4 through the kubelet's real device manager: p1 and p2 asked one device
    of each resource; one is refused (before, both got /dev/zero)."""
    fake = _fake_zero(short_dir / "host")
    kubelet = real_kubelet_factory()
    await start_host(_sysfs_config(short_dir, fake, _head(short_dir)))

    def both_listed(k: Any) -> bool:
        seen = [k.resource(r) for r in (STICK, GLOB)]
        return all(s is not None for s in seen) and sum(s["healthy"] for s in seen) >= 1

    await kubelet.await_for(both_listed, what="both resources registered")
    given = [await kubelet.acall(kubelet.allocate, p, {r: 1}) for p, r in (("p1", STICK),
             ("p2", GLOB))]  # fmt: skip
    assert sum(1 for g in given if g["error"] == "") == 1, given


async def test_a_release_checks_a_node_seen_below_devroot_where_it_is_seen() -> None:
    """A release's or preStart's place check (`hooks.check_places`) looked at the host's
    spelling, /dev/<name>, which kdp-host does not see below another `devRoot` (nothing
    there: it passed) while the node handed out was made anew at devRoot/<name> as another
    device's number. It looks where the node was claimed and checked (`Device.checked_at`)."""
    import functools

    from kdp_host.allocation import HookFailed
    from kdp_host.hooks import check_places

    from .fake_nodes import indexed, node

    nodes = FakeNodes({"/tdev/ttyUSB0": ("c", 3), "/tdev/ttyUSB1": ("c", 5)}, nothing=True)
    seen = DeviceNode("/dev/ttyUSB0", "/dev/ttyUSB0", seen_path="/tdev/ttyUSB0")
    mine = Device("A10K", nodes=(seen,), path="/dev/ttyUSB0", sysfs_path="/tsys/A10K")
    index, _ = await indexed({STICK: [mine], GLOB: [node("/tdev/ttyUSB1")]}, nodes)
    await index.book(STICK, ["A10K"])
    check = functools.partial(index.changed_places, STICK)
    handed = {"/dev/ttyUSB0": ("c", 3)}
    await check_places(check, "release of A10K:", ["A10K"], [mine], handed)
    nodes.nodes["/tdev/ttyUSB0"] = ("c", 5)  # made anew as ttyUSB1's number
    with pytest.raises(HookFailed, match="reaches another device now"):
        await check_places(check, "release of A10K:", ["A10K"], [mine], handed)


def test_a_held_cdi_entry_of_a_node_seen_below_devroot_is_checked_where_it_is_seen(
    tmp_path: Path,
) -> None:
    """The same for a held CDI entry (`cdi_spec.render_held`): it kept naming /dev/<name>
    while devRoot/<name> reached another pod's node."""
    from kdp_host.cdi_spec import Held, render_held
    from kdp_host.config import AllocateConfig, CdiConfig, GlobDriverConfig, ResourceConfig
    from kdp_host.device_table import DeviceTable
    from kdp_host.identity import identity_of

    config = ResourceConfig(
        name=STICK,
        driver=GlobDriverConfig(paths=(f"{tmp_path}/n*",)),
        allocate=AllocateConfig(cdi=CdiConfig(kind=STICK, spec_dir=str(tmp_path / "cdi"))),
    )
    root = tmp_path / "devroot"
    root.mkdir()
    place, other = root / "ttyUSB0", root / "ttyUSB1"
    place.touch()
    other.touch()
    host = str(tmp_path / "hostdev" / "ttyUSB0")  # (kdp-host sees nothing at the host's path)
    held = Device("A10K", nodes=(DeviceNode(host, "/dev/ttyUSB0", seen_path=str(place)),))
    handed_out = {"A10K": {host: identity_of(place.stat())}}
    empty = DeviceTable().snapshot
    assert render_held(config, empty, Held({"A10K": held}, handed_out))[1] == frozenset()
    place.unlink()
    place.hardlink_to(other)  # another pod's file where kdp-host sees the node
    assert render_held(config, empty, Held({"A10K": held}, handed_out))[1] == {"A10K"}


def test_the_record_keeps_where_a_node_handed_out_is_seen() -> None:
    """After a restart the record's device is what the checks use: it keeps the seen path
    (a key an older version ignores); an older entry reads without it."""
    from kdp_host.handed_entries import entry, handed
    from kdp_host.handed_out import Handed

    mine = Device("A10K", nodes=(DeviceNode(HANDED, HANDED, seen_path="/tdev/zero"),))
    written = json.loads(json.dumps(entry(Handed(mine, frozenset({"A10K"}), 1.0))))
    assert written["nodes"] == [[HANDED, HANDED, None]] and written["seen"] == {
        HANDED: "/tdev/zero"
    }
    assert handed("A10K", written).device == mine
    older = {k: v for k, v in written.items() if k != "seen"}
    assert handed("A10K", older).device.nodes[0].seen_path is None
