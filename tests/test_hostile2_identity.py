"""Findings F5 and F15 of the second hostile pass (issue 17), through the real kubelet: what
is one thing on the host is advertised by one resource, whatever its paths (a hard link, a
rename) and whether or not it passes a node (a PCI device handed out by its address)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kdp_host.cli import main

from .fake_sysfs import FakeSysfs
from .kubelet_harness import RealKubelet
from .test_ownership_kubelet import booked_head, grants

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

A, B, PROBE = "h.example/a", "h.example/b", "m.example/probe"
ONE, TWO = "v.example/one", "v.example/two"


def capacity(kubelet: RealKubelet, *resources: str) -> list[int]:
    """The healthy count of each resource, once the kubelet knows every one of them."""
    seen = [kubelet.resource(resource) for resource in resources]
    return [-1 if s is None else s["healthy"] for s in seen]


def held(running: object, resource: str) -> float:
    value = running.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "kdp_driver_skipped_total", {"resource": resource, "reason": "node_owned"}
    )
    return value or 0.0


async def test_hostile2_5_a_hard_link_never_hands_one_file_to_two_pods(
    real_kubelet_factory, short_dir: Path, start_host, capsys: pytest.CaptureFixture[str]
) -> None:
    """F5 (t8): `ln dev/a/f dev/b/g` made the same file two devices (a/* and b/*), and a
    probe mounting dev/b/g a third: each went to its own pod, and `check` was silent. A file
    is claimed by its inode: one of them is advertised, and `check` warns."""
    kubelet = real_kubelet_factory()
    for sub in ("a", "b"):
        (short_dir / "dev" / sub).mkdir(parents=True)
    (short_dir / "dev" / "a" / "f").touch()
    os.link(short_dir / "dev" / "a" / "f", short_dir / "dev" / "b" / "g")
    probe = short_dir / "probe.sh"
    probe.write_text(
        '#!/bin/sh\necho \'[{"id": "m0", "mounts": [{"hostPath": '
        f'"{short_dir}/dev/b/g", "containerPath": "/mnt/g"}}]}}]\'\n'
    )
    probe.chmod(0o755)
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir / 'state'}\n"
        "resources:\n"
        f'  - name: {A}\n    glob: {{paths: ["{short_dir}/dev/a/*"]}}\n'
        f'  - name: {B}\n    glob: {{paths: ["{short_dir}/dev/b/*"]}}\n'
        f'  - name: {PROBE}\n    shell: {{command: ["{probe}"], format: json}}\n'
    )
    assert await asyncio.to_thread(main, ["check", "--config", str(config)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 2, warnings
    assert all(A in line for line in warnings), warnings
    running = await start_host(config.read_text())
    await kubelet.await_for(
        lambda k: sorted(capacity(k, A, B, PROBE)) == [0, 0, 1],
        what="the file advertised once: the first resource to list it has it",
    )
    [winner] = [r for r in (A, B, PROBE) if kubelet.resource(r)["healthy"] == 1]
    answers = [await kubelet.acall(kubelet.allocate, f"p-{r}", {r: 1}) for r in (A, B, PROBE)]
    assert [answer["error"] == "" for answer in answers] == [r == winner for r in (A, B, PROBE)]
    assert sum(held(running, r) for r in (A, B, PROBE)) == 2


async def test_hostile2_5_a_file_renamed_under_a_holding_pod_is_not_a_new_device(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """F5 (t25): pod1 holds a/x; `mv dev/a/x dev/b/x` made it a new device of b, and pod2
    got the same inode. The booking holds the file (its inode), wherever it is renamed to,
    until PodResources shows pod1 gone, and a/x, listed missing, holds it until its
    gracePeriod ends (hostile26 N2: `ownership_lingering._device_missing`; 1 s here)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    for sub in ("a", "b"):
        (short_dir / "dev" / sub).mkdir(parents=True)
    (short_dir / "dev" / "a" / "x").touch()
    running = await start_host(
        booked_head(kubelet, short_dir)
        + f'  - name: {A}\n    glob: {{paths: ["{short_dir}/dev/a/*"], gracePeriod: 1s}}\n'
        f'  - name: {B}\n    glob: {{paths: ["{short_dir}/dev/b/*"]}}\n'
    )
    await kubelet.await_for(lambda k: capacity(k, A, B) == [1, 0], what="a/x advertised")
    [answer] = await grants(kubelet, A, "p1")
    inode = os.stat(short_dir / "dev" / "a" / "x").st_ino
    os.rename(short_dir / "dev" / "a" / "x", short_dir / "dev" / "b" / "x")
    await kubelet.await_for(
        lambda k: capacity(k, A, B)[0] == 0 and (held(running, B) == 1 or capacity(k, B) == [1]),
        what="a/x gone from a; b/x seen by b",
    )
    assert capacity(kubelet, B) == [0] and held(running, B) == 1, "b/x is pod1's file"
    assert await grants(kubelet, B, "p2") == [], f"pod1 holds inode {inode} ({answer})"
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(lambda k: capacity(k, A, B) == [0, 1], what="b/x once pod1 ended")
    assert await grants(kubelet, B, "p2") == [{str(short_dir / "dev" / "b" / "x")}]


async def test_hostile2_15_a_pci_device_without_a_node_is_advertised_once(
    real_kubelet_factory, short_dir: Path, start_host, capsys: pytest.CaptureFixture[str]
) -> None:
    """F15 (t48): a PCI function with no driver passes no node (a userspace driver gets its
    address, PCI_ADDR); two resources matching it both advertised it, to two pods. It claims
    its own sysfs directory: the second resource holds it, and `check` warns."""
    kubelet = real_kubelet_factory()
    fake = FakeSysfs(short_dir / "r")
    fake.pci_device("0000:01:00.0", "10de", "1230", pci_class="0x030000")
    fake.pci_device("0000:02:00.0", "10de", "1231", pci_class="0x030000")
    where = f"sysfsRoot: {fake.sys}, devRoot: {fake.dev}, env: {{PCI_ADDR: '{{address}}'}}"
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir / 'state'}\n"
        "resources:\n"
        f'  - name: {ONE}\n    sysfs: {{pci: [{{vendor: "10de", class: "03"}}], {where}}}\n'
        f'  - name: {TWO}\n    sysfs: {{pci: [{{vendor: "10de", device: "1230"}}], {where}}}\n'
    )
    assert await asyncio.to_thread(main, ["check", "--config", str(config)]) == 0
    [warning] = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert "0000:01:00.0" in warning and ONE in warning and TWO in warning
    running = await start_host(config.read_text())
    await kubelet.await_for(
        lambda k: min(capacity(k, ONE, TWO)) >= 0 and sum(capacity(k, ONE, TWO)) == 2,
        what="two functions, each advertised by one resource",
    )
    given = []
    for resource in (ONE, TWO):
        count = kubelet.resource(resource)["healthy"]
        if count:
            answer = await kubelet.acall(kubelet.allocate, f"p-{resource}", {resource: count})
            assert answer["error"] == "" and not answer.get("devices"), answer
            given += answer["envs"]["PCI_ADDR"].split(",")
    assert sorted(given) == ["0000:01:00.0", "0000:02:00.0"], "a function went to two pods"
    for resource in (ONE, TWO):
        assert (await kubelet.acall(kubelet.allocate, "p3", {resource: 1}))["error"] != ""
    assert held(running, ONE) + held(running, TWO) == 1
