"""The kubelet's device-manager checkpoint (`kdp_host.kubelet_checkpoint`): read from files the
kubelet's own device manager wrote (tests/data/kubelet_checkpoint, written by kubelet-harness
with kdp-host and with the kubelet's stub plugin answering), checked (shape, checksum), and
booked at start (issue 17, G7)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdp_host.checkpoint_bookings import book_handed
from kdp_host.checkpoint_handed import read_handed
from kdp_host.config import Config, load_config_text
from kdp_host.files import DaemonThreads
from kdp_host.holdings import Holdings
from kdp_host.kubelet_checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    Handed,
    HandedClaims,
    checksum,
    parse_checkpoint,
    take_handed,
)
from kdp_host.logs import get_logger
from kdp_host.ownership_bookings import Ledger
from kdp_host.ownership_claims import ClaimSet, Owner, claim_of
from kdp_host.ownership_document import read_saved
from kdp_host.ownership_unknown import NUMBER_UNKNOWN

from .fake_nodes import FakeNodes
from .test_ownership import booked_ids, dev, restarted

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

FIXTURES = Path(__file__).parent / "data" / "kubelet_checkpoint"
A = "h3.example/a"
MDIR = "/tmp/kcp/exp/dev/mdir"
"""The `allocate.mounts` source of the config the fixtures were written with."""


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def test_checkpoints_the_kubelet_wrote_are_read_with_their_checksum() -> None:
    assert parse_checkpoint(fixture("two_pods")) == [
        Handed(A, ("s0",), ("/dev/null", MDIR), nodes=1),
        Handed(A, ("s1",), ("/dev/zero", MDIR), nodes=1),
    ]
    assert parse_checkpoint(fixture("two_ids_one_container")) == [
        Handed(A, ("s0", "s1"), ("/dev/null", "/dev/zero", MDIR), nodes=2)
    ]
    # an answer with an env only (the kubelet's stub plugin): nothing handed out
    assert parse_checkpoint(fixture("stub_envs")) == [Handed("st.example/x", ("dev0",), ())]
    assert parse_checkpoint(fixture("no_pods")) == []  # PodDeviceEntries null
    # `allocate.cdi` without alsoDeviceSpecs: a CDI name only (RegisteredDevices unsorted)
    assert parse_checkpoint(fixture("cdi_names")) == [
        Handed("h3.example/c", ("s0",), (), ("kdp.example/dev=s0",))
    ]


def test_the_checksum_is_the_kubelets_for_empty_and_null_values() -> None:
    """Go reads null as a nil slice or map and `[]`/`{}` as empty ones: spew writes them
    apart, so the checksum of each differs, and each is what the kubelet computes (the
    no-pods file holds null entries; its checksum verifies)."""
    document = json.loads(fixture("no_pods"))
    assert checksum(document["Data"]) == document["Checksum"]
    empty = dict(document["Data"], PodDeviceEntries=[])
    assert checksum(empty) != document["Checksum"]


def mangled(name: str, change: Any) -> bytes:
    document = json.loads(fixture(name))
    change(document)
    return json.dumps(document).encode()


def set_entry(key: str, value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        document["Data"]["PodDeviceEntries"][0][key] = value

    return change


def drop(*keys: str) -> Any:
    def change(document: dict[str, Any]) -> None:
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


BAD = {
    "truncated": fixture("two_pods")[:200],
    "empty file": b"",
    "not json": b"\x00\x01 binary",
    "wrong checksum": mangled("two_pods", lambda d: d.update(Checksum=d["Checksum"] + 1)),
    "checksum as text": mangled("two_pods", lambda d: d.update(Checksum=str(d["Checksum"]))),
    "no checksum": mangled("two_pods", drop("Checksum")),
    "an ID changed (old checksum)": mangled("two_pods", set_entry("DeviceIDs", {"-1": ["s9"]})),
    "a path changed (old checksum)": mangled(
        "two_pods",
        set_entry("AllocResp", base64.b64encode(b"\x1a\x04\x0a\x02/x").decode()),
    ),
    "no Data": mangled("two_pods", drop("Data")),
    "entries not a list": mangled("two_pods", lambda d: d["Data"].update(PodDeviceEntries={})),
    "AllocResp not base64": mangled("two_pods", set_entry("AllocResp", "***")),
    "AllocResp not protobuf": mangled(
        "two_pods", set_entry("AllocResp", base64.b64encode(b"\x12\xff\xff").decode())
    ),
    "DeviceIDs of before 1.20": mangled("two_pods", set_entry("DeviceIDs", ["s0"])),
    "NUMA key not a number": mangled("two_pods", set_entry("DeviceIDs", {"x": ["s0"]})),
    "ResourceName not text": mangled("two_pods", set_entry("ResourceName", 5)),
}


@pytest.mark.parametrize("blob", BAD.values(), ids=BAD.keys())
def test_a_bad_checkpoint_is_an_error_that_says_why(blob: bytes) -> None:
    with pytest.raises(CheckpointError) as caught:
        parse_checkpoint(blob)
    assert str(caught.value)


def test_read_handed_resolves_the_paths_of_served_resources_only(tmp_path: Path) -> None:
    assert read_handed(str(tmp_path), [A]) is None, "no checkpoint: nothing known"
    shutil.copy(FIXTURES / "two_pods.json", tmp_path / CHECKPOINT_FILE)
    nodes = FakeNodes({"/dev/null": ("c", 1), "/dev/zero": ("c", 2)})
    handed = read_handed(str(tmp_path), [A, "other.io/x"], nodes)
    assert handed is not None
    assert [(h.handed.ids, [c[0] for c in h.claims]) for h in handed] == [
        (("s0",), [("c", 1), ("path", MDIR)]),
        (("s1",), [("c", 2), ("path", MDIR)]),
    ]
    assert read_handed(str(tmp_path), ["other.io/x"], nodes) == []
    (tmp_path / CHECKPOINT_FILE).unlink()
    (tmp_path / CHECKPOINT_FILE).mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_handed(str(tmp_path), [A], nodes)
    (tmp_path / CHECKPOINT_FILE).rmdir()
    os.mkfifo(tmp_path / CHECKPOINT_FILE)  # (a blocking open would wait for a writer)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_handed(str(tmp_path), [A], nodes)


def test_a_checkpoint_without_entries_of_the_hosts_resources_is_not_checked_further() -> None:
    """Nothing is booked from it: its checksum is not computed (that costs 0.2 µs a byte)."""
    blob = mangled("stub_envs", lambda d: d.update(Checksum=1))
    assert parse_checkpoint(blob, {A}) == []
    with pytest.raises(CheckpointError, match="checksum"):
        parse_checkpoint(blob, {"st.example/x"})


def config(socket_dir: Path) -> Config:
    return load_config_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nresources:\n"
        f"  - name: {A}\n    shell: {{command: [echo, s0]}}\n"
    )


def handed(ids: tuple[str, ...], *paths: str, nodes: FakeNodes) -> HandedClaims:
    claims = []
    for path in paths:
        reached = nodes(path)
        assert reached is not None
        claims.append((reached[0], path, reached[1]))
    return HandedClaims(Handed(A, ids, paths), tuple(claims))


def test_the_ids_of_one_answer_share_its_places_and_nobody_else_does() -> None:
    """Two IDs handed out in one answer: each is booked with both nodes (which node was
    whose is not kept), and neither holds the other back; a third ID reaching one is held."""
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    ledger = Ledger()
    both = [handed(("s0", "s1"), "/dev/a", "/dev/b", nodes=nodes)]
    gained = take_handed(ledger, both, 0.0)
    assert [owner.device for owner, _ in gained] == ["s0", "s1"]
    a = ClaimSet(((("c", 1), "/dev/a", "/dev/a"),))
    b = ClaimSet(((("c", 2), "/dev/b", "/dev/b"),))
    assert ledger.conflict(A, "s0", 1, a) is None
    assert ledger.conflict(A, "s1", 1, a) is None, "a swap inside one answer is one pod's"
    assert ledger.conflict(A, "s1", 1, b) is None
    assert ledger.conflict(A, "s2", 1, a) == (Owner(A, "s0"), "/dev/a")
    assert ledger.conflict("other.io/x", "s0", 1, b) is not None
    # the file does not keep the group: read back, the next start's checkpoint gives it again
    again = Ledger()
    again.take_in(read_saved(json.loads(json.dumps(ledger.document())), nodes), (), 1.0)
    assert again.conflict(A, "s1", 1, a) == (Owner(A, "s0"), "/dev/a")
    assert take_handed(again, both, 1.0) == [], "nothing to write"
    assert again.conflict(A, "s1", 1, a) is None


def test_a_booking_kept_is_widened_by_what_it_lacks_and_another_hosts_is_left() -> None:
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    ledger = Ledger()
    ledger.record(Owner(A, "s0"), "s0", ((("c", 1), "/dev/a", "/dev/a"),), 0.0)
    same = take_handed(ledger, [handed(("s0",), "/dev/a", nodes=nodes)], 1.0)
    assert same == [], "the booking holds what was handed out"
    wider = take_handed(ledger, [handed(("s0",), "/dev/b", nodes=nodes)], 1.0)
    assert wider == [(Owner(A, "s0"), ((("c", 2), "/dev/b", "/dev/b"),))]
    assert ledger.bookings[Owner(A, "s0")].claims == ((("c", 1), "/dev/a", "/dev/a"),)
    ledger.foreign_owners.add(Owner(A, "s7"))
    assert take_handed(ledger, [handed(("s7",), "/dev/b", nodes=nodes)], 1.0) == []


async def test_bookings_lost_are_booked_at_start_from_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ownership.json is gone and the IDs swapped nodes while kdp-host was down: pod1 was
    handed /dev/a under s0. s1, which names /dev/a now, is held until pod1 ends."""
    caplog.set_level(logging.INFO)
    dp = tmp_path / "dp"
    dp.mkdir()
    entry = {
        "PodUID": "u1",
        "ContainerName": "c",
        "ResourceName": A,
        "DeviceIDs": {"-1": ["s0"]},
        "AllocResp": base64.b64encode(b"\x1a\x10\x0a\x06/dev/a\x12\x06/dev/a").decode(),
    }
    data = {"PodDeviceEntries": [entry], "RegisteredDevices": {A: ["s0", "s1"]}}
    (dp / CHECKPOINT_FILE).write_text(json.dumps({"Data": data, "Checksum": checksum(data)}))
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    now = [100.0]
    host, state = restarted(tmp_path / "state", nodes, now)
    await book_handed(host.index, config(dp), DaemonThreads(), get_logger())
    [line] = [r for r in caplog.records if r.getMessage() == "kubelet_checkpoint_booked"]
    expected = {"resource": A, "device": "s0", "paths": "/dev/a"}
    assert expected.items() <= line.__dict__["kdp_fields"].items()
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path / "state") == [f"{A}/s0"]

    host.publish(A, dev("s0", "/dev/b"), dev("s1", "/dev/a"))
    assert host.ids(A) == ["s0"], "s1 reaches pod1's node"
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))  # pod1 ended
    assert host.ids(A) == ["s0", "s1"]


