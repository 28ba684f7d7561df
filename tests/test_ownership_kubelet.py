"""One node in at most one advertised device of the host, through the kubelet's real device
manager (v1.32, tests/kubelet_harness.py): the kubelet books per resource and ID, so only the
host can keep a node from reaching two pods."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import FAST, KdpProcess, glob_config, wait_until
from .fake_sysfs import FakeSysfs
from .fast import kdp_host_command
from .kubelet_harness import RealKubelet, free_port, healthy

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

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

    def both_listed(events: list[dict[str, object]]) -> bool:
        return {FPGA, ALIAS} <= {e["resource"] for e in events if e["kind"] == "list_and_watch"}

    # Both first lists processed, not just both registered: the kubelet's device manager
    # answers an Allocate of a resource whose first list it has not processed yet with no
    # device and no error (flaky under load: p1 "granted" nothing).
    await kubelet.acall(kubelet.wait_events, both_listed, 0, 60.0, "both resources' lists")
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
        lambda: (
            poller.holdings is not None
            and poller.holdings.asked_at > reloaded + FAST.heard_after + poller.interval
        ),
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
        lambda: (
            poller.holdings is not None
            and poller.holdings.asked_at > reloaded + FAST.heard_after + poller.interval
        ),
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
        f"metrics: {{listen: 127.0.0.1:{free_port()}}}\n"
        "resources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{devices}/fpga[0-9]*"], gracePeriod: 1s}}\n'
    )
    argv, env = kdp_host_command(fast=True)
    argv += ["run", "--config", str(config)]
    log = (short_dir / "host.log").open("wb")
    first = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env)
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
    second = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env)
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
        f"stateDir: {short_dir / 'state'}\n"
        f"metrics: {{listen: 127.0.0.1:{free_port()}}}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"], gracePeriod: 1s}}\n'
    )
    config.write_text(head)
    argv, env = kdp_host_command(fast=True)
    argv += ["run", "--config", str(config)]
    log = (short_dir / "host.log").open("wb")
    first = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env)
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
    second = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env)
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
    """`device_held` lines of a device held by a booking in a host log (a change of
    `replicas` gives it IDs other than the one p1 booked)."""
    lines = log.read_text(errors="replace").splitlines()
    return sum("device_held" in line and "booked" in line for line in lines)


# ---------------------------------------------------------------- booked claims (issue 17)
# Each test replays one finding of the hostile pass through the real kubelet: the kubelet
# books by ID, so a node the host hands out under a second ID (after a restart, a rename, a
# replicas change, an unplug or a reused device number) reaches a second live pod.


def booked_head(kubelet: RealKubelet, short_dir: Path, interval: str = "1s") -> str:
    """The config's head: PodResources polled, a stateDir and a port of the test's own."""
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{short_dir / 'pr'}/kubelet.sock, podResourcesInterval: {interval}}}\n"
        f"stateDir: {short_dir / 'state'}\n"
        f"metrics: {{listen: 127.0.0.1:{free_port()}}}\n"
        "resources:\n"
    )


def booked_config(
    kubelet: RealKubelet, short_dir: Path, resources: str, interval: str = "1s"
) -> Path:
    """`<short_dir>/config.yaml`: `booked_head`, then the `resources` entries."""
    config = short_dir / "config.yaml"
    config.write_text(booked_head(kubelet, short_dir, interval) + resources)
    return config


async def grants(kubelet: RealKubelet, resource: str, *pods: str) -> list[set[str]]:
    """The host paths each pod got (one device each), for the pods the kubelet admitted."""
    granted = []
    for pod in pods:
        answer = await kubelet.acall(kubelet.allocate, pod, {resource: 1})
        if answer["error"] == "":
            granted.append(host_paths(answer))
    return granted


async def restart(kubelet: RealKubelet, host: KdpProcess, *resources: str) -> None:
    """SIGKILL (a crash, an OOM kill, an upgrade), start again, wait for the registrations."""
    await host.stop()
    before = await kubelet.acall(kubelet.last_seq)
    await host.start()
    await kubelet.acall(kubelet.registered_at, resources, before)


def pod_resources_answers(config: Path) -> float:
    """How many PodResources answers the kdp-host running on `config` has had (its
    `/metrics`)."""
    listen = re.search(r"listen: (127\.0\.0\.1:[0-9]+)", config.read_text())
    assert listen is not None
    with urllib.request.urlopen(f"http://{listen[1]}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    found = re.search(r'^kdp_pod_resources_polls_total\{result="ok"\} (\S+)$', body, re.M)
    return float(found[1]) if found else 0.0


async def restart_without_bookings(kubelet: RealKubelet, host: KdpProcess, config: Path) -> None:
    """SIGKILL, ownership.json gone, start again: return once a PodResources answer came
    after the restarted host listed (what the host books from it is booked then)."""
    await host.stop()
    (config.parent / "state" / OWNERSHIP_FILE).unlink()
    await restart(kubelet, host, FPGA)
    answered = await asyncio.to_thread(pod_resources_answers, config)
    await kubelet.await_for(
        lambda _: pod_resources_answers(config) > answered,
        what="a PodResources answer after the restarted host listed",
    )


async def fpga0_served(
    real_kubelet_factory: Callable[..., RealKubelet],
    short_dir: Path,
    devices: Path,
    kdp_process: Callable[[Path], Awaitable[KdpProcess]],
) -> tuple[RealKubelet, Path, KdpProcess]:
    """fpga0 alone (fpga1 gone) served by kdp-host as a process of its own on `booked_config`
    (PodResources on), advertised: the kubelet, the config and the process."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (devices / "fpga1").unlink()
    entry = f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
    config = booked_config(kubelet, short_dir, entry)
    host = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    return kubelet, config, host


