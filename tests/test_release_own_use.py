"""A release, and a container restart's preStart, act on what the use's OWN Allocate handed
out (hostile14 N6): a probe moved device d0 from node n0 to n1 (a card enumerated again);
d0 is handed out again at n1 while the release of the use at n0 is owed (`replicas: 1`), or
another ID of d0 is handed out at n1 while d0::0 is held at n0 (`replicas: 2`). The record
(`handed_out`, `handed-out.json`) keeps each use as handed out until a release acting on it
succeeded: n0 is reset, never n1 in its stead, and n0 goes to no container before that."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.handed_entries import (
    Handed,
    after_release,
    entry,
    handed,
    owed_all,
    releasing,
    use_of,
)
from kdp_host.handed_out import HANDED_FILE, HandedRecord
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

from .conftest import wait_until

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

R = "vendor.example/probe"


def _config(root: Path, socket_dir: Path, replicas: int = 1) -> str:
    """The release logs its `{hostPaths}`, waits while `root`/hold is there and fails while
    `root`/fail is; preStart logs its `{hostPaths}`."""
    log, fail, hold = root / "hooks.log", root / "fail", root / "hold"
    script = f"echo release {{ids}} {{hostPaths}} >> {log}; "
    script += f"while [ -e {hold} ]; do sleep 0.05; done; test ! -e {fail}"
    release = f'[sh, -c, "{script}"]'
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{root}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root}/state\nresources:\n"
        f"  - name: {R}\n"
        f"    replicas: {replicas}\n"
        f"    shell: {{command: [cat, {root}/p.json], format: json, interval: 1s}}\n"
        f"    release: {{command: {release}}}\n"
        f'    preStart: {{command: [sh, -c, "echo preStart {{ids}} {{hostPaths}} >> {log}"]}}\n'
    )


def _list(root: Path, **devices: str) -> None:
    """The probe lists `devices` (ID -> node name under `root`/dev) from its next run."""
    listed = [{"id": i, "paths": [str(root / "dev" / n)]} for i, n in devices.items()]
    (root / "p.json.new").write_text(json.dumps(listed))
    (root / "p.json.new").rename(root / "p.json")


def _dirs(root: Path) -> Path:
    for name in ("state", "dev"):
        (root / name).mkdir()
    for node in ("n0", "n1"):
        (root / "dev" / node).touch()
    _list(root, d0="n0")
    return root


def _lines(root: Path, kind: str) -> list[str]:
    path = root / "hooks.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.removeprefix(f"{kind} ") for line in lines if line.startswith(f"{kind} ")]


def _runs(running: Any, result: str) -> float:
    return float(running.sample("kdp_release_runs_total", resource=R, result=result))


async def _listed_at(running: Any, node: Path) -> None:
    def there() -> bool:
        runtime = running.host.resources.get(R)
        listed = [] if runtime is None else runtime.table.snapshot.devices
        return any(n.host_path == str(node) for d in listed if d.id == "d0" for n in d.nodes)

    await wait_until(there, what=f"d0 listed at {node}")


async def test_a_failed_release_retried_after_the_id_went_to_another_node_resets_its_own(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """p1 gets d0 at n0; the probe lists d0 at n1; p1 ends and p2 is given d0 (n1) at once.
    The release of p1's use fails at first: every retry still runs on n0 (not on p2's n1),
    and n0, listed again as d1, starts no container until it succeeded."""
    kubelet, root = pod_resources_kubelet, _dirs(short_dir)
    n0, n1 = root / "dev" / "n0", root / "dev" / "n1"
    running = await start_host(_config(root, socket_dir))
    await kubelet.wait_for(lambda: kubelet.resource(R).healthy_ids == {"d0"})
    first = await kubelet.allocate(R, 1, pod_uid="p1")
    assert first is not None and [d.host_path for d in first.devices] == [str(n0)]
    _list(root, d0="n1")
    await _listed_at(running, n1)
    (root / "fail").touch()  # (the reset fails until this goes)
    await kubelet.release("p1")
    second = await kubelet.allocate(R, 1, pod_uid="p2", pre_start=False)
    assert second is not None and [d.host_path for d in second.devices] == [str(n1)]
    await wait_until(lambda: _runs(running, "exit") >= 3, what="the release failed and retried")
    assert set(_lines(root, "release")) == {f"d0 {n0}"}, "a retry acted on p2's node"

    _list(root, d0="n1", d1="n0")  # n0 comes back, as d1
    await kubelet.wait_for(lambda: "d1" in kubelet.resource(R).healthy_ids)
    with pytest.raises(SimulatorAllocationError, match="release failed"):
        await kubelet.allocate(R, 1, pod_uid="p3")  # d1: n0, whose release is owed
    (root / "fail").unlink()
    await wait_until(lambda: _runs(running, "ok") >= 1, what="the release of n0 succeeded")
    await kubelet.pre_start_container("p3", "c0", R)  # p3's container starts now
    assert set(_lines(root, "release")) == {f"d0 {n0}"}
    assert _lines(root, "preStart")[-1] == f"d1 {n0}"
    entry = json.loads((root / "state" / HANDED_FILE).read_text())["resources"][R]["d0"]
    assert "earlier" not in entry and "owed" not in entry, entry  # (released: gone)


async def test_an_owed_release_of_an_earlier_use_runs_on_its_node_after_a_restart(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """As above, and kdp-host restarts while p1's release is owed (failing): handed-out.json
    keeps p1's use as handed out (`earlier`, `owed`); the new process releases n0."""
    kubelet, root = pod_resources_kubelet, _dirs(short_dir)
    n0, n1 = root / "dev" / "n0", root / "dev" / "n1"
    text = _config(root, socket_dir)
    running = await start_host(text)
    await kubelet.wait_for(lambda: kubelet.resource(R).healthy_ids == {"d0"})
    await kubelet.allocate(R, 1, pod_uid="p1")
    _list(root, d0="n1")
    await _listed_at(running, n1)
    (root / "fail").touch()
    await kubelet.release("p1")
    second = await kubelet.allocate(R, 1, pod_uid="p2", pre_start=False)
    assert second is not None and [d.host_path for d in second.devices] == [str(n1)]
    await wait_until(lambda: _runs(running, "exit") >= 1, what="the release failed")
    await running.shutdown()
    entry = json.loads((root / "state" / HANDED_FILE).read_text())["resources"][R]["d0"]
    assert entry["nodes"][0][0] == str(n1) and "owed" not in entry  # (p2's use: held)
    assert [(e["nodes"][0][0], e["owed"]) for e in entry["earlier"]] == [(str(n0), True)]
    (root / "fail").unlink()
    again = await start_host(text)
    await wait_until(lambda: _runs(again, "ok") >= 1, what="the release ran after the restart")
    assert set(_lines(root, "release")) == {f"d0 {n0}"}


