"""The kubelet's checkpoint followed while kdp-host runs (`kdp_host.checkpoint_follow`):
another plugin's pod's node, served by kdp-host under another name, is held within
milliseconds of the kubelet's write, not only after a start or a reload (issue 17,
hostile22 F4); this host's own admissions cost a look at the names, no booking read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kdp_host import checkpoint_entries, checkpoint_follow
from kdp_host.checkpoint_follow import BookOthers, CheckpointFollower, others_entries
from kdp_host.files import DaemonThreads
from kdp_host.inotify_watch import make_watcher
from kdp_host.kubelet_checkpoint import CHECKPOINT_FILE
from kdp_host.kubelet_checksum import checksum
from kdp_host.logs import get_logger
from kdp_host.ownership_booked import Booking
from kdp_host.ownership_bookings import Ledger
from kdp_host.ownership_claims import Owner

from .conftest import wait_until
from .kubelet_harness import GenericDevicePlugin, gdp_device, harness_binary, missing_reason
from .test_checkpoint_bookings import GDEV, OTHER, config_text, healthy_count, nodes
from .test_kubelet_checkpoint import entry_of

pytestmark = pytest.mark.fast


def follower_of(running: Any) -> CheckpointFollower:
    follower = running.host._supervisor.services.checkpoint.follower
    assert isinstance(follower, CheckpointFollower)
    return follower


def write_go(directory: Path, *entries: dict[str, Any]) -> None:
    """The checkpoint as the kubelet writes it: compact JSON, made by a rename."""
    data = {"PodDeviceEntries": list(entries), "RegisteredDevices": None}
    text = json.dumps({"Data": data, "Checksum": checksum(data)}, separators=(",", ":"))
    (directory / ".tmp").write_text(text)
    os.replace(directory / ".tmp", directory / CHECKPOINT_FILE)


def capacity_dropped(events: list[dict[str, Any]], resource: str) -> int | None:
    """When the kubelet first saw `resource` with no healthy device (Unix ns), or None."""
    for event in events:
        if (event["kind"], event["resource"], event["healthy"]) == (
            "capacity_changed",
            resource,
            0,
        ):
            return int(event["t_unix_ns"])
    return None


def listed(resource: str) -> Any:
    """Whether the kubelet took a ListAndWatch message of `resource` (events seen)."""

    def seen(events: list[dict[str, Any]]) -> bool:
        return any((e["kind"], e["resource"]) == ("list_and_watch", resource) for e in events)

    return seen


@contextlib.asynccontextmanager
async def gdp_beside(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    names: tuple[str, ...] = ("g0",),
    polled: bool = True,
) -> AsyncIterator[tuple[Any, Any]]:
    """The real kubelet, kdp-host serving nodes `names` (g0 first) as OTHER and
    generic-device-plugin g0 as GDEV (a migration that renames the resource, both running),
    both listed: (kubelet, host). `polled` False: PodResources polling off."""
    if harness_binary("generic-device-plugin") is None:
        pytest.skip(missing_reason("generic-device-plugin"))
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    pattern = nodes(short_dir, "dev", *names)
    config = config_text(kubelet, short_dir, (OTHER, pattern))
    if not polled:
        config = config.replace("podResourcesInterval: 1s", "podResourcesInterval: 0s")
    running = await start_host(config)
    g0 = gdp_device("gdev", str(short_dir / "dev" / "g0"))
    gdp = GenericDevicePlugin(kubelet.socket_dir, [g0], short_dir / "g")
    gdp.start()
    try:
        await kubelet.await_for(healthy_count(OTHER, len(names)), what="kdp-host serves g0")
        await kubelet.await_for(healthy_count(GDEV, 1), what="GDP serves g0")
        yield kubelet, running
    finally:
        gdp.stop()


async def test_a_node_another_plugin_hands_out_while_kdp_host_runs_is_held_at_once(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """hostile22 F4 through the kubelet's real device manager: generic-device-plugin serves
    node g0 as GDEV, kdp-host the same node as OTHER (a migration that renames the
    resource, both running). GDP hands g0 to p1: kdp-host holds it within milliseconds of
    the kubelet's write (before: it kept advertising g0 and handed it to p2 while p1 was
    active), and lists it again once p1 is released."""
    async with gdp_beside(real_kubelet_factory, start_host, short_dir) as (kubelet, running):
        since = await kubelet.acall(kubelet.last_seq)
        p1 = await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1})
        written = time.time_ns()  # (the kubelet wrote its checkpoint before answering)
        assert p1["error"] == "", p1
        events = await kubelet.acall(
            kubelet.wait_events, lambda seen: capacity_dropped(seen, OTHER), since, 10, "g0 held"
        )
        held = capacity_dropped(events, OTHER)
        assert held is not None
        print(f"held {(held - written) / 1e6:.1f} ms after the kubelet's answer")
        p2 = await kubelet.acall(kubelet.allocate, "p2", {OTHER: 1})
        assert p2["error"] and not p2["device_ids"], p2
        assert follower_of(running).bookings >= 1
        assert (await kubelet.acall(kubelet.release, "p1"))["found"]
        await kubelet.await_for(healthy_count(OTHER, 1), timeout=30, what="g0 listed again")
        p3 = await kubelet.acall(kubelet.allocate, "p3", {OTHER: 1})
        assert p3["error"] == "", p3
        assert [d["PathOnHost"] for d in p3["devices"]] == [str(short_dir / "dev" / "g0")]


async def test_without_pod_resources_another_plugins_ended_pod_frees_its_node(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """hostile23 F6 through the real kubelet and GDP, PodResources polling off: GDP hands g0
    to p1 (kdp-host holds it), p1 ends, and the kubelet's next admission (p2, k1 through
    kdp-host) writes its checkpoint without p1's entry: g0 is listed again (before: held
    `booked` for good, only `kdp-host unbook` ended it); again for the next such pod (GDP
    hands out g0 under the same ID)."""
    async with gdp_beside(
        real_kubelet_factory, start_host, short_dir, ("g0", "k1"), polled=False
    ) as (kubelet, running):
        for n in (1, 2):
            assert (await kubelet.acall(kubelet.allocate, f"p{n}", {GDEV: 1}))["error"] == ""
            await kubelet.await_for(healthy_count(OTHER, 1), what="g0 held for the GDP pod")
            assert (await kubelet.acall(kubelet.release, f"p{n}"))["found"]
            k1 = await kubelet.acall(kubelet.allocate, f"k{n}", {OTHER: 1})
            assert k1["device_ids"] == {OTHER: ["k1"]}, k1
            await kubelet.await_for(healthy_count(OTHER, 2), timeout=30, what="g0 listed")
            assert follower_of(running).unbooked == n
            assert (await kubelet.acall(kubelet.release, f"k{n}"))["found"]
        both = await kubelet.acall(kubelet.allocate, "p3", {OTHER: 2})
        assert sorted(both["device_ids"][OTHER]) == ["g0", "k1"], both


async def test_a_booking_kept_across_a_restart_ends_once_the_checkpoint_lacks_it(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """hostile23 F6 (addendum): p1 (GDP) holds g0, kdp-host stops, p1 ends, kdp-host starts
    again (PodResources polling off) with the booking in `ownership.json`: once the kubelet
    writes its checkpoint without p1 (at kdp-host's list) g0 is listed again (before: held
    for good), while a pod that still runs (p0 on GDP's g0 in the second round) keeps it."""
    async with gdp_beside(real_kubelet_factory, start_host, short_dir, polled=False) as (
        kubelet,
        running,
    ):
        config = running.host.config
        assert (await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1}))["error"] == ""
        await kubelet.await_for(healthy_count(OTHER, 0), what="g0 held for p1")
        await running.shutdown()
        assert (await kubelet.acall(kubelet.release, "p1"))["found"]
        running = await start_host(config)
        await kubelet.await_for(healthy_count(OTHER, 1), timeout=30, what="g0 listed again")
        assert follower_of(running).unbooked == 1
        assert (await kubelet.acall(kubelet.allocate, "p0", {GDEV: 1}))["error"] == ""
        await kubelet.await_for(healthy_count(OTHER, 0), what="g0 held for p0")
        await running.shutdown()
        since = await kubelet.acall(kubelet.last_seq)
        running = await start_host(config)
        await kubelet.acall(kubelet.wait_events, listed(OTHER), since, 30, "listed again")
        follower = follower_of(running)
        await wait_until(lambda: follower.looks >= 2 and follower._task is None, timeout=10)
        await kubelet.await_for(healthy_count(OTHER, 0), what="g0 still held for p0")
        assert follower.unbooked == 0