async def test_a_pod_admitted_before_bookings_were_kept_keeps_its_node_after_a_rename(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    """ownership.json is gone while p1 holds fpga0 (an upgrade from a version without
    bookings, a lost or deleted state directory). The restarted host books fpga0 from what
    PodResources shows p1 holding, so a reload that renames its IDs (`replicas: 2`: fpga0::0,
    fpga0::1) does not hand the node to more pods."""
    kubelet, config, host = await fpga0_served(
        real_kubelet_factory, short_dir, devices, kdp_process
    )
    assert await grants(kubelet, FPGA, "p1") == [{str(devices / "fpga0")}]
    await restart_without_bookings(kubelet, host, config)
    before = await kubelet.acall(kubelet.last_seq)
    config.write_text(config.read_text().replace("    glob:", "    replicas: 2\n    glob:"))
    host.reload()
    listed = await kubelet.acall(kubelet.first_list_after_registering, FPGA, before)
    assert await grants(kubelet, FPGA, "p2", "p3") == [], f"p1 holds fpga0 ({listed})"
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(FPGA, 2), what="both replicas once p1 is gone")


async def test_hostile_1_a_restart_after_a_renaming_reload_keeps_the_booked_node(
    real_kubelet_factory, short_dir: Path, kdp_process
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    a, b = short_dir / "a", short_dir / "b"
    for directory in (a, b):
        directory.mkdir()
    (a / "x").touch()
    (a / "y").touch()
    config = booked_config(
        kubelet,
        short_dir,
        f'  - name: {FPGA}\n    glob: {{paths: ["{a}/*", "{b}/*"]}}\n',
    )
    host = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 2), what="a-x and a-y advertised")
    [booked] = await grants(kubelet, FPGA, "p1")
    config.write_text(config.read_text().replace(f', "{b}/*"', ""))  # IDs x and y now
    host.reload()
    await kubelet.await_for(host.logged("config_reloaded"), what="the reload")
    await restart(kubelet, host, FPGA)
    await kubelet.await_for(healthy(FPGA, 2), what="both devices after the restart")
    granted = await grants(kubelet, FPGA, "p2", "p3")
    assert len(granted) == 1 and booked not in granted, (booked, granted)


