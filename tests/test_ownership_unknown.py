"""A booked node's number not known at start reaches a mounted directory too (hostile10 F7,
`kdp_host.ownership_unknown`).

The state directory was lost and p1's node of A was unplugged while kdp-host was down: the
kubelet's checkpoint books it by path, its device number not known. The kernel may have
given that number to a node made since anywhere, also inside a directory another resource's
device mounts (a glob group): that device was advertised, and a second pod's mount held the
node p1's container reaches. Now a directory whose tree holds a device node, or is not known
to hold none, waits as an unbooked node does, until p1 ends."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdp_host import ownership_arrivals, ownership_reads
from kdp_host.holdings import UNLISTED, Holdings
from kdp_host.identity import identity_of
from kdp_host.kubelet_checkpoint import Handed, HandedClaims
from kdp_host.ownership_claims import claim_of, reach
from kdp_host.ownership_unknown import NUMBER_UNKNOWN
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .fake_nodes import FakeNodes
from .test_ownership import dev, restarted
from .test_ownership_moves import R1, R2, Host, mounting

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

GONE = "/kdp-test-gone/n0"


@pytest.fixture
def fake_nodes(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Inodes the mounted trees' reads take for character nodes (a test makes no node)."""
    inodes: set[int] = set()

    def identity(st: os.stat_result) -> Any:
        return ("c", 1000 + st.st_ino) if st.st_ino in inodes else identity_of(st)

    monkeypatch.setattr(ownership_reads, "identity_of", identity)
    return inodes


def node_in(directory: Path, name: str, inodes: set[int]) -> Path:
    """A file the trees' reads take for a device node (`fake_nodes`)."""
    path = directory / name
    path.write_text("")
    inodes.add(path.stat().st_ino)
    return path


async def started(tmp: Path, watcher: ManualWatcher, **dirs: Path) -> Host:
    """p1's node of R1 (GONE) is booked from the checkpoint, its number not known; R2
    mounts `dirs` (ID -> directory)."""
    host = Host(watcher)
    host.index.serve([R1, R2])
    gone = HandedClaims(Handed(R1, ("n0",), (GONE,), nodes=1), (claim_of(GONE, reach),))
    host.index.take_handed([gone])
    await host.publish(R2, *(mounting(d, str(path)) for d, path in dirs.items()))
    return host


def held(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    return {
        r.__dict__["kdp_fields"]["device"]: r.__dict__["kdp_fields"]["reason"]
        for r in caplog.records
        if r.getMessage() == "device_held"
    }


async def test_a_mounted_tree_with_a_node_waits_while_a_booked_number_is_not_known(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fake_nodes: set[int]
) -> None:
    """R2's `d` holds a node deep in its tree (`sub/m0`), `e` only a file: `d` waits until
    p1 ends, `e` is advertised once its tree was read. Before, `d` was advertised at once."""
    caplog.set_level(logging.INFO)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    node_in(tmp_path / "d" / "sub", "m0", fake_nodes)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "readme").write_text("")
    host = await started(tmp_path, ManualWatcher(), d=tmp_path / "d", e=tmp_path / "e")
    assert host.ids(R2) == ["e"], "d's mount may hold the number p1's container reaches"
    assert held(caplog)["d"] == NUMBER_UNKNOWN
    [line] = [r for r in caplog.records if r.__dict__.get("kdp_fields", {}).get("device") == "d"
              and r.getMessage() == "device_held"]  # fmt: skip
    assert line.__dict__["kdp_fields"]["path"] == str(tmp_path / "d")
    host.index.holdings(Holdings(1.0, 0.0, {R1: {"n0": ()}}))  # p1 still runs
    await host.settled()
    assert host.ids(R2) == ["e"]
    host.index.holdings(Holdings(1e9, 0.0, {}))  # p1 ended
    await host.settled()
    assert host.ids(R2) == ["d", "e"]


