"""A node an earlier use of a shared device (`replicas`) was handed goes to no other container
before its release, on the real kubelet (hostile14 N6, "shared device still in use").

p1 gets d0::0 at n0; the probe lists d0 at n1 (a card enumerated again); p2 gets d0::1 at n1.
p1 ends. d0 is released only once none of its IDs is held (p2 holds d0::1), so p1's n0 is not
released yet. p3 is given d0::0 again (at n1): that booking replaced p1's, which had held n0,
and n0, listed as d1 now, was advertised. p4 was admitted on it and started, n0 never reset
since p1. The release gate only looked at owed releases; d0's is not owed while p2 holds it.
Now p4's start is refused until d0's release (acting on p1's use: n0) has succeeded.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.handed_entries import Handed, after_release, owed_all, releasing
from kdp_host.handed_out import HandedRecord
from kdp_host.release_command import in_use_sharing
from kdp_host.release_use import DeviceUse

from .conftest import wait_until
from .kubelet_harness import RealKubelet, healthy

pytestmark = pytest.mark.fast  # its hosts poll PodResources fast (conftest.start_host)

R = "example.com/p"


def _config(kubelet: RealKubelet, root: Path) -> str:
    log = root / "release.log"
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
        f"stateDir: {root / 'state'}\nresources:\n  - name: {R}\n    replicas: 2\n"
        f"    shell: {{command: [cat, {root / 'p.json'}], format: json, interval: 1s}}\n"
        f'    release: {{command: [sh, -c, "echo {{ids}} {{hostPaths}} >> {log}"]}}\n'
    )


def _list(root: Path, **devices: str) -> None:
    """The probe lists `devices` (ID -> node name under `root`/dev) from its next run."""
    listed = [{"id": i, "paths": [str(root / "dev" / n)]} for i, n in devices.items()]
    (root / "p.new").write_text(json.dumps(listed))
    (root / "p.new").rename(root / "p.json")


def _released(root: Path) -> list[str]:
    path = root / "release.log"
    return path.read_text().splitlines() if path.exists() else []


def _nodes(answer: dict[str, Any]) -> list[str]:
    return [d["PathOnHost"] for d in answer["devices"] or []]


async def _listed(running: Any, node: str, also: str | None = None) -> None:
    """Until the resource's table lists d0 at `node` (and its driver lists `also`, advertised
    or held)."""

    def there() -> bool:
        runtime = running.host.resources.get(R)
        listed = [] if runtime is None else runtime.table.snapshot.devices
        at = any(n.host_path == node for d in listed if d.id == "d0" for n in d.nodes)
        return at and (also is None or running.host.ownership.lists(R, also))

    await wait_until(there, what=f"d0 listed at {node}, and {also}")


async def test_a_node_an_earlier_use_of_a_shared_device_held_waits_for_its_release(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    root = short_dir
    kubelet = real_kubelet_factory(pod_resources_dir=root / "pr")
    (root / "dev").mkdir()
    n0, n1 = str(root / "dev" / "n0"), str(root / "dev" / "n1")
    for node in (n0, n1):
        Path(node).touch()
    _list(root, d0="n0")
    running = await start_host(_config(kubelet, root))
    await kubelet.await_for(healthy(R, 2), what="d0's two replicas advertised")
    p1 = await kubelet.acall(kubelet.allocate, "p1", {R: 1})
    assert p1["error"] == "" and _nodes(p1) == [n0], p1
    _list(root, d0="n1")
    await _listed(running, n1)
    p2 = await kubelet.acall(kubelet.allocate, "p2", {R: 1})
    assert p2["error"] == "" and _nodes(p2) == [n1], p2
    await kubelet.acall(kubelet.release, "p1")
    _list(root, d0="n1", d1="n0")  # n0 comes back, as d1 (held while p1's booking lives)
    await _listed(running, n1, "d1")
    p3 = await kubelet.acall(kubelet.allocate, "p3", {R: 1})  # d0::0 again, at n1
    assert p3["error"] == "" and _nodes(p3) == [n1], p3
    await kubelet.await_for(healthy(R, 4), what="d1 (n0) advertised once p1's booking went")

    p4 = await kubelet.acall(kubelet.allocate, "p4", {R: 1})  # d1: p1's n0, not released
    assert "released once none does" in p4["error"], ("n0 went unreleased to p4", p4)
    assert _released(root) == []

    await kubelet.acall(kubelet.release, "p2")
    await kubelet.acall(kubelet.release, "p3")
    await wait_until(lambda: any(n0 in line for line in _released(root)), what="n0 released")
    assert all(n0 in line or n1 in line for line in _released(root)), _released(root)
    again = await kubelet.acall(kubelet.allocate, "p4", {R: 1})  # its container starts again
    assert again["error"] == "", again


# ----------------------------------------------------------------- the rule, and the record


def _at(*nodes: str) -> Device:
    return Device("d", nodes=tuple(DeviceNode(n, n) for n in nodes))


class _Record:
    """A resource's view of the record (`HandedOut.entry`) over given entries."""

    def __init__(self, **entries: Handed) -> None:
        self.entries = entries

    def entry(self, device_id: str) -> Handed | None:
        return self.entries.get(device_id)


