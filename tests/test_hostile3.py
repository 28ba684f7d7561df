"""Findings of the third hostile pass (issue 17: G1, G2, G6), through the real kubelet: what
an Allocate hands out is the real path the index claimed, checked to name what was claimed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdp_host.ownership_claims import Unresolvable, reach
from kdp_host.ownership_hand_out import handed_real, handed_reals

from .conftest import wait_until
from .kubelet_harness import healthy

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

A = "h3.example/a"
B = "h3.example/b"


@pytest.fixture
def ptys() -> Iterator[tuple[str, str]]:
    """Two real character nodes an ordinary user may open (held open for the test)."""
    fds = [os.openpty(), os.openpty()]
    try:
        yield os.ttyname(fds[0][1]), os.ttyname(fds[1][1])
    finally:
        for pair in fds:
            for fd in pair:
                os.close(fd)


def relink(link: Path, target: str | Path) -> None:
    """Re-point a link at once (`ln -s` beside it, then rename over it), as udev does."""
    new = link.with_name(link.name + ".new")
    new.symlink_to(target)
    new.rename(link)


def two_resources(socket_dir: Path, shell_path: str, glob_pattern: str) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}}}\n"
        "resources:\n"
        f"  - name: {A}\n"
        f'    shell: {{command: [echo, "s0 Healthy path={shell_path}:/dev/s0"], interval: 1s}}\n'
        f"  - name: {B}\n"
        f'    glob: {{paths: ["{glob_pattern}"], gracePeriod: 1s}}\n'
    )


def rdev(path: str) -> int:
    return os.stat(path).st_rdev


async def test_hostile3_1_a_probe_link_is_handed_out_as_its_real_path(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G1: a shell probe printed a link (a udev by-path link); the DeviceSpec carried the
    link, so re-pointing it after the Allocate made pod1's checkpointed DeviceSpec reach the
    node resource B then gave pod2. The answer carries the real path the index claimed."""
    pts0, pts1 = ptys
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (short_dir / "dev").mkdir()
    (short_dir / "b").mkdir()
    link = short_dir / "dev" / "link"
    link.symlink_to(pts0)
    (short_dir / "b" / "n1").symlink_to(pts1)
    await start_host(two_resources(kubelet.socket_dir, str(link), f"{short_dir}/b/*"))
    await kubelet.await_for(healthy(A, 1), what="A's device")
    await kubelet.await_for(healthy(B, 1), what="B's device")

    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] == ""
    [spec] = first["devices"]
    assert spec["PathOnHost"] == os.path.realpath(pts0)
    assert spec["PathInContainer"] == "/dev/s0"

    relink(link, pts1)
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    [other] = second["devices"]
    # pod1's checkpointed DeviceSpec still reaches the node A claimed, not pod2's
    assert rdev(spec["PathOnHost"]) == rdev(pts0) != rdev(other["PathOnHost"])


async def test_hostile3_1_allocate_command_output_links_are_handed_out_real(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G1 addendum: an `allocate.command` printed a link as a node's host path; the answer
    carried the link. It carries the link's real path."""
    pts0, _ = ptys
    kubelet = real_kubelet_factory()
    (short_dir / "dev").mkdir()
    link = short_dir / "dev" / "extra"
    link.symlink_to(pts0)
    printed = '{"paths": ["' + str(link) + ':/dev/extra"]}'
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        "resources:\n"
        f"  - name: {A}\n"
        '    shell: {command: [echo, "s0 Healthy"], interval: 1s}\n'
        f"    allocate: {{command: [echo, '{printed}']}}\n"
    )
    await kubelet.await_for(healthy(A, 1), what="A's device")
    answer = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert answer["error"] == ""
    [spec] = answer["devices"]
    assert (spec["PathOnHost"], spec["PathInContainer"]) == (os.path.realpath(pts0), "/dev/extra")


