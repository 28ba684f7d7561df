"""A node a pod holds through a shared claim (issue 17, hostile19 F5): a booking holds its
device's shared claims too (`Booking.shared`), so while it lives no device claiming that
node alone is advertised, whatever became of the listing of the device that shared it (the
probe stopped listing it, the card of a glob group went, a reload removed the resource);
other devices may still share it; once the booking ends the exclusive claimant wins. Kept
in `ownership.json` (`shared`), read back at a restart and from another host's entries."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.holdings import Holder, Holdings
from kdp_host.kubelet_checkpoint import Handed as CheckpointHanded
from kdp_host.kubelet_checkpoint import HandedClaims
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Owner
from kdp_host.ownership_document import OWNERSHIP_FILE, SavedBooking, checked_entry, read_saved

from .fake_nodes import FakeNodes
from .test_ownership import R1, R2, R3, Host, dev, kept_file, node, restarted

X0 = "/dev/a/x0"
POD = (Holder("ns", "pA", "c", 0.0),)


def sharer(device_id: str, *extra: str) -> Device:
    """A device that shares X0 (a probe's `shared: true`, a glob group's member without
    `{key}`), with nodes of its own besides."""
    nodes = (*(DeviceNode(p, p) for p in extra), DeviceNode(X0, "/dev/x", shared=True))
    return Device(device_id, nodes=nodes)


def fresh(now: list[float]) -> tuple[Host, FakeNodes]:
    nodes = FakeNodes({X0: ("c", 240 << 8), "/dev/g/1_u": ("c", 241 << 8 | 1)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    return host, nodes


async def test_a_shared_node_a_pod_holds_is_not_handed_out_alone_once_its_device_goes() -> None:
    now = [100.0]
    host, _ = fresh(now)
    host.publish(R1, sharer("p1"))
    await host.index.book(R1, ["p1"])
    host.publish(R2, node(X0))
    assert host.ids(R1) == ["p1"] and host.ids(R2) == []  # (held `shared`)
    host.publish(R1)  # the probe lists nothing now; pA still has the node
    host.publish(R2, node(X0))
    assert host.ids(R2) == [], "pA's container has the node: no pod gets it alone"
    assert host.index.held_now(R2)["x0"].reason == "booked"
    assert host.index.held_now(R2)["x0"].owner == Owner(R1, "p1")
    # another device may share it all the same, and the exclusive one waits for both
    host.publish(R3, sharer("q1"))
    assert host.ids(R3) == ["q1"] and host.ids(R2) == []
    host.publish(R3)
    # an answer asked for too soon after the booking proves nothing
    host.index.holdings(Holdings(now[0] + 1, 0.0, {}))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"p1": POD}}))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))  # pA ended
    assert host.ids(R2) == ["x0"]


async def test_a_group_whose_own_node_went_keeps_its_shared_member_for_the_pod() -> None:
    """The glob group variant: pA holds group 1 (1_u and the key-less x0); the card goes
    (1_u unplugged, group 1 no longer listed): x0 is not another resource's to hand out."""
    now = [100.0]
    host, nodes = fresh(now)
    host.publish(R1, sharer("1", "/dev/g/1_u"))
    await host.index.book(R1, ["1"])
    del nodes.nodes["/dev/g/1_u"]
    host.publish(R1)
    host.publish(R2, node(X0))
    assert host.ids(R2) == []
    # the same while the resource that shared it is removed by a reload
    host.index.retire(R1)
    host.publish(R2, node(X0))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert host.ids(R2) == ["x0"]


async def test_a_shared_booking_does_not_hold_its_own_device_nor_other_sharers() -> None:
    now = [100.0]
    host, _ = fresh(now)
    host.publish(R1, sharer("p1"), sharer("p2"))
    await host.index.book(R1, ["p1"])
    host.publish(R1, sharer("p1"), sharer("p2"))
    assert host.ids(R1) == ["p1", "p2"]
    host.publish(R1, sharer("p2"))
    host.publish(R1, sharer("p1"), sharer("p2"))  # listed again: shared again at once
    assert host.ids(R1) == ["p1", "p2"]


