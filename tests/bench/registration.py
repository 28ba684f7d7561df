"""Registration time in both modes (`kubelet.registration`), through the kubelet's real
device manager and plugin manager (tests/kubelet_harness.py; not run where it is absent).

For each mode, one `kdp-host run` (a child process) with one glob resource:

- start -> registered: from starting the process to the kubelet's `registered` event, so it
  includes the interpreter's start-up (the same in both modes);
- kubelet restart -> registered: from the new device manager listening (`restart_done`) to
  the kubelet's `registered` event of the new generation. deviceSocket: kdp-host sees the new
  kubelet.sock, serves again and calls Register; pluginsRegistry: the new plugin manager
  finds the socket and registers it, kdp-host does nothing.

Times are the harness's wall-clock stamps (`t_unix_ns`), and `time.time_ns()` for the start.
"""

from __future__ import annotations

import time
from typing import Any

from ..kubelet_harness import RealKubelet, harness_binary, missing_reason
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
)

MS = 1e-6
"""Milliseconds per nanosecond."""
RESOURCE = "bench.kdp-host.io/registration"
MODES = ("deviceSocket", "pluginsRegistry")


def _registered(kubelet: RealKubelet, since: int, gen: int, timeout: float) -> dict[str, Any]:
    """The first `registered` event of RESOURCE by generation `gen` after event `since`."""
    found: list[dict[str, Any]] = []

    def check(k: RealKubelet) -> bool:
        found[:] = [
            e
            for e in k.events(since)
            if e["kind"] == "registered" and e["resource"] == RESOURCE and e["gen"] == gen
        ]
        return bool(found)

    kubelet.wait_for(check, timeout, f"{RESOURCE} registered by generation {gen}")
    return found[0]


def _last_seq(kubelet: RealKubelet) -> int:
    events = kubelet.events()
    return int(events[-1]["seq"]) if events else 0


def run(opts: Options) -> list[Figure]:
    if harness_binary() is None:
        raise BenchError(missing_reason())
    figures: dict[tuple[str, str], Figure] = {}
    for mode in MODES:
        figures[mode, "start"] = Figure(
            f"registration {mode}: start -> registered", "ms", note="includes Python start-up"
        )
        figures[mode, "restart"] = Figure(
            f"registration {mode}: kubelet restart -> registered", "ms", note="median of the run"
        )
        figures[mode, "restart_max"] = Figure(
            f"registration {mode}: kubelet restart -> registered, max", "ms"
        )
    workdir = make_workdir("registration")
    try:
        make_device_files(workdir / "dev", 4, "fpga")
        resources = [glob_resource(RESOURCE, f"{workdir}/dev/fpga*")]
        for run_index in range(opts.repeats):
            for mode in MODES:
                base = workdir / f"{mode}-{run_index}"
                registry = base / "registry"
                kubelet = RealKubelet(
                    base / "dp",
                    plugins_registry_dir=registry if mode == "pluginsRegistry" else None,
                )
                kubelet.start()
                try:
                    extra = {"registration": mode, "pluginsRegistryDir": str(registry)}
                    host = KdpHost(
                        base, base / "dp", resources, settings={"kubelet": extra}, name=mode
                    )
                    since = _last_seq(kubelet)
                    started = time.time_ns()
                    with host:
                        first = _registered(kubelet, since, 0, 60)
                        figures[mode, "start"].add((first["t_unix_ns"] - started) * MS)
                        latencies = []
                        for restart in range(1, opts.restarts + 1):
                            since = _last_seq(kubelet)
                            done = kubelet.restart()
                            again = _registered(kubelet, since, restart, 60)
                            latencies.append(
                                (again["t_unix_ns"] - done["restart_done_unix_ns"]) * MS
                            )
                            time.sleep(0.05)
                        host.check_alive()
                    figures[mode, "restart"].add(median(latencies))
                    figures[mode, "restart_max"].add(max(latencies))
                finally:
                    kubelet.stop()
    finally:
        remove_tree(workdir)
    return list(figures.values())
