"""A listed device's node that went (its grace period's Unhealthy entry, or a probe that still
lists it): its identity stays its claim wherever that identity is seen again, until the
device is dropped or found again (`ownership_lingering._device_missing`; issue 17, hostile26
N2: the claim was released as gone while the node was somewhere nothing follows, and the
node came back elsewhere as no device's)."""

from __future__ import annotations

import asyncio

import pytest

from kdp_host.devices import Device
from kdp_host.holdings import Holdings
from kdp_host.ownership import OwnershipIndex
from kdp_host.testing import ManualWatcher

from .fake_nodes import FakeNodes
from .test_ownership import R1, R2, Host, node
from .test_ownership_vanished import gone

FPGA = "/dev/fpga0"
ELSEWHERE = "/srv/fw/fpga0"
"""Where the node is seen again (through a place nothing follows: not seen on the way)."""


class Missing:
    """R1's fpga0 (number 5) advertised; its node went (the watcher says so); R1 lists
    `listed_again`; the node is seen again at ELSEWHERE, which R2 lists."""

    def __init__(self) -> None:
        self.now = 100.0
        self.nodes = FakeNodes({FPGA: ("c", 5)}, nothing=True)
        self.host = Host(self.nodes)
        self.host.index = OwnershipIndex(self.host.metrics, self.nodes, clock=lambda: self.now)
        self.watcher = ManualWatcher()
        self.host.index.watch(self.watcher)

    async def went(self, listed_again: Device) -> Host:
        self.host.publish(R1, node(FPGA))
        del self.nodes.nodes[FPGA]
        await self.changed()
        self.host.publish(R1, listed_again)
        self.nodes.nodes[ELSEWHERE] = ("c", 5)
        self.host.publish(R2, node(ELSEWHERE))
        return self.host

    async def changed(self) -> None:
        """The watcher's news of FPGA (its recheck runs once the burst is over)."""
        self.watcher.change("/dev", "fpga0")
        await asyncio.sleep(0)

    async def found_again(self, number: int) -> Host:
        """A node of `number` made at FPGA, which R1 lists; R2 lists ELSEWHERE again."""
        self.nodes.nodes[FPGA] = ("c", number)
        await self.changed()
        self.host.publish(R1, node(FPGA))
        self.host.publish(R2, node(ELSEWHERE))
        return self.host


@pytest.mark.parametrize(
    "listed_again",
    [gone(FPGA), Device("fpga0", nodes=node(FPGA).nodes)],
    ids=["grace_unhealthy", "probe_still_lists_it"],
)
async def test_a_missing_devices_number_stays_its_claim_wherever_seen_until_it_is_dropped(
    listed_again: Device,
) -> None:
    missing = Missing()
    host = await missing.went(listed_again)
    assert host.ids(R2) == [], "fpga0's number went to another device while fpga0 is listed"
    # PodResources: no pod holds fpga0, long after it went: the device is still listed
    host.index.holdings(Holdings(missing.now + 60, 0.0, {}))
    host.publish(R2, node(ELSEWHERE))
    assert host.ids(R2) == []
    # its grace ends (the device dropped): the number is no device's there now
    host.publish(R1)
    host.publish(R2, node(ELSEWHERE))
    assert host.ids(R2) == ["fpga0"]


async def test_a_missing_device_found_again_as_itself_takes_its_claim_back() -> None:
    missing = Missing()
    await missing.went(gone(FPGA))
    host = await missing.found_again(5)  # (udev makes its node again: the same number)
    assert host.ids(R1) == ["fpga0"] and host.ids(R2) == []


async def test_a_missing_device_found_again_as_another_node_lets_its_old_number_go() -> None:
    missing = Missing()
    await missing.went(gone(FPGA))
    host = await missing.found_again(6)  # (another number at its path: not as itself)
    assert host.ids(R1) == ["fpga0"] and host.ids(R2) == ["fpga0"]


async def test_a_missing_device_of_a_removed_resource_keeps_nothing_by_being_listed() -> None:
    """A reload removed R1 (`retire`): no list of it is current, the old rules apply."""
    host = await Missing().went(gone(FPGA))
    host.index.retire(R1)
    host.publish(R2, node(ELSEWHERE))
    assert host.ids(R2) == ["fpga0"]