async def test_hostile3_2_a_swapped_ancestor_link_hands_out_what_was_claimed(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G2: the probe's path lies under a linked directory; swapping that directory (the
    probe's output unchanged) left the claim stale, and pod1 got B's node, which B gave
    pod2. A device is advertised with the real path its claim resolved (checked against
    what the path reached): the swap changes nothing handed out, pod1 gets the node A
    claimed, never pod2's."""
    pts0, pts1 = ptys
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    for name in ("dev", "dA", "dB"):
        (short_dir / name).mkdir()
    (short_dir / "dA" / "x").symlink_to(pts0)
    (short_dir / "dB" / "x").symlink_to(pts1)
    sub = short_dir / "dev" / "sub"
    sub.symlink_to(short_dir / "dA")
    await start_host(two_resources(kubelet.socket_dir, f"{sub}/x", f"{short_dir}/dB/*"))
    await kubelet.await_for(healthy(A, 1), what="A's device")
    await kubelet.await_for(healthy(B, 1), what="B's device")

    relink(sub, short_dir / "dB")
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    [other] = second["devices"]
    assert rdev(other["PathOnHost"]) == rdev(pts1)
    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] == ""
    [spec] = first["devices"]
    assert spec["PathOnHost"] == os.path.realpath(pts0)
    assert rdev(spec["PathOnHost"]) == rdev(pts0) != rdev(other["PathOnHost"])


async def test_hostile3_10_a_swapped_ancestor_of_a_kept_glob_path_refuses_the_allocate(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G10: an ancestor directory of a glob device's canonical path became a link; the stale
    path was handed out and reached another pod's node. An Allocate hands out a path kept
    from an earlier one (Issue 19: no resolution per Allocate) only while the watcher
    follows its directory and every directory above: the swap is seen, the path resolved
    again and the Allocate refused."""
    pts0, _ = ptys
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    for name in ("dev", "deep/a/b", "deep2/b", "b"):
        (short_dir / name).mkdir(parents=True)
    canonical = short_dir / "deep" / "a" / "b" / "n"
    canonical.write_text("")
    (short_dir / "dev" / "l").symlink_to(canonical)
    (short_dir / "deep2" / "b" / "n").symlink_to(pts0)
    (short_dir / "b" / "n1").symlink_to(pts0)
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        "resources:\n"
        f"  - name: {A}\n"
        f'    glob: {{paths: ["{short_dir}/dev/*"], gracePeriod: 1s}}\n'
        f"  - name: {B}\n"
        f'    glob: {{paths: ["{short_dir}/b/*"], gracePeriod: 1s}}\n'
    )
    await kubelet.await_for(healthy(A, 1), what="A's device")
    await kubelet.await_for(healthy(B, 1), what="B's device")
    for pod in ("pod0", "pod0b"):  # the canonical path is kept from here on
        answer = await kubelet.acall(kubelet.allocate, pod, {A: 1})
        assert answer["error"] == ""
        assert [s["PathOnHost"] for s in answer["devices"]] == [str(canonical)]
        await kubelet.acall(kubelet.release, pod)

    (short_dir / "deep" / "a").rename(short_dir / "deep" / "a.old")
    (short_dir / "deep" / "a").symlink_to(short_dir / "deep2")
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert "no longer reaches what was claimed" in first["error"]
    assert not first.get("devices")


@pytest.fixture
def private_bind(short_dir: Path, ptys: tuple[str, str]) -> Iterator[tuple[int, Path]]:
    """A process in a mount namespace of its own that bind-mounts a pty over `X/n`, which
    on the host is a plain file: (its pid, X)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a private mount namespace")
    x = short_dir / "X"
    x.mkdir()
    (x / "n").write_text("")
    holder = subprocess.Popen(
        ["unshare", "-r", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind {ptys[0]} {x}/n && echo up && exec sleep 100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "up":
            pytest.skip(f"no private mount namespace here: {holder.stderr.read()}")  # type: ignore[union-attr]
        yield holder.pid, x
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("driver", ["glob", "shell"])
async def test_hostile3_6_shell_advertised_no_more_through_a_magic_link(
    driver: str, real_kubelet_factory, short_dir: Path, start_host, private_bind: tuple[int, Path]
) -> None:
    """G6: a path through `/proc/<pid>/root` took its identity from the kernel's link (a
    pty) and its real path from the link's text, the HOST file resource B owns: two pods got
    one path. A shell probe's such path was refused at Allocate but still advertised. A path
    whose real path does not name what it reaches is left out at admission, by every driver
    (the glob scan, the ownership index for the others), logged and counted `unresolvable`."""
    pid, x = private_bind
    magic = f"/proc/{pid}/root{x}/n"
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    a = (
        f'    glob: {{paths: ["/proc/{pid}/root{x}/*"], gracePeriod: 1s}}\n'
        if driver == "glob"
        else f'    shell: {{command: [echo, "n Healthy path={magic}"], interval: 1s}}\n'
    )
    running = await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        "resources:\n"
        f"  - name: {A}\n{a}"
        f"  - name: {B}\n"
        f'    glob: {{paths: ["{x}/*"], gracePeriod: 1s}}\n'
    )
    await kubelet.await_for(healthy(B, 1), what="B's device")
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    [other] = second["devices"]
    assert other["PathOnHost"] == str(x / "n")

    def skipped() -> float:
        value = running.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "kdp_driver_skipped_total", {"resource": A, "reason": "unresolvable"}
        )
        return value or 0.0

    await wait_until(lambda: skipped() >= 1, what="A's magic path left out")
    seen = kubelet.resource(A)
    assert seen is None or seen["healthy"] == 0
    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] != ""
    assert str(x / "n") not in [s["PathOnHost"] for s in first.get("devices") or []]
    assert skipped() == 1  # (a probe lists it every second: counted while it is left out)


