"""The Allocate fence of hosts sharing a stateDir (kdp_host/ownership_fence.py; issue 17,
hostile22 F7; through the real kubelet: tests/test_rollout_fence.py): alone, an answer takes
no lock; with another host running, it is answered under `ownership.json.lock`, refused when
a booking of that host not taken in yet reaches what it hands out, its booking written before
the lock goes, and refused when it cannot be (a lock not taken in time, a write that fails)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kdp_host import ownership_fence, state_hosts
from kdp_host.device_table import DeviceTable
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_bookings import Booking
from kdp_host.ownership_claims import Owner
from kdp_host.ownership_document import Saved, SavedBooking
from kdp_host.ownership_fence import AllocateFence, Unfenced
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.ownership_sync import BookingsSync, read_shared, shared_bookings, theirs
from kdp_host.safety_net import SafetyNet
from kdp_host.state_hosts import others_run
from kdp_host.state_lock import hold_instance, host_lock_path
from kdp_host.watch import PollingWatcher

from .fake_nodes import FakeNodes, node
from .test_shared_bookings import R, Writer

NODE = {"/dev/n1": ("c", 1)}


def fence_of(host: Writer, state: Path) -> AllocateFence:
    fence = AllocateFence(host.file, str(state), host.name, DaemonThreads(), get_logger())
    fence.live = others_run(str(state), host.name)
    return fence


@contextmanager
def lock_held(host: Writer) -> Iterator[None]:
    """`ownership.json.lock` held by another open file (as another host's write holds it)."""
    fd = os.open(host.file.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def test_alone_an_answer_takes_no_lock(tmp_path: Path) -> None:
    """No other host runs: the answer goes on while the lock is held elsewhere."""
    a = Writer(tmp_path, "host-a")
    fence = fence_of(a, tmp_path)
    assert not fence.live
    with lock_held(a):
        async with asyncio.timeout(2):
            async with fence.held(R, ["a0"], NODE, {}):
                pass


async def test_a_peer_booking_not_taken_in_refuses_the_answer(tmp_path: Path) -> None:
    """host-b booked n1 (a resource of another name); host-a has not taken it in: an answer
    of host-a handing out n1 is refused, one of another node is not; the same ID of the same
    resource is the kubelet allocating it again; once taken in, the index judges it."""
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    b.book("b1", 1)
    await b.write()
    fence = fence_of(a, tmp_path)
    assert fence.live
    with pytest.raises(PlaceOwned, match="booked by host host-b"):
        async with fence.held("other.example/x", ["x0"], NODE, {}):
            pass
    async with fence.held("other.example/x", ["x0"], {"/dev/n2": ("c", 2)}, {}):
        pass
    async with fence.held(R, ["b1"], NODE, {}):
        pass
    fence.took_in(theirs(read_shared(a.file, a.name).saved, a.name))
    async with fence.held("other.example/x", ["x0"], NODE, {}):
        pass


async def test_a_directory_booking_holds_what_is_below_it(tmp_path: Path) -> None:
    """host-b holds /srv/tree mounted: a node below it, in host-a's answer, is refused."""
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    tree = ((("d", 7), "/srv/tree", "/srv/tree"),)
    b.ledger.add(Owner(R, "t"), Booking("t", tree, 0.0))
    await b.write()
    fence = fence_of(a, tmp_path)
    with pytest.raises(PlaceOwned):
        async with fence.held("x.example/x", ["x0"], {"/srv/tree/n": ("c", 9)}, {}):
            pass


async def test_the_answers_of_two_hosts_are_serialised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While host-a answers under the lock, host-b's answer waits; past the limit it is
    refused (UNAVAILABLE), never answered unfenced. Once host-a is done, host-b answers. A
    write of host-a's booking inside its answer takes no lock of its own (no self-wait)."""
    monkeypatch.setattr(ownership_fence, "FENCE_LIMIT", 0.3)
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    fence_a, fence_b = fence_of(a, tmp_path), fence_of(b, tmp_path)
    async with fence_a.held(R, ["a0"], NODE, {}):
        a.book("a0", 1)
        a.ledger.changed()
        async with asyncio.timeout(2):
            assert await a.file.written()
        with pytest.raises(Unfenced, match="not taken within"):
            async with fence_b.held("other.example/x", ["x0"], {"/dev/n5": ("c", 5)}, {}):
                pass
    with pytest.raises(PlaceOwned, match="host-a"):  # (host-a's booking, read under the lock)
        async with fence_b.held("other.example/x", ["x0"], NODE, {}):
            pass
    assert a.file.held_lock is None


async def test_with_a_peer_a_booking_not_written_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, an answer goes out when ownership.json cannot be written (handed-out.json is
    the authority); with another host running, the booking it cannot see refuses it."""
    a, _b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    fence = fence_of(a, tmp_path)

    def full(_document: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(a.file, "_write_document", full)
    with pytest.raises(Unfenced, match="another host runs"):
        async with fence.held(R, ["a0"], NODE, {}):
            a.book("a0", 1)
            a.ledger.changed()
            assert not await a.file.written()
    fence.live = False
    async with fence.held(R, ["a1"], NODE, {}):
        a.book("a1", 1)
        a.ledger.changed()
        assert not await a.file.written()


def test_a_host_starting_keeps_its_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host's lock file made a moment ago, not locked yet (the host is starting):
    counted as a host that runs, and not asked (asking removes a file no host holds: the
    starting host would then hold a lock no other host sees). One no host holds, made long
    ago, is no host (and goes, as `state_lock.running` has it)."""
    a = Writer(tmp_path, "host-a")
    starting = Path(host_lock_path(str(tmp_path), "host-b"))
    starting.touch()
    assert others_run(str(tmp_path), a.name)
    assert starting.exists()
    monkeypatch.setattr(state_hosts, "STARTING", 0.0)
    assert not others_run(str(tmp_path), a.name)
    assert not starting.exists()


class AdmittingIndex:
    """An ownership index as `ownership_sync` sees it, whose admission against what it
    took in ends only when the test lets it (`admitted`)."""

    fence: AllocateFence | None = None

    def __init__(self) -> None:
        self.admitted = asyncio.Event()
        self.admitted.set()
        self.took: list[Saved | None] = []

    def keep_bookings_in(self, *_args: Any) -> None:
        pass

    async def take_in(self, saved: Saved | None, *_args: Any) -> None:
        self.took.append(saved)

    async def quiet(self, settled: bool = False) -> None:
        await self.admitted.wait()


async def synced(sync: BookingsSync) -> None:
    """The file read by `sync` (as its watcher has it read) and taken in."""
    sync.changed(None)
    task = sync._task
    assert task is not None
    async with asyncio.timeout(10):
        await task


async def test_a_peer_booking_dropped_and_booked_again_is_not_taken_in_yet(
    tmp_path: Path,
) -> None:
    """Issue 17 (hostile22 F7, the case left after the fence): host-a took in host-b's
    booking of n1 (admitted against); host-b dropped it and host-a's index let n1 go (its
    admission against that content still runs); host-b booked the same ID again (the very
    same entry) and host-a has not read it: that booking is not held by host-a's index, so
    an answer of host-a handing out n1 is refused, never left to the index."""
    a_lock = hold_instance(str(tmp_path), "host-a", get_logger())
    b = Writer(tmp_path, "host-b")
    index = AdmittingIndex()
    sync = await shared_bookings(index, str(tmp_path), "host-a", DaemonThreads(), get_logger())
    fence = index.fence
    assert fence is not None
    fence.live = True
    try:
        b.book("b1", 1)
        await b.write()
        await synced(sync)
        settling = sync._settling  # (the admission against it)
        assert settling is not None
        async with asyncio.timeout(10):
            await settling
        assert fence.taken_in
        async with fence.held("other.example/x", ["x0"], NODE, {}):  # (the index judges)
            pass
        index.admitted.clear()  # (the next admission runs in turns of the loop)
        b.ledger.drop(Owner(R, "b1"))
        await b.write()
        await synced(sync)
        assert index.took[-1] == []  # (host-a's index let n1 go)
        b.book("b1", 1)
        await b.write()  # (not read by host-a yet)
        with pytest.raises(PlaceOwned, match="booked by host host-b"):
            async with fence.held("other.example/x", ["x0"], NODE, {}):
                pass
        index.admitted.set()
    finally:
        sync.close()
        b.stop()
        os.close(a_lock)


async def test_bookings_let_go_while_the_answer_is_checked_are_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """host-b's booking of n1 is taken in when host-a's answer reads the file under the
    lock; the index lets it go before that check is back (`taking_in`): the answer is
    checked again under the lock, and refused."""
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    b.book("b1", 1)
    await b.write()
    fence = fence_of(a, tmp_path)
    fence.took_in(theirs(read_shared(a.file, a.name).saved, a.name))
    reading, go = threading.Event(), threading.Event()
    real = a.file.document_now

    def held_up() -> Any:
        reading.set()
        assert go.wait(10)
        return real()

    monkeypatch.setattr(a.file, "document_now", held_up)

    async def answer() -> None:
        async with fence.held("other.example/x", ["x0"], NODE, {}):
            pass

    answering = asyncio.ensure_future(answer())
    assert await asyncio.to_thread(reading.wait, 10)
    fence.taking_in(frozenset(), fence.taken_in, frozenset())  # (host-b dropped it)
    go.set()
    with pytest.raises(PlaceOwned, match="booked by host host-b"):
        async with asyncio.timeout(10):
            await answering


async def test_an_admission_ending_while_the_next_content_is_taken_in_widens_nothing(
    tmp_path: Path,
) -> None:
    """The admission against a content holding host-b's booking ends while host-a's index
    takes in the next content, which lacks it (in turns of the loop): the booking the index
    is letting go of is not taken in (the earlier content's settling is over)."""
    a_lock = hold_instance(str(tmp_path), "host-a", get_logger())
    b = Writer(tmp_path, "host-b")
    index = AdmittingIndex()
    index.admitted.clear()
    sync = await shared_bookings(index, str(tmp_path), "host-a", DaemonThreads(), get_logger())
    fence = index.fence
    assert fence is not None
    seen: list[frozenset[SavedBooking]] = []

    async def take_in(saved: Saved | None, *_args: Any) -> None:
        index.took.append(saved)
        if saved == []:  # (the admission of the content before ends meanwhile)
            index.admitted.set()
            for _ in range(5):
                await asyncio.sleep(0)
            seen.append(fence.taken_in)

    index.take_in = take_in  # type: ignore[method-assign]
    try:
        b.book("b1", 1)
        await b.write()
        await synced(sync)
        b.ledger.drop(Owner(R, "b1"))
        await b.write()
        await synced(sync)
        assert seen == [frozenset()]
    finally:
        sync.close()
        b.stop()
        os.close(a_lock)


async def test_bookings_let_go_while_the_answer_is_made_refuse_it(tmp_path: Path) -> None:
    """host-b's booking of n1 was taken in when host-a's answer was checked; the index lets
    it go while the answer is made (an await of it): checked again before the lock goes,
    the answer is refused."""
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    b.book("b1", 1)
    await b.write()
    fence = fence_of(a, tmp_path)
    fence.took_in(theirs(read_shared(a.file, a.name).saved, a.name))
    with pytest.raises(PlaceOwned, match="booked by host host-b"):
        async with fence.held("other.example/x", ["x0"], NODE, {}):
            fence.taking_in(frozenset(), fence.taken_in, frozenset())  # (host-b dropped it)
    async with fence.held("other.example/x", ["x0"], {"/dev/n2": ("c", 2)}, {}):
        fence.taking_in(frozenset(), fence.taken_in, frozenset())


async def test_a_peer_booking_taken_in_while_the_answer_is_made_refuses_it(
    tmp_path: Path,
) -> None:
    """Issue 17 (hostile22 F7, round 0 just after the new host starts): host-a's answer of
    n1 under another name was judged on the list in force when the Allocate came; while it
    was made (an await), host-a took in host-b's booking of n1 and admitted against it (n1
    held, its claims kept), so the fence leaves that booking to the index: the index books
    no device the last admission held back, and the answer is refused."""
    other = "other.example/x"
    a_lock = hold_instance(str(tmp_path), "host-a", get_logger())
    b = Writer(tmp_path, "host-b")
    index = OwnershipIndex(resolve=FakeNodes({"/dev/n1": ("c", 1)}))
    sync = await shared_bookings(index, str(tmp_path), "host-a", DaemonThreads(), get_logger())
    fence = index.fence
    assert fence is not None
    fence.live = True
    table = DeviceTable()
    index.attach(other, table.publish, get_logger())
    index.publish(other, {"n1": node("/dev/n1")})
    await index.quiet()
    try:
        assert "n1" in table.snapshot.by_advertised_id  # (what the answer was judged on)
        b.book("b1", 1)
        await b.write()
        await synced(sync)
        async with asyncio.timeout(10):
            await sync._settling  # type: ignore[misc]
        assert fence.taken_in and "n1" not in table.snapshot.by_advertised_id
        with pytest.raises(PlaceOwned, match="n1 is held"):
            async with index.fenced(other, ["n1"], {"/dev/n1": ("c", 1)}, {}):
                await index.book(other, ["n1"], wait=False)
                await index.bookings_written()
        assert index.handed_out() == {}
    finally:
        sync.close()
        b.stop()
        os.close(a_lock)


async def test_a_polling_host_alone_looks_for_a_new_host_at_each_answer(tmp_path: Path) -> None:
    """host-a's watcher polls (no inotify): host-b started since its last poll and booked
    n1. host-a's answer handing n1 out lists `hosts/` first, so it goes through the fence
    and is refused, never answered as if alone for up to a poll's interval."""
    a = Writer(tmp_path, "host-a")
    fence = AllocateFence(a.file, str(tmp_path), a.name, DaemonThreads(), get_logger())
    net = SafetyNet(DaemonThreads())
    fence.follow(PollingWatcher(get_logger(), interval=3600.0), net)  # (no poll comes)
    index = OwnershipIndex()
    index.fence = fence
    try:
        looked = fence._look
        assert looked is not None
        async with asyncio.timeout(10):
            assert not await looked  # (the look at `follow`: alone)
        b = Writer(tmp_path, "host-b")
        b.book("b1", 1)
        await b.write()
        with pytest.raises(PlaceOwned, match="booked by host host-b"):
            async with index.fenced("other.example/x", ["x0"], NODE, {}):
                pass
        assert fence.live
        b.stop()
    finally:
        fence.close()