async def test_a_node_made_later_in_an_advertised_tree_holds_it(
    tmp_path: Path, fake_nodes: set[int]
) -> None:
    """`e` was advertised (no node below it); a node appears in it while the number is not
    known: `e` waits too. Removed again, `e` is advertised again; so with a directory
    holding a node."""
    (tmp_path / "e").mkdir()
    watcher = ManualWatcher()
    host = await started(tmp_path, watcher, e=tmp_path / "e")
    assert host.ids(R2) == ["e"]
    made = node_in(tmp_path / "e", "m0", fake_nodes)
    watcher.change(str(tmp_path / "e"), "m0")
    await host.settled()
    assert host.ids(R2) == [], "the new node may have p1's number"
    made.unlink()
    watcher.change(str(tmp_path / "e"), "m0")
    await host.settled()
    assert host.ids(R2) == ["e"]
    (tmp_path / "e" / "sub").mkdir()  # a directory with a node renamed in, then removed
    node_in(tmp_path / "e" / "sub", "m1", fake_nodes)
    watcher.change(str(tmp_path / "e"), "sub")
    await host.settled()
    assert host.ids(R2) == []
    shutil.rmtree(tmp_path / "e" / "sub")
    watcher.change(str(tmp_path / "e"), "sub")
    await host.settled()
    assert host.ids(R2) == ["e"], "what was below the directory went with it"


async def test_a_tree_too_big_to_follow_waits_and_none_waits_without_an_unknown_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nodes: set[int]
) -> None:
    """A tree not followed in full (more directories than `TREE_LIMIT`) is not known to hold
    no node: it waits (fail closed). Without a number unknown, the same tree is advertised."""
    monkeypatch.setattr(ownership_arrivals, "TREE_LIMIT", 1)
    for name in ("x", "y"):
        (tmp_path / "big" / name).mkdir(parents=True)
    host = await started(tmp_path, ManualWatcher(), big=tmp_path / "big")
    assert host.ids(R2) == []
    plain = Host(ManualWatcher())
    await plain.publish(R2, mounting("big", str(tmp_path / "big")))
    assert plain.ids(R2) == ["big"]


