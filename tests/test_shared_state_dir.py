"""Two hosts on one stateDir (a rolling update with maxSurge; hostile2 F4), through the real
kubelet: a booking one host makes after the other started holds the node in both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import wait_until
from .kubelet_harness import RealKubelet
from .test_ownership_kubelet import host_paths

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

SHELL = "s.example/s"


def probe(directory: Path, name: str, device_id: str, node: Path, gate: Path | None) -> Path:
    """A probe printing one device `device_id` on `node`; with `gate`, its first run says
    it started (`<name>.started`) and waits for the gate file (a slow first scan)."""
    script = directory / f"{name}.sh"
    wait = ""
    if gate is not None:
        wait = f"touch {directory}/{name}.started\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n"
    script.write_text(f"#!/bin/sh\n{wait}echo '{device_id} Healthy path={node}'\n")
    script.chmod(0o755)
    return script


def config(kubelet: RealKubelet, state: Path, command: Path) -> str:
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nresources:\n"
        f"  - name: {SHELL}\n    shell: {{command: [{command}], interval: 1s, timeout: 60s}}\n"
    )


def booked(state: Path) -> list[tuple[str, str | None]]:
    document = json.loads((state / OWNERSHIP_FILE).read_text())
    return sorted((entry["id"], entry.get("writer")) for entry in document["bookings"])


def served_by_new(kubelet: RealKubelet, since: int) -> bool:
    """The new host registered and the kubelet processed a list of it."""
    events = kubelet.events(since)
    kinds = [e["kind"] for e in events if e["resource"] == SHELL]
    return "registered" in kinds and "list_and_watch" in kinds[kinds.index("registered") :]


def view(kubelet: RealKubelet) -> dict[str, Any]:
    return kubelet.resource(SHELL) or {}


async def test_hostile2_4_a_booking_the_old_host_makes_after_the_new_one_started_holds_the_node(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """F4: the new host (an upgrade that renames the device: `old0` -> `new0`, same node)
    read ownership.json at its start; the old one, still the kubelet's endpoint, then
    answered pod1's Allocate. The new host advertised `new0` and pod2 got the same node; the
    file kept only one host's bookings. Now the new host follows the file: it holds `new0`
    while pod1 holds `old0`, the file keeps the old host's booking under its writer, the new
    host takes it over when the old one stops, and `new0` is advertised once pod1 ended."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    node = short_dir / "n0"
    node.touch()
    state, work = short_dir / "state", short_dir / "probes"
    work.mkdir()
    gate = work / "go"
    old = await start_host(
        config(kubelet, state, probe(work, "old", "old0", node, None)), instance_id="old"
    )
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, what="old0 advertised")

    since = await kubelet.acall(kubelet.last_seq)
    new = await start_host(
        config(kubelet, state, probe(work, "new", "new0", node, gate)), instance_id="new"
    )
    await wait_until(lambda: (work / "new.started").exists(), what="the new host's first probe")
    # the new host started (it read ownership.json); the old one is still the endpoint
    first = await kubelet.acall(kubelet.allocate, "pod1", {SHELL: 1})
    assert first["error"] == "" and first["device_ids"] == {SHELL: ["old0"]}
    gate.touch()  # the new host's first list: new0, the same node
    await kubelet.await_for(
        lambda k: served_by_new(k, since) and view(k).get("healthy") == 0,
        timeout=60,
        what="the new host registered, holding new0 (pod1 holds its node as old0)",
    )
    second = await kubelet.acall(kubelet.allocate, "pod2", {SHELL: 1})
    assert second["error"] != "", f"pod2 got {host_paths(second)} while pod1 holds it"
    assert new.host.ownership.is_booked(SHELL, "old0")
    assert booked(state) == [("old0", "old")]  # under its writer; the new host wrote none

    await old.shutdown()  # the rolling update ends: the new host takes the booking over
    await wait_until(lambda: booked(state) == [("old0", "new")], timeout=60, what="taken over")
    assert view(kubelet).get("healthy") == 0
    third = await kubelet.acall(kubelet.allocate, "pod3", {SHELL: 1})
    assert third["error"] != "", "pod3 got the node pod1 holds"

    await kubelet.acall(kubelet.release, "pod1")  # pod1 ended: PodResources shows no holder
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, timeout=60, what="new0")
    await wait_until(lambda: booked(state) == [], what="the booking ended with pod1")
    fourth = await kubelet.acall(kubelet.allocate, "pod4", {SHELL: 1})
    assert fourth["error"] == "" and fourth["device_ids"] == {SHELL: ["new0"]}
    assert host_paths(fourth) == {str(node)}


async def test_hostile12_l9_a_running_hosts_bookings_gone_from_the_file_still_hold_the_node(
    real_kubelet_factory, short_dir: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    """L9: pod1 holds the node as `old0` (the old host's booking; the new host holds `new0`
    from it). ownership.json is replaced by a valid document without the old host's entry
    while it runs: the new host took the old one as ended (`bookings_taken_over`) and
    advertised `new0` until the old host's next write (never: it did not write its entries
    back), so pod2 got pod1's node. Now the old host's end is told by its lock only: the new
    host keeps the booking as last read (`bookings_kept`), the old host writes it back, and
    pod2 is refused throughout."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    node = short_dir / "n0"
    node.touch()
    state, work = short_dir / "state", short_dir / "probes"
    work.mkdir()
    await start_host(
        config(kubelet, state, probe(work, "old", "old0", node, None)), instance_id="old"
    )
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, what="old0 advertised")
    first = await kubelet.acall(kubelet.allocate, "pod1", {SHELL: 1})
    assert first["error"] == "" and first["device_ids"] == {SHELL: ["old0"]}
    since = await kubelet.acall(kubelet.last_seq)
    new = await start_host(
        config(kubelet, state, probe(work, "new", "new0", node, None)), instance_id="new"
    )
    await kubelet.await_for(
        lambda k: served_by_new(k, since), timeout=60, what="the new host registered"
    )
    assert new.host.ownership.is_booked(SHELL, "old0")  # new0 is held: pod1 holds its node
    assert "new0" not in view(kubelet).get("device_numa", {})
    with caplog.at_level("INFO", logger="kdp_host"):
        staged = state / "staged.json"
        staged.write_text(json.dumps({"bookings": [], "version": 1}))
        staged.replace(state / OWNERSHIP_FILE)
        await wait_until(
            lambda: booked(state) == [("old0", "old")], timeout=60, what="old0 written back"
        )
        assert new.host.ownership.is_booked(SHELL, "old0")
        second = await kubelet.acall(kubelet.allocate, "pod2", {SHELL: 1})
        assert second["error"] != "", f"pod2 got {host_paths(second)} while pod1 holds it"
    messages = [r.getMessage() for r in caplog.records]
    assert "bookings_taken_over" not in messages, "a running host was taken as ended"
    assert "ownership_state_lost" in messages  # the old host saw its entry gone
