"""GetPreferredAllocation over a long probe list (issue 19, hostile25 F9): admissions through
the kubelet's real device manager (tests/kubelet_harness.py) of a probe resource listing
`preferred_devices` (20,000) plain devices and a pair at one container path. A probe's
devices may share a container path, so the resource announces GetPreferredAllocation from
its first registration: every admission pays a second call whose request names every free
device.

Per repeat: one-device pods admitted one after another (the figure: their p50), then
two-device pods, which may be given the pair and are steered clear of it (their p50, every
one admitted), and kdp-host's own GetPreferredAllocation handler time, the mean of
`kdp_preferred_allocation_duration_seconds` (the request read before it is not in it).
Where the harness is absent the section says so.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from ..kubelet_harness import HarnessError, RealKubelet, harness_binary, missing_reason
from .harness import BenchError, Figure, KdpHost, Options, make_workdir, median, remove_tree

RESOURCE = "bench.example/big"
PODS = 30
"""One-device pods per repeat (and half as many two-device pods)."""
MS = 1000.0


def _metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and RESOURCE in line
    )


def _probe(workdir: Path, devices: int) -> str:
    """A probe printing `devices` plain devices and the pair (pa, pb at /dev/x)."""
    for name in ("a", "b"):
        (workdir / name).touch()
    listing = workdir / "list.txt"
    lines = [f"d{i} Healthy" for i in range(devices)]
    lines += [f"pa Healthy path={workdir}/a:/dev/x", f"pb Healthy path={workdir}/b:/dev/x"]
    listing.write_text("\n".join(lines) + "\n")
    probe = workdir / "probe.sh"
    probe.write_text(f"#!/bin/sh\ncat {listing}\n")
    probe.chmod(0o755)
    return str(probe)


def run(opts: Options) -> list[Figure]:
    devices = opts.preferred_devices
    note = f"{devices:,} probe devices and a pair, through the kubelet"
    one = Figure("admission p50, one-device pods", "ms", note=note)
    two = Figure("admission p50, two-device pods (steered clear of the pair)", "ms")
    handler = Figure("GetPreferredAllocation handler, mean", "ms")
    figures = [one, two, handler]
    if harness_binary() is None:
        for figure in figures:
            figure.note = f"not measured: {missing_reason()}"
        return figures
    for repeat in range(opts.repeats):
        workdir = make_workdir("preferred")
        kubelet = RealKubelet(workdir / "dp")
        try:
            try:
                kubelet.start()
            except HarnessError as exc:
                raise BenchError(str(exc)) from None
            resource = {
                "name": RESOURCE,
                "shell": {"command": [_probe(workdir, devices)], "interval": "30s"},
            }
            with KdpHost(workdir, workdir / "dp", [resource]) as host:
                kubelet.wait_for(
                    lambda k: (k.resource(RESOURCE) or {}).get("healthy") == devices + 2,
                    timeout=120,
                    what="the probe's devices listed",
                )
                one.add(median(_admit(kubelet, f"r{repeat}-one", PODS, 1)))
                two.add(median(_admit(kubelet, f"r{repeat}-two", PODS // 2, 2)))
                address = host.metrics_address
                seconds = _metric(address, "kdp_preferred_allocation_duration_seconds_sum")
                calls = _metric(address, "kdp_preferred_allocation_duration_seconds_count")
                handler.add(seconds / calls * MS)
                host.check_alive()
        finally:
            kubelet.stop()
            remove_tree(workdir)
    return figures


def _admit(kubelet: RealKubelet, prefix: str, pods: int, size: int) -> list[float]:
    """Admit `pods` pods of `size` devices each, one after another (each held): their
    admission times, in ms. Every one must be admitted."""
    times = []
    for i in range(pods):
        started = time.perf_counter()
        result = kubelet.allocate(f"{prefix}-{i}", {RESOURCE: size})
        times.append((time.perf_counter() - started) * MS)
        if result["error"]:
            raise BenchError(f"pod {prefix}-{i} refused: {result['error']}")
    return times