@pytest.mark.parametrize("blob", [b"{", fixture("two_pods")[:-5]], ids=["garbage", "truncated"])
async def test_a_bad_checkpoint_is_logged_and_the_start_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, blob: bytes
) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(blob)
    host, _ = restarted(tmp_path / "state", FakeNodes({}))
    await book_handed(host.index, config(tmp_path), DaemonThreads(), get_logger())
    [line] = [r for r in caplog.records if r.getMessage() == "kubelet_checkpoint_unusable"]
    assert line.levelno == logging.WARNING
    assert "PodResources" in line.__dict__["kdp_fields"]["consequence"]
    assert not (tmp_path / "state" / "ownership.json").exists()


def test_an_answer_with_a_cdi_name_no_spec_defines_books_the_rest_podresources_widens() -> None:
    """The nodes a CDI name that resolved nowhere stood for are not known: its other paths
    (a static mount) are booked, and the ID is left for PodResources to add its device's
    claims (`Ledger.unresolved`: before, the whole answer was skipped, DeviceSpecs too)."""
    nodes = FakeNodes({"/m": ("d", 9)})
    entry = handed(("s0",), "/m", nodes=nodes)
    unresolved = (("k.io/a=s0", "no spec file of kind k.io/a"),)
    cdi = HandedClaims(Handed(A, ("s0",), ("/m",), ("k.io/a=s0",), 0, unresolved), entry.claims)
    ledger = Ledger()
    assert [owner for owner, _ in take_handed(ledger, [cdi], 0.0)] == [Owner(A, "s0")]
    assert ledger.unresolved == {Owner(A, "s0")}


