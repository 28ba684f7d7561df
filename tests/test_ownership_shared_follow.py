"""A tree a pod holds through a shared claim is followed like one it holds alone (issue 17,
hostile21 F1, F5).

A glob group's member without `{key}` (or a probe's mount with `shared: true`) is a
directory every pod of the resource gets. While pod A holds it mounted, what comes to be
below it afterwards reaches A: a node made there with another device's number (`mknod`), a
hard link of another device's node, a tree renamed in. Before, such a tree was not followed
(following it made a second sharer's Allocate compare the directory with itself): the other
device stayed advertised and went to a second pod (F1); the shared tree renamed (`mv`) into a
directory another device claims alone left that device advertised (F5). Now the tree is
followed where it is (its inode pinned); a device of another ID reachable below it is held
(`reason=booked`) and refused at Allocate while the booking lives, and a second sharer of
the same claim is still admitted and answered."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdp_host import (
    identity,
    ownership_canonical,
    ownership_claims,
    ownership_hand_out,
    ownership_reads,
)
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.holdings import Holdings
from kdp_host.ownership_shared import PlaceOwned
from kdp_host.testing import ManualWatcher

from .test_ownership_booked_trees import open_at
from .test_ownership_moves import R1, R2, Host, mounting, nodes


class _Numbers:
    """The identity seam (`identity_of`): a file named here is taken for a character node of
    a device number (a test makes no node: `mknod` needs CAP_MKNOD)."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[int, int], int] = {}
        self.real = identity.identity_of

    def __call__(self, st: os.stat_result) -> identity.Identity:
        number = self.numbers.get((st.st_dev, st.st_ino))
        return ("c", number) if number is not None else self.real(st)

    def node(self, path: Path, number: int) -> Path:
        """`path` made as a node of `number` (a fake `mknod`)."""
        path.write_text("")
        st = path.stat()
        self.numbers[(st.st_dev, st.st_ino)] = number
        return path


@pytest.fixture
def numbers(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Numbers]:
    seam = _Numbers()
    modules = (identity, ownership_claims, ownership_canonical, ownership_reads)
    for module in (*modules, ownership_hand_out):
        monkeypatch.setattr(module, "identity_of", seam, raising=False)
    yield seam


def sharer(device_id: str, own: Path, shared: Path) -> Device:
    """A glob group's device: its own node `own` and the key-less directory `shared`."""
    return Device(
        device_id,
        nodes=(DeviceNode(str(own), str(own)),),
        mounts=(DeviceMount(str(shared), "/fw", shared=True),),
    )


async def shared_held(tmp: Path, other: Path) -> tuple[Host, ManualWatcher, Path]:
    """Resource b's group: g1 (dev/1_u) and g2 (dev/2_u), both with the key-less directory
    fw; pod A holds g1 (booked). Resource a's device `other` is advertised, free."""
    fw, dev = tmp / "fw", tmp / "dev"
    fw.mkdir()
    (fw / "blob").write_text("")
    dev.mkdir(exist_ok=True)
    for name in ("1_u", "2_u"):
        (dev / name).write_text("")
    watcher = ManualWatcher()
    host = Host(watcher)
    await host.publish(R1, other_device(other))
    b = (sharer("g1", dev / "1_u", fw), sharer("g2", dev / "2_u", fw))
    await host.publish(R2, *b)
    await host.index.book(R2, ["g1"])
    await host.settled()
    assert (host.ids(R1), host.ids(R2)) == ([other.name], ["g1", "g2"])
    await a_second_sharer_is_answered(host, tmp)
    return host, watcher, fw


def other_device(path: Path) -> Device:
    return mounting(path.name, str(path)) if path.is_dir() else nodes(path.name, str(path))


async def a_second_sharer_is_answered(host: Host, tmp: Path) -> None:
    fw, own = str(tmp / "fw"), str(tmp / "dev" / "2_u")
    assert host.ids(R2) == ["g1", "g2"]
    assert await host.index.hand_out(R2, ["g2"], [own, fw]) == {own: own, fw: fw}


def booked_held(host: Host, resource: str, device_id: str) -> None:
    held = host.index.held_now(resource)[device_id]
    assert (held.reason, held.owner.resource, held.owner.device) == ("booked", R2, "g1")


@pytest.mark.parametrize("how", ["mknod", "link"])
async def test_a_node_made_in_a_shared_held_tree_holds_its_device(
    tmp_path: Path, numbers: _Numbers, how: str
) -> None:
    """F1: pod A holds fw through g1's shared claim; a node of n0's number is made in fw
    (`mknod`), or n0's node is hard-linked there (`ln`): A reaches n0. n0 is held while A's
    booking lives and its Allocate refused; g2 still shares fw."""
    (tmp_path / "dev").mkdir()
    n0 = tmp_path / "dev" / "n0"
    if how == "mknod":
        numbers.node(n0, 7 << 8)
    else:
        n0.write_text("")  # (a file: claimed by its inode)
    host, watcher, fw = await shared_held(tmp_path, n0)
    if how == "mknod":
        numbers.node(fw / "evil", 7 << 8)
    else:
        os.link(n0, fw / "evil")
    watcher.change(str(fw), "evil")
    await host.settled()
    assert host.ids(R1) == [], "the pod holding fw reaches n0"
    booked_held(host, R1, "n0")
    with pytest.raises(PlaceOwned):
        await host.index.hand_out(R1, ["n0"], [str(n0)])
    host.index.holdings(Holdings(1e9, 0.0, {}))  # pod A ended
    await host.settled()
    assert host.ids(R1) == ["n0"]


