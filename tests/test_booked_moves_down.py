"""Issue 17 across restarts: what a booking holds is found again by a host that was down
while it changed (through the kubelet's real device manager, tests/kubelet_harness.py).

A directory a pod holds mounted (a glob group's directory) renamed (`mv`) while kdp-host
was down: the pod's bind mount follows the directory's inode, so whatever is in it, at its
new place, is still the pod's. The restarted host knew the booking by the directory's old
path only (the pin that follows it while the host runs, `ownership_pinned`, died with the
host): a node inside it that a pattern now matches was advertised and handed to a second
pod."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdp_host.kubelet_checkpoint import CHECKPOINT_FILE
from kdp_host.ownership_document import OWNERSHIP_FILE

from .kubelet_harness import RealKubelet, healthy
from .test_ownership_kubelet import (
    ALIAS,
    FPGA,
    booked_config,
    fpga0_served,
    grants,
    host_paths,
    restart,
)

pytestmark = pytest.mark.fast


def _both(count: int):  # type: ignore[no-untyped-def]
    def check(kubelet: RealKubelet) -> bool:
        return healthy(FPGA, 1)(kubelet) and healthy(ALIAS, count)(kubelet)

    return check


@pytest.mark.parametrize("into", ["pattern", "other_mount"])
async def test_a_booked_directory_renamed_while_down_keeps_what_is_in_it_held(
    real_kubelet_factory, short_dir: Path, kdp_process, into: str
) -> None:
    """p1 holds group directory a/g0 mounted (fpga), with a node n in it. While kdp-host is
    down g0 is renamed to b/g0, where alias's pattern `b/*/n` matches n (`pattern`), or into
    the directory alias's device c mounts (`other_mount`). After the restart no second pod
    may be handed n (or c's tree holding it) while p1 runs; once p1 ends, it is free."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    a, b, c = short_dir / "a", short_dir / "b", short_dir / "c"
    (a / "g0").mkdir(parents=True)
    (a / "g0" / "n").touch()
    (b / "x").mkdir(parents=True)
    (b / "x" / "n").touch()
    (c / "m").mkdir(parents=True)
    alias = (
        f'{{paths: ["{b}/*/n"]}}' if into == "pattern" else f'{{group: [{{path: "{c}/{{key}}"}}]}}'
    )
    config = booked_config(
        kubelet,
        short_dir,
        f'  - name: {FPGA}\n    glob: {{group: [{{path: "{a}/g{{key}}"}}]}}\n'
        f"  - name: {ALIAS}\n    glob: {alias}\n",
    )
    host = await kdp_process(config)
    await kubelet.await_for(_both(1), what="fpga g0 and alias's device advertised")
    answer = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert answer["error"] == "", answer
    await host.stop()
    moved = b / "g0" if into == "pattern" else c / "m" / "g0"
    os.rename(a / "g0", moved)
    before = await kubelet.acall(kubelet.last_seq)
    await restart(kubelet, host, FPGA, ALIAS)
    held = moved / "n" if into == "pattern" else c / "m"
    first = await kubelet.acall(kubelet.first_list_after_registering, ALIAS, before)
    granted = []
    for pod in ("p2", "p3"):
        answer = await kubelet.acall(kubelet.allocate, pod, {ALIAS: 1})
        if answer["error"] == "":
            granted.append(answer)
    reached = [
        path
        for answer in granted
        for path in {*host_paths(answer), *(m["HostPath"] for m in answer.get("mounts", []))}
    ]
    assert str(held) not in reached, f"p1 holds {moved} mounted: {reached} ({first})"
    assert len(granted) == (1 if into == "pattern" else 0), granted
    for pod in ("p1", "p2", "p3"):
        await kubelet.acall(kubelet.release, pod)
    await kubelet.await_for(
        healthy(ALIAS, 2 if into == "pattern" else 1), what="free once p1 ended"
    )
    if into == "pattern":
        assert {str(moved / "n")} in await grants(kubelet, ALIAS, "p4", "p5")


# N1: the crash window between the Allocate's two state files. Both writes start at once and
# the answer waits for both, at most `state_file.WRITE_LIMIT` each: `handed-out.json` not
# written refuses the Allocate; `ownership.json` not written answers all the same (the
# booking holds in memory; a restart books it again from the kubelet's checkpoint). A write
# is held back here by holding its file's lock (`<name>.lock`, which each write takes), as
# a hung or full state directory does to the larger file first; kdp-host is then killed.


@contextlib.contextmanager
def write_held(state: Path, name: str) -> Iterator[None]:
    """Hold `<state>/<name>.lock` exclusively: kdp-host's writes of `name` wait for it."""
    state.mkdir(exist_ok=True)
    fd = os.open(state / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.parametrize("held", [True, False], ids=["ownership_unwritten", "written"])
async def test_an_answer_whose_booking_was_not_written_keeps_its_node_after_a_kill(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process, held: bool
) -> None:
    """p1 is handed fpga0 while `ownership.json` cannot be written (answered after the
    write limit, the booking in memory only: `handed-out.json` holds it); kdp-host is
    killed; while it is down fpga0 is renamed fpga5 (the same file: p1 still has it).
    After the restart no second pod may be handed that file. The answer waits 5 s for the
    write, longer than `heard_after` (FAST's 1.25 s; the product's 5 s, under load): the
    PodResources answers meanwhile, which cannot show p1 yet, must not end its booking,
    which would take its entry of `handed-out.json` with it (restartrace: the booking ended,
    and p2 was handed fpga5)."""
    kubelet, _, host = await fpga0_served(real_kubelet_factory, short_dir, devices, kdp_process)
    with write_held(short_dir / "state", OWNERSHIP_FILE) if held else contextlib.nullcontext():
        assert await grants(kubelet, FPGA, "p1") == [{str(devices / "fpga0")}]
        await host.stop()
    os.rename(devices / "fpga0", devices / "fpga5")
    before = await kubelet.acall(kubelet.last_seq)
    await restart(kubelet, host, FPGA)
    listed = await kubelet.acall(kubelet.first_list_after_registering, FPGA, before)
    granted = await grants(kubelet, FPGA, "p2")
    assert granted == [], f"p1 holds the file now at fpga5 ({listed})"


# The record-only case (issue 17, restartrec): `handed-out.json` keeps p1's use, but neither
# `ownership.json` (its write stalled) nor the kubelet's checkpoint does: the kubelet writes
# that file only once every resource of the container is allocated, so a slow other plugin of
# p1's container holds it back. Here both files are put back as they were before p1 once
# kdp-host is killed (`ownership.json` had no booking yet: none; the checkpoint as the kubelet
# has it on disk while it waits for that plugin: it keeps p1 in memory, so PodResources shows
# p1, and writes the file again only at its next allocation or list).


async def test_a_use_only_the_record_kept_holds_its_node_after_a_kill(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    """p1 is handed fpga0; `ownership.json` cannot be written and the kubelet's checkpoint
    does not list p1 yet when kdp-host is killed; while it is down fpga0 is renamed fpga5.
    The restart books fpga0's use from `handed-out.json` with what it reached: no second pod
    is handed the file now at fpga5 while p1 runs, and it is free once p1 has ended."""
    kubelet, _, host = await fpga0_served(real_kubelet_factory, short_dir, devices, kdp_process)
    checkpoint = kubelet.socket_dir / CHECKPOINT_FILE
    before_p1 = checkpoint.read_bytes()
    assert await grants(kubelet, FPGA, "p1") == [{str(devices / "fpga0")}]
    await host.stop()
    (short_dir / "state" / OWNERSHIP_FILE).unlink()  # (as before p1: its write stalled)
    checkpoint.write_bytes(before_p1)
    os.rename(devices / "fpga0", devices / "fpga5")
    before = await kubelet.acall(kubelet.last_seq)
    await restart(kubelet, host, FPGA)
    listed = await kubelet.acall(kubelet.first_list_after_registering, FPGA, before)
    assert await grants(kubelet, FPGA, "p2") == [], f"p1 holds the file now at fpga5 ({listed})"
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(FPGA, 1), what="fpga5 free once p1 ended")
    assert await grants(kubelet, FPGA, "p3") == [{str(devices / "fpga5")}]
