"""Containment: Allocate latency on one resource while another resource's probe hangs.

Three kdp-host processes serve the same glob resource (rich allocate section); two of them
also run a shell resource whose probe never finishes (killed at its 2 s timeout and started
again 100 ms later): `sleep 3600`, and a shell that forks a hanging child which keeps the
probe's stdout open. Every run measures Allocate p99 on each, in rotating order; the figures
are the ratios to the host without a hung probe within the same run.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .harness import (
    Figure,
    Options,
    glob_resource,
    make_device_files,
    make_workdir,
    remove_tree,
    rich_allocate,
)
from .latency import RESOURCE, allocate_request, allocate_targets, measure, served_host

HUNG_PROBES: dict[str, list[str]] = {
    "hung probe": ["sleep", "3600"],
    "hung probe child": ["sh", "-c", "sleep 3600 & echo d0 Healthy; wait"],
}


def _shell_resource(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "shell": {"command": command, "timeout": "2s", "interval": "100ms"},
    }


def run(opts: Options) -> list[Figure]:
    labels = ["no hung probe", *HUNG_PROBES]
    figures: dict[str, Figure] = {}
    for label in labels:
        figures[f"allocate p50 {label}"] = Figure(f"containment: allocate p50, {label}", "ms")
        figures[f"allocate p99 {label}"] = Figure(f"containment: allocate p99, {label}", "ms")
    ratios = {
        label: Figure(
            f"containment: allocate p99 ratio, {label}/none",
            "x",
            target=1.5,
            note="same run, vs the same host without the hung probe",
        )
        for label in HUNG_PROBES
    }
    workdir = make_workdir("contain")
    fpga = glob_resource(RESOURCE, f"{workdir}/dev/fpga*", rich_allocate(workdir))
    try:
        make_device_files(workdir / "dev", 16, "fpga")
        with contextlib.ExitStack() as stack:
            hosts = [stack.enter_context(served_host(workdir, "kdp-plain", [fpga]))]
            for i, command in enumerate(HUNG_PROBES.values()):
                resources = [fpga, _shell_resource(f"bench.kdp-host.io/hung{i}", command)]
                hosts.append(
                    stack.enter_context(
                        served_host(workdir, f"kdp-hung{i}", resources, wait_for=[RESOURCE])
                    )
                )
            request = allocate_request(hosts[0].device_ids[:2])
            targets = allocate_targets(stack, list(labels), list(hosts), request)
            sized = Options(**{**opts.__dict__, "calls": opts.containment_calls})
            for i in range(opts.repeats):
                result = measure(targets, request, sized, figures, i)
                for label in HUNG_PROBES:
                    ratios[label].add(result[label][1] / result[labels[0]][1])
                for served in hosts:
                    served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [*figures.values(), *ratios.values()]