B = "h3.example/b"


def entry_of(resource: str, kubelet_id: str, host_path: str) -> dict[str, Any]:
    """A checkpoint entry: one container handed one node (DeviceSpec container and host
    path)."""
    path = host_path.encode()
    spec = b"\x0a" + bytes([len(path)]) + path + b"\x12" + bytes([len(path)]) + path
    return {
        "PodUID": f"uid-{kubelet_id}",
        "ContainerName": "c",
        "ResourceName": resource,
        "DeviceIDs": {"-1": [kubelet_id]},
        "AllocResp": base64.b64encode(b"\x1a" + bytes([len(spec)]) + spec).decode(),
    }


def write_checkpoint(directory: Path, *entries: dict[str, Any]) -> None:
    data = {"PodDeviceEntries": list(entries), "RegisteredDevices": None}
    document = {"Data": data, "Checksum": checksum(data)}
    (directory / CHECKPOINT_FILE).write_text(json.dumps(document))


def config_of(socket_dir: Path, resource: str) -> Config:
    return load_config_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nresources:\n"
        f"  - name: {resource}\n    shell: {{command: [echo, s0]}}\n"
    )


@pytest.mark.parametrize("owner", [A, "vendor.example/gpu"], ids=["removed", "other plugin"])
async def test_bookings_lost_are_booked_for_every_resource_of_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, owner: str
) -> None:
    """hostile9 H1: the state directory was lost and the config no longer serves the resource
    a pod holds /dev/a of (removed meanwhile, or another plugin's): B, which reaches /dev/a
    now, is held (its owner retired) until PodResources shows the pod gone."""
    caplog.set_level(logging.INFO)
    dp = tmp_path / "dp"
    dp.mkdir()
    write_checkpoint(dp, entry_of(owner, "n0", "/dev/a"))
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    now = [100.0]
    host, state = restarted(tmp_path / "state", nodes, now)
    await book_handed(host.index, config_of(dp, B), DaemonThreads(), get_logger())
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path / "state") == [f"{owner}/n0"]

    host.publish(B, dev("x", "/dev/a"), dev("y", "/dev/b"))
    assert host.ids(B) == ["y"], "x reaches the node a pod holds"
    [line] = [r for r in caplog.records if r.getMessage() == "device_held"]
    fields = line.__dict__["kdp_fields"]
    assert (fields["owner_resource"], fields["owner_device"]) == (owner, "n0")
    assert fields["owner_retired"] is True
    host.index.holdings(Holdings(now[0] + 1, 0.0, {owner: {"n0": ()}}))  # the pod still runs
    assert host.ids(B) == ["y"]
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))  # the pod ended
    assert host.ids(B) == ["x", "y"]


