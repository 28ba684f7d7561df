"""A held device made anew at a path is `replaced` (hostile14 N3; `held_replaced`): where a
path reaches another node or file than handed out, looked at where kdp-host sees it. The same
one through a link or below a sysfs `devRoot` (`DeviceNode.seen_path`) is not, nor a path
where nothing is (that is `gone` or `unhealthy`); a device handed out again since is not."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.handed_entries import Handed
from kdp_host.held_replaced import Replaced
from kdp_host.identity import identity_of

T = TypeVar("T")


class _Inline:
    async def run(self, function: Callable[[], T]) -> T:
        return function()


def _handed(device: Device, reached: dict[str, Path]) -> Handed:
    return Handed(
        device,
        frozenset({device.id}),
        0.0,
        {p: identity_of(os.stat(f)) for p, f in reached.items()},
    )


async def test_only_a_path_reaching_another_file_than_handed_out_is_replaced(
    tmp_path: Path,
) -> None:
    for name in ("a", "b", "c", "old"):
        (tmp_path / name).touch()
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link")
    link, seen, host, made = (str(tmp_path / n) for n in ("link", "a", "b", "c"))
    devices = [
        Device("linked", nodes=(DeviceNode(link, "/dev/x"),)),
        # seen below a devRoot at `a`, handed out as the host spells it (`b`, another file
        # in kdp-host's view): what it reached was found at `a`
        Device("seen", nodes=(DeviceNode(host, "/dev/y", seen_path=seen),)),
        Device("gone", nodes=(DeviceNode(str(tmp_path / "nothing"), "/dev/z"),)),
        Device("mounted", mounts=(DeviceMount(str(tmp_path / "dir"), "/d"),)),
        Device("made", nodes=(DeviceNode(made, "/dev/w"),)),
    ]
    records = {
        "linked": _handed(devices[0], {link: tmp_path / "a"}),
        "seen": _handed(devices[1], {host: tmp_path / "a"}),
        "gone": _handed(devices[2], {str(tmp_path / "nothing"): tmp_path / "old"}),
        "mounted": _handed(devices[3], {str(tmp_path / "dir"): tmp_path / "dir"}),
        "made": _handed(devices[4], {made: tmp_path / "old"}),  # made anew: another inode
    }
    replaced, looked = Replaced(), asyncio.Event()
    replaced.look({d.id: d for d in devices}.get, set(records), records.get, _Inline(), looked.set)
    await asyncio.wait_for(looked.wait(), 30)
    assert replaced.of(records, records.get) == {"made"}
    assert replaced.of(["linked", "seen"], records.get) == set()
    records["made"] = _handed(devices[4], {made: tmp_path / "c"})  # handed out again since
    assert replaced.of(records, records.get) == set()


async def test_a_recorded_path_that_left_the_listed_device_is_looked_at_too(
    tmp_path: Path,
) -> None:
    """hostile16 F2, F3: the device listed under a held ID no longer has a path the Allocate
    handed out (the same stick plugged in again: a new bus node; a group's optional member
    gone). The pod has that path's old node: nothing there now, or another node, is
    `replaced`; the same node there still is not."""
    for name in ("a", "b", "c", "d", "e", "old"):
        (tmp_path / name).touch()
    a, b, c, d, e = (str(tmp_path / n) for n in ("a", "b", "c", "d", "e"))
    handed = {
        "gone": Device("gone", nodes=(DeviceNode(a, "/dev/a"), DeviceNode(b, "/dev/b"))),
        "kept": Device("kept", nodes=(DeviceNode(c, "/dev/c"), DeviceNode(d, "/dev/d"))),
        "made": Device("made", nodes=(DeviceNode(e, "/dev/e"),)),  # (made anew: as before)
    }
    records = {
        "gone": _handed(handed["gone"], {a: tmp_path / "a", b: tmp_path / "b"}),
        "kept": _handed(handed["kept"], {c: tmp_path / "c", d: tmp_path / "d"}),
        "made": _handed(handed["made"], {e: tmp_path / "old"}),
    }
    os.unlink(a)  # the node left the device, and is gone
    listed = [  # as listed now: without a (gone), without d (still there, as handed out)
        Device("gone", nodes=(DeviceNode(b, "/dev/b"),)),
        Device("kept", nodes=(DeviceNode(c, "/dev/c"),)),
        handed["made"],
    ]
    replaced, looked = Replaced(), asyncio.Event()
    replaced.look({d.id: d for d in listed}.get, set(records), records.get, _Inline(), looked.set)
    await asyncio.wait_for(looked.wait(), 30)
    assert replaced.of(records, records.get) == {"gone", "made"}
