"""Bookings shared by hosts on one stateDir (kdp_host/ownership_bookings.py, state_file.py,
state_lock.py): each host writes its own entries and keeps every other's, a booking one host
drops is not written back by another, a host that ended (SIGKILL too) has its bookings taken
over, and a file the other side left corrupt costs neither side its bookings."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from kdp_host.endpoint import socket_instance, socket_name
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership_bookings import Booking, Ledger
from kdp_host.ownership_claims import Claim, ClaimSet, Owner
from kdp_host.ownership_document import OWNERSHIP_FILE, ownership_file
from kdp_host.ownership_peers import Peers, Stamp
from kdp_host.ownership_sync import SharedRead, merged_with, read_shared
from kdp_host.stale_sockets import other_hosts
from kdp_host.state_file import StateFile
from kdp_host.state_lock import HOSTS_DIR, hold_instance, host_lock_path, running

R = "s.example/s"


def claim(number: int) -> tuple[Claim, ...]:
    return ((("c", number), f"/dev/n{number}", f"/dev/n{number}"),)


class Writer:
    """One host's ledger and its view of the file, as the host keeps them."""

    def __init__(self, state: Path, name: str, hold: bool = True) -> None:
        self.name = name
        self.stamp, self.peers = Stamp(), Peers(name)
        self.file: StateFile = ownership_file(
            str(state), get_logger(), DaemonThreads(), merged_with(str(state), name, self.stamp)
        )
        self.ledger = Ledger(name)
        self.ledger.sink = self.file
        self.fd = hold_instance(str(state), name, get_logger()) if hold else None
        self.ours = False
        """Whether the file last read was this host's own last write."""
        self.last: SharedRead | None = None
        """The file as last read."""

    def book(self, device_id: str, number: int) -> None:
        self.ledger.add(Owner(R, device_id), Booking(device_id, claim(number), 0.0))

    async def write(self) -> None:
        self.ledger.changed()
        await self.file.flush()

    def read(self) -> tuple[bool, bool]:
        """Take the file in, as `ownership_sync` does: (bookings changed, file stale)."""
        self.last = read = read_shared(self.file, self.name, self.peers)
        self.ours = read.ours
        return self.ledger.take_in(read.saved or [], read.others, 1.0, self.ours)

    def stop(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def on_file(state: Path) -> list[tuple[str, str | None]]:
    document: dict[str, Any] = json.loads((state / OWNERSHIP_FILE).read_text())
    return sorted((entry["id"], entry.get("writer")) for entry in document["bookings"])


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


async def test_two_writers_keep_each_others_bookings(state: Path) -> None:
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        new.book("new1", 1)
        await new.write()
        old.book("old0", 0)  # booked after the new host read the (then empty) file
        await old.write()
        assert on_file(state) == [("new1", "new"), ("old0", "old")]
        new.book("new2", 2)
        await new.write()  # from its own memory, which never held old0
        assert on_file(state) == [("new1", "new"), ("new2", "new"), ("old0", "old")]
        assert new.read() == (True, False)  # old0 is the old host's: held, not written
        assert new.ledger.has(Owner(R, "old0")) and Owner(R, "old0") not in new.ledger.bookings
        found = new.ledger.conflict(R, "other", 1, ClaimSet(exclusive=claim(0)))
        assert found == (Owner(R, "old0"), "/dev/n0")
    finally:
        old.stop()
        new.stop()


async def test_a_booking_one_host_dropped_is_not_written_back_by_another(state: Path) -> None:
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        old.book("old0", 0)
        await old.write()
        new.read()  # the new host holds old0 (foreign)
        old.ledger.drop(Owner(R, "old0"))  # pod1 ended: the old host drops it
        await old.write()
        new.book("new1", 1)
        await new.write()  # a stale copy of old0 in the new host's memory is not written
        assert on_file(state) == [("new1", "new")]
        assert new.read() == (True, False)  # and the new host lets go of it
        assert not new.ledger.has(Owner(R, "old0")) and ("c", 0) not in new.ledger.booked
    finally:
        old.stop()
        new.stop()


async def test_the_bookings_of_a_sigkilled_host_are_taken_over(state: Path) -> None:
    holder = (
        "import sys, time\n"
        "from kdp_host.state_lock import hold_instance\n"
        "from kdp_host.logs import get_logger\n"
        "hold_instance(sys.argv[1], 'dead', get_logger())\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", holder, str(state), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"held\n"
        assert running(str(state), "dead")
        dead = Writer(state, "dead", hold=False)  # its entries, as it wrote them
        dead.book("old0", 0)
        await dead.write()
        survivor = Writer(state, "new")
        assert survivor.read() == (True, False)
        assert Owner(R, "old0") not in survivor.ledger.bookings  # it runs: its own
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 30)
        assert not running(str(state), "dead")
        assert not os.path.exists(host_lock_path(str(state), "dead"))  # cleaned up
        assert survivor.read() == (True, True)  # taken over; the file is to be written
        assert Owner(R, "old0") in survivor.ledger.bookings
        await survivor.write()
        assert on_file(state) == [("old0", "new")]
        assert survivor.read() == (False, False)  # settled: no write loop
        survivor.stop()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_corrupt_file_from_the_other_side_costs_no_bookings(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        old.book("old0", 0)
        await old.write()
        new.read()
        (state / OWNERSHIP_FILE).write_text("{garbage")  # the other side's write, broken
        new.book("new1", 1)
        with caplog.at_level(logging.ERROR):
            await new.write()
        assert [r.getMessage() for r in caplog.records] == ["ownership_state_unreadable"]
        assert (state / (OWNERSHIP_FILE + ".unreadable")).read_text() == "{garbage"
        assert on_file(state) == [("new1", "new")]
        assert new.ledger.has(Owner(R, "old0"))  # still held from what it read before
        assert old.read() == (True, True)  # the old host sees its own gone: writes them back
        await old.write()
        assert on_file(state) == [("new1", "new"), ("old0", "old")]
    finally:
        old.stop()
        new.stop()


def test_a_hand_edited_writer_runs_nowhere(state: Path) -> None:
    (state / HOSTS_DIR).mkdir()
    for name in [None, "", ".", "..", "a/b", "x" * 9, "../state"]:
        assert not running(str(state), name), name
    assert (state / HOSTS_DIR).is_dir() and state.is_dir()


def test_a_live_socket_of_a_host_outside_the_state_dir_is_found(
    state: Path, short_dir: Path
) -> None:
    """t45: two kdp-hosts on one node with two stateDirs never see each other's claims; the
    one that starts finds the other's live socket (a host of its own stateDir is fine)."""
    sockets = short_dir / "dp"
    sockets.mkdir()
    listeners = []
    try:
        for instance in ("peer0001", "other001", "mine0001"):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(sockets / socket_name(R, instance, str(sockets))))
            listener.listen()
            listeners.append(listener)
        peer = hold_instance(
            str(state), "peer0001", get_logger()
        )  # a host on this stateDir (rolling update)
        try:
            found = other_hosts(str(sockets), str(state), "mine0001", get_logger())
        finally:
            os.close(peer)
        assert found == [socket_name(R, "other001", str(sockets))]
        assert socket_instance(socket_name(R, "other001", str(sockets))) == "other001"
        assert socket_instance("kdp-abcdefgh") is None  # a compact name carries none
    finally:
        for listener in listeners:
            listener.close()


async def test_release_state_of_hosts_sharing_a_state_dir_is_merged_not_overwritten(
    tmp_path: Path,
) -> None:
    """Two hosts on one stateDir (a rolling update): each one's write of
    `release-state.json` keeps what the other wrote (it was last-writer-wins: a release owed
    by one was dropped by the other's next write, and lost at a restart). A host that ended
    leaves its entries until a host that started after it ended has written."""
    from kdp_host.release_state import ReleaseStateStore

    def store(name: str | None) -> ReleaseStateStore:
        made = ReleaseStateStore(str(tmp_path), get_logger(), DaemonThreads(), name)
        made.load()
        return made

    owed = {"used": [], "owed": True}
    first_lock = hold_instance(str(tmp_path), "aaaa0001", get_logger())
    first = store("aaaa0001")
    second_lock = hold_instance(str(tmp_path), "bbbb0002", get_logger())
    second = store("bbbb0002")
    first.update(R, {"d0": {"used": ["d0"], "owed": False}})
    await first.flush()
    second.update(R, {"d1": owed})
    await second.flush()
    first.update(R, {"d0": owed})  # the first host's next write keeps the second's entry
    await first.flush()
    assert store(None).entries(R) == {"d0": owed, "d1": owed}

    os.close(second_lock)  # the second host ends, its release of d1 still owed
    first.update(R, {})
    await first.flush()
    assert store(None).entries(R) == {"d1": owed}, "kept: the first host never took it up"
    third_lock = hold_instance(str(tmp_path), "cccc0003", get_logger())
    third = store("cccc0003")
    assert third.entries(R) == {"d1": owed}  # taken up at start
    third.update(R, {})  # released
    await third.flush()
    assert store(None).entries(R) == {}
    document = json.loads((tmp_path / "release-state.json").read_text())
    assert sorted(document["writers"]) == ["aaaa0001", "cccc0003"]
    for fd in (first_lock, third_lock):
        os.close(fd)


def test_the_ledger_counts_the_bookings_that_went() -> None:
    """`Ledger.drops` grows when a booking goes, this host's (`drop`) or another host's
    (`mirror`), and not when one is booked again as it was: what is kept while an ID is
    booked (`handed_out.HandedRecord.answered`) is looked at again only then."""
    ledger = Ledger("me")
    mine, theirs = Owner("r", "d0"), Owner("r", "d1")
    assert ledger.record(mine, "d0", (), 1.0)
    assert not ledger.record(mine, "d0", (), 2.0)
    assert ledger.drops == 0
    ledger.mirror({("other", theirs): Booking("d1", (), 1.0)})
    assert ledger.has(theirs) and ledger.drops == 0
    ledger.mirror({})
    assert not ledger.has(theirs) and ledger.drops == 1
    ledger.drop(mine)
    assert ledger.drops == 2


def test_the_ledger_keeps_the_bookings_whose_pods_were_seen_gone() -> None:
    """`Ledger.ended` (what `ownership_held.HandOver` takes): a booking whose pod an answer
    showed gone (`expire`) or another host's that it dropped (`mirror`), not one that moved
    to another writer or that this host took over (hostile14 N1: the next resource with
    `release` to serve its node owes its release)."""
    ledger = Ledger("me")
    mine, theirs, moved = Owner("r", "d0::1"), Owner("r", "d1"), Owner("r", "d2")
    ledger.record(mine, "d0", (), 0.0)
    ledger.mirror({("a", theirs): Booking("d1", (), 0.0), ("a", moved): Booking("d2", (), 0.0)})
    ledger.mirror({("b", moved): Booking("d2", (), 0.0)})
    assert ledger.ended == [(theirs, "d1")]
    ledger.ended.clear()
    assert not ledger.expire(1.0, 5.0, lambda _: ())  # (too soon after the booking)
    assert ledger.expire(9.0, 5.0, lambda _: {"d0::1"}) is False  # (its pod holds it)
    assert ledger.expire(9.0, 5.0, lambda _: ())
    assert ledger.ended == [(mine, "d0")]


class Counted:
    """A function of kdp-host, counting its calls (a seam: what is rendered or checked)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
        self.calls = 0
        function = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return function(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


async def test_a_hosts_own_write_is_read_back_without_rendering_or_checking_its_bookings(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: an Allocate that books a new ID waits for the file; each write rendered
    every booking (the document), checked every entry again under the lock (the merge),
    and the host's read of its own write (its watcher) checked every entry and rendered
    them twice more: O(bookings) on the loop per booking, 5 ms at 1,000. Now a booking is
    rendered once, when booked, and the file read back as written is known as such."""
    from kdp_host import ownership_bookings, ownership_document

    me = Writer(state, "me")
    try:
        for number in range(50):
            me.book(f"d{number}", number)
        await me.write()
        assert me.read() == (False, False) and me.ours
        rendered = Counted(monkeypatch, ownership_bookings, "entry_of")
        checked = Counted(monkeypatch, ownership_document, "checked_entry")
        assert me.ledger.record(Owner(R, "new"), "new", claim(99), 2.0)
        await me.write()
        assert me.read() == (False, False) and me.ours  # its own write: nothing to take in
        assert (rendered.calls, checked.calls) == (1, 0)
        assert len(on_file(state)) == 51
        document = json.loads((state / OWNERSHIP_FILE).read_text())
        assert document == json.loads(json.dumps(me.file.last_written))
    finally:
        me.stop()


async def test_another_hosts_write_merged_into_ours_is_still_taken_in(state: Path) -> None:
    """The other host writes, then this host writes (merging the other's entries) before
    its watcher reads the file: the file is its own last write, and the other host's
    bookings in it are held all the same."""
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        new.book("new1", 1)
        await new.write()
        old.book("old0", 0)
        await old.write()
        new.book("new2", 2)
        await new.write()  # merged with old0 under the lock, not read by `new` yet
        assert new.read() == (True, False) and new.ours
        assert new.ledger.has(Owner(R, "old0")) and Owner(R, "old0") not in new.ledger.bookings
        assert new.ledger.conflict(R, "other", 1, ClaimSet(exclusive=claim(0))) is not None
        old.ledger.drop(Owner(R, "old0"))
        await old.write()  # the other host's write: read in full
        assert new.read() == (True, False) and not new.ours
        assert not new.ledger.has(Owner(R, "old0"))
        assert on_file(state) == [("new1", "new"), ("new2", "new")]
    finally:
        old.stop()
        new.stop()


async def test_a_write_that_lost_this_hosts_bookings_is_seen_and_written_again(
    state: Path,
) -> None:
    """The file changed behind the host (its entries edited away, the same size or not):
    it is read in full, and the host's bookings are written back."""
    me = Writer(state, "me")
    try:
        me.book("d0", 0)
        me.book("d1", 1)
        await me.write()
        path = state / OWNERSHIP_FILE
        path.write_text(path.read_text().replace('"key": 1,', '"key": 7,'))
        assert me.read() == (False, True) and not me.ours
        await me.write()
        assert me.read() == (False, False) and me.ours
        assert '"key": 1,' in path.read_text()
    finally:
        me.stop()


def test_a_document_of_entries_is_written_as_json_writes_it() -> None:
    """`encoded` joins each entry's text, made once: the same bytes as `json.dumps` with
    sorted keys, the file format of every version."""
    from kdp_host.ownership_document import (
        SavedBooking,
        as_written,
        bookings_document,
        encoded,
        read_saved,
    )

    places = ((("path", "/opt/x"), "/opt/x", "/opt/x"),)
    document = bookings_document(
        [
            SavedBooking(Owner(R, "b"), "b", claim(2) + claim(1), places, "me"),
            SavedBooking(Owner(R, "a"), "a", claim(3)),
        ]
    )
    body = {**document, "version": 1}
    plain = {"bookings": [dict(entry) for entry in body["bookings"]], "version": 1}
    assert encoded(body) == json.dumps(plain, sort_keys=True).encode()
    assert encoded({"bookings": []}) == b'{"bookings": []}'
    again = read_saved(json.loads(encoded(body)), as_written)
    assert read_saved(body, as_written) == again  # an entry reads as it was written


def test_the_ledger_renders_a_booking_once_and_again_when_its_writer_changes() -> None:
    ledger = Ledger()
    ledger.record(Owner(R, "b"), "b", claim(2), 1.0)
    ledger.record(Owner(R, "a"), "a", claim(1), 1.0)
    first = ledger.document()["bookings"]
    assert [e["id"] for e in first] == ["a", "b"] and "writer" not in first[0]
    assert not ledger.record(Owner(R, "a"), "a", claim(1), 2.0)
    assert ledger.document()["bookings"][0] is first[0]  # booked again as it was
    ledger.record(Owner(R, "a"), "a", claim(5), 3.0)
    assert ledger.document()["bookings"][0]["claims"][0]["key"] == 5
    ledger.writer = "me"
    assert [e["writer"] for e in ledger.document()["bookings"]] == ["me", "me"]
    ledger.drop(Owner(R, "a"))
    assert [e["id"] for e in ledger.document()["bookings"]] == ["b"]


def replace_file(state: Path, document: dict[str, Any]) -> None:
    """A valid document renamed over `ownership.json` (a backup restored, a config tool)."""
    staged = state / "staged.json"
    staged.write_text(json.dumps(document))
    staged.replace(state / OWNERSHIP_FILE)


async def test_hostile12_l9_a_running_hosts_bookings_missing_from_the_file_stay_in_force(
    state: Path,
) -> None:
    """L9: ownership.json replaced by a valid document without the old host's bookings
    while it runs (its lock held). The new host took the old one as ended and let go of
    old0 (its node went to a second pod), and the old host never wrote its entries back.
    Now a host's end is told by its lock only: old0 stays held, the old host sees its part
    gone and writes it back, and once it has, its writes are believed again (a booking it
    drops then goes)."""
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        old.book("old0", 0)
        await old.write()
        assert old.read() == (False, False) and old.ours
        new.book("new1", 1)
        await new.write()
        new.read()
        assert new.ledger.has(Owner(R, "old0"))
        replace_file(state, {"bookings": [], "version": 1})
        new.read()
        assert new.ledger.has(Owner(R, "old0")), "a running host's booking was let go"
        assert new.ledger.conflict(R, "n0", 1, ClaimSet(exclusive=claim(0))) is not None
        assert Owner(R, "old0") not in new.ledger.bookings  # still the old host's
        assert new.last is not None and new.last.kept == {"old"} and new.last.lost
        assert old.read()[1], "the old host does not see its entries gone"
        assert old.last is not None and old.last.lost is not None
        await old.write()
        await new.write()
        assert on_file(state) == [("new1", "new"), ("old0", "old")]
        new.read()
        assert new.last is not None and new.last.kept == frozenset() and not new.last.lost
        old.ledger.drop(Owner(R, "old0"))  # pod1 ended: the old host's own write is believed
        await old.write()
        new.read()
        assert not new.ledger.has(Owner(R, "old0"))
    finally:
        old.stop()
        new.stop()


async def test_an_older_copy_of_a_running_hosts_entries_adds_to_what_it_last_wrote(
    state: Path,
) -> None:
    """A backup restored: the old host's entries as they were (old0), not as it wrote them
    last (old1). The new host holds both until the old host writes again; then old1 only."""
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        old.book("old0", 0)
        await old.write()
        backup = json.loads((state / OWNERSHIP_FILE).read_text())
        old.ledger.drop(Owner(R, "old0"))
        old.book("old1", 1)
        await old.write()
        new.read()
        assert not new.ledger.has(Owner(R, "old0")) and new.ledger.has(Owner(R, "old1"))
        replace_file(state, backup)
        new.read()
        assert new.ledger.has(Owner(R, "old0")) and new.ledger.has(Owner(R, "old1"))
        old.read()
        assert old.last is not None and old.last.lost is not None and "older" in old.last.lost
        await old.write()
        new.read()
        assert not new.ledger.has(Owner(R, "old0")) and new.ledger.has(Owner(R, "old1"))
    finally:
        old.stop()
        new.stop()


async def test_bookings_kept_of_a_host_that_then_ends_are_taken_over(state: Path) -> None:
    """The old host's entries went from the file, then it stopped (its lock free) without
    writing again: its bookings as last read are taken over (they end with their pods)."""
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        old.book("old0", 0)
        await old.write()
        new.read()
        replace_file(state, {"bookings": [], "version": 1})
        new.read()
        old.stop()
        assert new.read() == (True, True)  # taken over: the file is to be written
        assert Owner(R, "old0") in new.ledger.bookings
        assert new.last is not None and new.last.ended == {"old"}
        await new.write()
        assert on_file(state) == [("old0", "new")]
    finally:
        old.stop()
        new.stop()


async def test_a_lone_hosts_entries_replaced_by_a_valid_empty_document_are_written_back(
    state: Path,
) -> None:
    """L6/L9: one host, the file replaced by `{"bookings": [], "version": 1}` after the host
    read back its own write: it went unseen (its other entries were the same, none)."""
    me = Writer(state, "me")
    try:
        me.book("d0", 0)
        await me.write()
        assert me.read() == (False, False) and me.ours
        replace_file(state, {"bookings": [], "version": 1})
        assert me.read() == (False, True)
        assert me.last is not None and me.last.lost is not None
        await me.write()
        assert on_file(state) == [("d0", "me")]
        assert me.read() == (False, False) and me.last.lost is None
    finally:
        me.stop()


async def test_a_running_hosts_entries_edited_away_under_its_stamp_stay_in_force(
    state: Path,
) -> None:
    """The file edited by hand: the old host's entry removed, its stamp left as it was.
    The stamp vouches for the entries read with it, not for others: old0 stays held until
    the old host writes again."""
    old, new = Writer(state, "old"), Writer(state, "new")
    try:
        old.book("old0", 0)
        old.book("old1", 1)
        await old.write()
        new.read()
        document = json.loads((state / OWNERSHIP_FILE).read_text())
        document["bookings"] = [e for e in document["bookings"] if e["id"] != "old0"]
        replace_file(state, document)
        new.read()
        assert new.ledger.has(Owner(R, "old0")) and new.ledger.has(Owner(R, "old1"))
        assert new.last is not None and new.last.kept == {"old"}
        assert old.read()[1]  # the old host writes its own back (not as it wrote them)
        await old.write()
        new.read()
        assert new.last is not None and new.last.kept == frozenset()
        assert new.ledger.has(Owner(R, "old0"))
    finally:
        old.stop()
        new.stop()


async def test_an_older_versions_write_without_stamps_is_no_loss_of_this_hosts_part(
    state: Path,
) -> None:
    """A rolling upgrade: the old version's merge keeps this host's entries but writes no
    stamps. This host's entries as written tell then: no rewrite (no `ownership_state_lost`
    at each of the old host's writes), unless they went too."""
    me, old = Writer(state, "me"), Writer(state, "old")
    try:
        me.book("d0", 0)
        await me.write()
        document = json.loads((state / OWNERSHIP_FILE).read_text())
        del document["writes"]
        document["bookings"].append(
            {"resource": R, "id": "o1", "device": "o1", "claims": [], "writer": "old"}
        )
        replace_file(state, document)
        assert me.read() == (True, False)  # o1 held (the old host's); d0 as written
        assert me.last is not None and me.last.lost is None
        replace_file(state, {"bookings": [], "version": 1})
        assert me.read()[1] and me.last.lost is not None
    finally:
        me.stop()
        old.stop()
