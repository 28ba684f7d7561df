"""Two mounted trees that share what they hold (issue 17, hostile19 F1, hostile18 F13).

Two group directories each holding a node of one device number (two `mknod`, or a hard
link of one node), or a link of one regular file: a pod given the one reaches what a pod
given the other reaches. Before, what is below a mounted directory was compared with claims
only (a node some device claims by number), never with what is below another booking's
mounted directory: both Allocates were answered, and `check` said nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kdp_host import ownership_arrivals, ownership_hand_out, ownership_shared
from kdp_host.devices import Device
from kdp_host.holdings import Holdings
from kdp_host.ownership_overlaps import overlap_warnings, overlaps
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.testing import ManualWatcher

from .test_ownership_booked_trees import null_node
from .test_ownership_moves import R1, R2, Host, mounting


async def two_groups(tmp: Path, *, second_node: bool = True) -> tuple[Host, ManualWatcher]:
    """Group directories g/1 (holding sub/n, a node of /dev/null's number) and g/2 (holding
    m, another node of that number, unless not `second_node`), two devices of a; a pod holds
    g/1."""
    (tmp / "g" / "1" / "sub").mkdir(parents=True)
    (tmp / "g" / "2").mkdir()
    null_node(tmp / "g" / "1" / "sub" / "n")
    if second_node:
        null_node(tmp / "g" / "2" / "m")
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, mounting("1", str(tmp / "g" / "1")), mounting("2", str(tmp / "g" / "2")))
    await host.index.book(R1, ["1"])
    await host.settled()
    return host, watcher


async def test_two_group_directories_holding_nodes_of_one_number(tmp_path: Path) -> None:
    """hostile19 F1: the pod holding g/1 reaches the number g/2 holds: an Allocate of g/2 is
    refused, naming both nodes; found among the nodes the trees' reads found: nothing read
    at the Allocate."""
    host, _ = await two_groups(tmp_path)
    g2 = str(tmp_path / "g" / "2")
    with pytest.raises(PlaceOwned, match=r"mounts .*/g/2/m, and .*/g/1/sub/n, below"):
        await host.index.hand_out(R1, ["2"], [g2])


@pytest.mark.parametrize("how", ["mknod", "link"])
async def test_a_node_of_the_number_made_later_in_the_other_group(tmp_path: Path, how: str) -> None:
    """hostile19 F1 variants: the node made in g/2 after the pod got g/1, or a hard link of
    g/1's node made there (a node's link, not a regular file's)."""
    host, watcher = await two_groups(tmp_path, second_node=False)
    g2 = tmp_path / "g" / "2"
    assert await host.index.hand_out(R1, ["2"], [str(g2)]) == {str(g2): str(g2)}
    if how == "mknod":
        null_node(g2 / "h")
    else:
        os.link(tmp_path / "g" / "1" / "sub" / "n", g2 / "h")
    watcher.change(str(g2), "h")
    await host.settled()
    with pytest.raises(PlaceOwned, match=r"mounts .*/g/2/h, and .*/g/1/sub/n"):
        await host.index.hand_out(R1, ["2"], [str(g2)])


async def test_a_node_past_the_allocates_read_is_found_among_its_trees_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """g/2 holds more than the Allocate reads of it (`INSIDE_LIMIT`, 1 here: the directory
    alone): the nodes the watcher's reads of its tree found are looked up too."""
    host, _ = await two_groups(tmp_path)
    for module in (ownership_hand_out, ownership_shared):
        monkeypatch.setattr(module, "INSIDE_LIMIT", 1)
    with pytest.raises(PlaceOwned, match=r"mounts .*/g/2/m, and .*/g/1/sub/n, below"):
        await host.index.hand_out(R1, ["2"], [str(tmp_path / "g" / "2")])