def test_the_identity_rule_takes_a_real_path_only_when_it_names_what_the_path_reaches(
    tmp_path: Path,
) -> None:
    """The identity rule: a path handed out is its real path when that path names what the
    text reaches; a swapped link or a magic link is Unresolvable; a path its device claimed
    must still reach the claim."""
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "f"
    target.write_text("")
    other = real_dir / "g"
    other.write_text("")
    link = tmp_path / "link"
    link.symlink_to(target)
    linked_dir = tmp_path / "dir"
    linked_dir.symlink_to(real_dir)
    # a plain path is itself (no copy); a link, or a path below a linked directory, is real
    assert handed_real(str(target)) == reach(str(target))
    assert handed_real(str(link)) == (reach(str(target))[0], str(target))  # type: ignore[index]
    assert handed_real(str(linked_dir / "g")) == reach(str(other))
    none = str(tmp_path / "none")
    assert handed_real(none) == (("path", os.path.realpath(none)), os.path.realpath(none))
    # the claim still reached: its real path; another node behind the same text: refused
    key = reach(str(target))[0]  # type: ignore[index]
    assert handed_reals([str(link)], {str(link): key}) == {str(link): str(target)}
    relink(link, other)
    with pytest.raises(Unresolvable, match="no longer reaches"):
        handed_reals([str(link)], {str(link): key})
    assert handed_reals([str(tmp_path / "none")], {}) == {
        str(tmp_path / "none"): str(tmp_path / "none")
    }


def test_a_magic_link_is_unresolvable(private_bind: tuple[int, Path]) -> None:
    """`/proc/<pid>/root/...`: `stat` follows the kernel's link into another mount
    namespace, `realpath` reads its text ("/"): the two name different things."""
    pid, x = private_bind
    with pytest.raises(Unresolvable, match="not what the path reaches"):
        handed_real(f"/proc/{pid}/root{x}/n")


