"""A probe's output parsed an entry at a time, in bounded turns of the event loop, recalling
what the last output made (kdp_host/command_output.py, json_document.py, turns.py): a probe
printing 12,000 devices never holds the loop for long, and one that prints the same entries
again (or renames them on the same paths) makes no new objects for them."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.command_output import (
    ENTRIES_PER_TURN,
    ProbeOutputError,
    Recall,
    parse_in_turns,
    parse_json,
    parse_lines,
)
from kdp_host.devices import Device, DeviceNode

from .test_ownership_places import CountingOffload
from .test_ownership_turns import Beside

N = 1000


def listing(prefix: str, n: int = N) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "paths": [f"/dev/n{i}"]} for i in range(n)]


@pytest.mark.parametrize("fmt", ["json", "lines"])
async def test_a_long_output_is_parsed_in_bounded_turns_of_the_loop(fmt: str) -> None:
    if fmt == "json":
        output = json.dumps(listing("d")).encode()
    else:
        output = "".join(f"d{i} path=/dev/n{i}\n" for i in range(N)).encode()
    beside, offload = Beside(), CountingOffload()
    try:
        devices = await parse_in_turns(output, fmt, Recall(), offload)  # type: ignore[arg-type]
    finally:
        beside.stop()
    assert offload.calls == 0, "a valid output never leaves the loop"
    assert [d.id for d in devices] == [f"d{i}" for i in range(N)]
    assert devices[7] == Device("d7", nodes=(DeviceNode("/dev/n7", "/dev/n7"),))
    assert beside.turns >= N // ENTRIES_PER_TURN, "another task ran between the turns"


async def test_a_cancelled_parse_stops_at_its_turn() -> None:
    task = asyncio.get_running_loop().create_task(
        parse_in_turns(json.dumps(listing("d")).encode(), "json", Recall(), CountingOffload())
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_long_output_with_an_error_is_read_whole_off_the_loop() -> None:
    """The error is named as it always was (the whole document read: syntax first), and a
    long document is read whole in a worker thread, not on the loop."""
    offload = CountingOffload()
    bad = json.dumps([*listing("d"), {"id": "x", "numa": "many"}]) + "]"
    with pytest.raises(ProbeOutputError, match="invalid JSON: Extra data"):
        await parse_in_turns(bad.encode(), "json", Recall(), offload)
    assert offload.calls == 1
    with pytest.raises(ProbeOutputError, match="invalid JSON: Extra data"):
        await parse_in_turns(b'[{"id": "a"}]]', "json", Recall(), offload)
    assert offload.calls == 1, "a short one is read on the loop"


async def test_an_entry_too_large_for_a_turn_is_read_off_the_loop() -> None:
    """One entry of ~1 MiB (a huge env) would hold the loop for its whole check: the output
    is read whole in a worker thread instead, with the same devices."""
    offload = CountingOffload()
    env = {f"VAR_{i}": "x" * 20 for i in range(30_000)}
    output = json.dumps([{"id": "big", "env": env}, *listing("d", 3)]).encode()
    devices = await parse_in_turns(output, "json", Recall(), offload)
    assert offload.calls == 1
    assert [d.id for d in devices] == ["big", "d0", "d1", "d2"]
    assert devices[0].env == env


async def test_a_line_too_long_for_a_turn_is_parsed_off_the_loop() -> None:
    offload = CountingOffload()
    paths = " ".join(f"path=/dev/x{i}" for i in range(2000))
    output = f"a\nbig {paths}\nb\n".encode()
    devices = await parse_in_turns(output, "lines", Recall(), offload)
    assert offload.calls == 1
    assert [d.id for d in devices] == ["a", "big", "b"] and len(devices[1].nodes) == 2000


@pytest.mark.parametrize("fmt", ["json", "lines"])
def test_a_device_with_many_paths_is_checked_in_linear_time(fmt: str) -> None:
    """Each path's container path was compared with every one before it: a 1 MiB output of
    one device with ~70,000 paths took minutes of CPU (the test's timeout catches that)."""
    n = 60_000
    if fmt == "json":
        devices = parse_json(json.dumps([{"id": "a", "paths": [f"/d/{i}" for i in range(n)]}]))
    else:
        devices = parse_lines("a " + " ".join(f"path=/d/{i}" for i in range(n)))
    assert len(devices[0].nodes) == n
    twice = [{"id": "a", "paths": ["/d/1", "/e/1:/d/1"]}]
    with pytest.raises(ProbeOutputError, match="container path '/d/1' given twice"):
        parse_json(json.dumps(twice))


def test_the_same_entries_again_are_the_same_objects() -> None:
    """What compares lists downstream (the ownership index, the table, ListAndWatch) sees an
    entry printed again as unchanged by identity."""
    recall = Recall()
    first = parse_json(json.dumps(listing("d")), recall)
    again = parse_json(f'{{"devices":\n  {json.dumps(listing("d"))}\n}}', recall)
    assert all(a is b for a, b in zip(first, again, strict=True))
    lines = "a path=/dev/a\nb numa=1\n"
    assert all(
        a is b for a, b in zip(parse_lines(lines, recall), parse_lines(lines, recall), strict=True)
    )


def test_a_rename_on_the_same_paths_keeps_the_nodes() -> None:
    recall = Recall()
    first = parse_json(json.dumps(listing("d")), recall)
    renamed = parse_json(json.dumps(listing("e")), recall)
    assert [d.id for d in renamed] == [f"e{i}" for i in range(N)]
    assert all(a.nodes is b.nodes for a, b in zip(first, renamed, strict=True))


def test_recall_holds_only_what_the_last_output_made() -> None:
    recall = Recall()
    first = parse_json(json.dumps(listing("d", 3)), recall)
    parse_json(json.dumps(listing("e", 3)), recall)
    back = parse_json(json.dumps(listing("d", 3)), recall)
    assert back == first and not any(a is b for a, b in zip(first, back, strict=True))


def test_an_output_that_fails_leaves_recall_as_the_last_good_one() -> None:
    recall = Recall()
    first = parse_json(json.dumps(listing("d", 3)), recall)
    bad = [*listing("d", 3), {"id": "x", "numa": "many"}]
    with pytest.raises(ProbeOutputError, match=r"^\[3\]: numa must be an integer"):
        parse_json(json.dumps(bad), recall)
    with pytest.raises(ProbeOutputError, match="already given"):
        parse_json(json.dumps(listing("d", 3) + listing("d", 1)), recall)
    again = parse_json(json.dumps(listing("d", 3)), recall)
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_the_entries_of_a_long_list_never_live_all_at_once() -> None:
    """Decoded one at a time, the entries die young: while a probe's 12,000 devices are
    renamed on their paths, the collector's oldest generation gains about the new devices
    and nothing else (the whole document's objects, all alive until its end, were moved
    there before: a full collection of the whole heap followed every few such lists)."""
    n = 12_000
    recall = Recall()
    parse_json(json.dumps(listing("d", n)), recall)
    renamed = json.dumps(listing("e", n))
    gc.collect()
    base = len(gc.get_objects(generation=2))
    peak = base

    def measure(phase: str, info: dict[str, int]) -> None:
        nonlocal peak
        if phase == "stop" and info["generation"] == 1:
            peak = max(peak, len(gc.get_objects(generation=2)))

    gc.callbacks.append(measure)
    try:
        devices = parse_json(renamed, recall)
    finally:
        gc.callbacks.remove(measure)
    assert len(devices) == n
    assert peak > base, "the collector ran meanwhile"
    assert peak - base < 1.2 * n, "little more than one object per device (the Device)"


_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n", "  \n  "])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 50), max_size=8, unique=True),
    st.booleans(),
    _SPACE,
    _SPACE,
    _SPACE,
)
def test_any_layout_of_a_list_reads_as_the_compact_one(
    numbers: list[int], wrapped: bool, a: str, b: str, c: str
) -> None:
    entries = [json.dumps({"id": f"d{n}", "paths": [f"/dev/n{n}"]}) for n in numbers]
    body = f"{a}[{b}" + f"{b},{c}".join(entries) + f"{c}]{a}"
    document = f'{c}{{{a}"devices"{b}:{c}{body}}}{a}' if wrapped else body
    assert parse_json(document) == parse_json(json.dumps([json.loads(e) for e in entries]))


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ('[{"id": "a"}] x', "invalid JSON: Extra data"),
        ('[{"id": "a"},]', "invalid JSON: Expecting value"),
        ('[{"id": "a"} {"id": "b"}]', "invalid JSON: Expecting ',' delimiter"),
        ('{"devices": [{"id": "a"}], "more": 1}', "got an object with keys ['devices', 'more']"),
        ('{"devices": [], "devices": []}', "key 'devices' given twice"),
        ('{"devices": {"id": "a"}}', "devices: expected a list of devices, got an object"),
        ('[{"id": "a", "id": "a"}]', "key 'id' given twice"),
        ('\ufeff[{"id": "a"}]', "invalid JSON: Unexpected UTF-8 BOM"),
        ('[{"id": "a"}, 7]', "[1]: device must be an object, got a number"),
        ("[" + "[" * 100_000, "invalid JSON"),
    ],
)
def test_a_list_read_an_entry_at_a_time_errs_as_the_whole_document(
    document: str, fragment: str
) -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_json(document)
    assert fragment in str(caught.value)
