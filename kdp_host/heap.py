"""The cyclic garbage collector while `kdp-host run` starts (README, "Start-up").

Start-up makes objects that live as long as the process: the modules of the host, the
config, then each resource's runtime (its table, server, connections to the kubelet). The
collector would look at them again and again while they are made (a young collection every
few hundred allocations, older ones on top: 130 collections that found 600 objects of
garbage while 100 resources started, a tenth of the process's work) and at every full
collection after. So the command's modules load with the collector paused (`__main__`:
~100 collections that found ~500 objects, ~15 ms of CPU, while they loaded), `cli.cmd_run`
makes the rest with it paused (`paused`), freezes the modules and the config out of every
later collection (`settle`, `gc.freeze`), and once every resource is ready and has sent
the kubelet its first list (at most `START_PAUSE_LIMIT` later) collects once and freezes
what the resources made too (`settle_started`). Only the command does this: a library
caller's collector is left as it was.

That one collection walks every object made since `settle` (~350,000 at 100 resources x
1,000 devices: ~140 ms of CPU, for ~10 objects of garbage). Run as each resource registers,
it held up the lists the kubelet asks for then (the last first list ~0.7 s later); after
the first lists nobody waits on it. No cheaper collection does the job: while the collector
is paused nothing leaves the youngest generation, so `gc.collect(0)` walks the same objects
as a full one, and `gc.freeze()` first would freeze the garbage (e.g. a failed start's
exception cycles) for good.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block, and back as it was after it, whatever happens."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


START_PAUSE_LIMIT = 30.0
"""Seconds the collector stays paused for the resources' start at most: a resource that
does not get ready (no kubelet yet, a failing driver) does not keep it off longer."""


def settle() -> None:
    """The lasting objects of start-up are made: no later collection looks at them."""
    gc.freeze()


def settle_started() -> None:
    """The resources have started (ready, first lists sent): the garbage made meanwhile is
    collected, what is left is frozen with the rest of start-up, and the collector runs from
    now on."""
    gc.collect()
    gc.freeze()
    gc.enable()