@pytest.mark.parametrize("source", ["probe", "allocate.mounts"])
async def test_hostile3_1_mount_sources_through_links_are_handed_out_real(
    source: str, real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """G1 (mounts): a probe's `mounts[].hostPath` or a resource's `allocate.mounts` host
    path through a link was handed out as printed; re-pointing the link gave pod1 the
    directory of pod2's device. The answer carries the real directory."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    for name in ("dev", "mA", "mB"):
        (short_dir / name).mkdir()
    (short_dir / "mB" / "fileB").write_text("")
    link = short_dir / "dev" / "mlink"
    link.symlink_to(short_dir / "mA")
    mount = f"{{hostPath: {link}, containerPath: /m}}"
    if source == "probe":
        probe = short_dir / "p.json"
        probe.write_text(
            json.dumps([{"id": "s0", "mounts": [{"hostPath": str(link), "containerPath": "/m"}]}])
        )
        a = f"    shell: {{command: [cat, {probe}], format: json, interval: 1s}}\n"
    else:
        (short_dir / "dev" / "x0").write_text("")
        a = (
            f'    glob: {{paths: ["{short_dir}/dev/x*"], gracePeriod: 1s}}\n'
            f"    allocate: {{mounts: [{mount}]}}\n"
        )
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        "resources:\n"
        f"  - name: {A}\n{a}"
        f"  - name: {B}\n"
        f'    glob: {{paths: ["{short_dir}/mB/*"], gracePeriod: 1s}}\n'
    )
    await kubelet.await_for(healthy(A, 1), what="A's device")
    await kubelet.await_for(healthy(B, 1), what="B's device")
    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] == ""
    [handed] = [m for m in first["mounts"] if m["ContainerPath"] == "/m"]
    assert handed["HostPath"] == str(short_dir / "mA")
    relink(link, short_dir / "mB")
    second = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert second["error"] == ""
    # pod1's checkpointed mount still names A's directory, not the one holding pod2's file
    assert not (Path(handed["HostPath"]) / "fileB").exists()


async def test_hostile3_7_lost_bookings_are_rebooked_from_what_the_kubelet_handed_out(
    real_kubelet_factory, short_dir: Path, start_host, ptys: tuple[str, str]
) -> None:
    """G7: stateDir lost, and the probe swapped its IDs' nodes while kdp-host was down. The
    re-booking used what pod1's ID names now, so pod1's real node went out under the other
    ID to pod2 (two pods, one node). The kubelet's checkpoint keeps pod1's answer: its host
    paths are booked at start, before any device is advertised."""
    pts0, pts1 = ptys
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    listing = short_dir / "out"
    listing.write_text(f"s0 Healthy path={pts0}\ns1 Healthy path={pts1}\n")
    state = short_dir / "state"
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{pod_resources}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nresources:\n"
        f"  - name: {A}\n"
        f"    shell: {{command: [cat, {listing}], interval: 1s}}\n"
    )
    running = await start_host(config)
    await kubelet.await_for(healthy(A, 2), what="s0 and s1 advertised")
    first = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert first["error"] == ""
    [spec] = first["devices"]
    held = rdev(spec["PathOnHost"])

    await running.shutdown()
    await kubelet.await_for(
        lambda k: (k.resource(A) or {}).get("healthy", 0) == 0, what="the kubelet saw kdp-host go"
    )
    shutil.rmtree(state)  # the bookings are lost...
    # ...and the IDs now name each other's node
    listing.write_text(f"s0 Healthy path={pts1}\ns1 Healthy path={pts0}\n")
    await start_host(config)
    await kubelet.await_for(
        lambda k: (k.resource(A) or {}).get("healthy", 0) >= 1, what="kdp-host back"
    )
    second = await kubelet.acall(kubelet.allocate, "pod2", {A: 1})
    handed = [rdev(d["PathOnHost"]) for d in second["devices"]]
    assert held not in handed, "pod1's node went to pod2"
    assert second["error"] != "", "only pod1's ID is advertised: nothing is left for pod2"

    await kubelet.acall(kubelet.release, "pod1")
    await kubelet.await_for(healthy(A, 2), what="pod1's node is advertised once pod1 ended")
