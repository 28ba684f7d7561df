"""Hot-plug: a matching device file appears (or goes) -> the ListAndWatch update arrives.

The kubelet (the simulator, in this process) holds the ListAndWatch stream open throughout. The
same path is plugged and unplugged in turn: an unplugged path stays listed as Unhealthy for
the grace period, so each event changes the healthy count by one.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

from .harness import (
    Figure,
    Options,
    glob_resource,
    make_device_files,
    make_workdir,
    median,
    now,
    remove_tree,
    touch,
)
from .latency import ServedHost, served_host

RESOURCE = "bench.kdp-host.io/hotplug"
BASE_DEVICES = 8
MS = 1000.0


def run(opts: Options) -> list[Figure]:
    plug = Figure("hot-plug add -> update", "ms", target=50.0, note="median of the run")
    unplug = Figure("hot-plug removal -> update", "ms", target=50.0, note="median of the run")
    worst = Figure("hot-plug add -> update, max", "ms", note="slowest event of the run")
    workdir = make_workdir("hotplug")
    try:
        make_device_files(workdir / "dev", BASE_DEVICES, "fpga")
        resources = [glob_resource(RESOURCE, f"{workdir}/dev/fpga*")]
        with served_host(workdir, "kdp-hotplug", resources) as served:
            hot = workdir / "dev" / "fpga-hot"

            def arm() -> tuple[Callable[[], None], Callable[[], None]]:
                return (lambda: touch(hot)), (lambda: os.unlink(hot))

            measure_hotplug(opts, served, RESOURCE, BASE_DEVICES, arm, (plug, unplug, worst))
    finally:
        remove_tree(workdir)
    return [plug, unplug, worst]


Arm = Callable[[], tuple[Callable[[], None], Callable[[], None]]]
"""Gets one device ready (untimed) and returns how to plug it in and how to unplug it."""


def measure_hotplug(
    opts: Options,
    served: ServedHost,
    resource: str,
    present: int,
    arm: Arm,
    figures: tuple[Figure, Figure, Figure],
) -> None:
    """Plug and unplug one device in turn while `present` others are listed, each event
    timed until the ListAndWatch update with the new healthy count arrives; per run, the
    medians go into the plug and unplug figures and the slowest plug into the third."""
    plug_figure, unplug_figure, worst = figures
    connection = served.kubelet.plugins[resource]
    rng = random.Random(7)

    def wait(count: int, after: int) -> float:
        _, update = connection.wait_update(lambda u: u.healthy() == count, after=after, timeout=10)
        return update.at

    for _ in range(opts.repeats):
        adds: list[float] = []
        removals: list[float] = []
        for _ in range(opts.hotplug_events):
            plug, unplug = arm()
            after = connection.count()
            started = now()
            plug()
            adds.append((wait(present + 1, after) - started) * MS)
            time.sleep(0.02 + rng.random() * 0.03)
            after = connection.count()
            started = now()
            unplug()
            removals.append((wait(present, after) - started) * MS)
            time.sleep(0.02 + rng.random() * 0.03)
        plug_figure.add(median(adds))
        unplug_figure.add(median(removals))
        worst.add(max(adds))
        served.host.check_alive()
