"""Files kept in stateDir (kdp_host/state_file.py): a bad one gets a clear error, is kept
aside under a name of its own (never over an earlier copy), and the start goes on."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from kdp_host import state_file
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.metric_series import Gauge
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Owner
from kdp_host.ownership_document import OWNERSHIP_FILE, SavedBooking, ownership_file, read_saved
from kdp_host.release_state import STATE_FILE, ReleaseStateStore
from kdp_host.simulator import KubeletSimulator
from kdp_host.state_files import STATE_DIR, StateFiles

from .conftest import glob_config, wait_until

T = TypeVar("T")

FPGA = "vendor.example/fpga"
NESTED = "[" * 100_000
"""Valid JSON so far, nested too deep for the parser (RecursionError, not ValueError)."""


async def test_corrupt_state_files_are_kept_aside_and_the_host_starts(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = socket_dir.parent / "state"
    state.mkdir()
    (state / OWNERSHIP_FILE).write_text(NESTED)
    (state / STATE_FILE).write_bytes(b"\xff\xfe not text")
    await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
    assert (state / (OWNERSHIP_FILE + ".unreadable")).read_text() == NESTED
    assert (state / (STATE_FILE + ".unreadable")).read_bytes() == b"\xff\xfe not text"
    errors = {r.getMessage(): r for r in caplog.records if r.levelno == logging.ERROR}
    line = errors["ownership_state_unreadable"].__dict__["kdp_fields"]
    assert "kept as ownership.json.unreadable" in line["reason"], line
    assert "bookings are forgotten" in line["consequence"]
    assert "release_state_unreadable" in errors


def test_a_second_bad_file_never_replaces_the_first_kept_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = ["{not json", '{"version": 7}', NESTED]
    for text in texts:
        (tmp_path / OWNERSHIP_FILE).write_text(text)
        state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
        assert state.load(read_saved) is None and state.unknown
    kept = [OWNERSHIP_FILE + ".unreadable", OWNERSHIP_FILE + ".unreadable.1"]
    kept.append(OWNERSHIP_FILE + ".unreadable.2")
    assert [(tmp_path / name).read_text() for name in kept] == texts
    reasons = [
        r.__dict__["kdp_fields"]["reason"]
        for r in caplog.records
        if r.getMessage() == "ownership_state_unreadable"
    ]
    assert [reason.rpartition("kept as ")[2] for reason in reasons] == kept
    assert not (tmp_path / OWNERSHIP_FILE).exists()


async def test_a_state_file_that_cannot_be_read_is_kept_aside_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory where the file should be (a bad hostPath mount) is not read as a file;
    it is moved aside, so the next booking can be written."""
    (tmp_path / OWNERSHIP_FILE).mkdir()
    (tmp_path / OWNERSHIP_FILE / "inside").write_text("kept")
    state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
    assert state.load(read_saved) is None and state.unknown
    assert (tmp_path / (OWNERSHIP_FILE + ".unreadable") / "inside").read_text() == "kept"
    state.changed(lambda: {"bookings": []})
    await state.flush()
    await wait_until(lambda: (tmp_path / OWNERSHIP_FILE).is_file(), what="the file written")
    assert state.write_failures == 0


async def test_a_fifo_in_place_of_the_file_never_blocks_the_start(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / OWNERSHIP_FILE)
    state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
    loaded = DaemonThreads().run(lambda: state.load(read_saved))  # a daemon: never waited on
    assert await asyncio.wait_for(loaded, 30) is None
    assert state.unknown and (tmp_path / (OWNERSHIP_FILE + ".unreadable")).is_fifo()