async def test_a_kubelet_restart_keeps_a_running_pods_booking(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """The kubelet restarts while GDP's p1 holds g0 (PodResources polling off): it reads its
    checkpoint back and writes it again with p1 at kdp-host's list, and at the next
    admission (k1 through kdp-host): g0 stays held, no booking ends."""
    async with gdp_beside(
        real_kubelet_factory, start_host, short_dir, ("g0", "k1"), polled=False
    ) as (kubelet, running):
        assert (await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1}))["error"] == ""
        await kubelet.await_for(healthy_count(OTHER, 1), what="g0 held for p1")
        since = await kubelet.acall(kubelet.last_seq)
        await kubelet.acall(kubelet.restart)
        await kubelet.acall(kubelet.wait_events, listed(OTHER), since, 30, "listed again")
        await kubelet.await_for(healthy_count(OTHER, 1), what="k1 listed after the restart")
        k1 = await kubelet.acall(kubelet.allocate, "k1", {OTHER: 1})
        assert k1["device_ids"] == {OTHER: ["k1"]}, k1["error"]
        follower = follower_of(running)
        assert await follower.looked()
        await wait_until(lambda: follower._task is None, timeout=10)
        await kubelet.await_for(healthy_count(OTHER, 1), what="g0 still held for p1")
        assert follower.unbooked == 0