@pytest.mark.parametrize("bookings_kept", [True, False], ids=["booked", "no-bookings"])
async def test_hostile_2_a_restart_with_fewer_replicas_adds_no_user_to_a_booked_device(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process, bookings_kept: bool
) -> None:
    """`replicas: 2` -> `1` while kdp-host is down, p1 and p2 holding fpga0::0 and fpga0::1:
    fpga0 waits (booked from ownership.json, or, with it gone, from PodResources: the replica
    IDs are fpga0's); only fpga1 goes to new pods, and fpga0 comes back once both ended."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (devices / "fpga1").unlink()
    entry = f'  - name: {FPGA}\n    replicas: 2\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
    config = booked_config(kubelet, short_dir, entry)
    host = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 2), what="fpga0::0 and fpga0::1 advertised")
    assert await grants(kubelet, FPGA, "p1", "p2") == [{str(devices / "fpga0")}] * 2
    (devices / "fpga1").touch()
    config.write_text(config.read_text().replace("    replicas: 2\n", ""))
    if bookings_kept:
        await restart(kubelet, host, FPGA)
    else:
        await restart_without_bookings(kubelet, host, config)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga1 alone after the restart")
    granted = await grants(kubelet, FPGA, "p3", "p4")
    assert granted == [{str(devices / "fpga1")}], "fpga0 is booked twice already"
    for pod in ("p1", "p2"):
        await kubelet.acall(kubelet.release, pod)
    await kubelet.await_for(healthy(FPGA, 2), what="fpga0 again once p1 and p2 ended")


async def test_hostile_3_a_restart_never_gives_a_booked_node_to_another_resource(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    links = short_dir / "links"
    links.mkdir()
    (links / "l1").symlink_to(devices / "fpga1")
    probe = f"echo fpga0 Healthy path={devices}/fpga0"
    config = booked_config(
        kubelet,
        short_dir,
        f'  - name: {FPGA}\n    shell: {{command: [sh, -c, "{probe}"], interval: 2s}}\n'
        + f'  - name: {ALIAS}\n    glob: {{paths: ["{links}/*"]}}\n',
    )
    host = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    assert await grants(kubelet, FPGA, "p1") == [{str(devices / "fpga0")}]
    (links / "l0").symlink_to(devices / "fpga0")  # a by-id style link appears later
    await restart(kubelet, host, FPGA, ALIAS)  # the glob lists before the shell probe

    def both(k: RealKubelet) -> bool:
        return (k.resource(ALIAS) or {}).get("healthy", 0) >= 1 and healthy(FPGA, 1)(k)

    await kubelet.await_for(both, what="both resources after the restart")
    granted = await grants(kubelet, ALIAS, "p2", "p3")
    assert granted == [{str(devices / "fpga1")}], "p1 holds fpga0"


async def test_hostile_4_a_probe_that_renamed_a_booked_device_keeps_it_across_a_restart(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    out = short_dir / "out"
    out.write_text(f"devA Healthy path={devices}/fpga0\n")
    config = booked_config(
        kubelet,
        short_dir,
        f'  - name: {FPGA}\n    shell: {{command: [cat, "{out}"], interval: 1s}}\n',
    )
    host = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 1), what="devA advertised")
    assert await grants(kubelet, FPGA, "p1") == [{str(devices / "fpga0")}]
    out.write_text(f"devB Healthy path={devices}/fpga0\ndevY Healthy path={devices}/fpga1\n")
    await kubelet.await_for(healthy(FPGA, 2), what="devY added, devA kept")
    await restart(kubelet, host, FPGA)
    await kubelet.await_for(healthy(FPGA, 2), what="two devices after the restart")
    granted = await grants(kubelet, FPGA, "p2", "p3")
    assert granted == [{str(devices / "fpga1")}], "p1 holds fpga0"


async def test_hostile_5_unplug_reload_replug_keeps_the_booked_node(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    a, b = short_dir / "a", short_dir / "b"
    for directory in (a, b):
        directory.mkdir()
    (a / "x").touch()
    config = short_dir / "config.yaml"
    config.write_text(
        booked_head(kubelet, short_dir)
        + f'  - name: {FPGA}\n    glob: {{paths: ["{a}/*", "{b}/*"], gracePeriod: 0s}}\n'
    )
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(FPGA, 1), what="a-x advertised")
    assert await grants(kubelet, FPGA, "p1") == [{str(a / "x")}]
    away = short_dir / "away"  # (files stand for nodes: a file is its inode, so the node
    (a / "x").rename(away)  # unplugged and plugged back is the same file moved away and back)
    await kubelet.await_for(healthy(FPGA, 0), what="a-x gone")
    config.write_text(config.read_text().replace(f', "{b}/*"', ""))  # its ID would be x
    assert await running.host.reload_from(config) == "ok"
    (a / "z").touch()  # the reloaded resource lists while the node is away
    await kubelet.await_for(healthy(FPGA, 1), what="z advertised")
    away.rename(a / "x")  # plugged back
    await kubelet.await_for(healthy(FPGA, 2), what="the node advertised again")
    assert await grants(kubelet, FPGA, "p2", "p3") == [{str(a / "z")}], "p1 holds a-x"
    assert "a-x" in kubelet.resource(FPGA)["device_numa"]


async def test_hostile_6_a_reused_device_number_stays_booked_until_the_old_pod_ends(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    fake = FakeSysfs(short_dir / "root")
    controller = fake.usb_controller()
    first = fake.usb_serial_adapter(controller, "1-1", devnum=3, serial="SERB")
    running = await start_host(
        booked_head(kubelet, short_dir)
        + f'  - name: {FPGA}\n    sysfs:\n      usb: [{{vendor: "0403"}}]\n'
        f"      sysfsRoot: {fake.sys}\n      devRoot: {fake.dev}\n      gracePeriod: 0s\n"
        "      nodes: {subsystems: [tty]}\n"
    )
    await kubelet.await_for(healthy(FPGA, 1), what="SERB advertised")
    assert await grants(kubelet, FPGA, "p1") == [{"/dev/ttyUSB0"}]  # devRoot is /dev inside
    fake.remove_device(first)  # unplugged: p1 keeps running, its container keeps 188:0
    await kubelet.await_for(healthy(FPGA, 0), what="SERB gone")
    fake.usb_serial_adapter(controller, "1-2", devnum=4, serial="SERC")  # ttyUSB0 again

    def listed(k: RealKubelet) -> bool:
        """The new stick advertised, or held by p1's booking: its node is claimed as found
        at devRoot (hostile9 L1), a fake file, which may get the old node's inode again as
        a real node gets its device number."""
        held = running.metrics.registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": FPGA, "reason": "node_owned"}
        )
        return healthy(FPGA, 1)(k) or (held or 0) >= 1

    await kubelet.await_for(listed, what="the new stick's node listed")
    assert await grants(kubelet, FPGA, "p2") == [], "p1 can still reach ttyUSB0"
    await kubelet.acall(
        kubelet.release, "p1"
    )  # the old pod ends: PodResources shows it, the stick is free
    await kubelet.await_for(lambda k: k.allocate("p2", {FPGA: 1})["error"] == "", what="p2")


async def test_hostile_7_allocate_command_output_naming_another_devices_node_is_refused(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    kubelet = real_kubelet_factory()
    (devices / "y0").touch()
    output = json.dumps(
        {
            "paths": [f"{devices}/fpga1:/dev/stolen"],
            "mounts": [{"hostPath": f"{devices}/fpga0", "containerPath": "/stolen2"}],
        }
    )
    hook = short_dir / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat <<'END'\n{output}\nEND\n")
    hook.chmod(0o755)
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
        f'  - name: {ALIAS}\n    glob: {{paths: ["{devices}/y*"]}}\n'
        f'    allocate: {{command: ["{hook}"]}}\n'
    )
    await kubelet.await_for(
        lambda k: healthy(FPGA, 2)(k) and healthy(ALIAS, 1)(k), what="both registered"
    )
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 2})
    assert first["error"] == ""
    refused = await kubelet.acall(kubelet.allocate, "p2", {ALIAS: 1})
    assert "InvalidArgument" in refused["error"] or "INVALID_ARGUMENT" in refused["error"]
    assert re.search(f"which device fpga[01] of {re.escape(FPGA)} owns", refused["error"]), refused


async def test_hostile_12_without_podresources_a_parked_device_says_what_frees_it(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    kubelet = real_kubelet_factory()
    config = booked_config(
        kubelet,
        short_dir,
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n',
        interval="0s",
    )
    host = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 2), what="fpga0 and fpga1 advertised")
    answer = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    [booked] = answer["device_ids"][FPGA]
    config.write_text(config.read_text().replace("    glob:", "    replicas: 2\n    glob:"))
    host.reload()
    await kubelet.await_for(host.logged("config_reloaded"), what="the reload")
    await kubelet.acall(kubelet.release, "p1")
    parked = host.logged("device_held", f"device={booked}", "kdp-host unbook")
    await kubelet.await_for(parked, what="the held device's log line says what frees it")
    await kubelet.await_for(healthy(FPGA, 2), what="the free device's two replicas only")
    free = {str(devices / "fpga0"), str(devices / "fpga1")} - host_paths(answer)
    granted = await grants(kubelet, FPGA, "p2", "p3", "p4")
    assert granted == [free, free], "the booked device stays parked: nothing shows p1 ended"
    await host.stop(signal.SIGTERM)
    unbook = [sys.executable, "-m", "kdp_host", "unbook", "--config", str(config), FPGA, booked]
    done = await asyncio.create_subprocess_exec(*unbook)
    assert await asyncio.wait_for(done.wait(), 60) == 0
    await restart(kubelet, host, FPGA)
    await kubelet.await_for(healthy(FPGA, 4), what="both devices' replicas after unbook")


# ---------------------------------------------------------------- the second hostile pass
# What an Allocate answer hands out besides its devices (`allocate.mounts`, an
# `allocate.command`'s nodes and mounts) is booked with it: a device that appears there later
# is not advertised while the pod holds it.

B_RESOURCE = "vendor.example/b"


def _hook_printing(short_dir: Path, output: dict[str, object]) -> Path:
    hook = short_dir / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat <<'END'\n{json.dumps(output)}\nEND\n")
    hook.chmod(0o755)
    return hook


@pytest.mark.parametrize("variant", ["node", "mount"])
async def test_hostile2_2_what_allocate_command_handed_out_is_booked(
    real_kubelet_factory, short_dir: Path, start_host, variant: str
) -> None:
    """pod1's allocate.command hands it the directory `dev/b` (a mount) while nothing is in
    it; b0 appears later: it is not advertised while pod1 runs (c1, appearing with it, is),
    and is once pod1 ends. A node `dev/b/b0` where nothing is is never handed out (hostile9
    H5: what it reaches on the host is not known): that Allocate is refused."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    dev = short_dir / "dev"
    for name in ("a", "b", "c"):
        (dev / name).mkdir(parents=True)
    (dev / "a" / "a0").touch()
    b0 = dev / "b" / "b0"
    output: dict[str, object] = (
        {"paths": [f"{b0}:/dev/extra"]}
        if variant == "node"
        else {"mounts": [{"hostPath": str(dev / "b"), "containerPath": "/mnt/b"}]}
    )
    hook = _hook_printing(short_dir, output)
    await start_host(
        booked_head(kubelet, short_dir) + f'  - name: {FPGA}\n    glob: {{paths: ["{dev}/a/*"]}}\n'
        f'    allocate: {{command: ["{hook}"]}}\n'
        f"  - name: {B_RESOURCE}\n"
        f'    glob: {{paths: ["{dev}/b/*", "{dev}/c/*"], gracePeriod: 0s}}\n'
    )
    await kubelet.await_for(healthy(FPGA, 1), what="a0 advertised")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    if variant == "node":
        assert "does not exist in kdp-host's view" in first["error"], first
        return
    assert first["error"] == "", first
    await _b0_waits_for_p1(kubelet, dev, "its hook's output")
    assert await grants(kubelet, B_RESOURCE, "p4") == [{str(b0)}]


