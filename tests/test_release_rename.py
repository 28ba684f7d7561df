"""A node a booking of another name held is released by the resource that serves it next
(hostile14 N1, N2), through the kubelet's real device manager (v1.32, tests/kubelet_harness.py).

The README promises "no container starts with a device that an earlier container used until
that device's release command has succeeded". The kubelet books IDs per resource; the node
is the ownership index's. N1: a resource renamed in the same edit that adds `release` (or
another plugin's name taken over under a new one): the old name's booking held the node, and
once its pod ended the node went to the new name's next pod with no release. N2: a resource
with `release` renamed: the old name's owed release could never run, and its booking held the
node for good while everything said `clean`. The new name's release runs for it instead."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kdp_host.holdings import Holder
from kdp_host.logs import get_logger
from kdp_host.ownership_claims import Owner, device_claims
from kdp_host.ownership_document import SavedBooking
from kdp_host.ownership_held import HandOver
from kdp_host.ownership_table import Holding, ResourceState
from kdp_host.release_state import STATE_FILE
from kdp_host.release_use import DeviceUse, owe_held_before

from .conftest import wait_until
from .test_kubelet_checkpoint import served
from .test_ownership import Host, dev

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

OLD = "example.com/a"
NEW = "example.com/b"
GDEV = "gdp.example/gdev"
OTHER = "example.com/other"


def healthy(resource: str, count: int) -> Any:
    def check(k: Any) -> bool:
        seen = k.resource(resource)
        return seen is not None and seen["healthy"] == count

    return check


def resource(name: str, devices: Path, release: Path | None) -> str:
    entry = f'  - name: {name}\n    glob: {{paths: ["{devices}/fpga0"]}}\n'
    if release is not None:
        entry += f'    release: {{command: [sh, -c, "echo {{resource}} {{ids}} >> {release}"]}}\n'
    return entry


def owed(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        dict(getattr(r, "kdp_fields", {}))
        for r in caplog.records
        if r.getMessage() == "release_owed"
    ]


async def renamed(
    running: Any, start_host: Any, kubelet: Any, config: Path, text: str, variant: str
) -> Any:
    """The config becomes `text` (OLD renamed NEW) by a live reload or a restart
    (`variant`), once NEW is registered with fpga0 held for p1; the host running then."""
    config.write_text(text)
    if variant == "reload":
        assert await running.host.reload_from(config) == "ok"
    else:
        await running.shutdown()
        running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(NEW, 0), what="NEW registered, fpga0 held for p1")
    return running


async def p1_holds_old(
    kubelet: Any, start_host: Any, short_dir: Path, devices: Path, config: Path
) -> tuple[Any, str]:
    """OLD, with a release logged to `short_dir/release.log`, serves fpga0 from `config` and
    p1 holds it; returns the host and the config's head (the other resource)."""
    head = served(OTHER, kubelet, devices, short_dir / "state", glob="ttyA0")
    config.write_text(head + resource(OLD, devices, short_dir / "release.log"))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(OLD, 1), what="fpga0 advertised under OLD")
    assert (await kubelet.acall(kubelet.allocate, "p1", {OLD: 1}))["error"] == ""
    return running, head


