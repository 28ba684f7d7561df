"""Issue 17, hostile3 G1 (CDI and hooks): one host path per device node and mount, the
real path the ownership index claimed (checked against what the path reaches), taken by
every consumer: the Allocate answer, the CDI spec's entries, the hooks' `{hostPaths}`
(argv and env) and the release of a use. Through the real kubelet."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kdp_host.config.outputs import spec_file_name
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.identity import UNRESOLVABLE
from kdp_host.ownership_canonical import canonical, checked_reach
from kdp_host.ownership_claims import device_claims, reach

from .conftest import script, wait_until
from .kubelet_harness import healthy
from .test_hostile3 import A, B, ptys, rdev, relink

__all__ = ["ptys"]  # (the fixture, used by name)

KIND = "h3.example/aa"


def linked_nodes(short_dir: Path, pts0: str, pts1: str) -> Path:
    """`dev/link` -> pts0 (A's probe prints the link), `b/n1` -> pts1 (B's glob device)."""
    (short_dir / "dev").mkdir()
    (short_dir / "b").mkdir()
    link = short_dir / "dev" / "link"
    link.symlink_to(pts0)
    (short_dir / "b" / "n1").symlink_to(pts1)
    return link


async def start_linked(
    start_host, kubelet, short_dir: Path, link: Path, pod_resources: Path, a_keys: str
) -> Path:
    """A (a probe printing `link` as s0's path, with `a_keys`) and B (glob over `b/`), with
    PodResources polled every second; returns once the kubelet sees both devices, with the
    file A's probe prints (each line a device)."""
    probe = short_dir / "probe.txt"
    probe.write_text(f"s0 Healthy path={link}:/dev/s0\n")
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        "resources:\n"
        f"  - name: {A}\n"
        f"    shell: {{command: [cat, {probe}], interval: 1s}}\n"
        f"{a_keys}"
        f"  - name: {B}\n"
        f'    glob: {{paths: ["{short_dir}/b/*"], gracePeriod: 1s}}\n'
    )
    await kubelet.await_for(healthy(A, 1), what="A's device")
    await kubelet.await_for(healthy(B, 1), what="B's device")
    return probe


