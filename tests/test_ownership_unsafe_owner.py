"""A device no container may be handed owns nothing unbooked (hostile8 L1).

A glob-group directory that a bind mount made hold a protected place (`/`, `stateDir`) is
held `unsafe_mount`. Its claims used to linger as those of a device that left its list do,
so its directory still held every node below it, at every place the mount table shows
them: one stray bind mount of `/` held the devices of every resource (`reason=owned`).
Now such a device keeps only the claims a booking of it holds (a booked one keeps them
all, as before), and a lingering claim that became unsafe goes unless booked. A held
line's `owner_advertised` said True for an owner that kept its claims unadvertised."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import NeverHanded
from kdp_host.simulator import KubeletSimulator
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .test_ownership_moves import Host, bind, mounting, nodes

GRP, OTHER = "t.io/grp", "t.io/c"
PROBE, FPGA = "vendor.example/probe", "vendor.example/fpga"


def unsafe_reason(host: Host, resource: str) -> float:
    labels = {"resource": resource, "reason": "unsafe_mount"}
    return host.metrics.registry.get_sample_value("kdp_driver_skipped_total", labels) or 0


async def host_with_group(tmp: Path) -> tuple[Host, ManualWatcher, Path]:
    """Group members `a` (its directory in host/) and `m5` (mnt/m5, empty but for sub/),
    and resource c's node host/dev/c0, all advertised; stateDir is host/state. A bind mount
    of host/ (as of `/`) on mnt/m5/sub then makes m5 hold stateDir, and shows `a` and c0
    below m5 too."""
    root = tmp / "host"
    for made in (root / "state", root / "dev", root / "a", tmp / "mnt" / "m5" / "sub"):
        made.mkdir(parents=True)
    (root / "dev" / "c0").write_text("")
    watcher = ManualWatcher()
    host = Host(watcher)
    host.index.never_handed = NeverHanded(places=(("stateDir", str(root / "state")),))
    await host.publish(GRP, mounting("a", str(root / "a")), mounting("m5", str(tmp / "mnt/m5")))
    await host.publish(OTHER, nodes("c0", str(root / "dev/c0")))
    assert (host.ids(GRP), host.ids(OTHER)) == (["a", "m5"], ["c0"])
    return host, watcher, root


@pytest.mark.parametrize("m5", ["listed", "booked", "gone"])
async def test_a_device_held_unsafe_holds_no_other_device(
    tmp_path: Path, m5: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, `a` (same resource) and c0 (another) were held `owned` by m5 for as long as
    m5's claim lingered (with PodResources off: for good). A booked m5 (a pod has the
    directory) keeps its claim: what is below it stays held, as before. `gone`: m5 left
    the list first (its claim lingers), then the mount made its directory unsafe."""
    host, watcher, root = await host_with_group(tmp_path)
    booked = m5 == "booked"
    if booked:
        await host.index.book(GRP, ["m5"])
    if m5 == "gone":
        await host.publish(GRP, mounting("a", str(root / "a")))
    host.mounts = bind(root, tmp_path / "mnt" / "m5" / "sub")
    with caplog.at_level(logging.INFO):
        watcher.change_mounts()
        await host.settled()
    assert unsafe_reason(host, GRP) == (m5 != "gone"), "m5 holds stateDir"
    if booked:
        assert (host.ids(GRP), host.ids(OTHER)) == ([], [])
        return
    assert (host.ids(GRP), host.ids(OTHER)) == (["a"], ["c0"])
    assert host.held(GRP) == 0, "a is never held by m5 (found unsafe before a is admitted)"
    for record in caplog.records:
        if record.getMessage() == "device_held" and record.kdp_fields["device"] == "c0":  # type: ignore[attr-defined]
            # (admitted before m5's resource: held while m5 was still advertised, then won)
            assert record.kdp_fields["owner_advertised"] is True  # type: ignore[attr-defined]


async def test_the_owner_named_in_a_held_line_is_advertised_only_when_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A device held by a booking (`place_booked`: it mounts a directory made anew where a
    booked device's directory was handed out) keeps its claims, to be advertised once the
    booking ends, but is not advertised: a device its directory holds says
    `owner_advertised=False` (before: True, as the owner's claims were in the table)."""
    (tmp_path / "d").mkdir()
    host = Host()
    await host.publish(GRP, mounting("d", str(tmp_path / "d")))
    await host.index.book(GRP, ["d"])
    await host.publish(GRP)  # d left the list: its booked claim lingers
    (tmp_path / "d").rename(tmp_path / "old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "n1").write_text("")
    with caplog.at_level(logging.WARNING):
        await host.publish(OTHER, mounting("m", str(tmp_path / "d")))
        await host.publish("t.io/x", nodes("n1", str(tmp_path / "d/n1")))
    assert (host.ids(OTHER), host.ids("t.io/x")) == ([], [])
    lines = [
        r.kdp_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "device_held"
    ]
    assert [(f["device"], f["reason"]) for f in lines] == [("m", "place_booked"), ("n1", "owned")]
    assert (lines[1]["owner_device"], lines[1]["owner_advertised"]) == ("m", False)


async def test_a_probe_device_made_unsafe_does_not_hold_a_glob_node_below_it(
    short_dir: Path, start_host: Any
) -> None:
    """Through the host, PodResources off (nothing else ends a lingering claim): probe
    device m mounts opt/d, then also stateDir (held `unsafe_mount`); a node made in opt/d
    afterwards is advertised. Before, m's claim of opt/d lingered and held it for good
    (`owned`, owner m)."""
    dirs = short_dir
    for name in ("dp", "state", "opt/d"):
        (dirs / name).mkdir(parents=True)
    probe = dirs / "p.json"
    mount_d = {"hostPath": f"{dirs}/opt/d", "containerPath": "/d"}
    probe.write_text(json.dumps([{"id": "m", "mounts": [mount_d]}]))
    config = (
        f"kubelet: {{socketDir: {dirs}/dp, podResourcesInterval: 0s}}\n"
        f"stateDir: {dirs}/state\nresources:\n"
        f"  - name: {PROBE}\n"
        f"    shell: {{command: [cat, {probe}], format: json, interval: 1s}}\n"
        f"  - name: {FPGA}\n    glob: {{paths: ['{dirs}/opt/d/n*']}}\n"
    )
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running: Any = await start_host(config)
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1)
        state = {"hostPath": f"{dirs}/state", "containerPath": "/s"}
        probe.write_text(json.dumps([{"id": "m", "mounts": [mount_d, state]}]))
        skipped = running.metrics.registry.get_sample_value
        labels = {"resource": PROBE, "reason": "unsafe_mount"}
        await wait_until(lambda: skipped("kdp_driver_skipped_total", labels) == 1, what="m held")
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 0)
        (dirs / "opt" / "d" / "n1").write_text("")
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