async def test_hostile2_11_allocate_command_mounting_an_ancestor_of_a_held_node_is_refused(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """A mount of `dev` (not only of `dev/b`) reaches p0's b0: refused, naming b0."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    for name in ("a", "b"):
        (dev / name).mkdir(parents=True)
    (dev / "a" / "a0").touch()
    (dev / "b" / "b0").touch()
    hook = _hook_printing(
        short_dir, {"mounts": [{"hostPath": str(dev), "containerPath": "/mnt/x"}]}
    )
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{dev}/a/*"]}}\n'
        f'    allocate: {{command: ["{hook}"]}}\n'
        f'  - name: {B_RESOURCE}\n    glob: {{paths: ["{dev}/b/*"]}}\n'
    )
    await kubelet.await_for(
        lambda k: healthy(FPGA, 1)(k) and healthy(B_RESOURCE, 1)(k), what="both registered"
    )
    assert (await kubelet.acall(kubelet.allocate, "p0", {B_RESOURCE: 1}))["error"] == ""
    refused = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert "InvalidArgument" in refused["error"] or "INVALID_ARGUMENT" in refused["error"]
    assert f"which device b0 of {B_RESOURCE} owns" in refused["error"], refused


async def _b0_waits_for_p1(kubelet: RealKubelet, dev: Path, through: str) -> None:
    """p1 holds what reaches `dev/b`: b0 appearing there is held while p1 lives (c1 is
    advertised and granted), and advertised once p1 is gone."""
    (dev / "b" / "b0").touch()
    (dev / "c" / "c1").touch()
    await kubelet.await_for(healthy(B_RESOURCE, 1), what="c1 advertised (b0 held)")
    granted = await grants(kubelet, B_RESOURCE, "p2", "p3")
    assert granted == [{str(dev / "c" / "c1")}], f"p1 can reach b0 through {through}"
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(B_RESOURCE, 2), what="b0 advertised once p1 is gone")


async def test_hostile2_3_allocate_mounts_are_booked_and_checked(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """`allocate.mounts` names `dev/b`, where b's devices are: while p1 holds that mount, b0
    appearing there is not advertised (c1 is); once b0 is advertised, an Allocate of the
    resource with the mount would be refused, naming b0: so the resource is withheld, its
    need `mounts` unmet (every answer mounts dev/b: hostile24 F1), and the kubelet refuses."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    dev = short_dir / "dev"
    for name in ("a", "b", "c"):
        (dev / name).mkdir(parents=True)
    (dev / "a" / "a0").touch()
    (dev / "a" / "a1").touch()
    running = await start_host(
        booked_head(kubelet, short_dir) + f'  - name: {FPGA}\n    glob: {{paths: ["{dev}/a/*"]}}\n'
        f"    allocate: {{mounts: [{{hostPath: {dev / 'b'}, containerPath: /mnt/b}}]}}\n"
        f"  - name: {B_RESOURCE}\n"
        f'    glob: {{paths: ["{dev}/b/*", "{dev}/c/*"], gracePeriod: 0s}}\n'
    )
    await kubelet.await_for(healthy(FPGA, 2), what="a0 and a1 advertised")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    await _b0_waits_for_p1(kubelet, dev, "allocate.mounts")
    await kubelet.await_for(healthy(FPGA, 0), what="FPGA withheld: its answers would hand b0")
    assert running.host.not_ready()[FPGA] == "allocate.mounts source reaches another device's node"
    refused = await kubelet.acall(kubelet.allocate, "p4", {FPGA: 1})
    assert refused["error"] != "" and not refused["device_ids"], refused


@pytest.mark.parametrize("spelling", ["same", "link"])
async def test_hostile4_h5_one_pci_function_in_one_pod_whatever_sysfs_root_spelling(
    real_kubelet_factory, short_dir: Path, start_host, spelling: str
) -> None:
    """Hostile4 H5: a PCI function that passes no node (handed out by `{address}`), matched
    by two resources whose `sysfsRoot` is one tree, the second spelled through a link to
    it: one resource advertises it, the other holds it, so one pod gets it."""
    kubelet = real_kubelet_factory()
    fake = FakeSysfs(short_dir / "root")
    fake.pci_device("0000:03:00.0", "10ee", "9038")
    other_root = fake.sys
    if spelling == "link":
        other_root = short_dir / "sys2"
        other_root.symlink_to(fake.sys)
    entry = (
        '    sysfs:\n      pci: [{{vendor: "0x10ee"}}]\n      env: {{ADDR: "{{address}}"}}\n'
        "      sysfsRoot: {root}\n      devRoot: {dev}\n      gracePeriod: 0s\n"
    )
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        f"stateDir: {short_dir / 'state'}\n"
        f"metrics: {{listen: 127.0.0.1:{free_port()}}}\n"
        "resources:\n"
        f"  - name: {FPGA}\n"
        + entry.format(root=fake.sys, dev=fake.dev)
        + f"  - name: {ALIAS}\n"
        + entry.format(root=other_root, dev=fake.dev)
    )
    running = await start_host(config)

    def one_advertised(k) -> bool:
        seen = [k.resource(r) for r in (FPGA, ALIAS)]
        return None not in seen and sorted(r["healthy"] for r in seen if r) == [0, 1]

    await kubelet.await_for(one_advertised, what="the function advertised by one resource")
    seen = await kubelet.acall(kubelet.capacity)
    winner, loser = sorted((FPGA, ALIAS), key=lambda r: -seen["resources"][r]["healthy"])
    first = await kubelet.acall(kubelet.allocate, "p1", {winner: 1})
    second = await kubelet.acall(kubelet.allocate, "p2", {loser: 1})
    assert first["error"] == "" and second["error"] != "", (first, second)
    registry = running.metrics.registry
    held = registry.get_sample_value(
        "kdp_driver_skipped_total", {"resource": loser, "reason": "node_owned"}
    )
    assert held == 1