async def test_through_the_kubelet_a_glob_groups_directory_with_a_node_waits(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    fake_nodes: set[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile10 F7 through the kubelet's real device manager: p1 holds A's fpga0 (and
    fpga1); kdp-host stops, its state directory is lost and fpga0 is unplugged. C's glob
    group advertises the directories share/d (a node below it, which may have fpga0's
    number) and share/e: only e is advertised until p1 ends (before: both, and p2 got d's
    mount). The line that says p1's node is gone names each holder readably (an unlisted
    one was `//`)."""
    for name in ("d", "e"):
        (short_dir / "share" / name).mkdir(parents=True)
    node_in(short_dir / "share" / "d", "m0", fake_nodes)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state = short_dir / "state"
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, "
        f"podResourcesSocket: {kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nmetrics: {{listen: 127.0.0.1:0}}\nresources:\n"
        f'  - name: {R1}\n    glob: {{paths: ["{devices}/fpga[01]"]}}\n'
        f"  - name: {R2}\n    glob:\n      group:\n"
        f'        - {{path: "{short_dir}/share/{{key}}", readOnly: false}}\n'
    )
    running = await start_host(config)

    def healthy(resource: str, at_least: int) -> Any:
        def check(k: Any) -> bool:
            seen = k.resource(resource)
            return seen is not None and seen["healthy"] >= at_least

        return check

    await kubelet.await_for(healthy(R1, 2), what="A advertises fpga0 and fpga1")
    assert (await kubelet.acall(kubelet.allocate, "p1", {R1: 2}))["error"] == ""
    await running.shutdown()
    shutil.rmtree(state)
    (devices / "fpga0").unlink()
    await start_host(config)
    await kubelet.await_for(healthy(R2, 1), what="C advertises e")

    def gone_holders() -> list[str]:
        return [r.__dict__["kdp_fields"]["holders"] for r in caplog.records
                if r.getMessage() == "held_device_missing"]  # fmt: skip

    await wait_until(lambda: gone_holders(), what="fpga0 said gone with its holders")
    for holders in gone_holders():  # (p1, and its checkpoint entry's other ID: not listed)
        named = set(holders.split(","))
        assert "default/p1/c" in named and named <= {"default/p1/c", UNLISTED}, holders
    refused = await kubelet.acall(kubelet.allocate, "p2", {R2: 2})
    assert refused["error"] and not refused["device_ids"], "d is held while p1 runs"
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(R2, 2), what="C advertises d once p1 ended")


def checkpoint_of(nodes: FakeNodes, *handed: tuple[str, str]) -> list[HandedClaims]:
    """The kubelet's checkpoint as read at a start: each (ID, node path) of R1 one pod's."""
    return [
        HandedClaims(Handed(R1, (kubelet_id,), (path,), nodes=1), (claim_of(path, nodes),))
        for kubelet_id, path in handed
    ]


async def test_a_stale_checkpoint_entry_whose_path_reaches_another_node_now_holds_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """hostile19 F2: the state directory was lost; p1 holds x0 (gone at start: its number is
    not known), and the checkpoint still lists x1 of pX, which ended. While kdp-host was
    down the nodes were renamed: x1's path is p1's node now (c 20), x7 is pX's. x1's
    booking, made from that path now, is a guess: it does not make x1 pass the rule, nor
    does its end (before: x1 was advertised under the booked ID at once, the kubelet saw it
    free, and stayed so once pX's booking went: p2 got p1's node)."""
    caplog.set_level(logging.INFO)
    nodes = FakeNodes({"/dev/x1": ("c", 20), "/dev/x7": ("c", 21)}, nothing=True)
    now = [100.0]
    host, _ = restarted(tmp_path / "state", nodes, now)
    host.index.serve([R1])
    host.index.take_handed(checkpoint_of(nodes, ("x0", "/dev/x0"), ("x1", "/dev/x1")))
    host.publish(R1, dev("x1", "/dev/x1"), dev("x7", "/dev/x7"))
    assert host.ids(R1) == [], "x1's path may be p1's node now (and x7 may have its number)"
    assert held(caplog) == {"x1": NUMBER_UNKNOWN, "x7": NUMBER_UNKNOWN}
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"x0": ()}}))  # pX's booking ends
    assert host.ids(R1) == []
    host.index.holdings(Holdings(now[0] + 120, 0.0, {}))  # p1 ended
    assert host.ids(R1) == ["x1", "x7"]


async def test_a_booking_that_ends_while_a_number_is_not_known_holds_its_node_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """n1 was booked by an Allocate (its number kept in `ownership.json`), so after a
    restart that finds p1's n0 gone (its number not known: that booking was lost) n1 is
    advertised for its pod. When n1's pod ends, no booking holds n1's node: it is examined
    again and held (its admission re-examines it: an unchanged list only looked at held and
    stale devices, and n1 stayed advertised with a number p1's container may reach)."""
    caplog.set_level(logging.INFO)
    nodes = FakeNodes({"/dev/n1": ("c", 22), "/dev/m0": ("c", 21)}, nothing=True)
    now = [100.0]
    first, state = restarted(tmp_path / "state", nodes, now)
    first.publish(R1, dev("n1", "/dev/n1"))
    await first.index.book(R1, ["n1"])
    await asyncio.wait_for(state.flush(), 30)
    host, _ = restarted(tmp_path / "state", nodes, now)  # n0's booking never reached the file
    host.index.serve([R1])
    host.index.take_handed(checkpoint_of(nodes, ("n0", "/dev/n0"), ("n1", "/dev/n1")))
    host.publish(R1, dev("n1", "/dev/n1"), dev("m0", "/dev/m0"))
    assert host.ids(R1) == ["n1"], "its booking knows n1's number: held by it"
    assert held(caplog) == {"m0": NUMBER_UNKNOWN}
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"n0": ()}}))  # n1's pod ended
    assert host.ids(R1) == [], "no booking holds n1's node: it may have n0's number"
    assert held(caplog)["n1"] == NUMBER_UNKNOWN
    host.index.holdings(Holdings(now[0] + 120, 0.0, {}))  # p1 ended
    assert host.ids(R1) == ["m0", "n1"]
