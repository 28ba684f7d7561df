"""A kept read below an answer's mount vouched for by the inotify watcher (`kept_reads`,
issue 19): an Allocate repeated lstats none of its directories while the watcher told no
change since their lstats found them as the read saw them, and one made just before the
Allocate (told or not yet read by the loop) is seen at once."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kdp_host import kept_reads
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.kept_reads import KeptReads, KnownRead, read_or_recall

from .inotify_setup import running_watcher, told
from .test_kept_reads import tree


@pytest.fixture
async def watcher() -> AsyncIterator[InotifyWatcher]:
    async with running_watcher() as running:
        yield running


def kept(
    root: Path, watcher: InotifyWatcher, monkeypatch: pytest.MonkeyPatch
) -> tuple[KeptReads, tuple[str, ...], KnownRead, list[float]]:
    """A steady tree's read kept, and the lstat checks (`KnownRead.holds`) made of it."""
    monkeypatch.setattr(kept_reads, "STEADY_FOR", 0.0)
    tree(root)
    paths = (str(root),)
    _, known = read_or_recall(paths, 128, None)
    assert known is not None
    known = dataclasses.replace(known, local=True)
    reads = KeptReads()
    reads.follow(True, watcher)
    reads.keep(paths, known, reads.generation)
    checks: list[float] = []
    real = KnownRead.holds

    def counted(read: KnownRead, now: float) -> bool:
        checks.append(now)
        return real(read, now)

    monkeypatch.setattr(KnownRead, "holds", counted)
    return reads, paths, known, checks


@pytest.mark.parametrize("read_by_the_loop", [False, True])
async def test_a_followed_read_is_vouched_for_until_a_listed_directory_changes(
    tmp_path: Path,
    watcher: InotifyWatcher,
    monkeypatch: pytest.MonkeyPatch,
    read_by_the_loop: bool,
) -> None:
    reads, paths, known, checks = kept(tmp_path / "b", watcher, monkeypatch)
    assert reads.holds(paths, known, time.monotonic())
    assert len(checks) == 1  # (the first: followed from now, its lstats vouch for before)
    await told(watcher)
    for _ in range(3):
        assert reads.holds(paths, known, time.monotonic())
    assert len(checks) == 1, "lstat'ed while nothing changed"
    (tmp_path / "node").write_text("")
    await told(watcher)
    assert reads.holds(paths, known, time.monotonic())  # (outside the tree: not followed)
    os.rename(tmp_path / "node", tmp_path / "b" / "d1" / "moved")
    if read_by_the_loop:
        await told(watcher)
    assert not reads.holds(paths, known, time.monotonic())
    assert len(checks) == 2


async def test_a_directory_on_the_way_replaced_is_seen(
    tmp_path: Path, watcher: InotifyWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mounted directory's parent renamed away and another put in its place: the
    directory above tells it (no event in the tree itself)."""
    reads, paths, known, checks = kept(tmp_path / "up" / "b", watcher, monkeypatch)
    assert reads.holds(paths, known, time.monotonic())
    await told(watcher)
    assert reads.holds(paths, known, time.monotonic()) and len(checks) == 1
    os.rename(tmp_path / "up", tmp_path / "away")
    tree(tmp_path / "up" / "b")
    await told(watcher)
    assert not reads.holds(paths, known, time.monotonic())


async def test_reads_forgotten_are_no_longer_followed(
    tmp_path: Path, watcher: InotifyWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads, paths, known, _ = kept(tmp_path / "b", watcher, monkeypatch)
    assert reads.holds(paths, known, time.monotonic())
    assert watcher.directories
    reads.clear()  # (the mount table changed)
    assert not watcher.directories