@pytest.mark.parametrize("owner", [A, "vendor.example/gpu"], ids=["renamed", "other plugin"])
async def test_with_the_bookings_kept_every_resources_entries_are_booked_too(
    tmp_path: Path, owner: str
) -> None:
    """hostile11 K1: `ownership.json` is valid but stale (restored from a backup: it books
    B's y on /dev/b) and the checkpoint has a pod of another resource on /dev/a (a resource
    renamed while kdp-host was down, or another plugin's): B's x there is held as well."""
    dp = tmp_path / "dp"
    dp.mkdir()
    write_checkpoint(dp, entry_of(owner, "n0", "/dev/a"), entry_of(B, "y", "/dev/b"))
    nodes = FakeNodes({"/dev/a": ("c", 1), "/dev/b": ("c", 2)})
    first, state = restarted(tmp_path / "state", nodes)
    first.publish(B, dev("x", "/dev/a"), dev("y", "/dev/b"))
    await first.index.book(B, ["y"])
    await asyncio.wait_for(state.flush(), 30)
    host, state = restarted(tmp_path / "state", nodes)
    await book_handed(host.index, config_of(dp, B), DaemonThreads(), get_logger())
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path / "state") == sorted([f"{B}/y", f"{owner}/n0"])
    host.publish(B, dev("x", "/dev/a"), dev("y", "/dev/b"))
    assert host.ids(B) == ["y"], "x reaches the node the other resource's pod holds"


