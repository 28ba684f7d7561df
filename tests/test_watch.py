"""The host's directory watcher (kdp_host/watch.py): named subscriptions, one inode under two
paths, and no wake-ups while nothing changes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import kdp_host.inotify_watch as watch_module
from kdp_host.inotify_limits import MAX_USER_WATCHES
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger
from kdp_host.watch import PollingWatcher, Watcher

from .conftest import wait_until


@pytest.fixture
async def inotify() -> AsyncIterator[InotifyWatcher]:
    watcher = InotifyWatcher(get_logger(), retry_interval=0.01)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def checkpoint_write(directory: Path, n: int) -> None:
    """What the kubelet does on every pod admission: a temporary file renamed over its
    checkpoint in the socket dir."""
    temporary = directory / f".{n}"
    temporary.write_text("{}")
    os.rename(temporary, directory / "kubelet_internal_checkpoint")


async def test_named_subscriptions_see_only_their_entries(
    inotify: InotifyWatcher, tmp_path: Path
) -> None:
    seen: dict[str, list[str | None]] = {"sockets": [], "all": []}
    inotify.subscribe(str(tmp_path), seen["sockets"].append, names=("kubelet.sock", "p.sock"))
    inotify.subscribe(str(tmp_path), seen["all"].append)
    for n in range(5):
        checkpoint_write(tmp_path, n)
    (tmp_path / "kubelet.sock").touch()
    await wait_until(lambda: "kubelet.sock" in seen["all"], 5, "the create event")
    assert set(seen["sockets"]) == {"kubelet.sock"}, "the checkpoint writes reached it"
    assert "kubelet_internal_checkpoint" in seen["all"] and ".0" in seen["all"]


async def test_a_named_subscription_hears_when_anything_may_have_changed(
    tmp_path: Path,
) -> None:
    """The directory going away is an event with no name: every subscriber hears it."""
    watcher = InotifyWatcher(get_logger(), retry_interval=0.01)
    task = asyncio.create_task(watcher.run())
    directory = tmp_path / "dp"
    directory.mkdir()
    heard: list[str | None] = []
    try:
        watcher.subscribe(str(directory), heard.append, names=("kubelet.sock",))
        directory.rmdir()
        await wait_until(lambda: None in heard, 5, "the directory's removal")
        directory.mkdir()
        await wait_until(lambda: heard.count(None) >= 2, 5, "the directory watched again")
        (directory / "kubelet.sock").touch()
        await wait_until(lambda: "kubelet.sock" in heard, 5, "an event in the new directory")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_one_directory_under_two_paths_notifies_both(
    inotify: InotifyWatcher, tmp_path: Path
) -> None:
    """One inode is one inotify watch whatever path reached it; both paths' subscribers get
    its events, and cancelling one leaves the other's watch in place."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    by_real: list[str | None] = []
    by_link: list[str | None] = []
    first = inotify.subscribe(str(real), by_real.append)
    inotify.subscribe(str(link), by_link.append)
    (real / "a").touch()
    await wait_until(lambda: "a" in by_real and "a" in by_link, 5, "both notified")
    first.cancel()
    (real / "b").touch()
    await wait_until(lambda: "b" in by_link, 5, "the other path still watched")
    assert "b" not in by_real


