"""Pods sharing a device (`replicas`) each keep what THEIR Allocate handed out through CDI, on
the real kubelet (hostile14 N6, t24).

The kubelet keeps a container's answer, CDI names and all, and a restarted container resolves
the names again. With one CDI name per physical device, p1 (given d0::0 at n0) and p2 (given
d0::1 once the probe listed d0 at n1) held one name, which the spec pointed at p2's n1: p1's
container would get p2's node at its next restart, and n0 was in no entry. Names are per
kubelet ID now (`allocation.cdi_device_name`), each entry kept as its ID's Allocate handed it
out while the ID is booked; the device's own name, which an older version answered, is kept
meaning that version's use (`Handed.id_names`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdp_host.allocation import cdi_device_name
from kdp_host.cdi_spec import build_spec
from kdp_host.config import AllocateConfig, CdiConfig, GlobDriverConfig, ResourceConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.handed_entries import Handed, cdi_held
from kdp_host.handed_out import HANDED_FILE

from .conftest import wait_until
from .kubelet_harness import RealKubelet, healthy
from .test_cdi_reload import resolved

R, KIND = "example.com/p", "example.com/pp"


def _config(kubelet: RealKubelet, root: Path) -> str:
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {root / 'state'}\n"
        f"resources:\n  - name: {R}\n    replicas: 2\n"
        f"    shell: {{command: [cat, {root / 'p.json'}], format: json, interval: 1s}}\n"
        f"    allocate: {{cdi: {{kind: {KIND}, specDir: {root / 'cdi'}}}}}\n"
    )


def _list(root: Path, node: str) -> None:
    """The probe lists d0 at `root`/dev/`node` from its next run."""
    (root / "p.new").write_text(json.dumps([{"id": "d0", "paths": [str(root / "dev" / node)]}]))
    (root / "p.new").rename(root / "p.json")


def _setup(root: Path) -> tuple[str, str]:
    (root / "dev").mkdir()
    for node in ("n0", "n1"):
        (root / "dev" / node).touch()
    _list(root, "n0")
    return str(root / "dev" / "n0"), str(root / "dev" / "n1")


async def _allocate(kubelet: RealKubelet, pod: str) -> str:
    """Admit `pod` with one ID of R; its one CDI name."""
    answer = await kubelet.acall(kubelet.allocate, pod, {R: 1})
    assert answer["error"] == "", answer
    (name,) = [c.get("Name", c.get("name")) for c in answer["cdi_devices"]]
    return str(name)


async def _listed_at(running: Any, node: str) -> None:
    """Until the resource's table lists d0 at `node` (the probe ran since `_list`)."""

    def there() -> bool:
        runtime = running.host.resources.get(R)
        listed = [] if runtime is None else runtime.table.snapshot.devices
        return any(n.host_path == node for d in listed if d.id == "d0" for n in d.nodes)

    await wait_until(there, what=f"d0 listed at {node}")