def served(resource: str, kubelet: Any, devices: Path, state: Path, glob: str = "fpga0") -> str:
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, "
        f"podResourcesSocket: {kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nmetrics: {{listen: 127.0.0.1:0}}\nresources:\n"
        f'  - name: {resource}\n    glob: {{paths: ["{devices}/{glob}"]}}\n'
    )


async def test_a_resource_removed_while_the_state_dir_was_lost_keeps_its_pods_node(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile9 H1, through the kubelet's real device manager: A gives fpga0 to p1; kdp-host
    stops, its state directory is emptied and the config now serves B on the same node. The
    checkpoint's entry of A books the node: B does not advertise it (the kubelet would admit
    p2 with the same host path) until p1 ends."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state = short_dir / "state"
    running = await start_host(served(A, kubelet, devices, state))

    def healthy(resource: str, count: int) -> Any:
        def check(k: Any) -> bool:
            seen = k.resource(resource)
            return seen is not None and seen["healthy"] == count

        return check

    await kubelet.await_for(healthy(A, 1), what="A advertises fpga0")
    assert (await kubelet.acall(kubelet.allocate, "p1", {A: 1}))["error"] == ""
    await running.shutdown()
    shutil.rmtree(state)
    await start_host(served(B, kubelet, devices, state))
    first = await kubelet.acall(kubelet.first_list_after_registering, B, 0)
    assert first["healthy"] == 0, "B's first list holds fpga0 back"
    [held] = [r.__dict__["kdp_fields"] for r in caplog.records if r.getMessage() == "device_held"]
    assert (held["owner_resource"], held["owner_retired"]) == (A, True)
    unknown = [r for r in caplog.records if r.getMessage() == "handed_out_unknown"]
    assert not unknown, "what preStart would refuse is of the resources served only"
    refused = await kubelet.acall(kubelet.allocate, "p2", {B: 1})
    assert refused["error"] and not refused["device_ids"], refused
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(B, 1), what="B advertises fpga0 once p1 ended")
    assert (await kubelet.acall(kubelet.allocate, "p2", {B: 1}))["error"] == ""