def test_only_a_booking_the_checkpoint_vouched_for_ends_when_a_later_read_lacks_it() -> None:
    """`LearntBookings.unvouched`: a booking from the checkpoint alone of a covered name,
    booked before the read began, that the read does not list; not one an Allocate made
    (claims of its device), one the read lists, one of a name not covered (served), one
    booked after the read began (from a later write), nor another host's."""
    ledger = Ledger()
    node = (("c", 61447), "/dev/g0", "/dev/g0")
    ledger.record(Owner(GDEV, "g0"), "g0", (), 1.0, (node,))  # (the checkpoint's)
    ledger.record(Owner(GDEV, "g1"), "g1", (), 1.0, (node,))  # (listed still)
    ledger.record(Owner(GDEV, "g2"), "g2", (node,), 1.0)  # (an Allocate's)
    ledger.record(Owner(OTHER, "a0"), "a0", (), 1.0, (node,))  # (a name served)
    ledger.record(Owner(GDEV, "g3"), "g3", (), 5.0, (node,))  # (booked after the read)
    ledger.mirror({("host-b", Owner(GDEV, "g4")): Booking("g4", (), 1.0, (node,))})

    def covered(resource: str) -> bool:
        return resource != OTHER

    listed = frozenset({(GDEV, "g1")})
    assert ledger.unvouched(listed, covered) == [Owner(GDEV, "g0"), Owner(GDEV, "g3")]
    assert ledger.end_unvouched(listed, covered, 2.0) == [Owner(GDEV, "g0")]
    assert Owner(GDEV, "g0") not in ledger.bookings and ledger.ended
    assert ledger.learnt == {GDEV: {"g1", "g3"}, OTHER: {"a0"}}
    ledger.record(Owner(GDEV, "g1"), "g1", (node,), 6.0)  # (allocated again here)
    assert ledger.learnt == {GDEV: {"g3"}, OTHER: {"a0"}}