class HungWrites:
    """An offload whose calls wait until `go` is set (a state directory whose file system
    hangs), then run on threads."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.threads = DaemonThreads()

    async def run(self, function: Callable[[], T]) -> T:
        await self.go.wait()
        return await self.threads.run(function)


async def test_allocate_and_prestart_do_not_wait_for_a_state_dir_that_hangs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allocate's booking (`ownership.json`) and PreStartContainer's release state
    (`release-state.json`) wait for their write at most `WRITE_LIMIT`: then the answer goes
    out with an error line, and the write lands once the file system answers."""
    monkeypatch.setattr(state_file, "WRITE_LIMIT", 0.05)
    writes = HungWrites()
    kept = ownership_file(str(tmp_path), get_logger(), writes)
    index = OwnershipIndex(resolve=lambda path: (("c", 1), path))
    index.keep_bookings_in(kept, None)
    table = DeviceTable()
    index.attach("t.io/a", table.publish, get_logger())
    index.publish("t.io/a", {"a": Device("a", nodes=(DeviceNode("/dev/a", "/dev/a"),))})
    store = ReleaseStateStore(str(tmp_path), get_logger(), writes)
    store.update("t.io/a", {"a": {"used": True}})
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(index.book("t.io/a", ["a"]), 30)  # the Allocate's booking
        await asyncio.wait_for(store.flush(), 30)  # what PreStartContainer awaits
    events = [r.getMessage() for r in caplog.records]
    assert events.count("ownership_state_write_stalled") == 1
    assert events.count("release_state_write_stalled") == 1
    assert not (tmp_path / OWNERSHIP_FILE).exists() and not (tmp_path / STATE_FILE).exists()
    writes.go.set()  # the file system answers again: both writes land
    await wait_until(lambda: (tmp_path / OWNERSHIP_FILE).exists(), what="ownership.json")
    await wait_until(lambda: (tmp_path / STATE_FILE).exists(), what="release-state.json")
    assert kept.load(read_saved) == [
        SavedBooking(Owner("t.io/a", "a"), "a", ((("c", 1), "/dev/a", "/dev/a"),), ())
    ]


async def test_a_stalled_write_marks_the_file_unwritten_until_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hostile10 F10: a write that has not completed within `WRITE_LIMIT` (its lock held by
    another process, a hung file system) marks the file not written: /readyz names it and
    `kdp_state_persist_failing` is 1, until the write lands."""
    monkeypatch.setattr(state_file, "WRITE_LIMIT", 0.05)
    writes = HungWrites()
    kept = ownership_file(str(tmp_path), get_logger(), writes)
    gauge = Gauge("kdp_state_persist_failing", "-", ["file"], registry=CollectorRegistry())
    files = StateFiles(gauge, lambda: None)
    files.add(kept)
    kept.changed(lambda: {"bookings": []})
    name = OWNERSHIP_FILE
    await wait_until(lambda: kept.unwritten is not None, what="the stalled write marked")
    assert files.not_ready() == {
        STATE_DIR: f"{name} not written within 0.05 s: stateDir does not answer"
    }
    assert gauge.labels(name).value == 1
    writes.go.set()
    await wait_until(lambda: kept.unwritten is None, what="the write landed")
    assert (tmp_path / name).exists() and files.not_ready() == {}
    assert gauge.labels(name).value == 0


class FullDisk:
    """`write_atomic` on a file system that is full while `full` is set (hostile3 G3); for
    the files named in `only` (all when empty)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *only: str) -> None:
        self.full = True
        self.attempts = 0
        self._only = only
        self._write = state_file.write_atomic
        monkeypatch.setattr(state_file, "write_atomic", self)

    def __call__(self, path: str, data: bytes) -> None:
        if self._only and os.path.basename(path) not in self._only:
            self._write(path, data)
            return
        self.attempts += 1
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self._write(path, data)


def written_bookings(path: Path) -> Any:
    return json.loads(path.read_text())["bookings"]