async def test_a_removed_resources_handed_out_entry_books_its_node_when_the_bookings_lost_it(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
) -> None:
    """hostile10 F9: A gives a node to p0 (written to ownership.json), then the other to p1
    whose bookings write is lost (stalled, then kdp-host killed: handed-out.json, written
    before every Allocate answers, has p1's entry; ownership.json only p0's). The config now
    serves both nodes as B: the record's unbooked entry of the removed A makes the start take
    the bookings as lost, so the checkpoint books p1's node too, held until p1 ends."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state = short_dir / "state"
    running = await start_host(served(A, kubelet, devices, state, "fpga[01]"))

    def healthy(resource: str, count: int) -> Any:
        def check(k: Any) -> bool:
            seen = k.resource(resource)
            return seen is not None and seen["healthy"] == count

        return check

    await kubelet.await_for(healthy(A, 2), what="A advertises both nodes")
    assert (await kubelet.acall(kubelet.allocate, "p0", {A: 1}))["error"] == ""
    saved = (state / "ownership.json").read_bytes()  # (p0's booking written)
    assert (await kubelet.acall(kubelet.allocate, "p1", {A: 1}))["error"] == ""
    await running.shutdown()
    assert (state / "ownership.json").read_bytes() != saved, "p1's booking was written"
    (state / "ownership.json").write_bytes(saved)  # p1's booking never reached it
    await start_host(served(B, kubelet, devices, state, "fpga[01]"))
    first = await kubelet.acall(kubelet.first_list_after_registering, B, 0)
    assert first["healthy"] == 0, "B holds back p0's node and p1's"
    refused = await kubelet.acall(kubelet.allocate, "p2", {B: 1})
    assert refused["error"] and not refused["device_ids"], refused
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(B, 1), what="B advertises p1's node once p1 ended")


def test_a_directory_reaches_the_booked_places_below_it_and_no_other() -> None:
    """`Ledger.conflict` of a directory finds the places below it in their sorted run (not a
    walk of every place: thousands are booked from a big checkpoint)."""
    nodes = FakeNodes(
        {p: ("c", i) for i, p in enumerate(["/", "/a", "/a/b", "/a/b/c", "/a/bc", "/a/b0"])}
    )
    ledger = Ledger()
    take_handed(ledger, [handed((f"s{i}",), p, nodes=nodes) for i, p in enumerate(
        ["/a/b/c", "/a/bc", "/a/b0", "/a"])], 0.0)  # fmt: skip

    def holders(directory: str) -> list[str]:
        found = ledger._places_reached(("d", directory), directory)
        return sorted(owner.device for owner in found)

    assert holders("/a/b") == ["s0", "s3"], "below it (s0) and above it (s3)"
    assert holders("/a/b/c/d") == ["s0", "s3"]
    assert holders("/z") == []
    assert holders("/") == ["s0", "s1", "s2", "s3"]


def held_reasons(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    return {
        r.__dict__["kdp_fields"]["device"]: r.__dict__["kdp_fields"]["reason"]
        for r in caplog.records
        if r.getMessage() == "device_held"
    }


@pytest.mark.parametrize("pod_resources", [True, False], ids=["polling", "polling off"])
async def test_a_node_gone_at_start_holds_the_unbooked_nodes_of_its_resource(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pod_resources: bool
) -> None:
    """hostile9 H2: the state directory was lost, and p1's node /dev/n0 was unplugged while
    kdp-host was down: the checkpoint names its path, not its device number, which the
    kernel may have given to m0. Every node of the resource that no booking holds waits
    until p1 ends, n1 too (its pod's booking names its path, resolved now: not the node it
    was handed when nodes moved while kdp-host was down, hostile19 F2), and so does a
    directory that may hold one
    (no watcher follows /srv/d's tree here: not known, hostile10 F7), also after a restart
    that finds the booking kept. With PodResources polling off nothing would end the hold:
    the gap stays (README)."""
    caplog.set_level(logging.INFO)
    dp = tmp_path / "dp"
    dp.mkdir()
    write_checkpoint(dp, entry_of(A, "n0", "/dev/n0"), entry_of(A, "n1", "/dev/n1"))
    nodes = FakeNodes({"/dev/m0": ("c", 21), "/dev/n1": ("c", 22), "/srv/d": ("d", 5)})
    devices = (dev("m0", "/dev/m0"), dev("n1", "/dev/n1"), dev("d", mounts=("/srv/d",)))
    now = [100.0]
    host, state = restarted(tmp_path / "state", nodes, now, pod_resources=pod_resources)
    host.index.take_handed(read_handed(str(dp), None, nodes) or [])
    host.publish(A, *devices)
    if not pod_resources:
        assert host.ids(A) == ["d", "m0", "n1"]
        return
    assert host.ids(A) == [], "m0, n1's path (or a node below d) may have n0's number"
    assert held_reasons(caplog) == {"m0": NUMBER_UNKNOWN, "n1": NUMBER_UNKNOWN, "d": NUMBER_UNKNOWN}
    await asyncio.wait_for(state.flush(), 30)

    again, _ = restarted(tmp_path / "state", nodes, now)  # the booking kept: still unknown
    again.index.take_handed(read_handed(str(dp), [A], nodes) or [])
    again.publish(A, *devices)
    assert again.ids(A) == []
    again.index.holdings(Holdings(now[0] + 60, 0.0, {A: {"n1": ()}}))  # p1 ended
    assert again.ids(A) == ["d", "m0", "n1"]


@pytest.mark.parametrize("owner", [A, "vendor.example/gpu"], ids=["served", "other plugin"])
async def test_a_node_gone_at_start_holds_the_unbooked_nodes_of_every_served_resource(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, owner: str
) -> None:
    """hostile10 F3: the state directory was lost and p1's node of A was unplugged while
    kdp-host was down; its number may have gone to a node of B (configured all along), which
    p1's container reaches: B's nodes that no booking holds wait as A's do, until p1 ends.
    Another plugin's gone node holds none of them (README: its resource alone)."""
    caplog.set_level(logging.INFO)
    dp = tmp_path / "dp"
    dp.mkdir()
    write_checkpoint(dp, entry_of(owner, "n0", "/kdp-test-gone/n0"))  # (no such node now)
    nodes = FakeNodes({"/dev/m0": ("c", 21), "/dev/a1": ("c", 22)})
    now = [100.0]
    host, _ = restarted(tmp_path / "state", nodes, now)
    config = load_config_text(
        f"kubelet: {{socketDir: {dp}}}\nresources:\n"
        + "".join(f"  - name: {r}\n    shell: {{command: [echo, s0]}}\n" for r in (A, B))
    )
    await book_handed(host.index, config, DaemonThreads(), get_logger())
    host.publish(B, dev("m0", "/dev/m0"))
    host.publish(A, dev("a1", "/dev/a1"))
    if owner != A:
        assert (host.ids(A), host.ids(B)) == (["a1"], ["m0"])
        return
    assert (host.ids(A), host.ids(B)) == ([], []), "m0 (or a1) may have n0's number"
    assert held_reasons(caplog) == {"m0": NUMBER_UNKNOWN, "a1": NUMBER_UNKNOWN}
    fields = [r.__dict__["kdp_fields"] for r in caplog.records if r.getMessage() == "device_held"]
    assert {(f["resource"], f["owner_resource"], f["owner_device"]) for f in fields} == {
        (B, A, "n0"), (A, A, "n0")}  # fmt: skip
    host.index.holdings(Holdings(now[0] + 1, 0.0, {A: {"n0": ()}}))  # p1 still runs
    assert (host.ids(A), host.ids(B)) == ([], [])
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))  # p1 ended
    assert (host.ids(A), host.ids(B)) == (["a1"], ["m0"])


