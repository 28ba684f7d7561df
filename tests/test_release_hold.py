"""A device whose release is still due reaches no other pod, through any resource (hostile3
G9), through the kubelet's real device manager (v1.32, tests/kubelet_harness.py).

The README promises "no container starts with a device that an earlier container used until
that device's release command has succeeded". The release is owed by (resource, ID); the node
is claimed in the host's ownership index. A node whose owning resource stops listing it (its
link removed, its pattern changed by a reload) while its release fails must stay claimed:
the booking that holds it lives until the release has succeeded."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import FAST, wait_until
from .kubelet_harness import healthy

OWNER = "vendor.example/reset"
OTHER = "vendor.example/plain"


@pytest.fixture
def pty_node() -> Iterator[str]:
    """A real character node an ordinary user may open (a pseudo-terminal)."""
    primary, secondary = os.openpty()
    try:
        yield os.ttyname(secondary)
    finally:
        os.close(primary)
        os.close(secondary)


def booked(state: Path) -> list[tuple[str, str]]:
    path = state / OWNERSHIP_FILE
    if not path.exists():
        return []
    entries = json.loads(path.read_text())["bookings"]
    return sorted((e["resource"], e["id"]) for e in entries)


@pytest.mark.parametrize("variant", ["unlink", "reload", "restart"])
async def test_a_node_whose_release_fails_reaches_no_pod_through_another_resource(
    real_kubelet_factory, short_dir: Path, start_host, pty_node: str, variant: str
) -> None:
    """OWNER hands the node to p1 through a link; the link goes (`unlink`) or OWNER's
    pattern no longer matches it (`reload`); p1 ends and OWNER's release fails. OTHER, which
    reaches the node through a link of its own, must not get it until the release succeeds:
    then it does. `restart`: the link goes, and kdp-host is restarted while the release
    fails (the hold is read back from stateDir)."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    dev, links, state = short_dir / "dev", short_dir / "b", short_dir / "state"
    dev.mkdir()
    links.mkdir()
    (dev / "x0").symlink_to(pty_node)
    clean = short_dir / "clean"
    head = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nresources:\n"
    )

    def owner(pattern: str) -> str:
        return (
            f"  - name: {OWNER}\n"
            f'    glob: {{paths: ["{dev}/{pattern}"], gracePeriod: 0s}}\n'
            f'    release: {{command: [sh, -c, "test -e {clean}"]}}\n'
        )

    other = f'  - name: {OTHER}\n    glob: {{paths: ["{links}/*"]}}\n'
    config = short_dir / "config.yaml"
    config.write_text(head + owner("*") + other)
    running = await start_host(config.read_text(), config_path=config, fast=True)
    await kubelet.await_for(healthy(OWNER, 1), what="x0 advertised")
    first = await kubelet.acall(kubelet.allocate, "p1", {OWNER: 1})
    assert first["error"] == "", first
    (links / "y").symlink_to(pty_node)  # OTHER reaches the node too: held while p1 has it
    await kubelet.await_for(healthy(OTHER, 0), what="OTHER registered, holding nothing")

    if variant in ("unlink", "restart"):
        (dev / "x0").unlink()  # OWNER's path to the node goes; the node stays
    else:
        config.write_text(head + owner("nothing*") + other)
        assert await running.host.reload_from(config) == "ok"
    await kubelet.await_for(healthy(OWNER, 0), what="OWNER lists the node no longer")
    await kubelet.acall(kubelet.release, "p1")
    registry = running.metrics.registry

    def release_failures() -> float:
        found = registry.get_sample_value(
            "kdp_release_runs_total", {"resource": OWNER, "result": "exit"}
        )
        return found or 0.0

    await wait_until(lambda: release_failures() >= 2, timeout=30, what="the release failing")
    if variant == "restart":
        await running.shutdown()
        running = await start_host(config.read_text(), config_path=config, fast=True)
        registry = running.metrics.registry
        await kubelet.await_for(healthy(OTHER, 0), what="OTHER registered again")
        await wait_until(lambda: release_failures() >= 1, timeout=30, what="failing again")
    poller = running.host.pod_resources
    assert poller is not None and poller.holdings is not None
    failing = poller.holdings.asked_at
    await wait_until(
        lambda: (
            poller.holdings is not None
            and poller.holdings.asked_at > failing + FAST.heard_after + poller.interval
        ),
        timeout=30,
        what="PodResources answers well after p1 ended",
    )
    assert (await kubelet.acall(kubelet.resource, OTHER))["healthy"] == 0
    second = await kubelet.acall(kubelet.allocate, "p2", {OTHER: 1})
    assert second["error"] != "", "the node went to p2 while its release is still failing"
    assert booked(state) == [(OWNER, first["device_ids"][OWNER][0])], "the booking is on disk"

    clean.touch()  # the reset works again: the next try succeeds
    await kubelet.await_for(healthy(OTHER, 1), timeout=90, what="OTHER gets the node")
    third = await kubelet.acall(kubelet.allocate, "p3", {OTHER: 1})
    assert third["error"] == "", third
    assert {d["PathOnHost"] for d in third["devices"]} == {os.path.realpath(pty_node)}
    assert registry.get_sample_value("kdp_release_runs_total", {"resource": OWNER, "result": "ok"})
