"""What an Allocate handed out is kept with the identity each host path reached then
(`handed_out.Handed.reached`), across kdp-host restarts (issue 17, hostile8 N2/N3): p1 holds
n0 of R1 (its answer names P = .../a/n0), p2 holds m0 of R2; while kdp-host is down (or just
before it restarts), n0's file goes and a hard link of m0's file is made at P. After the
restart, p1's release is not run on P (`place_changed`: it reaches p2's file), and the CDI
entry of p1's held name is left out (it would resolve to p2's file)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.allocation import cdi_device_name
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.handed_entries import handed
from kdp_host.handed_out import HANDED_FILE, HandedRecord
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .fake_nodes import FakeNodes, indexed, node
from .release_setup import R1, R2, release_config

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)


def _runs(running: Any, result: str) -> float:
    found = running.metrics.registry.get_sample_value(
        "kdp_release_runs_total", {"resource": R1, "result": result}
    )
    return found or 0.0


async def _held_then_swapped(
    kubelet: KubeletSimulator, root: Path, start_host: Any, config: str, *, while_down: bool
) -> Any:
    """p1 holds n0, p2 holds m0; P (n0's path) becomes a hard link of m0's file, kdp-host
    restarted around it; returns the second host."""
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    (a / "n0").touch()
    (b / "m0").touch()
    first = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(R1).healthy_ids == {"n0"})
    await kubelet.wait_for(lambda: kubelet.resource(R2).healthy_ids == {"m0"})
    assert await kubelet.allocate(R1, 1, pod_uid="p1") is not None
    assert await kubelet.allocate(R2, 1, pod_uid="p2") is not None
    if not while_down:
        (a / "n0").unlink()
        (a / "n0").hardlink_to(b / "m0")
    await first.shutdown(timeout=30)
    if while_down:
        (a / "n0").unlink()
        (a / "n0").hardlink_to(b / "m0")
    second = await start_host(config)
    # (served again; m0's node may be held: the kubelet's checkpoint books what P reaches now)
    await kubelet.wait_for(lambda: kubelet.resource(R2).registrations >= 2)
    return second


@pytest.mark.parametrize("while_down", [False, True], ids=["then-restart", "while-down"])
async def test_a_release_after_a_restart_does_not_act_on_another_pods_file_at_its_path(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    while_down: bool,
) -> None:
    """hostile8 N2 (a resource with a release, no preStart, no CDI): the old code ran the
    release on P (result ok) after the restart, acting on p2's file."""
    kubelet, log = pod_resources_kubelet, short_dir / "hooks.log"
    config = release_config(socket_dir, short_dir, log, second=True)
    running = await _held_then_swapped(
        kubelet, short_dir, start_host, config, while_down=while_down
    )
    await kubelet.release("p1")
    await wait_until(
        lambda: _runs(running, "place_changed") >= 1 or _runs(running, "ok") >= 1,
        timeout=60,
        what="the release of n0 tried",
    )
    assert _runs(running, "ok") == 0 and not log.exists(), "the release acted on p2's file"


async def test_a_held_cdi_entry_whose_path_reaches_another_pods_file_is_left_out(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """hostile8 N3: the held name's entry kept the bare path P, which reaches p2's file now;
    it is left out (the name fails closed) until P reaches what was handed out again."""
    kubelet, log = pod_resources_kubelet, short_dir / "hooks.log"
    config = release_config(socket_dir, short_dir, log, cdi=True, second=True)
    await _held_then_swapped(kubelet, short_dir, start_host, config, while_down=True)
    spec = short_dir / "cdi" / f"kdp-{R1.replace('/', '_')}.json"
    name = cdi_device_name(R1, "n0").split("=", 1)[-1]

    def names() -> set[str] | None:
        try:
            return {d["name"] for d in json.loads(spec.read_text())["devices"]}
        except (OSError, ValueError):
            return None  # (no file: no entry)

    await wait_until(lambda: not (names() or set()) & {name}, timeout=30, what="n0 left out")


def test_an_entry_keeps_what_its_paths_reached_and_one_of_an_older_version_reads() -> None:
    """The identity is a key an older version's reader ignores; an entry of an older
    version (no such key) reads with none: the place check of before applies."""
    device = Device("n0", nodes=(DeviceNode("/d/n0", "/dev/n0"),))
    table = DeviceTable()
    table.publish([device])
    record = HandedRecord(None)
    record.hand_out(R1, table.snapshot, ["n0"], {"/d/n0": ("c", 259)})
    document = json.loads(json.dumps(record.document()))
    entry = document["resources"][R1]["n0"]
    assert entry["nodes"] == [["/d/n0", "/dev/n0", None]]  # (as an older version reads it)
    assert entry["reached"] == {"/d/n0": ["c", 259]}
    assert handed("n0", entry).reached == {"/d/n0": ("c", 259)}
    old = {k: v for k, v in entry.items() if k != "reached"}
    assert handed("n0", old).reached == {}
    assert handed("n0", old).device == device
    assert HANDED_FILE == "handed-out.json"


async def test_a_path_reaching_another_identity_than_handed_out_fails_whatever_is_booked() -> None:
    """What the real kubelet does after the restart (hostile8 t41): its checkpoint names P
    for p1's n0, and `take_handed` widens n0's booking by what P reaches now (m0's node):
    `changed_places` then passed by the bookings alone, and the release ran on m0's node.
    With the identity handed out (`handed`), P reaching another one fails."""
    from kdp_host.allocation import HookFailed
    from kdp_host.hooks import check_places
    from kdp_host.kubelet_checkpoint import Handed as CheckpointHanded
    from kdp_host.kubelet_checkpoint import HandedClaims

    nodes = FakeNodes({"/d/n0": ("c", 3), "/d/m0": ("c", 5)}, nothing=True)
    n0 = node("/d/n0")
    index, _ = await indexed({R1: [n0], R2: [node("/d/m0")]}, nodes)
    await index.book(R1, ["n0"])
    await index.book(R2, ["m0"])
    nodes.nodes["/d/n0"] = ("c", 5)  # P made anew as m0's number
    index.take_handed(
        [HandedClaims(CheckpointHanded(R1, ("n0",), ("/d/n0",)), ((("c", 5), "/d/n0", "/d/n0"),))]
    )
    check = functools.partial(index.changed_places, R1)
    assert await check(["n0"], ["/d/n0"]) == {}  # (by the bookings alone: it passes)
    handed = {"/d/n0": ("c", 3)}
    with pytest.raises(HookFailed, match="reaches another device now"):
        await check_places(check, "release of n0:", ["n0"], [n0], handed)
    nodes.nodes["/d/n0"] = ("c", 3)  # back as handed out
    await check_places(check, "release of n0:", ["n0"], [n0], handed)


def test_a_held_cdi_entry_is_written_only_while_its_path_reaches_what_was_handed_out(
    tmp_path: Path,
) -> None:
    """hostile8 N3, the spec rendering: a held (pinned) device whose path reaches another
    file than it was handed out with is left out (its name fails closed), not pinned to the
    path; back as handed out (or with no identity recorded: an older record) it is kept."""
    from kdp_host.cdi_spec import Held, build_spec, render_held
    from kdp_host.config import AllocateConfig, CdiConfig, GlobDriverConfig, ResourceConfig
    from kdp_host.identity import identity_of

    config = ResourceConfig(
        name=R1,
        driver=GlobDriverConfig(paths=(f"{tmp_path}/n*",)),
        allocate=AllocateConfig(cdi=CdiConfig(kind=R1, spec_dir=str(tmp_path / "cdi"))),
    )
    place, other = tmp_path / "n0", tmp_path / "m0"
    place.touch()
    other.touch()
    n0 = Device("n0", nodes=(DeviceNode(str(place), "/dev/n0"),))
    handed_out = {"n0": {str(place): identity_of(place.stat())}}
    empty = DeviceTable().snapshot
    content, astray = render_held(config, empty, Held({"n0": n0}, handed_out))
    assert content is not None and astray == frozenset()
    place.unlink()
    place.hardlink_to(other)  # another pod's file at the path handed out
    content, astray = render_held(config, empty, Held({"n0": n0}, handed_out))
    assert content is None and astray == {"n0"}  # (no entry left: no file)
    content, astray = render_held(config, empty, Held({"n0": n0}, {"n0": {}}))
    assert content is not None and not astray  # no identity recorded: as before
    assert build_spec(config, empty, {"n0": n0}) is not None


async def test_a_release_and_a_held_cdi_entry_ask_one_rule_of_a_path_handed_out(
    tmp_path: Path,
) -> None:
    """`ownership_canonical.strays`, asked by `changed_places` (a release, a preStart) and by
    `render_held` (a held CDI entry): a path handed out whose real path now holds ',' (a
    `{hostPaths}` could not list it), a link to the same file, is not known to reach what
    was handed out. The release failed it (the index's `checked_reach`); the held CDI entry
    kept it (`identity.reaches_else` asked its stat only): both leave it now."""
    from kdp_host.cdi_spec import Held, render_held
    from kdp_host.config import AllocateConfig, CdiConfig, GlobDriverConfig, ResourceConfig
    from kdp_host.identity import identity_of
    from kdp_host.ownership_canonical import strays

    place = tmp_path / "n0"
    place.touch()
    was = identity_of(place.stat())
    assert not strays(((was[0], was[1]), str(place)), was)
    assert not strays((("path", str(place)), str(place)), was)  # nothing there
    assert strays((("f", 1), str(place)), was) and strays((was, str(place)), None)
    assert strays(None, was) and strays("unresolvable", was) and strays("hung", was)

    config = ResourceConfig(
        name=R1,
        driver=GlobDriverConfig(paths=(f"{tmp_path}/n*",)),
        allocate=AllocateConfig(cdi=CdiConfig(kind=R1, spec_dir=str(tmp_path / "cdi"))),
    )
    n0 = Device("n0", nodes=(DeviceNode(str(place), "/dev/n0"),), path=str(place))
    index, _ = await indexed({R1: [n0]})
    await index.book(R1, ["n0"])
    handed_out = {str(place): was}
    empty = DeviceTable().snapshot
    assert await index.changed_places(R1, ["n0"], [str(place)], handed_out) == {}
    assert render_held(config, empty, Held({"n0": n0}, {"n0": handed_out}))[1] == frozenset()

    (tmp_path / "a,b").mkdir()
    place.rename(tmp_path / "a,b" / "n0")
    place.symlink_to(tmp_path / "a,b" / "n0")  # the same file, through a ',' path
    assert identity_of(place.stat()) == was
    assert await index.changed_places(R1, ["n0"], [str(place)], handed_out) != {}
    assert render_held(config, empty, Held({"n0": n0}, {"n0": handed_out}))[1] == {"n0"}