@pytest.mark.parametrize("kind", ["inotify", "poll"])
async def test_unsubscribing_inside_a_callback_is_safe(kind: str, tmp_path: Path) -> None:
    log = get_logger()
    watcher: Watcher = (
        InotifyWatcher(log, retry_interval=0.01) if kind == "inotify" else PollingWatcher(log, 0.01)
    )
    task = asyncio.create_task(watcher.run())
    heard: list[str | None] = []
    try:

        def once(name: str | None) -> None:
            heard.append(name)
            subscription.cancel()

        subscription = watcher.subscribe(str(tmp_path), once)
        other: list[str | None] = []
        watcher.subscribe(str(tmp_path), other.append)
        (tmp_path / "a").touch()
        (tmp_path / "b").touch()
        await wait_until(lambda: len(other) >= 1 and heard, 5, "events")
        await asyncio.sleep(0.05)
        assert len(heard) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_inotify_watcher_does_not_wake_while_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry timer for directories that do not exist yet ran every half second for
    ever; it now runs only while such a directory is waited for."""
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(watch_module.asyncio, "sleep", counting_sleep)
    watcher = InotifyWatcher(get_logger(), retry_interval=0.01)
    task = asyncio.create_task(watcher.run())
    heard: list[str | None] = []
    try:
        watcher.subscribe(str(tmp_path), heard.append)
        await real_sleep(0.3)
        assert sleeps == [], "the watcher woke with nothing to do"
        later = tmp_path / "later"
        watcher.subscribe(str(later), heard.append)
        await wait_until(lambda: sleeps, 5, "retries while the directory is missing")
        later.mkdir()
        await wait_until(lambda: None in heard, 5, "the directory watched once it exists")
        settled = len(sleeps)
        await real_sleep(0.3)
        assert len(sleeps) <= settled + 1, "retries went on after the directory appeared"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_subscriptions_outlive_the_watcher(tmp_path: Path) -> None:
    """A resource that stops after the watcher (a slow one, at shutdown) cancels its
    subscription on a closed descriptor: that is a no-op, not a crash of the resource."""
    watcher = InotifyWatcher(get_logger(), retry_interval=0.01)
    task = asyncio.create_task(watcher.run())
    subscription = watcher.subscribe(str(tmp_path), lambda name: None)
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    subscription.cancel()
    late = watcher.subscribe(str(tmp_path / "new"), lambda name: None)
    late.cancel()


async def test_a_flood_of_events_does_not_starve_the_loop(
    inotify: InotifyWatcher, tmp_path: Path
) -> None:
    """Events are read one buffer at a time, each read a turn of the loop: 10,000 queued
    events do not hold the loop until the last is dispatched."""
    total = 10_000
    dispatched = 0
    last = False
    seen_by_the_loop: list[int] = []
    loop = asyncio.get_running_loop()

    def on_event(name: str | None) -> None:
        nonlocal dispatched, last
        dispatched += 1
        last = last or name in (None, f"f{total - 1}")  # (None: the queue overflowed)
        if dispatched == 1:
            loop.call_soon(lambda: seen_by_the_loop.append(dispatched))

    inotify.subscribe(str(tmp_path), on_event)
    for n in range(total):  # queued while the loop is held here
        os.close(os.open(tmp_path / f"f{n}", os.O_CREAT | os.O_WRONLY, 0o600))
    await wait_until(lambda: last, 30, "the last event")
    assert seen_by_the_loop and seen_by_the_loop[0] < dispatched


async def test_events_that_name_what_the_same_read_named_are_dispatched_once(
    inotify: InotifyWatcher, tmp_path: Path
) -> None:
    """A file made, written and closed is three events; a directory churned by a thread
    makes hundreds of thousands (hostile4 H7). A callback is told names only: one read's
    events about one name are one call (the loop's work per event halves at least)."""
    names: list[str | None] = []
    inotify.subscribe(str(tmp_path), names.append)
    for n in range(100):  # queued while the loop is held here: one read
        (tmp_path / f"f{n}").write_text("x")
        os.utime(tmp_path / f"f{n}")
    await wait_until(lambda: "f99" in names, 30, "the last event")
    assert names == [f"f{n}" for n in range(100)]


async def test_an_entries_subscription_hears_entries_made_or_removed_only(
    inotify: InotifyWatcher, tmp_path: Path
) -> None:
    """Issue 19/20, sysfs flapping: devtmpfs makes a node, then udev sets its mode; a
    subscriber that cares which entries are there (`entries`) hears the node made, not its
    mode (ATTRIB) or a write closed (CLOSE_WRITE), each of which woke a scan. The others
    hear everything, and an entry removed right after a write (one read) reaches both."""
    plain: list[str | None] = []
    entries: list[str | None] = []
    inotify.subscribe(str(tmp_path), plain.append)
    inotify.subscribe(str(tmp_path), entries.append, entries=True)
    node = tmp_path / "ttyUSB0"
    node.touch()  # (made, then closed)
    await wait_until(lambda: "ttyUSB0" in entries and "ttyUSB0" in plain, 30, "the node made")
    plain.clear()
    entries.clear()
    node.chmod(0o660)  # its mode, a write: separate reads (the loop reads between)
    await wait_until(lambda: "ttyUSB0" in plain, 30, "the mode")
    node.write_text("x")
    await wait_until(lambda: plain.count("ttyUSB0") == 2, 30, "the write")
    node.write_text("y")  # queued while the loop is held here: one read
    node.unlink()
    (tmp_path / "mark").touch()
    await wait_until(lambda: "mark" in entries and "mark" in plain, 30, "the mark")
    assert entries == ["ttyUSB0", "mark"]
    assert plain == ["ttyUSB0", "ttyUSB0", "ttyUSB0", "mark"]


async def test_a_missing_directory_is_tried_again_only_when_it_may_be_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that does not exist is tried at the retry timer, or at once when a watched
    directory sees it made; events elsewhere no longer try every missing one again (with a
    device's node directory missing, that was a failed watch per event: Issue 17, sysfs)."""
    watcher = InotifyWatcher(get_logger(), retry_interval=3600)
    tries: list[str] = []
    add_watch = watcher._add_watch

    def counting(directory: str) -> bool:
        tries.append(directory)
        return add_watch(directory)

    monkeypatch.setattr(watcher, "_add_watch", counting)
    task = asyncio.create_task(watcher.run())
    heard: list[str | None] = []
    try:
        busy = tmp_path / "busy"
        busy.mkdir()
        watcher.subscribe(str(tmp_path), heard.append, names=("made",))
        watcher.subscribe(str(busy), heard.append)
        missing = tmp_path / "elsewhere" / "missing"
        made = tmp_path / "made"
        watcher.subscribe(str(missing), heard.append)
        watcher.subscribe(str(made), heard.append)
        for n in range(20):
            (busy / f"f{n}").touch()
        await wait_until(lambda: "f19" in heard, 5, "the events in busy")
        assert tries.count(str(missing)) == 1, "an event elsewhere tried the missing directory"
        made.mkdir()
        await wait_until(lambda: str(made) not in watcher._pending, 5, "made watched at once")
        (made / "x").touch()
        await wait_until(lambda: "x" in heard, 5, "an event in the directory made")
        assert tries.count(str(missing)) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


REFUSED = """
import asyncio, json, sys
from kdp_host.inotify_watch import InotifyWatcher
from kdp_host.logs import get_logger, setup_logging

async def main(first, second):
    setup_logging(stream=sys.stderr)
    reports = []
    watcher = InotifyWatcher(get_logger(), retry_interval=0.01, mounts=lambda _log: None)
    watcher.report_unwatched(reports.append)
    task = asyncio.create_task(watcher.run())
    heard = []
    kept = watcher.subscribe(first, heard.append)
    watcher.subscribe(second, heard.append)
    refused = list(reports)
    kept.cancel()  # frees the one watch the limit allows: the refused directory gets it
    for _ in range(1000):
        if reports[-1] == 0:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    print(json.dumps({"refused": refused, "reports": reports}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_directory_inotify_refuses_is_logged_counted_and_watched_once_it_can_be(
    tmp_path: Path,
) -> None:
    """A host at the kernel's inotify watch limit (ENOSPC) lost hot-plug for the directories
    it could not watch without a word: they were retried in silence and only the safety-net
    rescan saw their changes. The refusal is now logged with what to do, counted
    (`kdp_watch_unwatched_directories`), and the directory watched once a watch is free.
    The limit is set in a user namespace of this test's own (no root needed)."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux): cannot lower the inotify watch limit here")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    limit = "echo 1 > /proc/sys/user/max_inotify_watches"
    probe = subprocess.run(["unshare", "-r", "sh", "-c", limit], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot set the inotify watch limit in a user namespace: {probe.stderr!r}")
    in_namespace = ["unshare", "-r", "sh", "-c", f'{limit} && exec "$0" -c "$1" "$2" "$3"']
    result = subprocess.run(
        [*in_namespace, sys.executable, REFUSED, str(first), str(second)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["refused"] == [0, 1], "the refused directory is counted"
    assert outcome["reports"][-1] == 0, "watched once a watch was free"
    assert "watch_refused" in result.stderr and "max_user_watches" in result.stderr
    assert str(second) in result.stderr
    assert "watch_recovered" in result.stderr


def kernel_watches(watcher: InotifyWatcher) -> int:
    """The watches the kernel holds on the watcher's descriptor (its fdinfo)."""
    fd = watcher._inotify.fd
    lines = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    return sum(line.startswith("inotify wd:") for line in lines)


async def test_a_watched_directory_moved_away_leaves_no_kernel_watch(
    inotify: InotifyWatcher, tmp_path: Path
) -> None:
    """A watched directory renamed away (a subdirectory moved out of a mounted tree) kept
    its kernel watch where it went, for as long as the inode lived: one watch of the node's
    limit leaked per move. It is removed when the move is reported."""
    (tmp_path / "d").mkdir()
    heard: list[str | None] = []
    subscription = inotify.subscribe(str(tmp_path / "d"), heard.append)
    assert kernel_watches(inotify) == 1
    os.rename(tmp_path / "d", tmp_path / "e")
    await wait_until(lambda: None in heard, what="the move reported")
    subscription.cancel()
    await wait_until(lambda: kernel_watches(inotify) == 0, what="no watch left")


def test_the_inotify_watchers_budget_is_the_nodes_per_user_watch_limit() -> None:
    """What the mount trees' bound is a share of (hostile13 M9); the polling watcher has none."""
    limit = Path(MAX_USER_WATCHES)
    if not limit.exists():
        pytest.skip(f"{limit} is absent here (no inotify sysctl to read)")
    assert InotifyWatcher(get_logger()).watch_budget == int(limit.read_text())
    assert PollingWatcher(get_logger()).watch_budget is None
