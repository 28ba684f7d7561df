"""What a start books from `handed-out.json` alone (issue 17, restartrec: `recorded_bookings`):
a use the record keeps that neither `ownership.json` nor the kubelet's checkpoint does (a
booking whose write stalled, a checkpoint a slow other plugin of the pod held back, and a
kill). Through the real kubelet: `test_booked_moves_down`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.files import DaemonThreads
from kdp_host.handed_entries import owed_all
from kdp_host.handed_out import HandedRecord
from kdp_host.identity import identity_of
from kdp_host.kubelet_checkpoint import Gained, HandedClaims
from kdp_host.logs import get_logger
from kdp_host.ownership_claims import Owner
from kdp_host.recorded_bookings import ANSWERED_WITHIN, book_recorded, unbooked_uses
from kdp_host.unbook import drop_bookings

FPGA = "vendor.example/fpga"
OTHER = "vendor.example/other"


def _record(dev: Path) -> HandedRecord:
    """fpga0 (a node and a mount) handed out as fpga0; fpga1 as fpga1 then owed (its use
    seen gone); other's o0 (a resource not served)."""
    record = HandedRecord(None)
    table = DeviceTable()
    node = DeviceNode(str(dev / "fpga0"), "/dev/fpga", "rw")
    mount = DeviceMount(str(dev / "fw"), "/fw", read_only=True)
    table.publish(
        [Device("fpga0", nodes=(node,), mounts=(mount,)), Device("fpga1", path=str(dev / "fpga1"))]
    )
    reached = {str(dev / "fpga0"): identity_of(os.stat(dev / "fpga0"))}
    record.hand_out(FPGA, table.snapshot, ["fpga0", "fpga1"], reached)
    record.change(FPGA, "fpga1", owed_all)
    other = DeviceTable()
    other.publish([Device("o0", path=str(dev / "o0"))])
    record.hand_out(OTHER, other.snapshot, ["o0"])
    return record


def _dev(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1", "o0", "fw"):
        (dev / name).touch()
    return dev


def test_only_unbooked_ids_of_served_uses_not_owed_are_taken(tmp_path: Path) -> None:
    dev = _dev(tmp_path)
    record = _record(dev)
    [(use, at)] = unbooked_uses(record, {FPGA}, {})
    assert (use.resource, use.ids, use.nodes) == (FPGA, ("fpga0",), 1)
    assert use.paths == (str(dev / "fpga0"), str(dev / "fw"))
    assert at == record.entry(FPGA, "fpga0").at  # type: ignore[union-attr]
    assert unbooked_uses(record, {FPGA}, {FPGA: {"fpga0"}}) == []  # (ownership.json, checkpoint)


class _Index:
    def __init__(self, booked: dict[str, set[str]]) -> None:
        self.booked = booked
        self.taken: list[HandedClaims] = []

    def handed_out(self) -> dict[str, set[str]]:
        return self.booked

    def take_handed(self, handed: Iterable[HandedClaims]) -> Gained:
        self.taken = list(handed)
        return [(Owner(h.handed.resource, i), h.claims) for h in self.taken for i in h.handed.ids]


async def test_a_renamed_node_is_booked_by_what_it_reached_and_where_it_was(tmp_path: Path) -> None:
    """fpga0 renamed fpga5 while kdp-host was down: the booking holds the node it reached
    when handed out (now at fpga5) and the path it was handed at (nothing there now)."""
    dev = _dev(tmp_path)
    record = _record(dev)
    was = identity_of(os.stat(dev / "fpga0"))
    (dev / "fpga0").rename(dev / "fpga5")
    index = _Index({})
    [booked] = await book_recorded(index, record, {FPGA}, DaemonThreads(), get_logger())
    assert (booked.resource, booked.ids) == (FPGA, ("fpga0",))
    [taken] = index.taken
    keys = {key for key, _, _ in taken.claims}
    assert was in keys and identity_of(os.stat(dev / "fw")) in keys
    assert str(dev / "fpga0") in {path for _, path, _ in taken.claims}
    assert ANSWERED_WITHIN == 15.0


async def test_unbook_drops_the_records_uses_of_the_ids_so_no_start_books_them(
    tmp_path: Path,
) -> None:
    """`kdp-host unbook` of fpga0 (PodResources off, the pod known gone): `handed-out.json`
    keeps its use no more, else the next start books it from the record alone again (the
    booking, with nothing to end it, would outlive the unbook); fpga1's use stays."""
    dev, state = _dev(tmp_path), tmp_path / "state"
    state.mkdir()
    record = HandedRecord(str(state), get_logger(), DaemonThreads())
    table = DeviceTable()
    table.publish(
        [Device("fpga0", path=str(dev / "fpga0")), Device("fpga1", path=str(dev / "fpga1"))]
    )
    record.hand_out(FPGA, table.snapshot, ["fpga0", "fpga1"])
    assert await record.written() is None
    assert await drop_bookings(str(state), FPGA, ["fpga0"]) == ["fpga0"]
    again = HandedRecord(str(state), get_logger(), DaemonThreads())
    again.load()
    assert [use.ids for use, _ in unbooked_uses(again, {FPGA}, {})] == [("fpga1",)]
    assert await drop_bookings(str(state), FPGA, ["fpga0"]) == []