def test_a_booking_that_knows_the_number_holds_by_it() -> None:
    """A booking kept with its device number (an Allocate booked it) needs no hold of the
    unknown: its number holds the node that has it, whatever its name."""
    nodes = FakeNodes({"/dev/m0": ("c", 22)})
    ledger = Ledger()
    ledger.record(Owner(A, "s0"), "s0", ((("c", 21), "/dev/a", "/dev/a"),), 0.0)
    gone = HandedClaims(Handed(A, ("s0",), ("/dev/a",), nodes=1), (claim_of("/dev/a", nodes),))
    take_handed(ledger, [gone], 1.0, numbers=True)
    assert not ledger.bookings[Owner(A, "s0")].number_unknown
    m0 = ClaimSet(((("c", 22), "/dev/m0", "/dev/m0"),))
    assert ledger.number_unknown(A, "m0", 1, m0) is None
    take_handed(ledger, [HandedClaims(Handed(A, ("s1",), ("/dev/b",), nodes=1), (
        claim_of("/dev/b", nodes),))], 1.0, numbers=True)  # fmt: skip
    assert ledger.number_unknown(A, "m0", 1, m0) == (Owner(A, "s1"), "/dev/m0")
    assert ledger.number_unknown(A, "s1", 1, m0) is None, "its own ID"
    assert ledger.number_unknown("other.io/x", "m0", 1, m0) is None
    files = Ledger()  # a booking that knew the path as a file: no number to reuse
    files.record(Owner(A, "s3"), "s3", ((("f", 9), "/dev/d", "/dev/d"),), 0.0)
    take_handed(files, [HandedClaims(Handed(A, ("s3",), ("/dev/d",), nodes=1), (
        claim_of("/dev/d", nodes),))], 1.0, numbers=True)  # fmt: skip
    assert files.number_unknown(A, "m0", 1, m0) is None
    kept = Ledger()  # an ID ownership.json lacks: a pod that ended, or a stale file (a
    # backup restored, hostile11 K1): its gone node's number is not known either
    take_handed(kept, [HandedClaims(Handed(A, ("s2",), ("/dev/c",), nodes=1), (
        claim_of("/dev/c", nodes),))], 1.0, numbers=True)  # fmt: skip
    assert kept.number_unknown(A, "m0", 1, m0) == (Owner(A, "s2"), "/dev/m0")


