"""The protected places' stats vouched for by the watcher (`places_followed`, issue 19): an
Allocate answer stats only the places reported changed since the last answer, and a hard
link of a protected file made just before it is refused all the same (told or not yet
read by the loop); a protected directory's listing is brought up to date from the names
reported in it."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kdp_host import places_followed
from kdp_host.config import handed as handed_module
from kdp_host.config import handed_tree, load_config, never_handed
from kdp_host.config.handed import NeverHanded
from kdp_host.identity import identity_of
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.places_followed import FollowedPlaces, Vouching
from kdp_host.testing import ManualWatcher

from .handed_setup import head, made_dirs
from .inotify_setup import running_watcher, told


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    return made_dirs(short_dir, "opt")


def rule_of(dirs: Path) -> NeverHanded:
    config = dirs / "kdp.yaml"
    config.write_text(
        head(dirs) + f"  - name: vendor.example/x\n    glob: {{paths: ['{dirs}/dev/*']}}\n"
    )
    return never_handed(load_config(config), str(config))


def counted_stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    stats: list[str] = []
    real_stat = handed_module._stat

    def counted(path: str) -> object:
        stats.append(path)
        return real_stat(path)

    monkeypatch.setattr(handed_module, "_stat", counted)
    return stats


def problem(rule: NeverHanded, path: Path, followed: FollowedPlaces) -> str | None:
    """What an Allocate answer that begins now asks of `path`."""
    key = identity_of(path.stat())
    since = time.monotonic()
    return rule.problem(str(path), key, fresh=True, since=since, followed=followed)


@pytest.fixture
async def watcher() -> AsyncIterator[InotifyWatcher]:
    async with running_watcher() as running:
        yield running


async def test_only_what_changed_is_stated_again_and_a_link_made_just_before_is_refused(
    dirs: Path, watcher: InotifyWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule, followed = rule_of(dirs), FollowedPlaces(watcher)
    assert isinstance(watcher, Vouching)
    stats = counted_stats(monkeypatch)
    plain = dirs / "opt" / "plain"
    plain.touch()
    assert problem(rule, plain, followed) is None
    whole = len(stats)
    assert whole >= 4  # (the first answer: every place)
    await told(watcher)
    assert problem(rule, plain, followed) is None
    assert len(stats) == whole, "nothing changed, yet the places were stat'ed"
    # A hard link of a file made in stateDir just before the answer: its events are
    # queued, not read yet (the loop has not run): every place is stat'ed, it is refused.
    (dirs / "state" / "late").touch()
    os.link(dirs / "state" / "late", dirs / "opt" / "late")
    assert "lies in stateDir" in (problem(rule, dirs / "opt" / "late", followed) or "")
    assert len(stats) == 2 * whole
    # The same, told by the loop before the answer: stateDir alone is stat'ed again.
    await told(watcher)
    assert problem(rule, plain, followed) is None
    (dirs / "state" / "later").touch()
    os.link(dirs / "state" / "later", dirs / "opt" / "later")
    await told(watcher)
    before = len(stats)
    assert "lies in stateDir" in (problem(rule, dirs / "opt" / "later", followed) or "")
    assert stats[before:] == [str(dirs / "state")]


async def test_a_place_replaced_on_the_way_is_stated_again(
    dirs: Path, watcher: InotifyWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stateDir renamed away and made anew, a file of the new one linked: the directory
    holding stateDir told it (a watch on stateDir itself hears nothing of its successor)."""
    rule, followed = rule_of(dirs), FollowedPlaces(watcher)
    plain = dirs / "opt" / "plain"
    plain.touch()
    assert problem(rule, plain, followed) is None
    await told(watcher)
    assert problem(rule, plain, followed) is None
    os.rename(dirs / "state", dirs / "old-state")
    (dirs / "state").mkdir()
    (dirs / "state" / "new").touch()
    os.link(dirs / "state" / "new", dirs / "opt" / "new")
    await told(watcher)
    stats = counted_stats(monkeypatch)
    assert "lies in stateDir" in (problem(rule, dirs / "opt" / "new", followed) or "")
    assert str(dirs / "state") in stats


