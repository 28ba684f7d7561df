"""A path whose node went (issue 17, the property test's random seeds): a device listing it
after it went claims it by text, and that text claim clashes with the claim the path was
made under while that claim is held (a file's inode, a device node's number), both ways
round, so one path is never in two advertised devices. Such a device is advertised only
Unhealthy (a node that vanished, for its grace period: `gone`): a healthy one listing a path
where nothing is is never advertised (hostile9 H5, `identity.UNSEEN`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Unresolvable
from kdp_host.testing import ManualWatcher

from .fake_nodes import FakeNodes
from .test_ownership import (
    R1,
    R2,
    R3,
    Host,
    build_tree,
    check_advertised,
    glob_list,
    node,
    run_script,
)
from .test_ownership_identity import pci


def gone(path: str) -> Device:
    """A device listed Unhealthy with its node that went (a driver's grace period)."""
    return Device(Path(path).name, healthy=False, nodes=(DeviceNode(path, path),))


async def test_a_hard_link_into_a_directory_another_resource_mounts_is_held_there(
    tmp_path: Path,
) -> None:
    """The property test's example: a/l0 is a hard link of nodes/n1. R1's s0 mounts a/;
    R2 lists n1 (outside a/), then its glob a/* finds the same file as l0, inside what s0
    mounts: l0 is held, though the file's claim was made at nodes/n1 (it was advertised as
    l0 beside s0: one file in two pods); and R1 then listing nodes/n* never takes n1 from
    R2 (the claim lingers with it)."""
    build_tree(tmp_path, [("a", 1, True)])
    script = [
        ("publish", 0, ("shell", [(0, 0, 5)]), 0),
        ("publish", 1, ("glob", ["nodes/n*"]), 0),
        ("publish", 1, ("glob", ["a/*"]), 0),
        ("publish", 0, ("glob", ["nodes/n*"]), 0),
    ]
    await run_script(tmp_path, script, 200)  # (checked at every step)


async def test_the_property_tests_minimal_example_holds_the_vanished_node(
    tmp_path: Path,
) -> None:
    """links=[]; R1 globs nodes/n*; R2 globs nodes/n[0-2], its list made before n0 is
    removed and admitted (in turns of one device) after: n0 stays R1's."""
    build_tree(tmp_path, [])
    host = Host(chunk=1)
    host.attach(R1)
    host.attach(R2)
    live = {R1, R2}
    first = await glob_list(tmp_path, ("nodes/n*",))
    host.index.publish(R1, first)
    await host.index.quiet()
    listed = await glob_list(tmp_path, ("nodes/n[0-2]",))
    (tmp_path / "nodes" / "n0").unlink()
    host.index.publish(R2, listed)
    await host.index.quiet()
    check_advertised(host, live, ({}, {}))
    assert host.ids(R1) == ["n0", "n1", "n2", "n3", "n4"] and host.ids(R2) == []
    assert host.held(R2) == 2  # (n1, n2; n0, where nothing is now, is held `unsafe_mount`)
    # R1's next list has no n0: its claim of the file that went lingers no longer, but
    # R2's device (its list still names the path, where nothing is) is never advertised
    host.index.publish(R1, await glob_list(tmp_path, ("nodes/n*",)))
    host.index.publish(R2, listed)
    await host.index.quiet()
    check_advertised(host, live, ({}, {}))
    assert host.ids(R1) == ["n1", "n2", "n3", "n4"] and host.ids(R2) == []


def test_a_file_that_went_clashes_with_the_inode_it_was_claimed_under(tmp_path: Path) -> None:
    """Reached through a link or by its own path: the text of either names the claim."""
    (tmp_path / "n0").touch()
    (tmp_path / "l0").symlink_to(tmp_path / "n0")
    host = Host()
    host.publish(R1, node(f"{tmp_path}/l0"))
    (tmp_path / "n0").unlink()
    (tmp_path / "l0").unlink()
    host.publish(R2, gone(f"{tmp_path}/n0"))
    host.publish(R3, gone(f"{tmp_path}/./l0"))
    assert host.ids(R1) == ["l0"] and host.ids(R2) == [] and host.ids(R3) == []
    host.publish(R1)
    host.publish(R2, gone(f"{tmp_path}/n0"))
    host.publish(R3, gone(f"{tmp_path}/./l0"))
    assert host.ids(R2) == ["n0"] and host.ids(R3) == ["l0"]


def test_a_device_node_that_went_clashes_with_its_device_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same hole for a character device ('c' key): the node is removed while its
    device is advertised; another resource's list that still names the path is held."""
    nodes = FakeNodes({"/dev/fpga0": ("c", 0xF000)})
    host = Host(nodes)
    host.publish(R1, node("/dev/fpga0"))
    del nodes.nodes["/dev/fpga0"]
    with caplog.at_level(logging.WARNING):
        host.publish(R2, gone("/dev/fpga0"))
    assert host.ids(R1) == ["fpga0"] and host.ids(R2) == []
    [record] = [r for r in caplog.records if r.getMessage() == "device_held"]
    fields = record.kdp_fields  # type: ignore[attr-defined]
    assert (fields["resource"], fields["path"]) == (R2, "/dev/fpga0")
    assert (fields["owner_resource"], fields["owner_device"]) == (R1, "fpga0")
    # a node with another number appears there: a claim of its own (the old one lingers
    # with R1 only while its path reaches it)
    nodes.nodes["/dev/fpga0"] = ("c", 0xF001)
    host.publish(R1)
    host.publish(R2, gone("/dev/fpga0"))  # (its cached claim: no watcher here)
    assert host.ids(R2) == ["fpga0"]


def test_a_shared_node_that_went_still_clashes_with_an_exclusive_claim_of_its_path() -> None:
    nodes = FakeNodes({"/dev/vfio/vfio": ("c", 10), "/dev/vfio/1": ("c", 11)})
    host = Host(nodes)
    vfio = DeviceNode("/dev/vfio/vfio", "/dev/vfio/vfio", shared=True)
    host.publish(R1, Device("g1", nodes=(DeviceNode("/dev/vfio/1", "/dev/vfio/1"), vfio)))
    del nodes.nodes["/dev/vfio/vfio"]
    host.publish(R2, gone("/dev/vfio/vfio"))
    host.publish(R3, Device("ctl", healthy=False, nodes=(vfio,)))
    assert host.ids(R1) == ["g1"] and host.ids(R2) == [] and host.ids(R3) == ["ctl"]


def test_a_node_that_appears_where_another_device_claims_nothing_yet_stays_with_it() -> None:
    """The other way round: a device claims a path where nothing is (by its text); a node
    appears there; another resource listing the node is held (the first device's
    container gets whatever is at the path)."""
    nodes = FakeNodes({})
    host = Host(nodes)
    host.publish(R1, gone("/dev/fpga0"))
    nodes.nodes["/dev/fpga0"] = ("c", 0xF000)
    host.publish(R2, node("/dev/fpga0"))
    assert host.ids(R1) == ["fpga0"] and host.ids(R2) == []
    # the first device lets go of it (a claim by text does not linger): the node is the
    # other's
    host.publish(R1)
    host.publish(R2, node("/dev/fpga0"))
    assert host.ids(R2) == ["fpga0"]


def test_a_link_to_a_real_device_node_that_went_clashes_with_the_nodes_number(
    tmp_path: Path,
) -> None:
    """The same with a real character device (no root: a link to /dev/null): the link is
    removed while its device is advertised; a list that still names it is held."""
    link = tmp_path / "null0"
    link.symlink_to("/dev/null")
    host = Host()
    host.publish(R1, node(str(link)))
    link.unlink()
    host.publish(R2, gone(str(link)))
    assert host.ids(R1) == ["null0"] and host.ids(R2) == []
    host.publish(R1)
    host.publish(R2, gone(str(link)))
    assert host.ids(R2) == ["null0"]


async def test_an_allocate_of_a_path_claimed_by_text_that_reaches_a_node_now_is_refused(
    tmp_path: Path,
) -> None:
    """A device claims a path where nothing is (by its text); a link to another device's
    file appears there, and an Allocate comes before the watcher's news: it is refused
    (the path no longer reaches what was claimed for it: nothing), not handed the other
    device's file, and the path is claimed anew, which holds the device."""
    (tmp_path / "n1").touch()
    n1, p0 = str(tmp_path / "n1"), str(tmp_path / "p0")
    index = OwnershipIndex()
    index.watch(ManualWatcher())
    tables = {R1: DeviceTable(), R2: DeviceTable()}
    for name, table in tables.items():
        index.attach(name, table.publish, get_logger().bind(resource=name))
    index.publish(R2, {"n1": node(n1)})
    index.publish(R1, {"p0": gone(p0)})
    await index.quiet()
    assert [d.id for d in tables[R1].snapshot.devices] == ["p0"]
    (tmp_path / "p0").symlink_to(n1)
    with pytest.raises(Unresolvable, match="no longer reaches what was claimed"):
        await index.hand_out(R1, ["p0"], [p0])
    await asyncio.sleep(0)
    await index.quiet()
    assert [d.id for d in tables[R1].snapshot.devices] == []
    assert [d.id for d in tables[R2].snapshot.devices] == ["n1"]


def test_a_sysfs_device_whose_directory_went_clashes_with_its_directorys_inode(
    tmp_path: Path,
) -> None:
    """The same for a sysfs device's claim of itself: by its directory's inode, by its text
    once the directory is gone; another resource's list that still has the device is held
    while the first advertises it."""
    directory = tmp_path / "0000:01:00.0"
    directory.mkdir()
    host = Host()
    host.publish(R1, pci("0000:01:00.0", str(directory)))
    directory.rmdir()
    host.publish(R2, pci("0000:01:00.0", str(directory)))
    assert host.ids(R1) == ["0000:01:00.0"] and host.ids(R2) == []
    host.publish(R1)
    host.publish(R2, pci("0000:01:00.0", str(directory)))
    assert host.ids(R2) == ["0000:01:00.0"]