async def test_another_plugins_thousands_of_entries_are_one_line_each_answer_decoded_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dp = tmp_path / "dp"
    dp.mkdir()
    gpu = "vendor.example/gpu"
    write_checkpoint(dp, *(entry_of(gpu, f"g{i}", f"/dev/g{i % 2}") for i in range(30)))
    handed = read_handed(str(dp), None, FakeNodes({}))
    assert handed is not None
    assert [h.handed.paths for h in handed[:3]] == [("/dev/g0",), ("/dev/g1",), ("/dev/g0",)]
    assert handed[0].handed.paths is handed[2].handed.paths, "one answer, decoded once"
    host, _ = restarted(tmp_path / "state", FakeNodes({}))
    await book_handed(host.index, config_of(dp, A), DaemonThreads(), get_logger())
    lines = [r.__dict__["kdp_fields"] for r in caplog.records if "checkpoint_booked" in r.msg]
    assert lines == [{"resource": gpu, "count": 30, "devices": "g0,g1,g10,g11,g12"}]


async def test_a_release_on_the_checkpoints_paths_waits_for_every_pod_of_a_shared_node(
    tmp_path: Path,
) -> None:
    """hostile12 L8: another plugin handed one node to two pods under two IDs
    (generic-device-plugin's `count: 2`). The release owed when one pod ends acts on the
    checkpoint's paths only once no other ID booked on them is shown held: it ran under the
    other pod."""
    nodes = FakeNodes({"/dev/g0": ("c", 5)})
    host, _ = restarted(tmp_path, nodes)
    entries = [
        HandedClaims(Handed(A, (i,), ("/dev/g0",), nodes=1), (claim_of("/dev/g0", nodes),))
        for i in ("x0", "x1")
    ]
    host.index.take_handed(entries)
    assert host.index.checkpoint_handed(A, "x0") is None, "no answer yet: x1 may hold it"
    host.index.holdings(Holdings(1.0, 0.0, {A: {"x1": ()}}))  # p1 (x0) ended, p2 runs
    assert host.index.checkpoint_handed(A, "x0") is None
    host.index.holdings(Holdings(2.0, 0.0, {}))  # p2 ended too
    found = host.index.checkpoint_handed(A, "x0")
    assert found is not None and [n.host_path for n in found[0].nodes] == ["/dev/g0"]