@pytest.mark.parametrize("local", [False, True])
async def test_a_missing_or_unusable_file_ends_no_booking(tmp_path: Path, local: bool) -> None:
    """The follower's full read: no file, or a checksum that does not match, ends nothing
    (the look's names lacked the booking's); a file of the kubelet's that lists none does.
    `local`: the same where a file of served names only is looked at on the loop (a booking
    left to end sends its look off the loop all the same)."""
    ended: list[float] = []

    class Learnt:
        def unvouched(self, listed: Any, covered: Any) -> list[tuple[Owner, float]]:
            return [] if (GDEV, "g0") in listed else [(Owner(GDEV, "g0"), 0.0)]

        def vouch_began(self) -> float:
            return 1.0

        def end_unvouched(self, listed: Any, covered: Any, began: float) -> list[Owner]:
            ended.append(began)
            return [owner for owner, _ in self.unvouched(listed, covered)]

    async def book(served: frozenset[str]) -> bool:
        return True

    watcher = make_watcher(get_logger(), offload=DaemonThreads())
    watching = asyncio.create_task(watcher.run())
    follower = CheckpointFollower(
        str(tmp_path), DaemonThreads(), get_logger(), lambda: [OTHER], book, Learnt(),
        local=lambda _dirs: local,
    ).follow(watcher)  # fmt: skip
    try:
        await wait_until(lambda: follower.looks >= 1 and follower._task is None, timeout=10)
        assert not ended and follower.unbooked == 0  # (no file)
        (tmp_path / CHECKPOINT_FILE).write_text('{"Data":{"PodDeviceEntries":[]},"Checksum":1}')
        await follower.looked()
        await wait_until(lambda: follower._task is None, timeout=10)
        assert not ended and follower.unbooked == 0  # (its checksum does not match)
        write_go(tmp_path, entry_of(OTHER, "a0", "/dev/a0"))
        await follower.looked()
        await wait_until(lambda: follower.unbooked == 1, timeout=10)
        assert ended == [1.0] and follower.on_loop == 0
        write_go(tmp_path, entry_of(OTHER, "a1", "/dev/a0"))  # (nothing left to end)
        await follower.looked()
        assert follower.on_loop == int(local)
    finally:
        follower.cancel()
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


@contextlib.asynccontextmanager
async def followed(directory: Path, book: BookOthers) -> AsyncIterator[CheckpointFollower]:
    """A follower of the checkpoint in `directory`, serving OTHER, through a running inotify
    watcher."""
    watcher = make_watcher(get_logger(), offload=DaemonThreads())
    watching = asyncio.create_task(watcher.run())
    follower = CheckpointFollower(
        str(directory), DaemonThreads(), get_logger(), lambda: [OTHER], book
    ).follow(watcher)
    try:
        yield follower
    finally:
        follower.cancel()
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


def slowed_looks(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The test seam: every look of the follower takes `seconds` longer (its thread)."""
    look = checkpoint_follow.others_entries

    def slow(path: str, served: frozenset[str]) -> Any:
        time.sleep(seconds)
        return look(path, served)

    monkeypatch.setattr(checkpoint_follow, "others_entries", slow)


async def test_the_next_admission_after_another_plugins_waits_for_the_look(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hostile23 F1 made deterministic (the follower's look slowed by 0.4 s): GDP hands g0
    to p1, the kubelet writes its checkpoint before p1's admission returns, then sends
    kdp-host p2's Allocate at once. It waits for the look and is refused (before: answered
    g0 while p1 was active, every run with the slowed look, 2-4 rounds of 8 without)."""
    slowed_looks(monkeypatch, 0.4)
    async with gdp_beside(real_kubelet_factory, start_host, short_dir) as (kubelet, running):
        follower = follower_of(running)
        await wait_until(lambda: follower._task is None, timeout=10)
        bookings = follower.bookings
        p1 = await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1})
        assert p1["error"] == "", p1
        p2 = await kubelet.acall(kubelet.allocate, "p2", {OTHER: 1})
        assert p2["error"] and not p2["device_ids"], f"g0 in two live pods: {p2}"
        assert follower.bookings > bookings


async def test_an_allocate_waits_for_the_look_at_a_write_and_no_longer_than_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`looked`: nothing written since the last look: no look; a write heard: True once
    its look booked what it showed; a look that outlasts the bound: False."""
    booked: list[frozenset[str]] = []

    async def book(served: frozenset[str]) -> bool:
        booked.append(served)
        return True

    write_go(tmp_path, entry_of(OTHER, "a0", "/a"))
    async with followed(tmp_path, book) as follower:
        assert await follower.looked()
        looks = follower.looks
        assert await follower.looked()
        assert follower.looks == looks, "nothing written: no look"
        slowed_looks(monkeypatch, 0.3)
        write_go(tmp_path, entry_of(GDEV, "g0", "/dev/g0"))
        assert await follower.looked()  # (the event unread, or read and its look running)
        assert booked, "answered before the write's entry was booked"
        write_go(tmp_path, entry_of(GDEV, "g1", "/dev/g1"))
        assert not await follower.looked(bound=0.05)
        assert await follower.looked()
        assert len(booked) == 2


async def test_the_hosts_own_admissions_cost_no_booking_read(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """Through the real kubelet: each admission of kdp-host's own resource rewrites the
    checkpoint; the follower looks at each write (coalesced) and reads none to book."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    pattern = nodes(short_dir, "dev", "a0", "a1", "a2", "a3")
    running = await start_host(config_text(kubelet, short_dir, (OTHER, pattern)))
    await kubelet.await_for(healthy_count(OTHER, 4), what="kdp-host serves a0-a3")
    follower = follower_of(running)
    bookings = follower.bookings
    for pod in ("p1", "p2", "p3"):
        assert (await kubelet.acall(kubelet.allocate, pod, {OTHER: 1}))["error"] == ""
    looks = follower.looks
    await wait_until(lambda: follower.looks > looks or follower._task is None, timeout=10)
    assert follower.bookings == bookings
    assert follower.on_loop >= 1, "its own admissions' writes are looked at on the loop"