async def test_a_use_seen_gone_while_its_release_ran_is_released_once_it_ends(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """p1's use (n0) is being released when p2's (n1) is seen gone (d0 allocated again to
    p3): that release acts on n0 only, and n1's runs as soon as it ends, with no container
    start asking for it."""
    kubelet, root = pod_resources_kubelet, _dirs(short_dir)
    n0, n1 = root / "dev" / "n0", root / "dev" / "n1"
    running = await start_host(_config(root, socket_dir))
    await kubelet.wait_for(lambda: kubelet.resource(R).healthy_ids == {"d0"})
    await kubelet.allocate(R, 1, pod_uid="p1")
    _list(root, d0="n1")
    await _listed_at(running, n1)
    (root / "hold").touch()  # (the release waits until this goes)
    await kubelet.release("p1")
    await kubelet.allocate(R, 1, pod_uid="p2", pre_start=False)
    await wait_until(lambda: _lines(root, "release"), what="p1's release running")
    await kubelet.release("p2")
    await kubelet.allocate(R, 1, pod_uid="p3", pre_start=False)
    (root / "hold").unlink()
    await wait_until(lambda: _runs(running, "ok") >= 2, what="p2's use released too")
    assert _lines(root, "release") == [f"d0 {n0}", f"d0 {n1}"]


async def test_a_shared_devices_uses_keep_their_own_nodes_for_pre_start_and_release(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """`replicas: 2`: p1 holds d0::0 at n0; the probe lists d0 at n1; p2 gets d0::1 (n1).
    p1's container restart runs preStart on n0; once both end, n0 and n1 are released."""
    kubelet, root = pod_resources_kubelet, _dirs(short_dir)
    n0, n1 = root / "dev" / "n0", root / "dev" / "n1"
    running = await start_host(_config(root, socket_dir, replicas=2))
    await kubelet.wait_for(lambda: len(kubelet.resource(R).healthy_ids) == 2)
    first = await kubelet.allocate(R, 1, pod_uid="p1")
    assert first is not None and [d.host_path for d in first.devices] == [str(n0)]
    _list(root, d0="n1")
    await _listed_at(running, n1)
    second = await kubelet.allocate(R, 1, pod_uid="p2")
    assert second is not None and [d.host_path for d in second.devices] == [str(n1)]
    await kubelet.pre_start_container("p1", "c0", R)  # p1's container restarts
    assert _lines(root, "preStart")[-1] == f"d0 {n0}", "preStart acted on p2's node"
    await kubelet.release("p1")
    await kubelet.release("p2")
    await wait_until(lambda: _runs(running, "ok") >= 1, what="d0 released")
    assert sorted(_lines(root, "release")) == [f"d0 {n0}", f"d0 {n1}"]


def test_the_record_keeps_each_use_and_reads_an_entry_of_the_version_before() -> None:
    """The record's rule (`handed_entries`): a device handed out otherwise keeps the earlier
    use (its IDs less those taken, owed when seen gone) until a release acting on it
    succeeded; an entry of the version before (no `earlier`, no `owed`) reads as one use."""
    table, record = DeviceTable(replicas=2), HandedRecord(None)

    def hand(node: str, advertised: str) -> None:
        table.publish([Device("d0", nodes=(DeviceNode(node, node, "rw"),))])
        record.hand_out(R, table.snapshot, [advertised])

    def nodes(uses: Iterable[Handed]) -> list[str]:
        return [use.device.nodes[0].host_path for use in uses]

    hand("/dev/n0", "d0::0")
    hand("/dev/n1", "d0::1")
    found = record.entry(R, "d0")
    assert found is not None
    assert nodes([use_of(found, "d0::0"), use_of(found, "d0::1")]) == ["/dev/n0", "/dev/n1"]
    assert nodes(releasing(found)) == ["/dev/n1"]  # (no use seen gone: the newest)
    record.change(R, "d0", owed_all)
    owed = record.entry(R, "d0")
    assert owed is not None
    acted = releasing(owed)
    assert nodes(acted) == ["/dev/n0", "/dev/n1"]
    hand("/dev/n0", "d0::0")  # (d0::0 handed out again at n0 before the release ran)
    again = record.entry(R, "d0")
    assert again is not None and [u.ids for u in releasing(again)] == [set(), {"d0::1"}]
    assert handed("d0", json.loads(json.dumps(entry(again)))) == again  # (written, read back)
    record.change(R, "d0", lambda e: after_release(e, acted))
    done = record.entry(R, "d0")
    assert done is not None and not done.earlier and not done.owed
    assert nodes([done]) == ["/dev/n0"] and done.ids == {"d0::0"}

    old = {"nodes": [["/dev/n0", "/dev/n0", "rw"]], "mounts": [], "env": {}, "ids": ["d0"]}
    read = handed("d0", {**old, "at": 1.0})  # (an entry of the version before)
    assert not read.earlier and not read.owed and releasing(read) == (read,)
