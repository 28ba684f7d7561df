"""A directory a booking holds mounted besides its device (`allocate.mounts`, an
`allocate.command`'s mounts, another plugin's mount booked from the kubelet's checkpoint) is
a mounted tree like a device's own directory (issue 17, hostile18 F1-F5).

Before, such a place was checked by its path only: its tree was not followed, so a node or
file of another device linked or made in it after the Allocate stayed advertised (F2, F3);
an Allocate mounting it read 128 entries of it as if it were followed (F1); a device that
appeared later as a file already inside it (a hard link) was handed to a second pod (F5);
and a device directory that came to hold it (its parent renamed) was advertised (F4)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kdp_host import ownership_hand_out
from kdp_host.ownership_hand_out import PlaceOwned
from kdp_host.testing import ManualWatcher

from .test_ownership_moves import R1, R2, Host, mounting, nodes


async def booked_place(tmp: Path, place: str, *entries: str) -> tuple[Host, ManualWatcher]:
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
    host = Host(watcher)
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
async def test_a_device_whose_number_is_a_node_inside_a_mounted_tree_is_held(
    tmp_path: Path, booked: bool
) -> None:
    """hostile18 F13: b's device mounts gp0, which holds a node of a number; a device of a
    that appears later with that number (its node elsewhere) reaches what b hands out.
    Before, the trees were compared only when claimed and for claimed things arriving: both
    were advertised (and handed to two pods). Now the number found below gp0 puts the new
    device there: held (`owned`; `booked` while a pod holds gp0)."""
    gp0 = tmp_path / "gp0"
    gp0.mkdir()
    null_node(gp0 / "link")
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R2, mounting("g0", str(gp0)))
    if booked:
        await host.index.book(R2, ["g0"])
    await host.settled()
    (tmp_path / "f").mkdir()
    null_node(tmp_path / "f" / "n1")
    await host.publish(R1, nodes("n1", str(tmp_path / "f" / "n1")))
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
