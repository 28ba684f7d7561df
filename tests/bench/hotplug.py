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
from dataclasses import dataclass
from typing import Protocol

from .harness import (
    Figure,
    Options,
    PluginConnection,
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
    try:
        make_device_files(workdir / "dev", BASE_DEVICES, "fpga")
        resources = [glob_resource(RESOURCE, f"{workdir}/dev/fpga*")]
        with served_host(workdir, "kdp-hotplug", resources) as served:
            hot = workdir / "dev" / "fpga-hot"

            def arm() -> tuple[Callable[[], None], Callable[[], None]]:
                return (lambda: touch(hot)), (lambda: os.unlink(hot))

            arrivals = SimulatorArrivals(served.kubelet.plugins[RESOURCE])
            figures = (plug, unplug, worst)
            measure_hotplug(opts, arrivals, BASE_DEVICES, arm, figures, served.host.check_alive)
    finally:
        remove_tree(workdir)
    return [plug, unplug, worst]


Arm = Callable[[], tuple[Callable[[], None], Callable[[], None]]]
"""Gets one device ready (untimed) and returns how to plug it in and how to unplug it."""


class Arrivals(Protocol):
    """Where one resource's ListAndWatch lists arrive, stamped on arrival, and the clock
    they are stamped with (seconds)."""

    def mark(self) -> int:
        """A position in the lists received: the ones after it are new."""

    def now(self) -> float:
        """The stamps' clock, now."""

    def arrival(self, healthy: int, after: int) -> tuple[float, int]:
        """When the first list after `after` with `healthy` healthy devices arrived, and the
        position just past it."""


@dataclass
class SimulatorArrivals:
    """The lists the in-process simulated kubelet received (stamped with `now`)."""

    connection: PluginConnection

    def mark(self) -> int:
        return self.connection.count()

    def now(self) -> float:
        return now()

    def arrival(self, healthy: int, after: int) -> tuple[float, int]:
        index, update = self.connection.wait_update(
            lambda u: u.healthy() == healthy, after=after, timeout=10
        )
        return update.at, index + 1


def measure_hotplug(
    opts: Options,
    arrivals: Arrivals,
    present: int,
    arm: Arm,
    figures: tuple[Figure, Figure, Figure],
    check_alive: Callable[[], None],
    events: int | None = None,
) -> None:
    """Plug and unplug one device in turn while `present` others are listed, each event
    timed until the ListAndWatch update with the new healthy count arrives; per run (of
    `events`, default `opts.hotplug_events`), the medians go into the plug and unplug
    figures and the slowest plug into the third."""
    plug_figure, unplug_figure, worst = figures
    rng = random.Random(7)
    position = arrivals.mark()

    def timed(action: Callable[[], None], healthy: int) -> float:
        nonlocal position
        started = arrivals.now()
        action()
        arrived, position = arrivals.arrival(healthy, position)
        time.sleep(0.02 + rng.random() * 0.03)
        return (arrived - started) * MS

    for _ in range(opts.repeats):
        adds: list[float] = []
        removals: list[float] = []
        for _ in range(opts.hotplug_events if events is None else events):
            plug, unplug = arm()
            adds.append(timed(plug, present + 1))
            removals.append(timed(unplug, present))
        plug_figure.add(median(adds))
        unplug_figure.add(median(removals))
        worst.add(max(adds))
        check_alive()
