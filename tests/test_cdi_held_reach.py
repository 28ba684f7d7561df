"""A device handed out by its CDI name is checked and recorded like one handed out by a
DeviceSpec (hostile15 F4).

With `allocate.cdi` the Allocate answer carries CDI names and no DeviceSpecs: the spec
entries name the nodes. The answer's paths were checked and what each reached recorded
(`Handed.reached`) only from its DeviceSpecs and mounts, so a CDI device's record had none:
when its node was made anew at its path as another pod's node, its held CDI entry kept
naming the path (the pod's next container restart would get the other pod's node), and it
was not reported missing. And a held device that its resource no longer listed (held back
by what was made at its path) was not looked at for `replaced` at all."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kdp_host.devices import Device, DeviceNode
from kdp_host.handed_entries import Handed
from kdp_host.handed_out import HANDED_FILE
from kdp_host.held_replaced import Replaced
from kdp_host.identity import identity_of
from kdp_host.status import devices_document

from .conftest import wait_until
from .kubelet_harness import healthy
from .test_cdi_reload import resolved

T = TypeVar("T")
P, Q = "example.com/p", "example.com/q"


class _Inline:
    async def run(self, function: Callable[[], T]) -> T:
        return function()


async def test_a_held_device_not_listed_is_looked_at_as_recorded(tmp_path: Path) -> None:
    """Held back (its resource does not list it): its record's paths are looked at."""
    (tmp_path / "old").touch()
    (tmp_path / "n0").touch()  # made anew: another inode than handed out
    device = Device("n0", nodes=(DeviceNode(str(tmp_path / "n0"), "/dev/n0"),))
    reached = {str(tmp_path / "n0"): identity_of(os.stat(tmp_path / "old"))}
    records = {"n0": Handed(device, frozenset({"n0"}), 0.0, reached)}
    replaced, looked = Replaced(), asyncio.Event()
    replaced.look(lambda _: None, {"n0"}, records.get, _Inline(), looked.set)
    await asyncio.wait_for(looked.wait(), 30)
    assert replaced.of(["n0"], records.get) == {"n0"}


def _config(kubelet: Any, root: Path) -> str:
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{root}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root}/state\nresources:\n"
        f"  - name: {P}\n"
        f'    glob: {{paths: ["{root}/dev/fpga*"]}}\n'
        f"    allocate: {{cdi: {{kind: example.com/pp, specDir: {root}/cdi}}}}\n"
        f"  - name: {Q}\n"
        f'    glob: {{paths: ["{root}/dev2/q*"]}}\n'
    )


def _health(host: Any, resource: str, device: str) -> str | None:
    for entry in devices_document(host)["resources"]:
        if entry["name"] == resource:
            for listed in entry["devices"]:
                if listed["id"] == device:
                    return str(listed["health"])
    return None


async def test_hostile15_f4_a_cdi_device_made_anew_as_another_pods_node_is_left_out_and_missing(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """p1 holds fpga0 by its CDI name, p2 holds q0 (another resource); fpga0's path is made
    anew as q0's file (a hard link: the same inode). The held name must resolve to nothing
    (not q0's file) and fpga0 must be missing (`replaced`)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    for directory, name in (("dev", "fpga0"), ("dev2", "q0")):
        (short_dir / directory).mkdir()
        (short_dir / directory / name).touch()
    running = await start_host(_config(kubelet, short_dir))
    await kubelet.await_for(healthy(P, 1), what="fpga0 advertised")
    await kubelet.await_for(healthy(Q, 1), what="q0 advertised")
    p1 = await kubelet.acall(kubelet.allocate, "p1", {P: 1})
    assert p1["error"] == "", p1
    (name,) = [c.get("Name", c.get("name")) for c in p1["cdi_devices"]]
    fpga0 = str(short_dir / "dev" / "fpga0")
    assert resolved(short_dir / "cdi")[name] == [fpga0]
    record = json.loads((short_dir / "state" / HANDED_FILE).read_text())
    assert fpga0 in record["resources"][P]["fpga0"]["reached"]  # (none before)
    p2 = await kubelet.acall(kubelet.allocate, "p2", {Q: 1})
    assert p2["error"] == "", p2

    (short_dir / "dev" / "fpga0").unlink()
    (short_dir / "dev" / "fpga0").hardlink_to(short_dir / "dev2" / "q0")
    await wait_until(
        lambda: name not in resolved(short_dir / "cdi"), what="the held entry left out"
    )
    host = running.host
    await wait_until(lambda: _health(host, P, "fpga0") == "missing", what="fpga0 missing")
    missing = running.metrics.registry.get_sample_value("kdp_devices_held_missing", {"resource": P})
    assert missing == 1