async def test_the_other_group_is_held_while_a_pod_holds_the_first(tmp_path: Path) -> None:
    """The index level: while the pod holds g/1, g/2 (which reaches its number) is held, so
    the kubelet is not offered it; advertised again once no pod holds g/1."""
    host, _ = await two_groups(tmp_path)
    assert host.ids(R1) == ["1"], "2 reaches the number the pod holding g/1 has"
    host.index.holdings(Holdings(time.monotonic() + 3600, 0.0, {}))  # (long after: no pod)
    await host.settled()
    assert host.ids(R1) == ["1", "2"]


@pytest.mark.parametrize("where", ["2", "1/sub"])
async def test_a_node_made_later_in_either_tree_holds_the_other_group(
    tmp_path: Path, where: str
) -> None:
    """A node of the number made after the pod got g/1: in g/2 (its tree holds the pod's
    number now), or in g/1 (the pod's tree holds g/2's number now): g/2 is held."""
    (tmp_path / "g" / "1" / "sub").mkdir(parents=True)
    (tmp_path / "g" / "2").mkdir()
    null_node(tmp_path / "g" / ("1/sub/n" if where == "2" else "2/m"))
    watcher = ManualWatcher()
    host = Host(watcher)
    g1, g2 = str(tmp_path / "g" / "1"), str(tmp_path / "g" / "2")
    await host.publish(R1, mounting("1", g1), mounting("2", g2))
    await host.index.book(R1, ["1"])
    await host.settled()
    assert host.ids(R1) == ["1", "2"]
    null_node(tmp_path / "g" / where / "late")
    watcher.change(str(tmp_path / "g" / where), "late")
    await host.settled()
    assert host.ids(R1) == ["1"]


async def groups_a_and_b(tmp: Path) -> tuple[Host, ManualWatcher, Path]:
    """hostile18 F13's variant: a's group directory ga0 holds sub/file, b's gb0 is empty; a
    pod holds ga0. Returns gb0."""
    (tmp / "ga0" / "sub").mkdir(parents=True)
    (tmp / "ga0" / "sub" / "file").write_text("")
    (tmp / "gb0").mkdir()
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, mounting("a0", str(tmp / "ga0")))
    await host.publish(R2, mounting("b0", str(tmp / "gb0")))
    await host.index.book(R1, ["a0"])
    await host.settled()
    return host, watcher, tmp / "gb0"


async def test_a_file_of_a_booked_tree_linked_into_another_group_directory(
    tmp_path: Path,
) -> None:
    """hostile18 F13 (between two mounted trees): ga0/sub/file is hard-linked into gb0 (by
    root on the host: link(2) does not cross mounts). ga0's tree was read when the file had
    one link, and the link changed no time of its directories: the file found in gb0 with
    two links, whose other link no read found, has ga0 (a tree a pod holds) read again:
    b0 is held at once, and an Allocate of it refused."""
    host, watcher, gb0 = await groups_a_and_b(tmp_path)
    os.link(tmp_path / "ga0" / "sub" / "file", gb0 / "file")
    watcher.change(str(gb0), "file")
    await host.settled()
    assert host.ids(R2) == [], "b0 reaches the file the pod holding ga0 has"
    with pytest.raises(PlaceOwned, match=r"mounts .*/gb0/file, and .*/ga0/sub/file, .* a link"):
        await host.index.hand_out(R2, ["b0"], [str(gb0)])


