"""An Allocate's read below a directory its answer mounts, kept while the directories it
listed are as they were (issue 19: an Allocate mounting /usr/lib lstat'ed ~130 entries off
the loop each time; beside a busy loop each system call of the worker thread waited for the
GIL, and Allocate p50 was ~400 ms beside the renaming probe).

The read is there for what another device owns renamed or linked below the mount before the
watcher reported it: a kept read must see such a move at once. It does, by the listed
directories' times (an entry made, removed or renamed changes its directory's mtime)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host import kept_reads, ownership_hand_out, ownership_reads
from kdp_host.kept_reads import KEPT_FOR, read_or_recall
from kdp_host.mount_table import MountMap, parse_mounts
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.testing import ManualWatcher

from .test_ownership_moves import R2, Host, mounting
from .test_ownership_trees import booked_beside_tree

LONG_AGO = 1_000_000_000  # 2001: a time no test's change shares


def aged(*directories: Path) -> None:
    """The directories' mtime set long ago (their ctime is now: `STEADY_FOR` is 0 here)."""
    for directory in directories:
        os.utime(directory, ns=(LONG_AGO, LONG_AGO))


def tree(root: Path) -> list[Path]:
    (root / "d0").mkdir(parents=True)
    (root / "d1").mkdir()
    (root / "d0" / "f").write_text("")
    directories = [root, root / "d0", root / "d1"]
    aged(*directories)
    return directories


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The reads made (`arrived` calls), with `STEADY_FOR` 0: what the test aged is steady."""
    monkeypatch.setattr(kept_reads, "STEADY_FOR", 0.0)
    made: list[list[str]] = []
    real = ownership_reads.arrived

    def counted(
        paths: list[str], limit: int, listed: ownership_reads.Listed | None = None
    ) -> tuple[ownership_reads.Found, bool]:
        made.append(list(paths))
        return real(paths, limit, listed)

    monkeypatch.setattr(kept_reads, "arrived", counted)
    return made


def test_a_steady_tree_is_read_once_then_its_directories_are_checked(
    tmp_path: Path, reads: list[list[str]]
) -> None:
    tree(tmp_path / "b")
    paths = [str(tmp_path / "b")]
    answer, known = read_or_recall(paths, 128, None)
    assert known is not None and len(answer[0]) == 4 and reads == [paths]
    again, still = read_or_recall(paths, 128, known)
    assert (again, still) == (answer, known) and reads == [paths], "not read again"


@pytest.mark.parametrize("how", ["rename", "link", "remove", "mkdir"])
def test_an_entry_changed_in_a_listed_directory_is_read_again(
    tmp_path: Path, reads: list[list[str]], how: str
) -> None:
    """Fails where a kept read is answered while its directories changed."""
    tree(tmp_path / "b")
    (tmp_path / "node").write_text("")
    paths = [str(tmp_path / "b")]
    _, known = read_or_recall(paths, 128, None)
    target = tmp_path / "b" / "d1" / "moved"
    if how == "rename":
        (tmp_path / "node").rename(target)
    elif how == "link":
        os.link(tmp_path / "node", target)
    elif how == "remove":
        (tmp_path / "b" / "d0" / "f").unlink()
    else:
        (tmp_path / "b" / "d1" / "sub").mkdir()
    answer, _ = read_or_recall(paths, 128, known)
    assert len(reads) == 2
    found = {path for _, path in answer[0]}
    assert found == {path for _, path in ownership_reads.arrived(paths, 128)[0]}
    assert (str(target) in found) == (how in ("rename", "link"))


def test_a_directory_replaced_by_another_is_read_again(
    tmp_path: Path, reads: list[list[str]]
) -> None:
    tree(tmp_path / "b")
    tree(tmp_path / "other")
    paths = [str(tmp_path / "b")]
    _, known = read_or_recall(paths, 128, None)
    os.rename(tmp_path / "b" / "d0", tmp_path / "gone")
    os.rename(tmp_path / "other" / "d0", tmp_path / "b" / "d0")
    aged(tmp_path / "b")  # (its mtime as the kept read saw it: the inode of d0 differs)
    read_or_recall(paths, 128, known)
    assert len(reads) == 2


def test_a_tree_changed_lately_is_not_kept(tmp_path: Path) -> None:
    """Made now: a change in the same tick of the file system's clock would not show."""
    (tmp_path / "b" / "d0").mkdir(parents=True)
    assert read_or_recall([str(tmp_path / "b")], 128, None)[1] is None


def test_a_read_that_could_not_list_a_path_is_not_kept(
    tmp_path: Path, reads: list[list[str]]
) -> None:
    tree(tmp_path / "b")
    paths = [str(tmp_path / "b"), str(tmp_path / "absent")]
    assert read_or_recall(paths, 128, None)[1] is None


