"""What a host started `fast` waits: a test's host polls PodResources and reads its answers
sooner than the product does, in the same proportions (`FAST_POLL`, `FAST`, `polling_fast`).

`conftest.start_host` starts such a host in the test's own process; `python -m tests.fast
--test-fast run --config C` runs kdp-host's own command line (`kdp_host.cli`) as a process of
its own (`conftest.kdp_process`, for a host a test kills and starts again) with its host made
the same way (`--test-polling`: its watcher never uses inotify). No production path sets
timings (`test_timings`): only a test can, as here.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import sys
from pathlib import Path
from typing import Any

from kdp_host.config import Config, load_config
from kdp_host.config.model import MIN_POD_RESOURCES_INTERVAL
from kdp_host.timings import Timings

FAST_POLL = 0.25
"""The podResourcesInterval of a host started `fast` where its config polls at the config's
floor (1 s, `MIN_POD_RESOURCES_INTERVAL`: the kubelet's rate limit is shared on the node):
a quarter of it, set on the loaded config as only a test can."""
FAST = Timings(
    allocation_settle=0.25,
    gone_after=1.0,
    heard_after=1.25,
    restart_settle=2.5,
    nudge_first=0.25,
    nudge_restart_max=1.0,
    nudge_max=2.0,
    release_retry_first=0.125,
    release_retry_max=0.5,
)
"""The timings of a host started `fast`: the windows of PodResources answers scaled with
the poll interval (`FAST_POLL`, a quarter of the floor), so as many answers fall inside each
as at the defaults with a 1 s interval, in the defaults' order (`Timings()`: allocation
settle < gone-after < heard-after < restart window); the checkpoint nudges and a failed
release's retries, which only back off, capped at a few polls. None of these windows is
what a test checks (the tests wait on answers asked past them, `FAST.<window>`): shorter
ones wait less for the same outcome."""


def polling_fast(config: Config) -> Config:
    """`config` polling PodResources every `FAST_POLL` where it polls at the config's floor
    (an interval the config refuses: set on the loaded config, as only a test can)."""
    if config.kubelet.pod_resources_interval != MIN_POD_RESOURCES_INTERVAL:
        return config
    kubelet = dataclasses.replace(config.kubelet, pod_resources_interval=FAST_POLL)
    return dataclasses.replace(config, kubelet=kubelet)


def kdp_host_command(fast: bool, polling: bool = False) -> tuple[list[str], dict[str, str] | None]:
    """The argv head that runs kdp-host's command line in a process of its own and the
    environment to run it in (None: this one's). `fast`, or `polling` (its watcher never
    uses inotify, as on a node with no inotify instance left): through this module (found
    from any working directory)."""
    if not (fast or polling):
        return [sys.executable, "-m", "kdp_host"], None
    tests_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [tests_root, os.environ.get("PYTHONPATH")]))
    made_as = [flag for flag, on in ((FAST_FLAG, fast), (POLLING_FLAG, polling)) if on]
    return [sys.executable, "-m", "tests.fast", *made_as], {**os.environ, "PYTHONPATH": path}


FAST_FLAG, POLLING_FLAG = "--test-fast", "--test-polling"
"""This module's own leading arguments (`kdp_host_command`), before kdp-host's."""


def main(argv: list[str]) -> int:
    """kdp-host's command line (`argv` after this module's own leading flags), its Host made
    `fast` (also its config read again on reload) and/or watching by polling."""
    from kdp_host import heap

    with heap.paused():
        from kdp_host import cli, host
        from kdp_host.inotify_watch import make_watcher

    own = list(itertools.takewhile(lambda arg: arg in (FAST_FLAG, POLLING_FLAG), argv))
    made = host.Host

    def test_host(**options: Any) -> host.Host:
        if FAST_FLAG in own:
            options["config"] = polling_fast(options["config"])
            options.setdefault("timings", FAST)
            options.setdefault("load_config", lambda path: polling_fast(load_config(Path(path))))
        if POLLING_FLAG in own:
            options.setdefault("watchers", functools.partial(make_watcher, prefer_inotify=False))
        return made(**options)

    host.Host = test_host  # type: ignore[misc, assignment]  # (the one `cli._run` imports)
    return cli.main(argv[len(own) :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
