"""Release commands: from a pod's end to its device's `release.command` starting, at the default
PodResources interval (5 s), through the kubelet's real device manager and PodResources server
(tests/kubelet_harness.py); and the PodResources calls per second kdp-host makes meanwhile.

Per repeat: eight pods take the eight devices (Allocate and PreStartContainer through the real
kubelet); once kdp-host's `kdp_devices_in_use` says it saw them (just after a poll), each
ends at its own uniform offset within the next interval (so the poll's phase is sampled
uniformly: the expected median is half the interval), and each release command prints
the wall time it started. The figure is the median per repeat. The pod's end is the
harness's `/release` returning; the command's start includes its fork and exec (a few ms).
The calls per second are kdp-host's `kdp_pod_resources_polls_total` over the run (List
calls; a GetAllocatableResources call comes with every 12th). Where the harness is absent
the section says so.
"""

from __future__ import annotations

import random
import time
import urllib.request
from pathlib import Path

from ..kubelet_harness import HarnessError, RealKubelet, harness_binary, missing_reason
from .harness import (
    BenchError,
    Figure,
    KdpHost,
    Options,
    glob_resource,
    make_device_files,
    make_workdir,
    median,
    remove_tree,
    wait_until,
)

RESOURCE = "bench.example/fpga"
DEVICES = 8
INTERVAL = 5.0
"""kubelet.podResourcesInterval's default."""


def _scrape(address: str, name: str, labels: str = "") -> float:
    """The sum of the samples of metric `name` (with `labels` text inside its braces)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _release_script(directory: Path, log: Path) -> str:
    path = directory / "release.sh"
    path.write_text(f'#!/bin/sh\necho "$1 $(date +%s.%N)" >> {log}\n')
    path.chmod(0o755)
    return str(path)


def run(opts: Options) -> list[Figure]:
    latency = Figure("pod end -> release.command started, median", "s", note="interval 5s")
    calls = Figure("PodResources List calls per second (kdp-host)", "1/s", target=0.5)
    if harness_binary() is None:
        reason = missing_reason()
        latency.note = calls.note = f"not measured: {reason}"
        return [latency, calls]
    workdir = make_workdir("release")
    kubelet = RealKubelet(workdir / "dp", pod_resources_dir=workdir / "pr")
    try:
        try:
            kubelet.start()
        except HarnessError as exc:
            raise BenchError(str(exc)) from None
        make_device_files(workdir / "dev", DEVICES, "fpga")
        log = workdir / "released.log"
        resource = glob_resource(
            RESOURCE,
            f"{workdir}/dev/fpga*",
            release={"command": [_release_script(workdir, log), "{ids}"]},
        )
        settings = {
            "kubelet": {"podResourcesSocket": str(workdir / "pr" / "kubelet.sock")},
            "stateDir": str(workdir / "state"),
        }
        with KdpHost(workdir, workdir / "dp", [resource], settings=settings) as host:
            kubelet.wait_for(
                lambda k: (k.resource(RESOURCE) or {}).get("healthy") == DEVICES,
                timeout=30,
                what="the resource registered",
            )
            address = host.metrics_address
            started = time.monotonic()
            polls_before = _scrape(address, "kdp_pod_resources_polls_total")
            for repeat in range(opts.repeats):
                samples = _one_repeat(kubelet, host, address, log, repeat)
                latency.add(median(samples))
            elapsed = time.monotonic() - started
            polls = _scrape(address, "kdp_pod_resources_polls_total") - polls_before
            calls.add(polls / elapsed)
            host.check_alive()
    finally:
        kubelet.stop()
        remove_tree(workdir)
    return [latency, calls]


def _one_repeat(
    kubelet: RealKubelet, host: KdpHost, address: str, log: Path, repeat: int
) -> list[float]:
    pods = [f"r{repeat}-p{i}" for i in range(DEVICES)]
    held: dict[str, str] = {}
    for pod in pods:
        result = kubelet.allocate(pod, {RESOURCE: 1})
        if result["error"]:
            raise BenchError(f"allocate {pod}: {result['error']}")
        [device] = result["device_ids"][RESOURCE]
        held[pod] = device
    wait_until(
        lambda: _scrape(address, "kdp_devices_in_use", f'resource="{RESOURCE}"') == DEVICES,
        timeout=3 * INTERVAL,
        what="kdp-host saw the pods",
    )
    # Just after a poll (it saw the pods): each pod ends at its own uniform offset within
    # the next interval, so every phase of the poll cycle is sampled alike.
    seen = time.monotonic()
    ended: dict[str, float] = {}
    for offset, pod in sorted((random.uniform(0.0, INTERVAL), pod) for pod in pods):
        time.sleep(max(0.0, seen + offset - time.monotonic()))
        kubelet.release(pod)
        ended[held[pod]] = time.time()
    wait_until(
        lambda: len(_starts(log, ended)) == DEVICES,
        timeout=4 * INTERVAL,
        what="every release started",
    )
    host.check_alive()
    starts = _starts(log, ended)
    return [starts[device] - ended[device] for device in ended]


def _starts(log: Path, ended: dict[str, float]) -> dict[str, float]:
    """The start time of each device's release after its pod ended."""
    found: dict[str, float] = {}
    if not log.exists():
        return found
    for line in log.read_text().splitlines():
        device, _, stamp = line.partition(" ")
        at = float(stamp)
        if device in ended and at >= ended[device] - 0.001 and device not in found:
            found[device] = at
    return found
