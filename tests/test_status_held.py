"""A device held or owed a release stays in `/devices` and `kdp-host status` whatever a reload
changed (hostile5 H3, kdp_host/status.py): an operator must see a held device and a release
that keeps failing until the device is released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdp_host.simulator import KubeletSimulator
from kdp_host.status import devices_document

from .conftest import script, wait_until

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


async def test_a_held_and_an_owed_device_stay_visible_after_a_reload_of_replicas(
    socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """p1 holds one FPGA; p2 held the other and ended, and its release keeps failing. A
    reload that changes `replicas` (the resource is started again, its IDs change) used to
    drop both from `/devices`: the kubelet's IDs were read with the new replica count, and
    the owed device was shown only while the new list had it."""
    (devices / "ttyA0").unlink()
    failing = script(short_dir, "release.sh", 'echo "stuck in reset" >&2\nexit 3\n')
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0, pod_resources_dir=short_dir / "pr")
    await sim.start()
    try:
        config = short_dir / "kdp.yaml"
        config.write_text(_yaml(socket_dir, short_dir, devices, failing, replicas=1))
        running = await start_host(config.read_text(), config_path=config)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        await sim.allocate(FPGA, 1, pod_uid="p1")
        await sim.allocate(FPGA, 1, pod_uid="p2")
        poller = running.host.pod_resources

        def shown() -> dict[str, dict[str, Any]]:
            return _devices(devices_document(running.host))

        def release_of(device: str) -> str | None:
            return shown().get(device, {}).get("release", {}).get("state")

        await wait_until(lambda: len(poller.holdings.of(FPGA)) == 2, what="p1 and p2 seen")
        pods = {h.pod: i for i, holders in poller.holdings.of(FPGA).items() for h in holders}
        held, owed = pods["p1"], pods["p2"]
        await sim.release("p2")
        await wait_until(lambda: release_of(owed) == "failed", what="the release failed")

        config.write_text(_yaml(socket_dir, short_dir, devices, failing, replicas=2))
        assert await running.host.reload_from(config) == "ok"
        await wait_until(lambda: release_of(owed) == "failed", what="the owed device shown")
        after = shown()
        assert [h["pod"] for h in after[held]["holders"]] == ["p1"]
        assert after[held]["release"]["state"] == "in_use"
        assert after[owed]["holders"] == []
    finally:
        await sim.stop()


async def test_a_reload_that_lowers_replicas_never_releases_under_the_pod(
    socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """p1 holds `fpga0::1` (replicas 2); a reload to `replicas: 1` must not take the kubelet's
    ID for another device: the device stays held by p1, shown so, and is not released."""
    (devices / "ttyA0").unlink()
    (devices / "fpga1").unlink()
    log = short_dir / "release.log"
    command = script(short_dir, "release.sh", f'echo "$1" >> {log}\n')
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0, pod_resources_dir=short_dir / "pr")
    await sim.start()
    try:
        config = short_dir / "kdp.yaml"
        config.write_text(_yaml(socket_dir, short_dir, devices, command, replicas=2))
        running = await start_host(config.read_text(), config_path=config)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        await sim.allocate(FPGA, 1, pod_uid="p1")
        poller = running.host.pod_resources
        await wait_until(lambda: len(poller.holdings.of(FPGA)) == 1, what="p1 seen")
        config.write_text(_yaml(socket_dir, short_dir, devices, command, replicas=1))
        assert await running.host.reload_from(config) == "ok"
        before = poller.status.last_ok
        await wait_until(
            lambda: (
                poller.status.last_ok is not None
                and before is not None
                and poller.status.last_ok > before + 1.5
            ),
            what="two PodResources answers after the reload",
        )
        shown = _devices(devices_document(running.host))
        assert not log.exists(), log.read_text()
        assert [h["pod"] for d in shown.values() for h in d["holders"]] == ["p1"]
        (holder,) = shown["fpga0"]["holders"]  # the kubelet's ID still names fpga0
        assert holder["replica"] in ("fpga0::0", "fpga0::1")
        assert shown["fpga0"]["release"]["state"] == "in_use"
    finally:
        await sim.stop()
