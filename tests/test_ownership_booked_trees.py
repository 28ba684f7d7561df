"""A directory a booking holds mounted besides its device (`allocate.mounts`, an
`allocate.command`'s mounts, another plugin's mount booked from the kubelet's checkpoint) is
a mounted tree like a device's own directory (issue 17, hostile18 F1-F5).

Before, such a place was checked by its path only: its tree was not followed, so a node or
file of another device linked or made in it after the Allocate stayed advertised (F2, F3);
an Allocate mounting it read 128 entries of it as if it were followed (F1); a device that
appeared later as a file already inside it (a hard link) was handed to a second pod (F5);
and a device directory that came to hold it (its parent renamed) was advertised (F4)."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from kdp_host import ownership_hand_out, ownership_reads
from kdp_host.holdings import Holdings
from kdp_host.mount_table import MountMap
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.testing import ManualWatcher

from .test_ownership_moves import R1, R2, Host, mounting, nodes


async def booked_place(
    tmp: Path, place: str, *entries: str, mounts: MountMap | None = None
) -> tuple[Host, ManualWatcher]:
    """Resource a's node dev/n0 is free (advertised, no pod); resource b's node dev/m0 was
    allocated with `tmp/place` mounted besides (a directory holding `entries`): booked."""
    (tmp / "dev").mkdir()
    (tmp / "dev" / "n0").write_text("")
    (tmp / "dev" / "m0").write_text("")
    directory = tmp / place
    directory.mkdir(parents=True)
    for name in entries:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text("")
    watcher = ManualWatcher()
    host = Host(watcher, mounts)
    await host.publish(R1, nodes("n0", str(tmp / "dev" / "n0")))
    await host.publish(R2, nodes("m0", str(tmp / "dev" / "m0")))
    await host.index.book(R2, ["m0"], {"m0": [str(directory)]})
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == (["n0"], ["m0"])
    return host, watcher


def ten_files(directory: Path) -> Path:
    """A directory of ten files (a tree past a read bound the tests lower)."""
    directory.mkdir()
    for number in range(10):
        (directory / f"f{number}").write_text("")
    return directory


@pytest.mark.parametrize("where", ["", "sub"])
async def test_a_node_linked_into_a_booked_place_is_held(tmp_path: Path, where: str) -> None:
    """F2: a's free node is hard-linked into the directory b's pod holds mounted (as
    `allocate.mounts`): the pod reaches it, so a's node is held while the booking lives."""
    host, watcher = await booked_place(tmp_path, "small", *(["sub/x"] if where else []))
    inside = tmp_path / "small" / where
    os.link(tmp_path / "dev" / "n0", inside / "arrived")
    watcher.change(str(inside), "arrived")
    await host.settled()
    assert host.ids(R1) == [], "the pod holding small reaches a's node"
    assert host.held(R1) == 1
    assert host.ids(R2) == ["m0"]


async def test_an_allocate_mounting_a_directory_not_followed_reads_it_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F1: an answer mounts a directory no device claims and no booking holds yet (its
    tree is not followed): what is in it is not known, so it is read in full, not up to
    `INSIDE_LIMIT` entries: a's node linked past that bound refuses the answer."""
    monkeypatch.setattr(ownership_hand_out, "INSIDE_LIMIT", 3)
    host, _ = await booked_place(tmp_path, "small")
    big = ten_files(tmp_path / "big")
    os.link(tmp_path / "dev" / "n0", big / "zz_link")
    m0 = str(tmp_path / "dev" / "m0")
    with pytest.raises(PlaceOwned, match=r"device n0 of t\.io/a"):
        await host.index.hand_out(R2, ["m0"], [m0, str(big)])


