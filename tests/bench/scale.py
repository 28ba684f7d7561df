"""Scale: many resources with many devices in one process.

N glob resources over N directories of M files each (kept under /tmp between runs, they
take a while to create). Each run starts a fresh kdp-host: start-up is from the moment the
process is spawned to the last resource's Register call, to the last first list, and to the
last list that carries all of a resource's M devices (a resource registers once its first
list is complete, so the three differ only by the kubelet's dial-back and the first message).
Only then, once the process settled, RSS (VmRSS) and idle CPU (utime+stime over a quiet
period with every ListAndWatch stream open): a window that began at the first lists would
count the rest of start-up as idle. The same for one resource of M devices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .harness import (
    BenchError,
    BenchKubelet,
    Figure,
    KdpHost,
    Options,
    Update,
    glob_resource,
    make_device_files,
    make_workdir,
    remove_tree,
)

MIB = 1024.0 * 1024.0
TREE_ROOT = Path("/tmp/kdp-bench-scale")


def device_tree(resources: int, devices: int) -> Path:
    """`/tmp/kdp-bench-scale/<R>x<D>/d000/dev00000...`, created once and reused."""
    root = TREE_ROOT / f"{resources}x{devices}"
    marker = root / ".complete"
    if not marker.exists():
        remove_tree(root)
        for i in range(resources):
            make_device_files(root / f"d{i:03d}", devices)
        marker.write_text("ok\n")
    return root


@dataclass
class StartUp:
    """Seconds from the spawn to the last resource's Register call, first list, and list
    with all its devices."""

    registered: float
    listed: float
    advertised: float


def all_devices_listed(
    updates: Callable[[str], list[Update]], since: dict[str, float], devices: int
) -> float | None:
    """When the last resource's first list with all `devices` arrived (each counted from
    its `since`, its Register), or None while one has not."""
    times = []
    for name, start in since.items():
        full = [u.at for u in updates(name) if u.at >= start and u.total() == devices]
        if not full:
            return None
        times.append(full[0])
    return max(times)


@contextlib.contextmanager
def started(
    workdir: Path,
    name: str,
    resources: list[dict[str, object]],
    devices: int,
    timeout: float = 60.0,
) -> Iterator[tuple[KdpHost, BenchKubelet, StartUp]]:
    """The host once every resource listed its `devices` devices."""
    socket_dir = workdir / f"{name}-plugins"
    kubelet = BenchKubelet(socket_dir)
    kubelet.start()
    host = KdpHost(workdir, socket_dir, resources, name=name)
    names = [str(r["name"]) for r in resources]
    try:
        t0 = host.start()
        try:
            events = kubelet.wait_registrations(names, since=t0, timeout=timeout, connected=False)
            registered = max(e.at for e in events.values()) - t0
            events = kubelet.wait_registrations(names, since=t0, timeout=timeout, connected=True)
            # Arrival of each resource's first list after its Register (stamped before the
            # kubelet decodes it).
            listed = (
                max(
                    next(u.at for u in kubelet.updates(name) if u.at >= events[name].at)
                    for name in names
                )
                - t0
            )
            since = {name: event.at for name, event in events.items()}
            kubelet.wait(
                lambda: all_devices_listed(kubelet.updates, since, devices) is not None,
                timeout,
                f"{len(names)} resources listing {devices} devices each",
            )
            advertised = all_devices_listed(kubelet.updates, since, devices)
            assert advertised is not None
        except BenchError:
            host.check_alive()
            raise
        yield host, kubelet, StartUp(registered, listed, advertised - t0)
    finally:
        host.stop()
        kubelet.close()


def idle_cpu_percent(host: KdpHost, seconds: float) -> float:
    before = host.cpu_seconds()
    time.sleep(seconds)
    after = host.cpu_seconds()
    return (after - before) / seconds * 100.0


def run(opts: Options) -> list[Figure]:
    n, m = opts.scale_resources, opts.scale_devices
    tag = f"{n}x{m}"
    startup = Figure(f"scale {tag}: start-up to all registered", "s", target=3.0)
    listed = Figure(
        f"scale {tag}: start-up to all first lists", "s", note="arrival, before decoding"
    )
    advertised = Figure(
        f"scale {tag}: start-up to all devices listed",
        "s",
        note="the last resource's first list with all its devices",
    )
    window = (
        f"over {opts.idle_seconds:g}s from all devices listed, all streams open"
        " (the default 30s rescan falls in it)"
    )
    rss = Figure(f"scale {tag}: RSS after start-up", "MiB", target=80.0, note="VmRSS")
    idle = Figure(f"scale {tag}: idle CPU", "% of a core", target=1.0, note=window)
    rss_idle = Figure(
        f"scale {tag}: RSS after the idle window", "MiB", target=80.0, note="after a rescan"
    )
    startup_one = Figure(f"scale 1x{m}: start-up to registered", "s")
    rss_one = Figure(f"scale 1x{m}: RSS after start-up", "MiB", target=45.0)
    idle_one = Figure(f"scale 1x{m}: idle CPU", "% of a core", target=1.0, note=window)
    rss_one_idle = Figure(f"scale 1x{m}: RSS after the idle window", "MiB", target=45.0)
    tree = device_tree(n, m)
    workdir = make_workdir("scale")
    many = [glob_resource(f"scale.kdp-host.io/r{i:03d}", f"{tree}/d{i:03d}/dev*") for i in range(n)]
    one = [glob_resource("scale.kdp-host.io/one", f"{tree}/d000/dev*")]
    try:
        for run_index in range(opts.scale_repeats):
            with started(workdir, f"kdp-scale{run_index}", many, m) as (host, _, up):
                startup.add(up.registered)
                listed.add(up.listed)
                advertised.add(up.advertised)
                time.sleep(opts.settle_seconds)
                rss.add(host.rss_bytes() / MIB)
                idle.add(idle_cpu_percent(host, opts.idle_seconds))
                rss_idle.add(host.rss_bytes() / MIB)
                host.check_alive()
            with started(workdir, f"kdp-one{run_index}", one, m) as (host, _, up):
                startup_one.add(up.registered)
                time.sleep(opts.settle_seconds)
                rss_one.add(host.rss_bytes() / MIB)
                idle_one.add(idle_cpu_percent(host, opts.idle_seconds))
                rss_one_idle.add(host.rss_bytes() / MIB)
                host.check_alive()
    finally:
        remove_tree(workdir)
    return [
        startup,
        listed,
        advertised,
        rss,
        idle,
        rss_idle,
        startup_one,
        rss_one,
        idle_one,
        rss_one_idle,
    ]
