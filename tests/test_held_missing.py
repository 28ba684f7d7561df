"""A device unplugged under a running pod (issue 20 item 3, GDP#74): counted and logged with
its holders, through the simulator's kubelet and its PodResources server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.simulator import KubeletSimulator
from kdp_host.status import devices_document

from .conftest import wait_until
from .test_status_held import two_answers

pytestmark = pytest.mark.fast

FPGA = "vendor.example/fpga"


@pytest.fixture
def sim(pod_resources_kubelet: KubeletSimulator) -> KubeletSimulator:
    return pod_resources_kubelet


def config_text(socket_dir: Path, short_dir: Path, devices: Path, extra: str = "") -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: {short_dir}/pr/kubelet.sock,"
        " podResourcesInterval: 1s}\n"
        f"stateDir: {short_dir}/state\n"
        f"resources:\n  - name: {FPGA}\n"
        f'    glob: {{paths: ["{devices}/fpga*"], gracePeriod: 1h}}\n' + extra
    )


def missing(running: Any) -> float | None:
    return running.metrics.registry.get_sample_value("kdp_devices_held_missing", {"resource": FPGA})


async def test_an_unplugged_held_device_is_counted_and_names_its_pod(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_host(config_text(socket_dir, short_dir, devices))
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    assert missing(running) == 0  # from the start, at zero
    response = await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker")
    assert response is not None
    held = Path(response.devices[0].host_path)
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
    assert missing(running) == 0

    kept = short_dir / "kept"
    os.link(held, kept)
    with caplog.at_level("WARNING", logger="kdp_host"):
        held.unlink()  # the stick is pulled; the pod keeps running
        await wait_until(lambda: missing(running) == 1, what="counted")
    [record] = [r for r in caplog.records if r.getMessage() == "held_device_missing"]
    fields = getattr(record, "kdp_fields", {})
    assert fields.get("device") == held.name and fields.get("state") == "unhealthy"
    assert fields.get("holders") == "default/train-7/worker"

    os.link(kept, held)  # plugged back in (the same device: its node's number, here its inode)
    await wait_until(lambda: missing(running) == 0, what="back")
    await sim.release("train-7")  # the pod ended while its device was gone: not counted
    held.unlink()
    await wait_until(lambda: not poller.holdings.of(FPGA), what="released")
    assert missing(running) == 0


async def test_a_held_device_is_not_called_missing_before_the_first_list(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Any,
    caplog: Any,
) -> None:
    """hostile6 L1: a resource started again by a reload hears the last PodResources answer
    as it subscribes, before its driver's first list, and warned `held_device_missing
    state=gone` for every held device that was there all along (at every start and reload)."""
    config = short_dir / "kdp.yaml"

    def write(grace: str) -> None:
        config.write_text(
            f"kubelet: {{socketDir: {sim.socket_dir}, "
            f"podResourcesSocket: {short_dir}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
            f"resources:\n  - name: {FPGA}\n"
            f'    glob: {{paths: ["{devices}/fpga*"], gracePeriod: {grace}}}\n'
        )

    write("1h")
    running = await start_host(config.read_text(), config_path=config)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker")
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
    with caplog.at_level("WARNING", logger="kdp_host"):
        write("2h")  # the resource is started again
        assert await running.host.reload_from(config) == "ok"
        runtime = running.host.resources[FPGA]
        await wait_until(lambda: runtime.table.published.is_set(), what="its first list")
        seen = poller.status.last_ok
        await wait_until(
            lambda: poller.status.last_ok is not None and poller.status.last_ok != seen,
            what="an answer after the first list",
        )
    assert [r for r in caplog.records if r.getMessage() == "held_device_missing"] == []
    assert missing(running) == 0


async def test_a_device_renamed_by_a_reload_of_replicas_is_not_called_missing(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile11 K6: p1 holds `fpga0::<k>` (replicas 2); a reload to `replicas: 1` lists the
    node as `fpga0`, held for p1's booking. The node is there: no `held_device_missing
    state=gone`, not counted (the README's DeviceUnpluggedUnderPod alert and its recipe
    act on that count)."""
    (devices / "fpga1").unlink()
    config = short_dir / "kdp.yaml"

    def write(replicas: int) -> str:
        config.write_text(
            config_text(socket_dir, short_dir, devices, f"    replicas: {replicas}\n")
        )
        return config.read_text()

    running = await start_host(write(2), config_path=config)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    await sim.allocate(FPGA, 1, pod_uid="p1", container="c")
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="p1 seen")
    with caplog.at_level("INFO", logger="kdp_host"):
        write(1)
        assert await running.host.reload_from(config) == "ok"
        await two_answers(
            poller, lambda: any(r.getMessage() == "device_held" for r in caplog.records)
        )
    assert [h.pod for hs in poller.holdings.of(FPGA).values() for h in hs] == ["p1"]
    assert missing(running) == 0
    assert [r for r in caplog.records if r.getMessage() == "held_device_missing"] == []
    (resource,) = devices_document(running.host)["resources"]
    [shown] = [d for d in resource["devices"] if d["holders"]]
    assert shown["health"] == "Healthy" and shown["keptAs"] == ["fpga0"], shown
    (devices / "fpga0").unlink()  # now it is gone
    await wait_until(lambda: missing(running) == 1, what="counted once gone")


async def test_a_held_device_another_pods_mount_reaches_is_held_not_missing(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile13 M3: the victim holds fpga0; a pod handed a writable directory device makes a
    node of fpga0's number in it (here: a hard link). fpga0 is held back (the attacker's
    booking reaches its node), but it is there and its driver lists it healthy: `held`,
    not counted missing, no `held_device_missing` (the README's recipe deletes the pods of
    missing devices: it deleted the victim)."""
    share = short_dir / "share"
    (share / "a").mkdir(parents=True)
    scratch = "vendor.example/scratch"
    extra = (
        f"  - name: {scratch}\n"
        f"    glob: {{group: [{{path: '{share}/{{key}}', mount: true, readOnly: false}}]}}\n"
    )
    running = await start_host(config_text(socket_dir, short_dir, devices, extra))
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2 and sim.allocatable(scratch) == 1)
    victim = await sim.allocate(FPGA, 1, pod_uid="victim", container="c")
    assert victim is not None
    await sim.allocate(scratch, 1, pod_uid="attacker", container="c")
    poller = running.host.pod_resources
    await wait_until(
        lambda: poller.holdings and poller.holdings.of(FPGA) and poller.holdings.of(scratch),
        what="both pods seen",
    )
    node = Path(victim.devices[0].host_path)
    with caplog.at_level("WARNING", logger="kdp_host"):
        os.link(node, share / "a" / ".x")
        await wait_until(
            lambda: node.name in running.host.ownership.held_now(FPGA), what="fpga0 held back"
        )
        await two_answers(poller, lambda: True)
    assert missing(running) == 0
    assert [r for r in caplog.records if r.getMessage() == "held_device_missing"] == []
    resource = next(r for r in devices_document(running.host)["resources"] if r["name"] == FPGA)
    [shown] = [d for d in resource["devices"] if d["id"] == node.name]
    assert shown["health"] == "held" and shown["heldBack"]["resource"] == scratch, shown
    node.unlink()  # now it is gone: missing
    await wait_until(lambda: missing(running) == 1, what="counted once gone")


async def test_a_held_device_made_anew_at_its_path_is_missing_until_let_go(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile14 N3: p1 holds fpga0; the node is made again at its path as another (a char
    driver reloaded with another major, another device enumerated under the name; here a file
    of another inode renamed onto it). p1's container has the old one, which reaches nothing
    now, and kdp-host listed the new one `Healthy` in p1, counted nothing. Now: counted
    missing, `held_device_missing state=replaced`, `missing` on `/devices` (the README's
    alert and recipe act on them), until p1 lets go of the ID. The same file at the path
    again (its number: plugged back in) is not."""
    running = await start_host(config_text(socket_dir, short_dir, devices))
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    response = await sim.allocate(FPGA, 1, pod_uid="p1", container="c")
    assert response is not None
    held = Path(response.devices[0].host_path)
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
    kept = short_dir / "kept"
    os.link(held, kept)
    with caplog.at_level("WARNING", logger="kdp_host"):
        held.unlink()
        await wait_until(lambda: missing(running) == 1, what="unplugged")
        os.link(kept, held)  # the same one again: not replaced
        await wait_until(lambda: missing(running) == 0, what="back")
        await two_answers(poller)
        assert missing(running) == 0
        caplog.clear()

        fresh = short_dir / "fresh"
        fresh.touch()  # (made while fpga0 is there: another inode)
        os.rename(fresh, held)
        await wait_until(lambda: missing(running) == 1, what="counted as replaced")
    [record] = [r for r in caplog.records if r.getMessage() == "held_device_missing"]
    fields = getattr(record, "kdp_fields", {})
    assert fields.get("device") == held.name and fields.get("state") == "replaced", fields
    assert fields.get("holders") == "default/p1/c"
    (resource,) = devices_document(running.host)["resources"]
    [shown] = [d for d in resource["devices"] if d["id"] == held.name]
    assert shown["health"] == "missing" and [h["pod"] for h in shown["holders"]] == ["p1"]

    await sim.release("p1")  # p1 lets go: the new one is fpga0 as any
    await wait_until(lambda: not poller.holdings.of(FPGA), what="released")
    assert missing(running) == 0
    (resource,) = devices_document(running.host)["resources"]
    [shown] = [d for d in resource["devices"] if d["id"] == held.name]
    assert shown["health"] == "Healthy" and shown["holders"] == [], shown