async def test_a_directory_a_pod_holds_shared_holds_what_is_below_it() -> None:
    now = [100.0]
    nodes = FakeNodes({"/fw": ("d", 5), "/fw/ctl": ("c", 9)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    mount = DeviceMount("/fw", "/fw", shared=True)
    host.publish(R1, Device("m1", mounts=(mount,)))
    await host.index.book(R1, ["m1"])
    host.publish(R1)
    host.publish(R2, node("/fw/ctl"))
    assert host.ids(R2) == []
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert host.ids(R2) == ["ctl"]


async def test_a_shared_claim_is_kept_in_the_file_and_holds_after_a_restart(
    tmp_path: Path,
) -> None:
    nodes = FakeNodes({X0: ("c", 240 << 8)})
    first, _ = restarted(tmp_path, nodes)
    first.publish(R1, sharer("p1"))
    await first.index.book(R1, ["p1"])
    [entry] = json.loads((tmp_path / OWNERSHIP_FILE).read_text())["bookings"]
    assert entry["claims"] == [] and [c["path"] for c in entry["shared"]] == [X0]
    second, _ = restarted(tmp_path, nodes)
    second.publish(R2, node(X0))  # the probe lists nothing after the restart
    assert second.ids(R2) == []
    second.publish(R1, sharer("p1"))
    assert second.ids(R1) == ["p1"]


def test_an_entry_without_shared_claims_reads_as_before() -> None:
    """An older version's entry (no `shared`) reads with none; one with them reads them."""
    entry = {"resource": R1, "id": "a", "device": "a", "claims": []}
    assert checked_entry(entry).shared == ()
    claim = {"kind": "c", "key": 7, "path": X0, "real": X0}
    assert checked_entry({**entry, "shared": [claim]}).shared == ((("c", 7), X0, X0),)
    assert read_saved({"bookings": [entry]}) == [SavedBooking(Owner(R1, "a"), "a", (), ())]


async def test_another_hosts_shared_booking_holds_the_node(tmp_path: Path) -> None:
    nodes = FakeNodes({X0: ("c", 240 << 8), "/dev/b": ("c", 1)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=time.monotonic)
    host.index.keep_bookings_in(kept_file(tmp_path), None)
    host.publish(R2, node(X0), dev("b", "/dev/b"))
    assert host.ids(R2) == ["b", "x0"]
    shared = ((("c", 240 << 8), X0, X0),)
    other = SavedBooking(Owner(R1, "p1"), "p1", (), (), "peer", shared)
    await host.index.take_in([other], ["peer"])
    assert host.ids(R2) == ["b"], "the other host's pod has the node"
    await host.index.take_in([], ["peer"])
    assert host.ids(R2) == ["b", "x0"]


async def test_a_directory_above_a_node_a_pod_holds_shared_is_not_mounted_alone() -> None:
    now = [100.0]
    nodes = FakeNodes({"/fw": ("d", 5), "/fw/ctl": ("c", 9)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    host.publish(R1, Device("c1", nodes=(DeviceNode("/fw/ctl", "/ctl", shared=True),)))
    await host.index.book(R1, ["c1"])
    host.publish(R1)
    host.publish(R2, Device("fw", mounts=(DeviceMount("/fw", "/fw"),)))
    assert host.ids(R2) == [], "a mount of /fw would hand the pod's node out again"
    host.index.holdings(Holdings(now[0] + 60, 0.0, {}))
    assert host.ids(R2) == ["fw"]


async def test_the_checkpoint_adds_no_place_for_a_node_a_booking_holds_shared() -> None:
    """At start the kubelet's checkpoint lists what the pod was handed (x0): a booking that
    holds it shared already gains no place for it (a place is held as a booked claim: an
    answer of another ID handing it out as a place is refused, as none is while it is
    shared)."""
    now = [100.0]
    host, nodes = fresh(now)
    nodes.nodes["/dev/b"] = ("c", 1)
    host.publish(R1, sharer("p1"))
    host.publish(R2, dev("b", "/dev/b"))
    await host.index.book(R1, ["p1"])
    claims = ((("c", 240 << 8), X0, X0),)
    gained = host.index.take_handed([HandedClaims(CheckpointHanded(R1, ("p1",), (X0,)), claims)])
    assert gained == []
    await host.index.book(R2, ["b"], {"b": [X0]})  # (its allocate.mounts: not refused)
