"""A device held or owed a release stays in `/devices` and `kdp-host status` whatever a reload
changed (hostile5 H3, kdp_host/status.py): an operator must see a held device and a release
that keeps failing until the device is released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator
from kdp_host.status import devices_document

from .conftest import script, wait_until

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

FPGA = "vendor.example/fpga"


def _yaml(socket_dir: Path, short_dir: Path, devices: Path, command: str, replicas: int) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: {short_dir}/pr/kubelet.sock,"
        " podResourcesInterval: 1s}\n"
        f"stateDir: {short_dir}/state\n"
        "resources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{devices}/fpga*"], gracePeriod: 1s}}\n'
        f"    replicas: {replicas}\n"
        f'    release: {{command: ["{command}", "{{ids}}"], onFailure: ignore}}\n'
    )


def _devices(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (resource,) = document["resources"]
    return {device["id"]: device for device in resource["devices"]}


async def two_answers(poller: Any, also: Any = lambda: True) -> None:
    """Until two PodResources answers came after now (a reload's effects settled), and
    `also()`."""
    before = poller.status.last_ok
    await wait_until(
        lambda: (
            poller.status.last_ok is not None
            and before is not None
            and poller.status.last_ok > before + 1.5
            and also()
        ),
        what="two PodResources answers",
    )


@pytest.fixture
def sim(pod_resources_kubelet: KubeletSimulator) -> KubeletSimulator:
    return pod_resources_kubelet


class _Host:
    """A host of the FPGA resource on the simulator, from a config file a test reloads."""

    def __init__(self, short_dir: Path, devices: Path, socket_dir: Path, command: str) -> None:
        self.config = short_dir / "kdp.yaml"
        self._yaml = lambda replicas: _yaml(socket_dir, short_dir, devices, command, replicas)

    async def start(self, start_host: Any, replicas: int) -> Any:
        self.config.write_text(self._yaml(replicas))
        self.running = await start_host(self.config.read_text(), config_path=self.config)
        return self.running

    async def reload(self, replicas: int) -> None:
        self.config.write_text(self._yaml(replicas))
        assert await self.running.host.reload_from(self.config) == "ok"

    def shown(self) -> dict[str, dict[str, Any]]:
        return _devices(devices_document(self.running.host))


async def test_a_held_and_an_owed_device_stay_visible_after_a_reload_of_replicas(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """p1 holds one FPGA; p2 held the other and ended, and its release keeps failing. A
    reload that changes `replicas` (the resource is started again, its IDs change) used to
    drop both from `/devices`: the view showed only the devices the new list had, and the
    held ones the kubelet named."""
    (devices / "ttyA0").unlink()
    failing = script(short_dir, "release.sh", 'echo "stuck in reset" >&2\nexit 3\n')
    host = _Host(short_dir, devices, socket_dir, failing)
    running = await host.start(start_host, replicas=1)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    await sim.allocate(FPGA, 1, pod_uid="p1")
    await sim.allocate(FPGA, 1, pod_uid="p2")
    poller = running.host.pod_resources

    def release_of(device: str) -> str | None:
        return host.shown().get(device, {}).get("release", {}).get("state")

    await wait_until(lambda: len(poller.holdings.of(FPGA)) == 2, what="p1 and p2 seen")
    pods = {h.pod: i for i, holders in poller.holdings.of(FPGA).items() for h in holders}
    held, owed = pods["p1"], pods["p2"]
    await sim.release("p2")
    await wait_until(lambda: release_of(owed) == "failed", what="the release failed")

    await host.reload(replicas=2)
    await wait_until(lambda: release_of(owed) == "failed", what="the owed device shown")
    after = host.shown()
    assert [h["pod"] for h in after[held]["holders"]] == ["p1"]
    assert after[held]["release"]["state"] == "in_use"
    assert after[owed]["holders"] == []


async def test_a_reload_that_lowers_replicas_never_releases_under_the_pod(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """p1 holds `fpga0::<k>` (replicas 2); a reload to `replicas: 1` read that kubelet ID as
    a device of its own, so fpga0 looked free and was released under p1. The ID still names
    fpga0: held by p1, shown so, not released."""
    (devices / "ttyA0").unlink()
    (devices / "fpga1").unlink()
    log = short_dir / "release.log"
    host = _Host(short_dir, devices, socket_dir, script(short_dir, "r.sh", f'echo "$1" >> {log}\n'))
    running = await host.start(start_host, replicas=2)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    await sim.allocate(FPGA, 1, pod_uid="p1")
    poller = running.host.pod_resources
    await wait_until(lambda: len(poller.holdings.of(FPGA)) == 1, what="p1 seen")
    await host.reload(replicas=1)
    await two_answers(poller)
    assert not log.exists(), log.read_text()
    shown = host.shown()
    assert [h["pod"] for d in shown.values() for h in d["holders"]] == ["p1"]
    (holder,) = shown["fpga0"]["holders"]  # the kubelet's ID still names fpga0
    assert holder["replica"] in ("fpga0::0", "fpga0::1")
    assert shown["fpga0"]["release"]["state"] == "in_use"