def test_a_node_only_a_gone_unreleased_use_of_a_device_in_use_has_holds_a_start_back() -> None:
    """`in_use_sharing`: p1's use of d0 at n0 is gone (its ID went to p3) and not released
    (p2, p3 hold d0 at n1): a container handed n0 under d1 waits, as does one handed n0
    under d0 again; a node every device has (a keyless group member) and a live use's do not."""
    p1 = Handed(_at("/n0"), frozenset(), 1.0)
    d0 = Handed(_at("/n1"), frozenset({"d0::0", "d0::1"}), 2.0, earlier=(p1,))
    record = _Record(d0=d0, d1=Handed(_at("/n0"), frozenset({"d1::0"}), 3.0))
    tracked = {"d0": DeviceUse({"d0::0", "d0::1"}), "d1": DeviceUse({"d1::0"})}
    assert in_use_sharing(tracked, record, ["d1::0"]) == ["d0"]  # type: ignore[arg-type]
    tracked["d0"].owed, tracked["d0"].used = True, set()  # (owed: waited for, `owed_sharing`)
    assert in_use_sharing(tracked, record, ["d1::0"]) == []  # type: ignore[arg-type]

    back = Handed(
        _at("/n0"), frozenset({"d0::0"}), 4.0, earlier=(p1, replace(d0, ids=frozenset({"d0::1"})))
    )
    tracked = {"d0": DeviceUse({"d0::0", "d0::1"})}  # d0 moved back to n0: p3 has d0::0 there
    assert in_use_sharing(tracked, _Record(d0=back), ["d0::0"]) == ["d0"]  # type: ignore[arg-type]

    g0 = Handed(_at("/g0", "/vfio"), frozenset(), 1.0)
    g0_now = Handed(_at("/g0b", "/vfio"), frozenset({"g0::1"}), 2.0, earlier=(g0,))
    g1 = Handed(_at("/g1", "/vfio"), frozenset({"g1::0"}), 3.0)
    tracked = {"g0": DeviceUse({"g0::1"}), "g1": DeviceUse({"g1::0"})}
    assert in_use_sharing(tracked, _Record(g0=g0_now, g1=g1), ["g1::0"]) == []  # type: ignore[arg-type]


def test_a_released_use_is_no_earlier_use_and_an_owed_one_handed_out_again_is_kept_apart() -> None:
    """A use released (`after_release`) keeps no IDs and is not kept as an earlier use when
    the device is handed out otherwise (it would hold a node back, and be released again);
    an owed use handed out again as it was is a use of its own (its release acts on the old
    one only), not the same entry for the pod gone and the pod starting."""
    table = DeviceTable()
    table.publish([Device("d0", nodes=(DeviceNode("/n0", "/n0"),))])
    record = HandedRecord(None)
    record.hand_out(R, table.snapshot, ["d0"])
    record.change(R, "d0", owed_all)
    entry = record.entry(R, "d0")
    assert entry is not None
    acted = releasing(entry)
    record.hand_out(R, table.snapshot, ["d0"])  # handed out again, as it was, while owed
    entry = record.entry(R, "d0")
    assert entry is not None and [use.owed for use in entry.earlier] == [True], entry
    record.change(R, "d0", lambda e: after_release(e, acted))
    entry = record.entry(R, "d0")
    assert entry is not None and not entry.earlier and entry.ids == {"d0"}, entry

    record.change(R, "d0", owed_all)
    entry = record.entry(R, "d0")
    assert entry is not None
    record.change(R, "d0", lambda e: after_release(e, releasing(e)))
    entry = record.entry(R, "d0")
    assert entry is not None and not entry.ids and not entry.owed, entry  # (released)
    table.publish([Device("d0", nodes=(DeviceNode("/n1", "/n1"),))])
    record.hand_out(R, table.snapshot, ["d0"])  # otherwise
    entry = record.entry(R, "d0")
    assert entry is not None and not entry.earlier, entry