@pytest.mark.parametrize("name", [OWNERSHIP_FILE, STATE_FILE])
async def test_a_failed_write_is_tried_again_until_it_lands(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (disk full) is tried again with backoff, with no further change,
    until the disk has room: one error line when it starts failing, one when it recovers,
    and `unwritten` says so meanwhile."""
    caplog.set_level(logging.INFO)
    disk = FullDisk(monkeypatch)
    if name == OWNERSHIP_FILE:
        state = ownership_file(str(tmp_path), get_logger(), DaemonThreads())
    else:
        state = ReleaseStateStore(str(tmp_path), get_logger(), DaemonThreads()).file
    state.retry_first = 0.01
    state.retry_max = 0.05
    state.changed(lambda: {"bookings": ["b1"]})
    await wait_until(lambda: disk.attempts >= 3, what="the write tried again, unasked")
    assert state.unwritten == f"{name} not written (ENOSPC): retrying"
    assert not (tmp_path / name).exists()
    disk.full = False
    await wait_until(lambda: (tmp_path / name).exists(), what="the write once there is room")
    assert written_bookings(tmp_path / name) == ["b1"]
    assert state.unwritten is None
    events = [r.getMessage() for r in caplog.records]
    what = "ownership_state" if name == OWNERSHIP_FILE else "release_state"
    assert events.count(f"{what}_write_failed") == 1
    assert events.count(f"{what}_write_recovered") == 1
    tries = disk.attempts
    state.changed(lambda: {"bookings": ["b2"]})  # and writes go on as usual
    await wait_until(lambda: disk.attempts == tries + 1, what="the next write")
    await state.flush()
    assert written_bookings(tmp_path / name) == ["b2"]


async def test_a_booking_made_while_the_disk_is_full_is_written_once_it_has_room(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    start_host,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hostile3 G3 through a host: the Allocate is answered while `ownership.json` cannot be
    written, and the booking lands on disk once it can, with no further change (a disk full
    for every file refuses the Allocate: `handed-out.json`, tests/test_handed_unsaved.py)."""
    monkeypatch.setattr(state_file, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(state_file, "RETRY_MAX", 0.05)
    state = socket_dir.parent / "state"
    await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
    disk = FullDisk(monkeypatch, OWNERSHIP_FILE)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await wait_until(lambda: disk.attempts >= 3, what="the booking's write tried again")
    assert not (state / OWNERSHIP_FILE).exists()
    disk.full = False
    await wait_until(lambda: (state / OWNERSHIP_FILE).exists(), what="written once there is room")
    assert len(written_bookings(state / OWNERSHIP_FILE)) == 1


def stray(path: Path, kind: str) -> None:
    """Put something that is no lock file at `path` (hostile3 G11: a stray directory, a
    botched restore)."""
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_text("kept")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        os.symlink(path.parent, path)  # to a directory: a lock of it would be the wrong one
    else:
        os.symlink(path.parent / "nowhere", path)


STRAYS = ["directory", "fifo", "symlink", "dangling"]


@pytest.mark.parametrize("kind", STRAYS)
async def test_a_stray_entry_at_a_state_files_lock_is_set_aside_and_writes_go_on(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """hostile3 G11: something that is no regular file at `ownership.json.lock` made every
    booking write fail for good (`Is a directory`). It is set aside like a bad state file
    (`.unreadable`, with an error line) and the lock file made again."""
    from kdp_host.ownership_sync import merged_with

    stray(tmp_path / f"{OWNERSHIP_FILE}.lock", kind)
    state = ownership_file(
        str(tmp_path), get_logger(), DaemonThreads(), merged_with(str(tmp_path), "me000001")
    )
    state.changed(lambda: {"bookings": []})
    await state.flush()
    assert state.unwritten is None and state.write_failures == 0
    assert json.loads((tmp_path / OWNERSHIP_FILE).read_text())["bookings"] == []
    assert (tmp_path / f"{OWNERSHIP_FILE}.lock").is_file()
    kept = tmp_path / f"{OWNERSHIP_FILE}.lock.unreadable"
    assert os.path.lexists(kept)
    if kind == "directory":
        assert (kept / "inside").read_text() == "kept"
    line = next(r for r in caplog.records if r.getMessage() == "state_path_set_aside")
    fields = line.__dict__["kdp_fields"]
    assert (fields["found"], fields["kept_as"]) == (
        "symlink" if kind == "dangling" else kind,
        kept.name,
    )


@pytest.mark.parametrize("kind", STRAYS)
def test_a_stray_entry_at_the_state_dirs_own_locks_is_set_aside(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for every lock a host takes in stateDir: `kdp-host.lock`, `hosts/` (a file
    there) and `hosts/<instance>`; each is held once set aside and made again."""
    from kdp_host.state_lock import HOSTS_DIR, LOCK_FILE, hold_instance, hold_shared, release

    stray(tmp_path / LOCK_FILE, kind)
    held = hold_shared(str(tmp_path), wait=False, log=get_logger())
    assert held is not None and len(held) == 2, "the lock file is held beside the directory"
    assert (tmp_path / LOCK_FILE).is_file()
    assert os.path.lexists(tmp_path / f"{LOCK_FILE}.unreadable")
    (tmp_path / HOSTS_DIR).write_text("a file where the hosts' directory belongs")
    mine = hold_instance(str(tmp_path), "me000001", get_logger())
    os.close(mine)
    stray(tmp_path / HOSTS_DIR / "me000002", kind)
    mine = hold_instance(str(tmp_path), "me000002", get_logger())
    os.close(mine)
    release(held)
    assert (tmp_path / HOSTS_DIR).is_dir() and (tmp_path / HOSTS_DIR / "me000002").is_file()
    assert (tmp_path / f"{HOSTS_DIR}.unreadable").read_text().startswith("a file")
    assert os.path.lexists(tmp_path / HOSTS_DIR / "me000002.unreadable")
    set_aside = [r for r in caplog.records if r.getMessage() == "state_path_set_aside"]
    assert len(set_aside) == 3, [r.__dict__["kdp_fields"] for r in set_aside]


async def test_a_host_with_a_directory_at_the_bookings_lock_keeps_its_bookings(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile3 G11 through a host: `mkdir <stateDir>/ownership.json.lock` before the start;
    the booking of an Allocate is on disk, and the host is ready."""
    state = socket_dir.parent / "state"
    state.mkdir()
    (state / f"{OWNERSHIP_FILE}.lock").mkdir()
    running = await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    assert len(written_bookings(state / OWNERSHIP_FILE)) == 1
    assert (state / f"{OWNERSHIP_FILE}.lock.unreadable").is_dir()
    await wait_until(lambda: not running.host.not_ready(), what="ready")
    assert not any(r.getMessage() == "ownership_state_write_failed" for r in caplog.records)


def test_a_shared_files_read_names_the_writers_it_takes_up(tmp_path: Path) -> None:
    """`StateFile.load` of a file several hosts write (release-state.json, handed-out.json):
    `taken` names the writers whose host had ended (this host took their entries up; its
    merges leave them out: `state_lock.other_writers`); a file read as unknown stays
    `unsettled` (with `mark_unsaved`) until its owner learnt again what was lost."""
    runs = {"b", "me"}

    def shared(merge: bool = True) -> state_file.StateFile:
        return state_file.StateFile(
            str(tmp_path),
            "x.json",
            "x",
            1,
            get_logger(),
            DaemonThreads(),
            consequence="-",
            if_unwritten="-",
            merge=(lambda mine, _on_disk: mine) if merge else None,
            mark_unsaved=True,
            writer="me" if merge else None,
            running=lambda _directory, writer: writer in runs,
        )

    document = {"version": 1, "writers": {"a": {}, "b": {}, "me": {}}}
    (tmp_path / "x.json").write_text(json.dumps(document))
    file = shared()
    assert file.load(dict) == document and file.taken == {"a"} and not file.unsettled
    alone = shared(merge=False)
    assert alone.load(dict) == document and alone.taken == frozenset()
    (tmp_path / "x.json").write_text("{not json")
    unread = shared()
    assert unread.load(dict) is None and unread.unknown and unread.unsettled
    assert unread.taken == frozenset()