async def test_hostile3_1_cdi_spec_entries_carry_the_real_path(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G1 (CDI): a probe printed a link as its node's path and the CDI spec's entry carried
    the link: re-pointed at B's node, which B then gave pod2, it gave a container of pod1
    that resolves its CDI name (at its start, at every restart) pod2's node. The entry
    carries the real path the index claimed, and keeps it while pod1 holds the device."""
    pts0, pts1 = ptys
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    link = linked_nodes(short_dir, pts0, pts1)
    cdi = short_dir / "cdi"
    cdi_keys = f"    allocate: {{cdi: {{kind: {KIND}, specDir: {cdi}}}}}\n"
    probe = await start_linked(start_host, kubelet, short_dir, link, pod_resources, cdi_keys)
    spec_file = cdi / spec_file_name(A)

    def entries() -> dict[str, dict[str, str]]:
        if not spec_file.exists():
            return {}
        found = {}
        for device in json.loads(spec_file.read_text())["devices"]:
            [node] = device["containerEdits"]["deviceNodes"]
            found[device["name"]] = node
        return found

    def entry() -> dict[str, str]:
        [(name, node)] = [(n, e) for n, e in entries().items() if not n.endswith(":s1")]
        return {"name": name, **node}

    written = entry()
    assert (written["hostPath"], written["path"]) == (os.path.realpath(pts0), "/dev/s0")
    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] == ""
    assert [c["Name"] for c in first["cdi_devices"]] == [f"{KIND}={written['name']}"]

    relink(link, pts1)
    # the index claims the link anew: it reaches B's node now, so A's device is held
    await kubelet.await_for(healthy(A, 0), what="A's device held once its link moved")
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    [other] = second["devices"]
    assert rdev(other["PathOnHost"]) == rdev(pts1)
    # a device more: once the spec lists it, it was written after A's s0 was held
    (short_dir / "f1").write_text("")
    probe.write_text(probe.read_text() + f"s1 Healthy path={short_dir}/f1:/dev/s1\n")
    await wait_until(
        lambda: any(n.endswith(":s1") for n in entries()), what="the spec written after the hold"
    )
    # pod1's CDI name still resolves to the node A claimed and handed out, never pod2's
    kept = entry()
    assert kept["hostPath"] == os.path.realpath(pts0)
    assert rdev(kept["hostPath"]) == rdev(pts0) != rdev(pts1)


async def test_hostile3_1_a_link_re_pointed_at_a_free_node_is_handed_out_as_its_new_target(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The one host path follows the claim: a link re-pointed at a node nobody owns is
    claimed anew, and the CDI spec and the next Allocate hand out its new real path (no pod
    held the device: nothing keeps the old one)."""
    kubelet = real_kubelet_factory()
    (short_dir / "dev").mkdir()
    (short_dir / "b").mkdir()
    (short_dir / "b" / "n1").write_text("")
    for name in ("f1", "f2"):
        (short_dir / name).write_text("")
    link = short_dir / "dev" / "link"
    link.symlink_to(short_dir / "f1")
    cdi = short_dir / "cdi"
    cdi_keys = f"    allocate: {{cdi: {{kind: {KIND}, specDir: {cdi}, alsoDeviceSpecs: true}}}}\n"
    await start_linked(start_host, kubelet, short_dir, link, short_dir / "pr", cdi_keys)
    spec_file = cdi / spec_file_name(A)

    def host_path() -> str:
        [device] = json.loads(spec_file.read_text())["devices"]
        [node] = device["containerEdits"]["deviceNodes"]
        return str(node["hostPath"])

    assert host_path() == str(short_dir / "f1")
    relink(link, short_dir / "f2")
    await wait_until(lambda: host_path() == str(short_dir / "f2"), what="the spec's new path")
    answer = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert answer["error"] == ""
    assert [d["PathOnHost"] for d in answer["devices"]] == [str(short_dir / "f2")]


async def test_hostile3_1_hooks_get_the_real_path_and_release_what_was_handed_out(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G1 addendum (hooks): `{hostPaths}` of `allocate.command`, `preStart` and `release`
    (argv and env) expanded the printed link: after it was re-pointed at the node B gave
    pod2, the release of pod1's device reset pod2's node. Every hook gets the real path the
    index claimed; a release resets what the Allocate handed out."""
    pts0, pts1 = ptys
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    link = linked_nodes(short_dir, pts0, pts1)
    log = short_dir / "hooks.log"
    hook = script(
        short_dir,
        "hook.sh",
        f'echo "$1 $2 $HOSTS" >> {log}\nif [ "$1" = allocate ]; then echo "{{}}"; fi\n',
    )
    env = '{HOSTS: "{hostPaths}"}'
    hooks = (
        f'    allocate: {{command: ["{hook}", allocate, "{{hostPaths}}"]}}\n'
        f'    preStart: {{command: ["{hook}", preStart, "{{hostPaths}}"], env: {env}}}\n'
        f'    release: {{command: ["{hook}", release, "{{hostPaths}}"], env: {env}}}\n'
    )
    await start_linked(start_host, kubelet, short_dir, link, pod_resources, hooks)
    real = os.path.realpath(pts0)

    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] == ""
    [spec] = first["devices"]
    assert spec["PathOnHost"] == real
    lines = log.read_text().splitlines()
    assert lines == [f"allocate {real} ", f"preStart {real} {real}"]

    relink(link, pts1)
    await kubelet.await_for(healthy(A, 0), what="A's device held once its link moved")
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    assert (await kubelet.acall(kubelet.release, "pod1"))["found"]
    await wait_until(
        lambda: any(line.startswith("release") for line in log.read_text().splitlines()),
        what="pod1's device released",
    )
    [released] = [line for line in log.read_text().splitlines() if line.startswith("release")]
    # the node pod1 was handed, not the one the link reaches now (pod2's)
    assert released == f"release {real} {real}"


def test_a_device_has_one_host_path_per_node_and_mount(tmp_path: Path) -> None:
    """`canonical`: each node's and mount's host path is the real path its claim resolved
    (container paths as given); a device all of whose paths are real is itself."""
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "node").write_text("")
    (tmp_path / "link").symlink_to(real_dir / "node")
    (tmp_path / "dir").symlink_to(real_dir)
    device = Device(
        "d",
        nodes=(DeviceNode(f"{tmp_path}/link", "/dev/x"), DeviceNode(f"{tmp_path}/dir/node", "/y")),
        mounts=(DeviceMount(f"{tmp_path}/dir", "/m"),),
        path=f"{tmp_path}/link",
    )
    claims = device_claims(device)
    made = canonical(device, claims)
    assert [(n.host_path, n.container_path) for n in made.nodes] == [
        (str(real_dir / "node"), "/dev/x"),
        (str(real_dir / "node"), "/y"),
    ]
    assert [(m.host_path, m.container_path) for m in made.mounts] == [(str(real_dir), "/m")]
    assert made.path == device.path  # (where the driver found it: `{path}` of health checks)
    node = str(real_dir / "node")
    plain = Device("p", path=node, nodes=(DeviceNode(node, node),))
    assert canonical(plain, device_claims(plain)) is plain


def test_a_real_path_hostpaths_could_not_list_is_unresolvable(tmp_path: Path) -> None:
    """A link to a node whose real path holds `,`: `{hostPaths}` would split it into two
    paths, so the device is left out like a magic link's (a printed `,` is a parse error)."""
    odd = tmp_path / "a,b"
    odd.mkdir()
    (odd / "node").write_text("")
    (tmp_path / "link").symlink_to(odd / "node")
    assert checked_reach(str(tmp_path / "link")) == UNRESOLVABLE
    assert checked_reach(str(odd / "node")) is not None  # (printed so: a parse error)
    assert reach(str(tmp_path / "link")) is not None  # (what `check` compares: no refusal)
