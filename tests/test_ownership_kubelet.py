"""One node in at most one advertised device of the host, through the kubelet's real device
manager (v1.32, tests/kubelet_harness.py): the kubelet books per resource and ID, so only the
host can keep a node from reaching two pods."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from .conftest import glob_config, wait_until
from .kubelet_harness import healthy

FPGA = "vendor.example/fpga"
ALIAS = "vendor.example/alias"


def host_paths(answer: dict[str, object]) -> set[str]:
    devices = answer["devices"]
    assert isinstance(devices, list)
    return {os.path.realpath(d["PathOnHost"]) for d in devices}


async def test_two_resources_never_hand_one_node_to_two_pods(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    (devices / "fpga1").unlink()
    (devices / "alias0").symlink_to(devices / "fpga0")
    kubelet = real_kubelet_factory()
    running = await start_host(
        glob_config(
            kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]*"), (ALIAS, f"{devices}/alias*")
        )
    )

    def both_registered(k) -> bool:
        return k.resource(FPGA) is not None and k.resource(ALIAS) is not None

    await kubelet.await_for(both_registered, what="both resources registered")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    second = await kubelet.acall(kubelet.allocate, "p2", {ALIAS: 1})
    granted = [a for a in (first, second) if a["error"] == ""]
    assert len(granted) == 1, (first, second)
    assert host_paths(granted[0]) == {str(devices / "fpga0")}
    seen = await kubelet.acall(kubelet.capacity)
    healthy = sorted(seen["resources"][r]["healthy"] for r in (FPGA, ALIAS))
    assert healthy == [0, 1]
    registry = running.metrics.registry
    counted = [
        registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": r, "reason": "node_owned"}
        )
        for r in (FPGA, ALIAS)
    ]
    assert sorted(counted) == [0, 1]


async def test_a_reload_that_renames_ids_never_hands_a_booked_node_to_a_new_pod(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """A pattern added by a reload changes the patterns' common directory, so every glob ID
    would change (`fpga0` -> `dev-fpga0`): the kubelet, which still books `fpga0` for the
    running pod, would hand the same node to a new pod under its new ID."""
    kubelet = real_kubelet_factory()
    (devices / "fpga1").unlink()
    other = short_dir / "other"
    other.mkdir()
    config = short_dir / "config.yaml"
    config.write_text(glob_config(kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]*")))
    running = await start_host(config.read_text(), config_path=config)

    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == "" and first["device_ids"][FPGA] == ["fpga0"]

    (other / "x0").touch()
    text = config.read_text().replace(
        f'["{devices}/fpga[0-9]*"]', f'["{devices}/fpga[0-9]*", "{other}/x*"]'
    )
    config.write_text(text)
    assert await running.host.reload_from(config) == "ok"
    await kubelet.await_for(healthy(FPGA, 2), what="both devices after the reload")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "", second
    assert host_paths(second) == {str(other / "x0")}, "the booked node went to a second pod"
    third = await kubelet.acall(kubelet.allocate, "p3", {FPGA: 1})
    assert third["error"] != "", third
    ids = sorted(kubelet.resource(FPGA)["device_numa"])
    assert "fpga0" in ids, ids


async def test_a_removed_resource_keeps_its_node_until_no_pod_holds_it(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """A reload removes the resource that owns fpga0 while a pod holds it; another resource
    reaching fpga0 through a link waits until the kubelet's PodResources shows no pod
    holding it, then gets it."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    (devices / "fpga1").unlink()
    (devices / "alias0").symlink_to(devices / "fpga0")
    head = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
    )
    owner = f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
    waiter = f'  - name: {ALIAS}\n    glob: {{paths: ["{devices}/alias*"]}}\n'
    config = short_dir / "config.yaml"
    config.write_text(head + owner)
    running = await start_host(config.read_text(), config_path=config)

    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    config.write_text(head + owner + waiter)
    assert await running.host.reload_from(config) == "ok"
    await kubelet.await_for(healthy(ALIAS, 0), what="the waiter registered, holding nothing")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == ""

    config.write_text(head + waiter)
    assert await running.host.reload_from(config) == "ok"
    poller = running.host.pod_resources
    assert poller is not None
    reloaded = poller.holdings.asked_at if poller.holdings else 0.0
    await wait_until(
        lambda: poller.holdings is not None and poller.holdings.asked_at > reloaded + 6,
        what="PodResources answers well after the reload",
    )
    assert (await kubelet.acall(kubelet.resource, ALIAS))["healthy"] == 0
    second = await kubelet.acall(kubelet.allocate, "p2", {ALIAS: 1})
    assert second["error"] != "", "fpga0 went to a second pod while p1 holds it"

    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(ALIAS, 1), what="the waiter wins once p1 is gone")
    third = await kubelet.acall(kubelet.allocate, "p3", {ALIAS: 1})
    assert third["error"] == "" and host_paths(third) == {str(devices / "fpga0")}