@pytest.mark.parametrize("variant", ["reload", "restart", "another plugin"])
async def test_a_node_another_names_booking_held_is_released_before_the_new_name_hands_it_out(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    caplog: pytest.LogCaptureFixture,
    variant: str,
) -> None:
    """OLD (no `release`) gives fpga0 to p1; NEW (same node, with `release`) replaces it by
    a reload, by a restart on the same state directory, or (`another plugin`) takes over
    from another plugin's name, whose ID the start books from the kubelet's checkpoint. p1
    ends: NEW advertises fpga0, and p2's start waits for NEW's release of it."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state, log, config = short_dir / "state", short_dir / "release.log", short_dir / "c.yaml"
    head = served(OTHER, kubelet, devices, state, glob="ttyA0")
    old = OLD
    if variant == "another plugin":  # its own name, IDs and state directory
        old = GDEV
        listing = short_dir / "p.json"
        listing.write_text(f'[{{"id": "b1ef8fa7", "paths": ["{devices}/fpga0"]}}]')
        probe = f'  - name: {GDEV}\n    shell: {{command: [cat, "{listing}"], format: json}}\n'
        config.write_text(served(OTHER, kubelet, devices, short_dir / "theirs", "fpga1") + probe)
    else:
        config.write_text(head + resource(OLD, devices, None))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(old, 1), what="fpga0 advertised under the old name")
    assert (await kubelet.acall(kubelet.allocate, "p1", {old: 1}))["error"] == ""
    running = await renamed(
        running, start_host, kubelet, config, head + resource(NEW, devices, log), variant
    )
    assert not log.exists()
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(NEW, 1), timeout=60, what="fpga0 advertised under NEW")
    second = await kubelet.acall(kubelet.allocate, "p2", {NEW: 1})
    assert second["error"] == "", second
    assert log.exists(), "p2 started with fpga0, which p1 used, and NEW's release never ran"
    assert log.read_text().split() == [NEW, "fpga0"]
    assert [f for f in owed(caplog) if f.get("reason") == "held_by_booking"], owed(caplog)


@pytest.mark.parametrize("variant", ["reload", "restart"])
async def test_a_renamed_resources_owed_release_is_run_by_the_new_name(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    caplog: pytest.LogCaptureFixture,
    variant: str,
) -> None:
    """OLD (with `release`) gives fpga0 to p1 and is renamed NEW (same node, same release)
    while p1 runs. OLD's release can never run; its booking held fpga0 for good (until
    `kdp-host unbook`) while `/devices` said `clean`. Now NEW's release runs for it once p1
    ends (OLD's entry goes from the release state), then p2 gets fpga0."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    log, config = short_dir / "release.log", short_dir / "c.yaml"
    running, head = await p1_holds_old(kubelet, start_host, short_dir, devices, config)
    running = await renamed(
        running, start_host, kubelet, config, head + resource(NEW, devices, log), variant
    )
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(NEW, 1), timeout=60, what="fpga0 advertised under NEW")
    second = await kubelet.acall(kubelet.allocate, "p2", {NEW: 1})
    assert second["error"] == "", second
    assert log.read_text().split() == [NEW, "fpga0"], "NEW's release ran once, before p2"
    handed = [f for f in owed(caplog) if f.get("reason") == "held_by_booking"]
    assert handed and handed[0]["owed_by_removed"] is True, owed(caplog)
    await running.shutdown()
    kept = json.loads((short_dir / "state" / STATE_FILE).read_text())["resources"]
    assert OLD not in kept, kept


async def test_a_node_an_overlapping_resources_pod_used_is_released_by_the_next_one(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two resources reach one file (a hard link): OLD (no `release`) gives it to p1; NEW
    (with `release`) is held back meanwhile. OLD's path goes (the file stays, NEW's link to
    it); p1 ends: NEW advertises the file, and p2's start waits for NEW's release."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state, log, links = short_dir / "state", short_dir / "release.log", short_dir / "links"
    links.mkdir()
    new = (
        f'  - name: {NEW}\n    glob: {{paths: ["{links}/*"]}}\n'
        f'    release: {{command: [sh, -c, "echo {{resource}} {{ids}} >> {log}"]}}\n'
    )
    config = served(OTHER, kubelet, devices, state, "ttyA0") + resource(OLD, devices, None) + new
    await start_host(config)
    await kubelet.await_for(healthy(OLD, 1), what="fpga0 advertised under OLD")
    assert (await kubelet.acall(kubelet.allocate, "p1", {OLD: 1}))["error"] == ""
    (links / "y").hardlink_to(devices / "fpga0")
    await kubelet.await_for(healthy(NEW, 0), what="NEW registered, its link held for p1")
    (devices / "fpga0").unlink()  # OLD's path goes; the file stays, through NEW's link
    await kubelet.await_for(healthy(OLD, 0), what="OLD lists it no longer")
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(NEW, 1), timeout=60, what="the file advertised under NEW")
    second = await kubelet.acall(kubelet.allocate, "p2", {NEW: 1})
    assert second["error"] == "", second
    assert log.exists(), "p2 started with the file p1 used, and NEW's release never ran"
    assert log.read_text().split() == [NEW, "y"]


async def test_a_renamed_resources_owed_release_nobody_can_run_says_how_to_end_it(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OLD (with `release`) is renamed NEW without `release` while p1 holds fpga0: nothing
    can run OLD's owed release, so its booking holds fpga0 once p1 ended (no container of
    NEW starts with it unreleased), and one line says so and names the way out."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config = short_dir / "c.yaml"
    running, head = await p1_holds_old(kubelet, start_host, short_dir, devices, config)
    config.write_text(head + resource(NEW, devices, None))
    assert await running.host.reload_from(config) == "ok"
    await kubelet.await_for(healthy(NEW, 0), what="NEW registered, fpga0 held for p1")
    await kubelet.acall(kubelet.release, "p1")

    def orphaned() -> list[dict[str, Any]]:
        return [
            dict(getattr(r, "kdp_fields", {}))
            for r in caplog.records
            if r.getMessage() == "release_orphaned"
        ]

    await wait_until(lambda: orphaned(), timeout=30, what="the held node's line")
    poller = running.host.pod_resources
    assert poller is not None and poller.holdings is not None
    seen = poller.holdings.asked_at
    await wait_until(
        lambda: (
            poller.holdings is not None and poller.holdings.asked_at > seen + 3 * poller.interval
        ),
        timeout=30,
        what="more PodResources answers",
    )
    assert (await kubelet.acall(kubelet.resource, NEW))["healthy"] == 0
    [line] = orphaned()
    assert line["resource"] == NEW and line["owner_resource"] == OLD, line
    assert f"kdp-host unbook --config F {OLD} fpga0" in line["action"], line


