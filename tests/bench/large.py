"""Large lists: how long the event loop stalls while a big ListAndWatch update is built and sent.

One kdp-host serves a 10,000-device glob resource, a 1,000-device resource with 10 replicas
(10,000 advertised IDs) and a one-device resource. A pinger child process calls
GetDevicePluginOptions on the small resource every millisecond; a stalled loop shows as a
long round trip. The stall of an event is the longest round trip of the pings that overlap
the time from the trigger to the update's arrival at the kubelet (plus a margin).

Triggers: one device added (warm: every other entry is already encoded), every device
unplugged (all turn Unhealthy: every entry is encoded anew) and every device plugged back.

And a probe (`shell` driver) printing `large_probe_devices` (120,000) lines, one of them
added or removed at each 1 s run, beside the one-device resource: the longest ping round
trip over `PROBE_WINDOW` seconds (hostile22 F6: the loop was held 1-3 s at every run).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .harness import (
    BenchError,
    Figure,
    Options,
    PluginConnection,
    glob_resource,
    helper_process,
    make_device_files,
    make_workdir,
    now,
    read_line,
    remove_tree,
    touch,
)
from .latency import served_host

MS = 1000.0
MARGIN = 0.1
"""Seconds after the update's arrival still counted (work done after sending)."""
PROBE_WINDOW = 5.0
"""Seconds of pings taken beside the changing probe, per repeat."""


def _dump(pinger: subprocess.Popen[str]) -> list[tuple[float, float]]:
    assert pinger.stdin is not None
    pinger.stdin.write("dump\n")
    pinger.stdin.flush()
    return [(float(a), float(b)) for a, b in json.loads(read_line(pinger, 30, "dump"))]


def _stall(pings: list[tuple[float, float]], start: float, end: float) -> float:
    overlapping = [rtt for sent, rtt in pings if sent <= end and sent + rtt >= start]
    if not overlapping:
        raise BenchError("no ping overlapped the event (is the pinger running?)")
    return max(overlapping) * MS


def run(opts: Options) -> list[Figure]:
    n = opts.large_devices
    replicas = opts.large_replicas
    physical = max(1, n // replicas)
    baseline = Figure("large: ping round trip max, idle", "ms", note="no event, 1 s")
    figures: dict[str, Figure] = {"baseline": baseline}
    cases = {
        "big": f"large {n}",
        "rep": f"large {physical}x{replicas} replicas",
    }
    for key, label in cases.items():
        for event in ("one added", "all unplugged", "all re-plugged"):
            figures[f"{key}:{event}"] = Figure(
                f"{label}: loop stall, {event}",
                "ms",
                target=100.0,
                note="longest ping round trip during the update",
            )
        figures[f"{key}:latency"] = Figure(f"{label}: one added -> update", "ms")
    workdir = make_workdir("large")
    try:
        big_files = make_device_files(workdir / "big", n)
        rep_files = make_device_files(workdir / "rep", physical)
        make_device_files(workdir / "ping", 1)
        resources = [
            glob_resource("large.kdp-host.io/big", f"{workdir}/big/dev*"),
            glob_resource("large.kdp-host.io/rep", f"{workdir}/rep/dev*", replicas=replicas),
            glob_resource("large.kdp-host.io/ping", f"{workdir}/ping/dev*"),
        ]
        with served_host(workdir, "kdp-large", resources) as served:
            kubelet = served.kubelet
            ping_endpoint = next(
                e.endpoint for e in kubelet.registrations if e.resource.endswith("/ping")
            )
            with _pinger(kubelet.socket_dir / ping_endpoint, opts) as pinger:
                for _ in range(opts.repeats):
                    _dump(pinger)
                    time.sleep(1.0)
                    pings = _dump(pinger)
                    baseline.add(max(rtt for _, rtt in pings) * MS)
                    for key, files, total in (
                        ("big", big_files, n),
                        ("rep", rep_files, physical * replicas),
                    ):
                        connection = kubelet.plugins[f"large.kdp-host.io/{key}"]
                        _events(pinger, connection, workdir / key, files, total, key, figures)
                    served.host.check_alive()
    finally:
        remove_tree(workdir)
    return [*figures.values(), _probe(opts)]


@contextlib.contextmanager
def _pinger(socket: Path, opts: Options) -> Iterator[subprocess.Popen[str]]:
    """The pinger child, calling GetDevicePluginOptions on `socket`, once it is ready."""
    with helper_process(
        "pinger", "--socket", str(socket), "--interval", str(opts.ping_interval)
    ) as pinger:
        if read_line(pinger, 30, "ready line") != "ready":
            raise BenchError("pinger did not start")
        yield pinger


def _probe(opts: Options) -> Figure:
    n = opts.large_probe_devices
    figure = Figure(
        f"large probe {n}, a line changed each 1 s run: loop stall",
        "ms",
        target=100.0,
        note=f"longest ping round trip over {PROBE_WINDOW:g} s",
    )
    workdir = make_workdir("large-probe")
    try:
        flip = workdir / "flip"
        flip.write_text("0")
        command = (
            f"n=$(cat {flip}); echo $((1-n)) > {flip}; seq -f 'd%06g' 1 {n}; "
            "[ $n = 1 ] && echo extra; true"
        )
        make_device_files(workdir / "ping", 1)
        probe = "large.kdp-host.io/probe"
        resources = [
            glob_resource("large.kdp-host.io/ping", f"{workdir}/ping/dev*"),
            {
                "name": probe,
                "shell": {"command": ["sh", "-c", command], "interval": "1s", "timeout": "20s"},
            },
        ]
        ping = [resources[0]["name"]]
        with served_host(workdir, "kdp-large-probe", resources, wait_for=ping) as served:
            kubelet = served.kubelet
            kubelet.wait_registrations([probe], timeout=120)
            kubelet.plugins[probe].wait_update(lambda u: u.healthy() >= n, 0, 120)
            with _pinger(served.socket_path, opts) as pinger:
                for _ in range(opts.repeats):
                    _dump(pinger)
                    time.sleep(PROBE_WINDOW)
                    figure.add(max(rtt for _, rtt in _dump(pinger)) * MS)
                    served.host.check_alive()
    finally:
        remove_tree(workdir)
    return figure


def _events(
    pinger: subprocess.Popen[str],
    connection: PluginConnection,
    directory: Path,
    files: list[Path],
    total: int,
    key: str,
    figures: dict[str, Figure],
) -> None:
    per_device = total // len(files)
    extra = directory / "dev-extra"

    def timed(action: Callable[[], None], healthy: int) -> tuple[float, float]:
        after = connection.count()
        _dump(pinger)
        start = now()
        action()
        _, update = connection.wait_update(lambda u: u.healthy() == healthy, after, 60)
        time.sleep(MARGIN + 0.05)
        stall = _stall(_dump(pinger), start, update.at + MARGIN)
        return (update.at - start) * MS, stall

    latency, stall = timed(lambda: touch(extra), total + per_device)
    figures[f"{key}:latency"].add(latency)
    figures[f"{key}:one added"].add(stall)
    timed(lambda: os.unlink(extra), total)

    def unplug_all() -> None:
        for path in files:
            os.unlink(path)

    def replug_all() -> None:
        for path in files:
            touch(path)

    _, stall = timed(unplug_all, 0)
    figures[f"{key}:all unplugged"].add(stall)
    _, stall = timed(replug_all, total)
    figures[f"{key}:all re-plugged"].add(stall)