async def test_a_device_that_is_a_file_inside_a_booked_place_is_not_handed_out(
    tmp_path: Path,
) -> None:
    """F5: a device appears whose file is already inside the directory b's pod holds
    mounted (a hard link of it): its Allocate would hand a second pod what the first
    reaches. Refused, and the device held while the booking lives."""
    host, _ = await booked_place(tmp_path, "big", "link")
    n1 = tmp_path / "f" / "n1"
    n1.parent.mkdir()
    os.link(tmp_path / "big" / "link", n1)
    await host.publish(R1, nodes("n0", str(tmp_path / "dev" / "n0")), nodes("n1", str(n1)))
    with pytest.raises(PlaceOwned, match=r"n1 is also at .*/big/link"):
        await host.index.hand_out(R1, ["n1"], [str(n1)])
    await host.settled()
    assert host.ids(R1) == ["n0"], "n1 is held while the pod holds big"


async def test_a_device_directory_that_comes_to_hold_a_booked_place_is_held(
    tmp_path: Path,
) -> None:
    """F4: b's pod holds par/share mounted; par is renamed to gp0, the directory of a's
    group device: a pod given gp0 would reach what b's pod has. Held while the booking
    lives, and an Allocate of it refused."""
    host, _ = await booked_place(tmp_path, "par/share")
    os.rename(tmp_path / "par", tmp_path / "gp0")
    gp0 = str(tmp_path / "gp0")
    await host.publish(R1, nodes("n0", str(tmp_path / "dev" / "n0")), mounting("g0", gp0))
    await host.settled()
    assert host.ids(R1) == ["n0"], "g0 holds the directory b's pod has mounted"
    with pytest.raises(PlaceOwned):
        await host.index.hand_out(R1, ["g0"], [gp0])


def null_node(path: Path) -> None:
    """A character node for /dev/null's number at `path`."""
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")


@pytest.mark.parametrize("booked", [False, True])
@pytest.mark.parametrize("kind", ["node", "file"])
async def test_a_device_whose_number_is_a_node_inside_a_mounted_tree_is_held(
    tmp_path: Path, booked: bool, kind: str
) -> None:
    """hostile18 F13: b's device mounts gp0, which holds a node of a number; a device of a
    that appears later with that number (its node elsewhere) reaches what b hands out.
    Before, the trees were compared only when claimed and for claimed things arriving: both
    were advertised (and handed to two pods). Now the number found below gp0 puts the new
    device there: held (`owned`; `booked` while a pod holds gp0). So does a file, claimed by
    its inode (a probe's file device, a mount source), with a hard link below gp0: only what
    the reads found after its claim was looked at, and both were advertised (hostile21 F4:
    the run's side of check's table)."""
    gp0, n1 = tmp_path / "gp0", tmp_path / "f" / "n1"
    gp0.mkdir()
    n1.parent.mkdir()
    if kind == "node":
        null_node(gp0 / "link")
        null_node(n1)
    else:
        n1.write_text("")
        os.link(n1, gp0 / "link")
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R2, mounting("g0", str(gp0)))
    if booked:
        await host.index.book(R2, ["g0"])
    await host.settled()
    await host.publish(R1, nodes("n1", str(n1)))
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == ([], ["g0"])
    assert host.held(R1) == 1


async def test_an_allocate_mounting_a_big_directory_no_one_follows_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library directory every pod gets (`allocate.mounts` of /usr/lib: 70,000 entries)
    is read up to `RESCAN_LIMIT` before anything follows it; past that it is not refused
    (what is below is followed from its booking on, and read by the safety net), and a
    device's own tree past the limit still is (hostile8 N4)."""
    monkeypatch.setattr(ownership_hand_out, "RESCAN_LIMIT", 4)
    host, _ = await booked_place(tmp_path, "small")
    big = ten_files(tmp_path / "lib")
    m0 = str(tmp_path / "dev" / "m0")
    assert await host.index.hand_out(R2, ["m0"], [m0, str(big)]) == {m0: m0, str(big): str(big)}