class Vouched(ManualWatcher):
    """A ManualWatcher that says what `Vouching` asks, as the test sets it."""

    def __init__(self) -> None:
        super().__init__()
        self.untold_now: bool | None = False
        self.unwatched: dict[str, bool | None] = {}
        """Directory -> `watching` of it (the others are watched)."""

    def untold(self) -> bool | None:
        return self.untold_now

    def watching(self, directory: str) -> bool | None:
        return self.unwatched.get(directory, True)


def test_it_vouches_only_where_nothing_can_be_untold(dirs: Path) -> None:
    rule, watcher = rule_of(dirs), Vouched()
    followed = FollowedPlaces(watcher)
    state = str(dirs / "state")
    assert followed.changed(rule) is None  # (a rule's first question)
    assert followed.changed(rule) == set()
    watcher.change(state, "x")
    assert followed.changed(rule) == {state}
    assert followed.changed(rule) == set()  # (said once)
    watcher.change(str(dirs), "state")  # (on the way)
    assert followed.changed(rule) == {state}
    for untold in (True, None):  # (events unread, a mount change untold; cannot say)
        watcher.untold_now = untold
        assert followed.changed(rule) is None
    watcher.untold_now = False
    assert followed.changed(rule) == set()
    # A directory on the way refused a watch: nothing vouched for (found again when a
    # watch is gained or lost: its subscribers are told anything may have changed).
    watcher.unwatched = {str(dirs): False}
    watcher.change(str(dirs))
    assert followed.changed(rule) is None
    # A place absent (not made yet) below a watched directory: that one tells its making.
    watcher.unwatched = {state: None}
    watcher.change(state)
    assert followed.changed(rule) == {state}
    watcher.unwatched = {state: None, str(dirs): False}  # (below a refused one: not)
    watcher.change(str(dirs))
    assert followed.changed(rule) is None
    subscribed = len(watcher.directories)
    other = rule_of(dirs)  # (a reload: a new rule, followed from its first question)
    assert followed.changed(other) is None
    assert len(watcher.directories) == subscribed  # (the old rule's let go)