async def test_a_file_linked_into_a_booked_tree_after_the_answer_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: gb0's file (one link when its tree was read, and so in the
    answer's kept read) is linked into ga0, which a pod holds: the watcher finds it there
    with two links, and the answer's file is looked for there by its inode: refused, with
    nothing read at the Allocate."""
    host, watcher, gb0 = await groups_a_and_b(tmp_path)
    (gb0 / "file").write_text("")
    watcher.change(str(gb0), "file")
    await host.settled()
    assert await host.index.hand_out(R2, ["b0"], [str(gb0)]) == {str(gb0): str(gb0)}
    stale = ownership_hand_out._read_inside(  # (what a kept read answers: one link then)
        (str(gb0),), [], None
    )
    os.link(gb0 / "file", tmp_path / "ga0" / "file")
    watcher.change(str(tmp_path / "ga0"), "file")
    await host.settled()
    monkeypatch.setattr(ownership_hand_out, "_read_inside", lambda *_: stale)
    with pytest.raises(PlaceOwned, match=r"mounts .*/gb0/file, and .*/ga0/file, .* a link"):
        await host.index.hand_out(R2, ["b0"], [str(gb0)])
    await host.settled()
    assert host.ids(R2) == [], "gb0/file read again: b0 held while the pod holds ga0"


@pytest.mark.parametrize("linked", [False, True])
async def test_what_the_answer_shares_with_itself_only_is_handed_out(
    tmp_path: Path, linked: bool
) -> None:
    """a1's directory holds a node of the number another of its nodes is (or, `linked`,
    two links of one file), beside the tree a pod holds: nothing the pod reaches."""
    host, _, _ = await groups_a_and_b(tmp_path)
    ga1 = tmp_path / "ga1"
    ga1.mkdir()
    (ga1 / "plain").write_text("")
    null_node(ga1 / "null")
    null_node(ga1 / "null2")
    if linked:
        (ga1 / "x").write_text("")
        os.link(ga1 / "x", ga1 / "y")
    await host.publish(R1, mounting("a0", str(tmp_path / "ga0")), mounting("a1", str(ga1)))
    assert await host.index.hand_out(R1, ["a1"], [str(ga1)]) == {str(ga1): str(ga1)}
    assert host.ids(R1) == ["a0", "a1"]


async def test_a_node_beside_a_booked_tree_too_big_to_follow_is_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod holds a tree the watcher does not follow in full (a library mount: read by
    the safety net): an answer whose directory holds a node is looked up among what the
    reads found, not refused for the tree it cannot read in full (nor made to read it)."""
    monkeypatch.setattr(ownership_arrivals, "TREE_LIMIT", 2)
    monkeypatch.setattr(ownership_shared, "RESCAN_LIMIT", 4, raising=False)  # (as it was read)
    host, _, _ = await groups_a_and_b(tmp_path)
    lib = tmp_path / "lib"
    for name in ("d0", "d1", "d2", "d3/e/f"):
        (lib / name).mkdir(parents=True)
    await host.index.book(R1, ["a0"], {"a0": [str(lib)]})
    await host.settled()
    assert not host.index._arrivals.known_in_full([str(lib)])
    ga1 = tmp_path / "ga1"
    ga1.mkdir()
    null_node(ga1 / "null")
    await host.publish(R1, mounting("a0", str(tmp_path / "ga0")), mounting("a1", str(ga1)))
    assert await host.index.hand_out(R1, ["a1"], [str(ga1)]) == {str(ga1): str(ga1)}


def test_check_warns_about_two_trees_that_share_a_number_or_a_file(tmp_path: Path) -> None:
    """`kdp-host check` reads each mounted directory's tree: two devices' trees holding one
    device number, or one file (two links), are a warning line."""
    for name in ("g1/sub", "g2", "ga0", "gb0"):
        (tmp_path / name).mkdir(parents=True)
    null_node(tmp_path / "g1" / "sub" / "n")
    null_node(tmp_path / "g2" / "m")
    (tmp_path / "ga0" / "file").write_text("")
    os.link(tmp_path / "ga0" / "file", tmp_path / "gb0" / "file")
    devices: list[tuple[str, Device]] = [
        (R1, mounting("1", str(tmp_path / "g1"))),
        (R1, mounting("2", str(tmp_path / "g2"))),
        (R1, mounting("a0", str(tmp_path / "ga0"))),
        (R2, mounting("b0", str(tmp_path / "gb0"))),
    ]
    found = {(o.path, o.first.device, o.second.device) for o in overlaps(devices)}
    assert found == {
        (str(tmp_path / "g2" / "m"), "1", "2"),
        (str(tmp_path / "gb0" / "file"), "a0", "b0"),
    }
    lines = overlap_warnings(devices, {}, str)
    assert len(lines) == 2 and all("also at" in line for line in lines), lines