async def test_a_node_made_deep_in_a_shared_held_tree_holds_its_device(
    tmp_path: Path, numbers: _Numbers
) -> None:
    """F1 one level down, in a directory made after the booking."""
    (tmp_path / "dev").mkdir()
    n0 = numbers.node(tmp_path / "dev" / "n0", 7 << 8)
    host, watcher, fw = await shared_held(tmp_path, n0)
    (fw / "sub").mkdir()
    watcher.change(str(fw), "sub")
    await host.settled()
    numbers.node(fw / "sub" / "evil", 7 << 8)
    watcher.change(str(fw / "sub"), "evil")
    await host.settled()
    assert host.ids(R1) == []
    booked_held(host, R1, "n0")


async def test_a_directory_device_sharing_a_node_with_a_shared_held_tree_is_held(
    tmp_path: Path, numbers: _Numbers
) -> None:
    """F1 for a device that mounts a directory: a node of the number a node in its tree has
    is made in fw: a pod given the directory would reach what A does."""
    card = tmp_path / "card"
    card.mkdir()
    numbers.node(card / "ctl", 9 << 8)
    host, watcher, fw = await shared_held(tmp_path, card)
    numbers.node(fw / "evil", 9 << 8)
    watcher.change(str(fw), "evil")
    await host.settled()
    assert host.ids(R1) == []
    booked_held(host, R1, "card")
    with pytest.raises(PlaceOwned, match="a node of the device number"):
        await host.index.hand_out(R1, ["card"], [str(card)])


async def test_a_shared_held_tree_renamed_into_a_keyed_directory_holds_it(
    tmp_path: Path, numbers: _Numbers
) -> None:
    """F5: fw (A holds it through g1's shared claim) is renamed into card, the directory
    device card of resource a claims alone: a pod given card would reach what A does."""
    card = tmp_path / "card"
    card.mkdir()
    host, watcher, fw = await shared_held(tmp_path, card)
    os.rename(fw, card / "fw")
    watcher.change(str(tmp_path), "fw")
    watcher.change(str(card), "fw")
    await host.settled()
    assert host.ids(R1) == [], "card holds the tree A has mounted"
    booked_held(host, R1, "card")
    with pytest.raises(PlaceOwned):
        await host.index.hand_out(R1, ["card"], [str(card)])
    host.index.holdings(Holdings(1e9, 0.0, {}))  # pod A ended
    await host.settled()
    assert host.ids(R1) == ["card"]


async def test_a_shared_held_tree_no_listed_device_claims_is_followed_by_its_booking(
    tmp_path: Path, numbers: _Numbers
) -> None:
    """The group's devices are no longer listed (the card unplugged): only A's booking holds
    fw, and follows it; a node made in it then holds n0 all the same."""
    (tmp_path / "dev").mkdir()
    n0 = numbers.node(tmp_path / "dev" / "n0", 7 << 8)
    host, watcher, fw = await shared_held(tmp_path, n0)
    await host.publish(R2)
    numbers.node(fw / "evil", 7 << 8)
    watcher.change(str(fw), "evil")
    await host.settled()
    assert host.ids(R1) == []
    booked_held(host, R1, "n0")


async def test_a_shared_held_tree_renamed_anywhere_is_followed_where_it_is(
    tmp_path: Path, numbers: _Numbers
) -> None:
    """fw is renamed out of the group's pattern (`mv fw aside/fw`: A's bind mount follows
    it); the group's devices are listed without it. Its inode pinned, the booking holds it
    at its new place: a node made there later holds n0; once A ends nothing keeps it open."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "aside").mkdir()
    n0 = numbers.node(tmp_path / "dev" / "n0", 7 << 8)
    host, watcher, fw = await shared_held(tmp_path, n0)
    moved = tmp_path / "aside" / "fw"
    os.rename(fw, moved)
    watcher.change(str(tmp_path), "fw")
    watcher.change(str(fw), None)  # (its own watch: moved)
    await host.settled()
    await host.publish(R2)
    numbers.node(moved / "evil", 7 << 8)
    watcher.change(str(moved), "evil")
    await host.settled()
    assert host.ids(R1) == [], "A reaches n0 through fw, at aside/fw now"
    booked_held(host, R1, "n0")
    assert open_at(moved) >= 1
    host.index.holdings(Holdings(1e9, 0.0, {}))  # pod A ended
    await host.settled()
    assert host.ids(R1) == ["n0"]
    assert open_at(moved) == 0, "no descriptor outlives the booking"
