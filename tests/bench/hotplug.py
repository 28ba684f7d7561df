"""Hot-plug: a matching device file appears (or goes) -> the ListAndWatch update arrives.

The kubelet (the simulator, in this process) holds the ListAndWatch stream open throughout. The
same path is plugged and unplugged in turn: an unplugged path stays listed as Unhealthy for
the grace period, so each event changes the healthy count by one.
"""

from __future__ import annotations

import os
import random
import time

from .harness import (
    Figure,
    Options,
    Update,
    glob_resource,
    make_device_files,
    make_workdir,
    median,
    now,
    remove_tree,
    touch,
)
from .latency import served_host

RESOURCE = "bench.kdp-host.io/hotplug"
BASE_DEVICES = 8
MS = 1000.0


def run(opts: Options) -> list[Figure]:
    plug = Figure("hot-plug add -> update", "ms", target=50.0, note="median of the run")
    unplug = Figure("hot-plug removal -> update", "ms", target=50.0, note="median of the run")
    worst = Figure("hot-plug add -> update, max", "ms", note="slowest event of the run")
    workdir = make_workdir("hotplug")
    rng = random.Random(7)
    try:
        make_device_files(workdir / "dev", BASE_DEVICES, "fpga")
        resources = [glob_resource(RESOURCE, f"{workdir}/dev/fpga*")]
        with served_host(workdir, "kdp-hotplug", resources) as served:
            connection = served.kubelet.plugins[RESOURCE]
            hot = workdir / "dev" / "fpga-hot"

            def wait(count: int, after: int) -> Update:
                _, update = connection.wait_update(
                    lambda u: u.healthy() == count, after=after, timeout=10
                )
                return update

            for _ in range(opts.repeats):
                adds: list[float] = []
                removals: list[float] = []
                for _ in range(opts.hotplug_events):
                    after = connection.count()
                    started = now()
                    touch(hot)
                    adds.append((wait(BASE_DEVICES + 1, after).at - started) * MS)
                    time.sleep(0.02 + rng.random() * 0.03)
                    after = connection.count()
                    started = now()
                    os.unlink(hot)
                    removals.append((wait(BASE_DEVICES, after).at - started) * MS)
                    time.sleep(0.02 + rng.random() * 0.03)
                plug.add(median(adds))
                unplug.add(median(removals))
                worst.add(max(adds))
                served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [plug, unplug, worst]