async def test_two_pods_sharing_a_device_each_keep_their_own_cdi_entry(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """p1 gets d0::0 at n0; the probe lists d0 at n1; p2 gets d0::1 at n1. p1's name keeps
    resolving to n0 (its container restarts with it), p2's to n1: two names."""
    kubelet, root, spec_dir = real_kubelet_factory(), short_dir, short_dir / "cdi"
    n0, n1 = _setup(root)
    running = await start_host(_config(kubelet, root))
    await kubelet.await_for(healthy(R, 2), what="d0's two replicas advertised")
    held = await _allocate(kubelet, "p1")
    assert resolved(spec_dir)[held] == [n0]
    _list(root, "n1")
    await _listed_at(running, n1)
    assert resolved(spec_dir)[held] == [n0], "p1's held name follows the probe"
    theirs = await _allocate(kubelet, "p2")
    await wait_until(lambda: resolved(spec_dir).get(theirs) == [n1], what="p2's entry")
    assert theirs != held, "one CDI name held by two pods with different nodes"
    assert resolved(spec_dir)[held] == [n0], "p1's name resolves to p2's node"


def _as_older_version(path: Path) -> None:
    """`handed-out.json` as a version before per-ID names wrote it: no `idNames` keys."""

    def strip(entry: dict[str, Any]) -> dict[str, Any]:
        entry.pop("idNames", None)
        entry["earlier"] = [strip(use) for use in entry.get("earlier", [])]
        return entry if entry["earlier"] else {k: v for k, v in entry.items() if k != "earlier"}

    document = json.loads(path.read_text())
    for part in (document["resources"], *document.get("writers", {}).values()):
        for devices in part.values():
            for device_id in devices:
                devices[device_id] = strip(devices[device_id])
    path.write_text(json.dumps(document))


async def test_the_device_name_an_older_version_answered_keeps_its_pods_node(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """An upgrade: p1 holds d0::0 at n0, handed out by a version that named the device
    (`<resource>:d0`, in the kubelet's checkpoint). After the restart the spec still defines
    that name, at n0, also once the probe lists d0 at n1 and p2 is given d0::1 there."""
    kubelet, root, spec_dir = real_kubelet_factory(), short_dir, short_dir / "cdi"
    n0, n1 = _setup(root)
    running = await start_host(_config(kubelet, root))
    await kubelet.await_for(healthy(R, 2), what="d0's two replicas advertised")
    await _allocate(kubelet, "p1")
    await running.shutdown()
    _as_older_version(root / "state" / HANDED_FILE)
    legacy = f"{KIND}={cdi_device_name(R, 'd0')}"

    running = await start_host(_config(kubelet, root))
    await wait_until(lambda: resolved(spec_dir).get(legacy) == [n0], what="the old name kept")
    _list(root, "n1")
    await _listed_at(running, n1)
    await kubelet.await_for(healthy(R, 2), what="d0 advertised again after the restart")
    theirs = await _allocate(kubelet, "p2")
    await wait_until(lambda: resolved(spec_dir).get(theirs) == [n1], what="p2's entry")
    assert resolved(spec_dir)[legacy] == [n0], "the name p1 was answered follows p2's node"


def _device(device_id: str, node: str) -> Device:
    return Device(device_id, nodes=(DeviceNode(node, "/dev/x"),))


def test_each_booked_id_names_its_own_use_and_an_older_versions_the_device() -> None:
    """`cdi_held`: by kubelet ID, the use it was handed out in; by device, the newest use an
    older version answered with the device's name. `build_spec`: an entry per kubelet ID; a
    device name that is also another ID's, with other edits, is in no entry (fails closed)."""
    at_n0, at_n1 = _device("d0", "/n0"), _device("d0", "/n1")
    p1 = Handed(at_n0, frozenset({"d0::0"}), 1.0, id_names=False)
    entry = Handed(at_n1, frozenset({"d0::1"}), 2.0, earlier=(p1,))
    by_id, legacy = cdi_held({"d0": entry}, lambda i: True)
    assert {i: use.device for i, use in by_id.items()} == {"d0::0": at_n0, "d0::1": at_n1}
    assert {d: use.device for d, use in legacy.items()} == {"d0": at_n0}
    assert cdi_held({"d0": entry}, lambda i: i != "d0::0")[1] == {}  # (p1 gone: not kept)

    config = ResourceConfig(
        name=R,
        driver=GlobDriverConfig(paths=("/n*",)),
        replicas=2,
        allocate=AllocateConfig(cdi=CdiConfig(kind=KIND)),
    )
    table = DeviceTable(replicas=2)
    table.publish([at_n1, _device("a", "/na")])
    held = {i: use.device for i, use in by_id.items()}
    spec = build_spec(config, table.snapshot, held, (), {"d0": at_n0, "a::0": at_n0})
    assert spec is not None
    nodes = {d["name"]: d["containerEdits"]["deviceNodes"][0]["hostPath"] for d in spec["devices"]}
    assert nodes == {
        cdi_device_name(R, "d0::0"): "/n0",
        cdi_device_name(R, "d0::1"): "/n1",
        cdi_device_name(R, "d0"): "/n0",
        cdi_device_name(R, "a::1"): "/na",  # (a::0: another device's old name too: left out)
    }


async def test_an_id_handed_out_anew_resolves_to_its_new_node_when_the_answer_goes_out(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """p1 held d0::0 at n0 and ended (its booking lingers: no PodResources here), d0 moved to
    n1; the kubelet gives d0::0 to p3, at n1. The spec entry of d0::0 said n0 (p1's): the
    answer goes out only once the file on disk says n1, so a runtime resolving the name at
    once (the container is created right after) never gets p1's node (`cdi_disk`)."""
    kubelet, root, spec_dir = real_kubelet_factory(), short_dir, short_dir / "cdi"
    n0, n1 = _setup(root)
    running = await start_host(_config(kubelet, root))
    await kubelet.await_for(healthy(R, 2), what="d0's two replicas advertised")
    held = await _allocate(kubelet, "p1")
    _list(root, "n1")
    await _listed_at(running, n1)
    await _allocate(kubelet, "p2")  # d0::1, at n1
    await kubelet.acall(kubelet.release, "p1")
    assert resolved(spec_dir)[held] == [n0]  # (p1's booking lingers: its entry is kept)
    again = await _allocate(kubelet, "p3")  # d0::0 again
    assert again == held
    assert resolved(spec_dir)[again] == [n1], "the answer went out before the spec said n1"