def test_a_kept_read_lasts_kept_for_at_most(tmp_path: Path, reads: list[list[str]]) -> None:
    tree(tmp_path / "b")
    _, known = read_or_recall([str(tmp_path / "b")], 128, None)
    assert known is not None
    assert known.holds(known.at + KEPT_FOR / 2)
    assert not known.holds(known.at + KEPT_FOR)


async def test_a_held_node_renamed_below_a_kept_mount_refuses_the_allocate(
    tmp_path: Path, reads: list[list[str]]
) -> None:
    """Through the ownership index: b's second Allocate reads nothing below its mount (the
    read is kept); a's held node renamed into b/sub, not reported by the watcher, refuses
    the next one (fails where the kept read is answered regardless)."""
    host, _ = await booked_beside_tree(tmp_path, "sub")
    aged(tmp_path / "b", tmp_path / "b" / "sub")
    b = str(tmp_path / "b")
    await host.index.hand_out(R2, ["b"], [b])
    read = len(reads)
    await host.index.hand_out(R2, ["b"], [b])
    assert len(reads) == read, "the second Allocate's read was kept"
    (tmp_path / "dev" / "n0").rename(tmp_path / "b" / "sub" / "n0")
    with pytest.raises(PlaceOwned):
        await host.index.hand_out(R2, ["b"], [b])


async def test_a_mount_table_change_forgets_the_kept_reads(
    tmp_path: Path, reads: list[list[str]]
) -> None:
    """A mount over an entry changes no directory's times: the index forgets every kept
    read when the watcher reports the mount table changed."""
    host, watcher = await booked_beside_tree(tmp_path, "sub")
    assert isinstance(watcher, ManualWatcher)
    aged(tmp_path / "b", tmp_path / "b" / "sub")
    b = str(tmp_path / "b")
    await host.index.hand_out(R2, ["b"], [b])
    read = len(reads)
    watcher.change_mounts()
    await host.settled()
    await host.index.hand_out(R2, ["b"], [b])
    assert len(reads) == read + 1


async def test_no_read_is_kept_while_the_mount_table_is_not_followed(
    tmp_path: Path, reads: list[list[str]]
) -> None:
    """A watcher that cannot follow the mount table (a poll): every Allocate reads."""
    (tmp_path / "b" / "sub").mkdir(parents=True)
    aged(tmp_path / "b", tmp_path / "b" / "sub")
    host = Host(ManualWatcher(mounts=False))
    b = str(tmp_path / "b")
    await host.publish(R2, mounting("b", b))
    for _ in range(2):
        await host.index.hand_out(R2, ["b"], [b])
    assert len(reads) == 2


LOCAL_TABLE = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"


def test_which_paths_are_on_local_file_systems() -> None:
    table = parse_mounts(
        LOCAL_TABLE
        + "2 1 0:50 / /mnt/nfs rw shared:7 - nfs4 server:/export rw\n"
        + "3 2 8:2 / /mnt/nfs/disk rw - xfs /dev/sdb1 rw\n"
        + "4 1 0:51 / /home/user/fuse rw - fuse.sshfs host: rw\n"
        + "5 1 0:52 / /srv/tmp rw - tmpfs tmpfs rw\n"
    )
    assert table.local("/usr/lib") and table.local("/srv/tmp/x")
    assert not table.local("/mnt/nfs/a")
    assert not table.local("/mnt/nfs/disk/a"), "a local disk mounted below a network one"
    assert not table.local("/home/user/fuse/a")
    assert not MountMap().local("/usr/lib"), "a table that does not say"


async def test_a_kept_read_on_local_file_systems_is_checked_on_the_loop(
    tmp_path: Path, reads: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread hop for a repeated Allocate whose mounted tree is on a local file system
    (beside a busy loop each hop waited for the GIL); a node renamed in is still seen."""
    hops: list[tuple[str, ...]] = []
    real = ownership_hand_out._read_inside

    def counted(followed: tuple[str, ...], *rest: Any) -> Any:
        hops.append(followed)
        return real(followed, *rest)

    monkeypatch.setattr(ownership_hand_out, "_read_inside", counted)
    for table, hopped in ((parse_mounts(LOCAL_TABLE), 1), (MountMap(), 3)):
        hops.clear()
        here = tmp_path / str(hopped)
        here.mkdir()
        host, _ = await booked_beside_tree(here, "sub", mounts=table)
        aged(here / "b", here / "b" / "sub")
        b = str(here / "b")
        for _ in range(3):
            await host.index.hand_out(R2, ["b"], [b])
        assert len(hops) == hopped
        (here / "dev" / "n0").rename(here / "b" / "sub" / "n0")
        with pytest.raises(PlaceOwned):
            await host.index.hand_out(R2, ["b"], [b])