class Releases:
    """The release state as the index sees it (`ownership_bookings.Releases`): the
    resources `tracked` (None: every one) have a tracker, a release is owed of the devices
    `owed`; records what it is told."""

    def __init__(self, tracked: set[str] | None = None, owed: frozenset[str] = frozenset()) -> None:
        self.told: list[tuple[str, dict[str, Owner]]] = []
        self.tracked, self.owed = tracked, owed

    def pending(self, resource: str, device: str) -> bool:
        return device in self.owed

    def booked_elsewhere(self, resource: str, ids: Any, writer: str) -> None:
        pass

    def held_before(self, resource: str, devices: Any) -> None:
        self.told.append((resource, dict(devices)))

    def releases(self, resource: str) -> bool:
        return self.tracked is None or resource in self.tracked


class Sink:
    def changed(self, document: Any) -> None:
        pass

    async def written(self) -> None:
        pass


async def test_a_node_another_hosts_booking_of_another_name_held_is_told_once_it_ended(
    tmp_path: Path,
) -> None:
    """A rolling update that renames the resource: the old host's booking of OLD holds the
    file; the new host's NEW device is held back. The old host drops it (its pod ended):
    NEW is told, once its table advertises the device, that OLD's booking held its node."""
    (tmp_path / "f").touch()
    path = str(tmp_path / "f")
    host, store = Host(), Releases()
    host.index.keep_bookings_in(Sink(), None, (), "me")
    host.index.hold_while_releasing(store)
    claims = device_claims(dev("f", path)).exclusive
    theirs = [SavedBooking(Owner(OLD, "f"), "f", claims, (), "old")]
    await host.index.take_in(theirs, ("old",))
    host.publish(NEW, dev("f", path))
    await host.index.quiet()
    assert host.ids(NEW) == [] and store.told == []
    await host.index.take_in([], ("old",))
    await host.index.quiet()
    assert host.ids(NEW) == ["f"]
    assert store.told == [(NEW, {"f": Owner(OLD, "f")})]


def test_a_booking_only_a_removed_resources_release_holds_goes_to_one_that_releases(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`HandOver.releasing` (hostile14 N2): OLD's release of f is owed. Its booking goes with
    its pod only when OLD is retired with no tracker and every device held back for f is of
    a resource with one (NEW); else it stays, and once a resource without one waits for the
    node, one line names `kdp-host unbook`."""
    caplog.set_level(logging.INFO)
    held = {"f": Holding("owned", Owner(OLD, "f"), "/dev/f")}
    old = ResourceState(OLD, retired=True)
    new = ResourceState(NEW, log=get_logger().bind(resource=NEW), held=held)
    states, over = {OLD: old, NEW: new}, HandOver()
    over.releases = Releases(tracked={NEW}, owed={"f"})
    assert not over.releasing(OLD, "f", states, {})
    assert not over.releasing(OLD, "g", states, {})  # (nothing owed)
    old.retired = False  # (a runtime of it crashed, or a reload restarts it)
    assert over.releasing(OLD, "f", states, {})
    old.retired = True
    assert over.releasing(OLD, "f", {OLD: old}, {})  # (nothing waits for the node)
    over.releases = Releases(tracked=set(), owed={"f"})  # (NEW has no `release`)
    assert over.releasing(OLD, "f", states, {})
    assert over.releasing(OLD, "f", states, {})
    lines = [r for r in caplog.records if r.getMessage() == "release_orphaned"]
    assert len(lines) == 1, lines
    assert f"kdp-host unbook --config F {OLD} f" in lines[0].__dict__["kdp_fields"]["action"]


def test_a_device_another_names_booking_held_owes_its_release_naming_no_earlier_pod() -> None:
    """`release_use.owe_held_before`: a device whose own users are gone owes its release now,
    its templates' pod empty (the pod that used it held another name's ID; not the pod of an
    earlier use, released since); one still in use, or owed already, is left as it is."""
    earlier = DeviceUse(holders=(Holder("ns", "q", "c", 0.0),), released_at=1.0)
    busy, owed = DeviceUse(used={"n1"}), DeviceUse(owed=True)
    uses = {"n0": earlier, "n1": busy, "n2": owed}
    told = {d: Owner(OLD, d) for d in ("n0", "n1", "n2", "n3")}
    done = owe_held_before(uses, told, {Owner(OLD, "n3")}, 5.0, get_logger())
    assert done == ["n0", "n3"]
    assert earlier.state == "pending" and earlier.holder_values()["pod"] == ""
    assert uses["n3"].state == "pending"
    assert busy.state == "in_use" and owed.owed_holders == ()