async def test_a_reload_that_changes_replicas_never_adds_users_to_a_booked_device(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """`replicas: 1` -> `2` renames fpga0 to fpga0::0 and fpga0::1: with p1 holding fpga0
    the kubelet would give the device to two more pods (three users of a device meant for
    two). The device waits until no pod holds its old ID."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    (devices / "fpga1").unlink()
    head = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
    )
    config = short_dir / "config.yaml"
    config.write_text(head)
    running = await start_host(config.read_text(), config_path=config)

    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    config.write_text(head + "    replicas: 2\n")
    assert await running.host.reload_from(config) == "ok"
    poller = running.host.pod_resources
    assert poller is not None
    reloaded = poller.holdings.asked_at if poller.holdings else 0.0
    await wait_until(
        lambda: poller.holdings is not None and poller.holdings.asked_at > reloaded + 6,
        what="PodResources answers well after the reload",
    )
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] != "", "a second pod got fpga0 while p1 holds it exclusively"
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(FPGA, 2), what="both replicas once p1 is gone")
    for pod in ("p3", "p4"):
        answer = await kubelet.acall(kubelet.allocate, pod, {FPGA: 1})
        assert answer["error"] == "" and host_paths(answer) == {str(devices / "fpga0")}


async def test_ids_a_reload_kept_survive_a_kdp_host_kill(
    real_kubelet_factory, short_dir: Path, devices: Path
) -> None:
    """A reload renames fpga0 (`fpga0` -> another ID) while p1 holds it: the device keeps
    `fpga0`. Then kdp-host is SIGKILLed and started again with the new config: it must
    still advertise the node as `fpga0` (`<stateDir>/ownership.json`), or the kubelet,
    which books `fpga0` for p1, would hand the same node to a new pod under its new ID."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    (devices / "fpga1").unlink()
    other = short_dir / "other"
    other.mkdir()
    (other / "x0").touch()
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\n"
        "resources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{devices}/fpga[0-9]*"], gracePeriod: 1s}}\n'
    )
    argv = [sys.executable, "-m", "kdp_host", "run", "--config", str(config)]
    log = (short_dir / "host.log").open("wb")
    first = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
        booked = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
        assert booked["error"] == "" and booked["device_ids"][FPGA] == ["fpga0"]
        config.write_text(
            config.read_text().replace(
                f'["{devices}/fpga[0-9]*"]', f'["{devices}/fpga[0-9]*", "{other}/x*"]'
            )
        )
        first.send_signal(signal.SIGHUP)
        await kubelet.await_for(healthy(FPGA, 2), what="both devices after the reload")
        assert "fpga0" in kubelet.resource(FPGA)["device_numa"]
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    before = await kubelet.acall(kubelet.last_seq)
    second = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        await kubelet.acall(kubelet.registered_at, [FPGA], before)
        await kubelet.await_for(healthy(FPGA, 2), what="both devices after the restart")
        granted = []
        for pod in ("p2", "p3"):
            answer = await kubelet.acall(kubelet.allocate, pod, {FPGA: 1})
            if answer["error"] == "":
                granted.append(answer)
        assert [host_paths(a) for a in granted] == [{str(other / "x0")}], (
            "the node p1 holds went to a second pod after the restart"
        )
        assert "fpga0" in kubelet.resource(FPGA)["device_numa"]
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
        log.close()


async def test_a_replica_change_still_waits_after_a_kdp_host_kill(
    real_kubelet_factory, short_dir: Path, devices: Path
) -> None:
    """`replicas: 1` -> `2` while p1 holds fpga0: the device waits (no pod may share it
    with p1). kdp-host is SIGKILLed and started again with `replicas: 2`: it must still wait
    (`ownership.json`), or the kubelet would hand fpga0::0 to a second pod."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    (devices / "fpga1").unlink()
    config = short_dir / "config.yaml"
    head = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"], gracePeriod: 1s}}\n'
    )
    config.write_text(head)
    argv = [sys.executable, "-m", "kdp_host", "run", "--config", str(config)]
    log = (short_dir / "host.log").open("wb")
    first = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
        assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
        before = await kubelet.acall(kubelet.last_seq)
        config.write_text(head + "    replicas: 2\n")
        first.send_signal(signal.SIGHUP)
        await kubelet.acall(kubelet.registered_at, [FPGA], before)  # new options: again
        await kubelet.await_for(healthy(FPGA, 0), what="fpga0 waits for p1")
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    held_lines = _replica_waits(short_dir / "host.log")
    assert held_lines >= 1
    before = await kubelet.acall(kubelet.last_seq)
    second = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        await kubelet.acall(kubelet.registered_at, [FPGA], before)
        await wait_until(
            lambda: _replica_waits(short_dir / "host.log") > held_lines,
            what="the restarted host holds fpga0 back",
        )
        await kubelet.await_for(healthy(FPGA, 0), what="the kubelet sees no free device")
        for pod in ("p2", "p3"):
            answer = await kubelet.acall(kubelet.allocate, pod, {FPGA: 1})
            assert answer["error"] != "", f"{pod} got fpga0 while p1 holds it exclusively"
        await kubelet.acall(kubelet.release, "p1")
        await kubelet.await_for(healthy(FPGA, 2), what="both replicas once p1 is gone")
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
        log.close()


def _replica_waits(log: Path) -> int:
    """`device_held` lines of a device waiting on a change of `replicas` in a host log."""
    lines = log.read_text(errors="replace").splitlines()
    return sum("device_held" in line and "replicas_changed" in line for line in lines)
