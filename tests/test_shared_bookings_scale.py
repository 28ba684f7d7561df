"""Another writer's large `ownership.json` (kdp_host/state_document.py, ownership_sync.py,
ownership_bookings.py; hostile11 K2): it is parsed once, off the loop, and a write of this
host's own bookings does not parse it again; its bookings are taken in by turns of the
event loop; a file past the size bound is refused as a file that cannot be read; the file this host
wrote last is not read again."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from kdp_host import ownership_document, state_document
from kdp_host.atomic_files import write_atomic
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_bookings import Booking, Ledger
from kdp_host.ownership_claims import Owner
from kdp_host.ownership_document import OWNERSHIP_FILE, ownership_file, read_saved
from kdp_host.ownership_sync import merged_with, read_shared
from kdp_host.state_document import DocumentCache, Unreadable

R = "s.example/s"
ENDED = "0badc0de"
"""The writer of the foreign entries: a host that ended (it holds no lock)."""


def foreign_file(state: Path, count: int) -> None:
    """`ownership.json` as another host left it: `count` bookings on paths gone now."""
    bookings = [
        {
            "claims": [
                {"key": 70000 + i, "kind": "c", "path": f"/gone/x{i}", "real": f"/gone/x{i}"}
            ],
            "device": f"x{i}",
            "id": f"x{i}",
            "resource": "gone.example/x",
            "writer": ENDED,
        }
        for i in range(count)
    ]
    (state / OWNERSHIP_FILE).write_text(json.dumps({"bookings": bookings, "version": 1}))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


async def test_a_write_after_another_writers_change_does_not_parse_it_again(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[threading.Thread] = []
    real = ownership_document.checked_entry

    def counting(entry: Any, *args: Any) -> Any:
        checked.append(threading.current_thread())
        return real(entry, *args)

    monkeypatch.setattr(ownership_document, "checked_entry", counting)
    foreign_file(state, 300)
    offload = DaemonThreads()
    file = ownership_file(str(state), get_logger(), offload, merged_with(str(state), "me"))
    ledger = Ledger("me")
    ledger.sink = file
    saved = (await offload.run(lambda: read_shared(file, "me"))).saved  # (the follow's read)
    assert saved is not None and len(saved) == 300
    ledger.add(Owner(R, "mine"), Booking("mine", ((("c", 1), "/dev/n1", "/dev/n1"),), 0.0))
    ledger.changed()
    await file.flush()  # merged under the lock with the file the follow has read already
    assert len(checked) == 300  # each entry checked once: the write parsed nothing again
    assert threading.current_thread() not in checked  # (and never on the event loop)
    on_disk = json.loads((state / OWNERSHIP_FILE).read_text())["bookings"]
    assert sorted(entry["id"] for entry in on_disk) == [
        "mine",
        *sorted(f"x{i}" for i in range(300)),
    ]


async def test_another_hosts_bookings_are_taken_in_by_turns_of_the_loop(state: Path) -> None:
    foreign_file(state, 3000)
    offload = DaemonThreads()
    file = ownership_file(str(state), get_logger(), offload)
    saved = await offload.run(lambda: file.load(read_saved))
    assert saved is not None
    index = OwnershipIndex(offload=offload)
    index.keep_bookings_in(file, [], (), "me")
    turns = 0
    taking_in = asyncio.ensure_future(index.take_in(saved, ()))  # (that host ended: taken over)
    while not taking_in.done():
        await asyncio.sleep(0)
        turns += 1
    await taking_in
    assert turns >= 3  # the loop ran between parts of the work, not once after all of it
    assert all(index.is_booked("gone.example/x", f"x{i}") for i in range(3000))


def test_a_file_past_the_size_bound_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / OWNERSHIP_FILE
    path.write_text(json.dumps({"bookings": [], "version": 1, "pad": "x" * 200}))
    with pytest.raises(Unreadable, match="larger than 100 bytes"):
        DocumentCache(str(path), 1, limit=100).read()
    assert DocumentCache(str(path), 1).read() == json.loads(path.read_text())


def test_the_file_this_host_wrote_last_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, reads = tmp_path / OWNERSHIP_FILE, []
    real = state_document.read_attribute

    def counted(name: str, limit: int) -> bytes | None:
        reads.append(name)
        return real(name, limit)

    monkeypatch.setattr(state_document, "read_attribute", counted)
    cache, mine = DocumentCache(str(path), 1), {"bookings": [], "version": 1}
    data = json.dumps(mine).encode()
    cache.written(data, mine, write_atomic(str(path), data))
    assert cache.read() is mine and reads == []  # (the very file written: not read)
    write_atomic(str(path), json.dumps({"bookings": [], "version": 1, "x": 1}).encode())
    assert cache.read() == {"bookings": [], "version": 1, "x": 1} and len(reads) == 1