def test_the_names_alone_tell_a_file_of_served_entries_without_parsing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / CHECKPOINT_FILE)
    assert others_entries(path, frozenset({OTHER})) == frozenset()  # (no file)
    write_go(tmp_path, entry_of(OTHER, "a0", "/dev/a0"), entry_of(OTHER, "a1", "/dev/a1"))
    monkeypatch.setattr(json, "loads", lambda *_: pytest.fail("parsed"))
    assert others_entries(path, frozenset({OTHER})) == frozenset()
    monkeypatch.undo()
    assert len(others_entries(path, frozenset()) or ()) == 2  # (no name served)
    assert len(others_entries(path, frozenset({"example.com/oth"})) or ()) == 2  # (a prefix)
    write_go(tmp_path, entry_of(OTHER, "a0", "/dev/a0"), entry_of(GDEV, "g", "/dev/g0"))
    [entry] = others_entries(path, frozenset({OTHER})) or [None]
    assert entry is not None and json.loads(entry)["ResourceName"] == GDEV
    broken = json.dumps({"Data": {"PodDeviceEntries": [{"ResourceName": GDEV}, 7]}})
    (tmp_path / CHECKPOINT_FILE).write_text(broken)
    assert others_entries(path, frozenset({OTHER})) is None  # (the booking read says why)


def test_an_entry_is_cut_out_of_the_file_or_the_file_is_parsed(tmp_path: Path) -> None:
    """Other names' entries are cut out of the text as written (the first, one between,
    the last); a device ID holding an entry boundary cannot be cut: the file is parsed."""
    path = str(tmp_path / CHECKPOINT_FILE)
    entries = [entry_of(GDEV, "g0", "/g0"), entry_of(OTHER, "a", "/a"), entry_of(GDEV, "g1", "/g1")]
    for order in (entries, entries[::-1], [entries[1], entries[0], entries[1]]):
        write_go(tmp_path, *order)
        found = others_entries(path, frozenset({OTHER})) or frozenset()
        want = {e["DeviceIDs"]["-1"][0] for e in order if e["ResourceName"] == GDEV}
        assert {json.loads(text)["DeviceIDs"]["-1"][0] for text in found} == want
        assert all(text.startswith(b"{") and b'"PodUID":' in text for text in found)
    many = [entry_of(GDEV if i % 3 else OTHER, f"g{i}", f"/g{i}") for i in range(60)]
    write_go(tmp_path, *many)  # (the list's end found once for all of them: issue 19)
    found = others_entries(path, frozenset({OTHER})) or frozenset()
    assert sorted(json.loads(text)["DeviceIDs"]["-1"][0] for text in found) == sorted(
        f"g{i}" for i in range(60) if i % 3
    )
    odd = entry_of(GDEV, "g},{x", "/g2")
    write_go(tmp_path, entries[1], odd, entries[1])
    [text] = others_entries(path, frozenset({OTHER})) or [b""]
    assert json.loads(text)["DeviceIDs"] == {"-1": ["g},{x"]}


def test_an_escaped_name_is_parsed_not_scanned(tmp_path: Path) -> None:
    """A file with an escape (not what Go writes for these names) is parsed: a scan for the
    literal key could miss `"Resource\\u004eame"`."""
    path = tmp_path / CHECKPOINT_FILE
    entry = {"PodUID": "u", "ContainerName": "c", "ResourceName": GDEV, "DeviceIDs": None}
    text = json.dumps({"Data": {"PodDeviceEntries": [entry]}, "Checksum": 1})
    path.write_text(text.replace('"ResourceName"', '"Resource\\u004eame"'))
    assert len(others_entries(str(path), frozenset({OTHER})) or ()) == 1


