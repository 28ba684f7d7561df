"""Kubelet restart: kubelet.sock re-created -> Register received.

Each restart does what a kubelet restart does: the old kubelet goes away (kubelet.sock and
every plugin connection), then the new one cleans the directory (every non-directory entry
but the checkpoint, plugin sockets included) and listens again. The figure is from just
before the new kubelet.sock is created to the Register call arriving; the kubelet then dials
back and the next restart waits for the stream's first list.

The last figure stops the kubelet the way its graceful `Server.Stop` does (plugin clients
dropped while the Registration server still answers), which lets a plugin's quick
re-registration race the stop.
"""

from __future__ import annotations

import time

from .harness import (
    Figure,
    Options,
    glob_resource,
    make_device_files,
    make_workdir,
    median,
    remove_tree,
)
from .latency import served_host

MS = 1000.0
MANY = 10


def run(opts: Options) -> list[Figure]:
    one = Figure("kubelet restart -> Register", "ms", target=100.0, note="median of the run")
    one_max = Figure("kubelet restart -> Register, max", "ms", note="slowest restart of the run")
    many = Figure(
        f"kubelet restart -> all {MANY} registered", "ms", note=f"{MANY} resources, median"
    )
    many_max = Figure(
        f"kubelet restart -> all {MANY} registered, max", "ms", note="slowest restart of the run"
    )
    graceful = Figure(
        f"kubelet graceful-stop restart -> all {MANY} registered, max",
        "ms",
        note="clients dropped before the kubelet server stops",
    )
    workdir = make_workdir("restart")
    cases = [
        (1, False, one, one_max),
        (MANY, False, many, many_max),
        (MANY, True, None, graceful),
    ]
    try:
        # Devices of their own per resource: a device node is advertised by one resource
        # only (ownership), and the first resource must have devices for the waits.
        for i in range(MANY):
            make_device_files(workdir / "dev" / str(i), 8, "fpga")
        for count, clients_first, typical, worst in cases:
            resources = [
                glob_resource(f"bench.kdp-host.io/restart{i}", f"{workdir}/dev/{i}/fpga*")
                for i in range(count)
            ]
            names = [r["name"] for r in resources]
            label = f"kdp-restart{count}{'g' if clients_first else ''}"
            # The graceful-stop case may crash resources (and wait out the host's restart
            # backoff): a fresh process per run and a few restarts keep it bounded.
            runs = min(opts.repeats, 3) if clients_first else opts.repeats
            restarts = min(opts.restarts, 5) if clients_first else opts.restarts
            for _ in range(runs):
                with served_host(workdir, label, resources) as served:
                    latencies = []
                    for _ in range(restarts):
                        listening = served.kubelet.restart(
                            gap=opts.restart_gap, clients_first=clients_first
                        )
                        events = served.kubelet.wait_registrations(
                            names, since=listening, timeout=60
                        )
                        latest = max(event.at for event in events.values())
                        latencies.append((latest - listening) * MS)
                        time.sleep(0.05)
                    if typical is not None:
                        typical.add(median(latencies))
                    worst.add(max(latencies))
                    served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [one, one_max, many, many_max, graceful]