async def test_a_node_in_a_followed_booked_tree_is_found_by_number_without_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device node handed out whose number is below a tree a pod holds mounted (followed
    in full) is found among the nodes the tree's reads found: refused with no read of the
    trees at the Allocate (an Allocate beside a library mount costs no hop off the loop)."""
    host, watcher = await booked_place(tmp_path, "small")
    null_node(tmp_path / "small" / "evil")
    watcher.change(str(tmp_path / "small"), "evil")
    await host.settled()
    reads: list[list[str]] = []
    monkeypatch.setattr(
        ownership_hand_out, "arrived", lambda paths, limit: reads.append(paths) or ([], False)
    )
    null_node(tmp_path / "dev" / "n1")
    n1 = str(tmp_path / "dev" / "n1")
    with pytest.raises(PlaceOwned, match=r"n1 is also at .*/small/evil"):
        await host.index.hand_out(R1, ["n1"], [n1])
    assert reads == []


async def renamed_while_booked(tmp: Path, own: bool) -> tuple[Host, ManualWatcher, Path]:
    """b's pod holds tmp/g/1 mounted (`own`: b's device mounts it, as a glob group's member;
    else it is an `allocate.mounts` place of b's device m0); a's device n is the file
    g/1/sub/n inside it: held. Then g/1 is renamed to h/1 (`mv`: the pod's bind mount
    follows the inode) and the watcher reports it; returns h/1."""
    tree = tmp / "g" / "1"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "n").write_text("")
    (tmp / "h").mkdir()
    watcher = ManualWatcher()
    host = Host(watcher)
    if own:
        await host.publish(R2, mounting("1", str(tree)))
        await host.index.book(R2, ["1"])
    else:
        (tmp / "m0").write_text("")
        await host.publish(R2, nodes("m0", str(tmp / "m0")))
        await host.index.book(R2, ["m0"], {"m0": [str(tree)]})
    await host.publish(R1, nodes("n", str(tree / "sub" / "n")))
    assert host.ids(R1) == [], "the pod holding g/1 reaches n"
    os.rename(tree, tmp / "h" / "1")
    watcher.change(str(tmp / "g"), "1")
    watcher.change(str(tree), None)  # (its own watch: moved)
    await host.settled()
    return host, watcher, tmp / "h" / "1"


@pytest.mark.parametrize("own", [True, False], ids=["device_dir", "allocate_mounts"])
async def test_a_booked_directory_renamed_out_of_its_place_keeps_its_tree_held(
    tmp_path: Path, own: bool
) -> None:
    """hostile19 F6: a directory a pod holds mounted is renamed (out of b's glob pattern,
    or an `allocate.mounts` directory): a's device n, listed again at its new place inside
    it, was held for a millisecond (the old place's nodes), then advertised and handed to
    a second pod while the first still had it. A booked directory is booked by its inode:
    followed where it is now, what is in it stays held while the booking lives."""
    host, _, moved = await renamed_while_booked(tmp_path, own)
    if own:
        await host.publish(R2)  # (g/1 is out of b's pattern now)
    await host.publish(R1, nodes("n", str(moved / "sub" / "n")))
    await host.settled()
    assert host.ids(R1) == [], "the pod holding the directory (now h/1) reaches n"
    host.index.holdings(Holdings(time.monotonic() + 3600, 0.0, {}))  # (long after: no pod)
    await host.settled()
    assert host.ids(R1) == ["n"], "advertised once the booking ends"


async def test_a_sub_directory_renamed_out_of_a_moved_booked_tree_frees_its_node(
    tmp_path: Path,
) -> None:
    """What is renamed out of the booked directory, at its new place too, leaves the pod's
    mount: a's node in it is advertised (the pod no longer reaches it)."""
    host, watcher, moved = await renamed_while_booked(tmp_path, own=False)
    await host.publish(R1, nodes("n", str(moved / "sub" / "n")))
    assert host.ids(R1) == []
    os.rename(moved / "sub", tmp_path / "out")
    watcher.change(str(moved), "sub")
    await host.publish(R1, nodes("n", str(tmp_path / "out" / "n")))
    await host.settled()
    assert host.ids(R1) == ["n"], host.index.held_now(R1)


def open_at(directory: Path) -> int:
    """How many of this process's descriptors name `directory` (the pinned trees)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return names.count(str(directory))


async def test_a_booked_directory_renamed_twice_is_followed_and_let_go_with_its_booking(
    tmp_path: Path,
) -> None:
    """Renamed again from its new place, the tree is found there too; once the booking ends
    nothing keeps the directory open."""
    host, watcher, moved = await renamed_while_booked(tmp_path, own=False)
    again = tmp_path / "k"
    os.rename(moved, again)
    watcher.change(str(moved), None)
    await host.settled()
    await host.publish(R1, nodes("n", str(again / "sub" / "n")))
    assert host.ids(R1) == [], "the pod holding the directory (now k) reaches n"
    assert open_at(again) >= 1
    host.index.holdings(Holdings(time.monotonic() + 3600, 0.0, {}))  # (long after: no pod)
    await host.settled()
    assert host.ids(R1) == ["n"]
    assert open_at(again) == 0, "no descriptor outlives the booking"


async def test_a_node_renamed_into_a_booked_place_and_out_again_is_advertised(
    tmp_path: Path,
) -> None:
    """a's node renamed into the directory b's pod holds is held; renamed out again, the
    pod no longer reaches it: advertised (before, the place it was found at was kept while
    its claim lived, and held it)."""
    host, watcher = await booked_place(tmp_path, "small", "sub/x")
    inside = tmp_path / "small" / "sub" / "n0"
    os.rename(tmp_path / "dev" / "n0", inside)
    watcher.change(str(tmp_path / "dev"), "n0")
    watcher.change(str(inside.parent), "n0")
    await host.publish(R1, nodes("n0", str(inside)))
    assert host.ids(R1) == []
    os.rename(tmp_path / "small" / "sub", tmp_path / "out")
    watcher.change(str(tmp_path / "small"), "sub")
    await host.publish(R1, nodes("n0", str(tmp_path / "out" / "n0")))
    await host.settled()
    assert host.ids(R1) == ["n0"]


@pytest.mark.parametrize("local", [True, False])
async def test_a_file_of_one_link_beside_a_booked_tree_is_looked_at_without_a_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: bool
) -> None:
    """A file handed out while another pod holds a tree mounted: whether it has a second
    link (which that tree could hold) is asked by an lstat on the loop where its directory
    lies on local file systems only (no hop off the loop at every such Allocate, issue 19);
    elsewhere off the loop, as before. A file of two links is still looked for (F5)."""
    disk = MountMap([("/", ("8:1", "/"))], {"/": "ext4" if local else "nfs4"})
    host, _ = await booked_place(tmp_path, "small", "x", mounts=disk)
    hops: list[object] = []
    linked_below = ownership_hand_out.linked_below

    def counted(*args: Any) -> Any:
        hops.append(args)
        return linked_below(*args)

    monkeypatch.setattr(ownership_hand_out, "linked_below", counted)
    n0 = str(tmp_path / "dev" / "n0")
    assert await host.index.hand_out(R1, ["n0"], [n0]) == {n0: n0}
    assert len(hops) == (0 if local else 1)
    os.link(n0, tmp_path / "elsewhere")  # a second link (not below the tree): looked for
    assert await host.index.hand_out(R1, ["n0"], [n0]) == {n0: n0}
    assert len(hops) == (1 if local else 2)


@pytest.mark.parametrize("local", [True, False])
async def test_a_file_of_two_links_beside_a_booked_tree_is_lstat_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: bool
) -> None:
    """Whether a file handed out has a second link is asked once per Allocate: on the loop
    where its directory is local (and the read off it is told), else off the loop (before,
    a file of two links in a local directory was lstat'ed there, then again off the loop)."""
    disk = MountMap([("/", ("8:1", "/"))], {"/": "ext4" if local else "nfs4"})
    host, _ = await booked_place(tmp_path, "small", "x", mounts=disk)
    asked: list[object] = []
    one_link = ownership_reads.more_than_one_link

    def counted(nodes: Any) -> Any:
        asked.append(nodes)
        return one_link(nodes)

    monkeypatch.setattr(ownership_hand_out, "more_than_one_link", counted)
    monkeypatch.setattr(ownership_reads, "more_than_one_link", counted)
    n0 = str(tmp_path / "dev" / "n0")
    os.link(n0, tmp_path / "elsewhere")
    assert await host.index.hand_out(R1, ["n0"], [n0]) == {n0: n0}
    assert len(asked) == 1