async def test_writes_are_coalesced_and_an_entry_seen_is_not_booked_again(
    tmp_path: Path,
) -> None:
    """Many writes during a booking read make one more look, not one each; a write that
    only drops another name's entry, or only changes served entries, reads nothing."""
    booked: list[frozenset[str]] = []
    gate = asyncio.Event()

    async def book(served: frozenset[str]) -> bool:
        booked.append(served)
        await gate.wait()
        return True

    write_go(tmp_path, entry_of(GDEV, "g0", "/dev/g0"))
    async with followed(tmp_path, book) as follower:
        await wait_until(lambda: len(booked) == 1, timeout=10)
        for n in range(1, 6):  # (written while the booking read runs)
            write_go(tmp_path, entry_of(GDEV, "g0", "/dev/g0"), entry_of(GDEV, f"g{n}", "/x"))
        await wait_until(lambda: follower._dirty, timeout=10)
        gate.set()
        await wait_until(lambda: len(booked) == 2 and follower._task is None, timeout=10)
        assert follower.looks <= 3, "the five writes were looked at once more (or twice)"
        assert booked[0] == frozenset({OTHER})
        write_go(tmp_path, entry_of(GDEV, "g0", "/dev/g0"), entry_of(OTHER, "a0", "/a"))
        looks = follower.looks
        await wait_until(lambda: follower.looks > looks and follower._task is None, timeout=10)
        assert len(booked) == 2, "g5 dropped, a0 served: nothing new to book"


class CountedOffload(DaemonThreads):
    """The offload, counting the calls sent off the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def run(self, function: Any) -> Any:
        self.calls += 1
        return await super().run(function)


async def test_a_write_of_served_names_only_is_looked_at_on_the_loop(tmp_path: Path) -> None:
    """Issue 19: where the directory is local, a small file holding only served names'
    entries (the kubelet's own write after this host's admission) is looked at on the loop
    when the watcher tells the write: no thread hop, and an Allocate after it waits for
    nothing. Another name's entry, a file past `ON_LOOP_BYTES` and a directory that is not
    local are looked at off the loop, as before, and what they show is booked first."""
    booked: list[frozenset[str]] = []
    local = [True]

    async def book(served: frozenset[str]) -> bool:
        booked.append(served)
        return True

    offload = CountedOffload()
    watcher = make_watcher(get_logger(), offload=DaemonThreads())
    watching = asyncio.create_task(watcher.run())
    follower = CheckpointFollower(
        str(tmp_path), offload, get_logger(), lambda: [OTHER], book, local=lambda _dirs: local[0]
    )
    write_go(tmp_path, entry_of(OTHER, "a0", "/a"))
    try:
        follower.follow(watcher)
        assert await follower.looked()
        assert follower.on_loop == 0, "the first look finds the directory's real path, off it"
        calls, looks = offload.calls, follower.looks
        for device in ("a1", "a2", "a3"):
            write_go(tmp_path, entry_of(OTHER, device, "/a"))
            await wait_until(lambda looks=looks: follower.looks > looks, timeout=10)
            looks = follower.looks
            assert follower._task is None, "no look left running"
            assert await follower.looked()
        assert (offload.calls, follower.on_loop, booked) == (calls, 3, [])
        write_go(tmp_path, entry_of(OTHER, "a4", "/a"), entry_of(GDEV, "g0", "/dev/g0"))
        assert await follower.looked()
        assert booked == [frozenset({OTHER})], "another name's entry: booked before an answer"
        assert offload.calls == calls + 1 and follower.on_loop == 3
        many = [entry_of(OTHER, f"a{i}", "/a") for i in range(150)]
        assert len(json.dumps(many)) > checkpoint_entries.ON_LOOP_BYTES
        write_go(tmp_path, *many)
        assert await follower.looked()
        assert offload.calls == calls + 2 and follower.on_loop == 3
        local[0] = False
        write_go(tmp_path, entry_of(OTHER, "a5", "/a"))
        assert await follower.looked()
        assert offload.calls == calls + 3 and follower.on_loop == 3
    finally:
        follower.cancel()
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