async def test_the_socket_dir_is_listed_from_its_names_and_a_link_made_there_is_refused(
    dirs: Path, watcher: InotifyWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet rewrites its checkpoint in its socket dir at every Allocate (made under
    another name, renamed over the old one): the listing is brought up to date from the
    names the watcher reported (lstat'ed), not read again. A hard link of the handed file
    made in the socket dir just before the answer is refused all the same: its event
    still unread (not vouched: listed again whole) or read (its name lstat'ed)."""
    rule, followed = rule_of(dirs), FollowedPlaces(watcher)
    walks: list[str] = []
    real_walk = handed_tree.walk

    def counted(path: str, *args: Any) -> handed_tree.Listed:
        walks.append(path)
        return real_walk(path, *args)

    monkeypatch.setattr(handed_tree, "walk", counted)
    socket_dir, opt = dirs / "dp", dirs / "opt"

    def checkpoint() -> None:
        (socket_dir / "checkpoint.tmp").write_text(f"{time.monotonic()}\n")
        os.rename(socket_dir / "checkpoint.tmp", socket_dir / "kubelet_internal_checkpoint")

    for name in ("plain", "late", "later"):
        (opt / name).touch()
    checkpoint()
    assert problem(rule, opt / "plain", followed) is None
    await told(watcher)
    assert problem(rule, opt / "plain", followed) is None
    for _ in range(3):
        checkpoint()
        await told(watcher)
        walks.clear()
        assert problem(rule, opt / "plain", followed) is None
        assert walks == [], "the socket dir was read again whole"
    # A link of the new checkpoint handed out: it is the socket dir's.
    os.link(socket_dir / "kubelet_internal_checkpoint", opt / "ckpt")
    assert "lies in kubelet.socketDir" in (problem(rule, opt / "ckpt", followed) or "")
    # A link made in the socket dir, its event not read yet: listed again whole, refused.
    os.link(opt / "late", socket_dir / "late")
    walks.clear()
    assert "lies in kubelet.socketDir" in (problem(rule, opt / "late", followed) or "")
    assert str(socket_dir) in walks
    # Read before the answer: its name alone is lstat'ed, refused.
    await told(watcher)
    assert problem(rule, opt / "plain", followed) is None
    os.link(opt / "later", socket_dir / "later")
    await told(watcher)
    walks.clear()
    assert "lies in kubelet.socketDir" in (problem(rule, opt / "later", followed) or "")
    assert walks == []
    # Removed again (the inode kept by opt/later): no longer the socket dir's.
    os.unlink(socket_dir / "later")
    await told(watcher)
    assert problem(rule, opt / "later", followed) is None
    assert walks == []


def test_the_names_are_said_only_where_none_can_be_unheard(dirs: Path) -> None:
    rule, watcher = rule_of(dirs), Vouched()
    followed = FollowedPlaces(watcher)
    state = str(dirs / "state")
    assert followed.named(state) is None  # (nothing followed yet)
    assert followed.changed(rule) is None
    assert followed.named(state) is None  # (followed from now on: what came before unknown)
    assert followed.named(state) == set()
    watcher.change(state, "x")
    watcher.change(state, "y")
    assert followed.changed(rule) == {state}
    assert followed.named(state) == {"x", "y"}
    assert followed.named(state) == set()  # (said once)
    watcher.change(str(dirs), "state")  # (stateDir itself renamed, replaced: another one)
    assert followed.named(state) is None
    watcher.change(state)  # (anything: a watch gained or lost, an overflow)
    assert followed.named(state) is None
    watcher.untold_now = True  # (events unread: lost until asked again)
    assert followed.changed(rule) is None
    watcher.untold_now = False
    assert followed.named(state) is None
    assert followed.named(state) == set()
    for n in range(places_followed.NAMES_LIMIT + 1):  # (a churned directory: listed whole)
        watcher.change(state, f"n{n}")
    assert followed.named(state) is None
    assert followed.named(str(dirs / "opt")) is None  # (not a protected place)


async def test_a_link_made_in_the_same_clock_tick_is_refused(
    dirs: Path, watcher: InotifyWatcher
) -> None:
    """A directory's mtime is the kernel's coarse clock (a tick of milliseconds): a link
    made in the socket dir in the tick of the change listed last leaves it as it was (set
    back here). The name the watcher told is read again all the same."""
    rule, followed = rule_of(dirs), FollowedPlaces(watcher)
    socket_dir, opt = dirs / "dp", dirs / "opt"
    (opt / "plain").touch()
    assert problem(rule, opt / "plain", followed) is None
    await told(watcher)
    assert problem(rule, opt / "plain", followed) is None
    before = socket_dir.stat()
    os.link(opt / "plain", socket_dir / "plain")
    os.utime(socket_dir, ns=(before.st_atime_ns, before.st_mtime_ns))
    await told(watcher)
    assert "lies in kubelet.socketDir" in (problem(rule, opt / "plain", followed) or "")


def test_a_listing_cut_at_its_limit_is_not_kept_up_to_date(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).touch()
    st = tmp_path.stat()
    of = identity_of(st)
    whole = handed_tree.walk(str(tmp_path), st.st_dev, st.st_mtime_ns, 0.0, 3, of)
    assert whole.top is not None and len(whole.top) == 3
    (tmp_path / "d").touch()
    again = handed_tree.relisted(whole, str(tmp_path), of, ["d"], st.st_mtime_ns, 0.0)
    assert again is None  # (4 entries: over the limit)
    cut = handed_tree.walk(str(tmp_path), st.st_dev, st.st_mtime_ns, 0.0, 2, of)
    assert cut.top is None
    assert handed_tree.relisted(cut, str(tmp_path), of, [], st.st_mtime_ns, 0.0) is None
    other = identity_of((tmp_path / "a").stat())  # (a listing of another directory)
    assert handed_tree.relisted(whole, str(tmp_path), other, [], st.st_mtime_ns, 0.0) is None
