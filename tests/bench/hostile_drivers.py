"""Hostile commands: what a flooding stream command and a daemon-leaving probe cost.

- Stream flood: two kdp-host processes serve the same glob resource (rich allocate section);
  one also runs a stream command printing two alternating device lists as fast as it can.
  Allocate p99 is measured on both in rotating order; the figure is the ratio flood/none
  within the same run (target 2x: the flood is rate-limited, the command blocks on its pipe).
- Daemon-leaving probe: a poll probe starts a daemon (setsid) that keeps the probe's stdout
  open, so every run ends at its timeout. The figure is how many pipe descriptors kdp-host
  holds after 100 such runs beyond what it held after the first few (target 0; it leaked 2
  per run before).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .harness import (
    RICH_ALLOCATE,
    BenchError,
    Figure,
    Options,
    glob_resource,
    make_device_files,
    make_workdir,
    remove_tree,
)
from .latency import RESOURCE, allocate_request, allocate_targets, measure, served_host

FLOOD = (
    "import sys\n"
    "write = sys.stdout.write\n"
    "while True:\n"
    '    write(\'[{"id": "a"}]\\n[{"id": "b"}]\\n\')\n'
)
PROBE_RUNS = 100
_TIMEOUTS = re.compile(
    r'^kdp_driver_errors_total\{reason="timeout",resource="([^"]+)"\} ([0-9.e+]+)$', re.M
)
_RATE_LIMITED = re.compile(
    r'^kdp_driver_skipped_total\{reason="rate_limited",resource="([^"]+)"\} ([0-9.e+]+)$', re.M
)


def _metrics(config_path: Path) -> str:
    listen = json.loads(config_path.read_text())["metrics"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def _flood(opts: Options) -> list[Figure]:
    labels = ["no flood", "stream flood"]
    figures = {
        f"allocate {q} {label}": Figure(f"hostile: allocate {q}, {label}", "ms")
        for label in labels
        for q in ("p50", "p99")
    }
    ratio = Figure(
        "hostile: allocate p99 ratio, stream flood/none",
        "x",
        target=2.0,
        note="same run, vs the same host without the flooding stream command",
    )
    dropped = Figure("hostile: stream lists dropped by the rate limit", "lists")
    workdir = make_workdir("flood")
    fpga = glob_resource(RESOURCE, f"{workdir}/dev/fpga*", RICH_ALLOCATE)
    flood: dict[str, Any] = {
        "name": "bench.kdp-host.io/flood",
        "shell": {
            "command": [sys.executable, "-c", FLOOD],
            "mode": "stream",
            "format": "json",
        },
    }
    try:
        make_device_files(workdir / "dev", 16, "fpga")
        with contextlib.ExitStack() as stack:
            plain = stack.enter_context(served_host(workdir, "kdp-plain", [fpga]))
            flooded = stack.enter_context(
                served_host(workdir, "kdp-flood", [fpga, flood], wait_for=[RESOURCE])
            )
            request = allocate_request(plain.device_ids[:2])
            targets = allocate_targets(stack, list(labels), [plain, flooded], request)
            sized = Options(**{**opts.__dict__, "calls": opts.containment_calls})
            for i in range(opts.repeats):
                result = measure(targets, request, sized, figures, i)
                ratio.add(result["stream flood"][1] / result["no flood"][1])
                for served in (plain, flooded):
                    served.host.check_alive()
            counts = dict(_RATE_LIMITED.findall(_metrics(flooded.host.config_path)))
            dropped.add(float(counts.get(flood["name"], 0.0)))
    finally:
        remove_tree(workdir)
    return [*figures.values(), ratio, dropped]


def _pipes(pid: int) -> int:
    """Pipe descriptors kdp-host holds (sockets come and go with /metrics scrapes)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    return count


def _timeouts(config_path: Path, resource: str) -> float:
    for name, value in _TIMEOUTS.findall(_metrics(config_path)):
        if name == resource:
            return float(value)
    return 0.0


def _daemon_probe(opts: Options) -> list[Figure]:
    gained = Figure(
        f"hostile: pipe descriptors gained over {PROBE_RUNS} daemon-leaving probe runs",
        "fds",
        target=0.0,
        note="kdp-host's pipe descriptors after the runs minus after the first 5",
    )
    workdir = make_workdir("daemon")
    pids = workdir / "daemon.pids"
    name = "bench.kdp-host.io/daemon"
    probe = {
        "name": name,
        "shell": {
            "command": ["sh", "-c", f"setsid sleep 600 & echo $! >> {pids}; echo d0"],
            "timeout": "100ms",
            "interval": "50ms",
            "failureThreshold": 1000,
        },
    }
    ping = glob_resource("bench.kdp-host.io/ping", f"{workdir}/dev/dev*")
    try:
        make_device_files(workdir / "dev", 1)
        with served_host(workdir, "kdp-daemon", [ping, probe], wait_for=[ping["name"]]) as served:
            host = served.host

            def wait_runs(count: int) -> None:
                deadline = time.monotonic() + 300
                while _timeouts(host.config_path, name) < count:
                    if time.monotonic() > deadline:
                        raise BenchError(f"fewer than {count} probe runs within 300 s")
                    host.check_alive()
                    time.sleep(0.05)

            wait_runs(5)
            before = _pipes(host.pid)
            wait_runs(PROBE_RUNS + 5)
            gained.add(float(_pipes(host.pid) - before))
    finally:
        if pids.exists():
            for pid in pids.read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        remove_tree(workdir)
    return [gained]


def run(opts: Options) -> list[Figure]:
    return [*_flood(opts), *_daemon_probe(opts)]
