"""kdp-host beside the Go peer, squat/generic-device-plugin (GDP), on the kubelet's real
device manager: the figures of issue 19's table, both columns measured in the same run.

Both plugins register with one `kubelet-harness serve` (tests/kubelet_harness.py) and serve
the same device files. Per repeat, in alternating order:

* Allocate through the kubelet: the harness's `/bench`, a fresh pod per iteration asking for
  one device (the kubelet's admission path: GetPreferredAllocation when the plugin offers it,
  Allocate, the checkpoint write), p50;
* the plugin's Allocate RPC alone: `/bench` with `direct_rpc` (a grpc-go client dialled like
  the kubelet's, one connection reused), p50;
* 100 resources x 10 devices: from spawning the process to the kubelet's last `registered`
  event (each plugin started alone), then RSS (VmRSS) after a settling pause and CPU over an
  idle window with every ListAndWatch stream open (both plugins idle at once);
* 1 resource: RSS after start-up.

The hot-plug rows take kdp-host's figures from the `hotplug` and `sysfs` benchmarks' own
code (run here with the same options); GDP's glob hot-plug is timed here, from creating the
file to the kubelet receiving the ListAndWatch update (its clock: the harness's event). GDP
has no figure for the sysfs rows: it reads the machine's own /sys, not a fake tree.

Ratios are kdp-host / GDP within one repeat. Where the binaries are absent the section says
so instead of the figures.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..kubelet_harness import (
    GenericDevicePlugin,
    HarnessError,
    RealKubelet,
    gdp_device,
    harness_binary,
    missing_reason,
)
from . import hotplug as glob_hotplug
from . import sysfs as sysfs_bench
from .harness import (
    BenchError,
    Figure,
    KdpHost,
    Options,
    cpu_seconds,
    glob_resource,
    make_device_files,
    make_workdir,
    median,
    remove_tree,
    rss_bytes,
    touch,
)

GDP, KDP, RATIO = "GDP", "kdp-host", "ratio"
MB = 1e6
US_PER_NS = 1e-3
KDP_DOMAIN = "kdp.example"
ALLOCATE_DEVICES = 8
SYSFS_PRESENT = (10, 100, 1000)
QUICK_SYSFS_PRESENT = (10,)


@dataclass
class Row:
    """One line of the table: GDP's figure, kdp-host's, and their ratio per repeat."""

    label: str
    unit: str
    gdp: Figure
    kdp: Figure
    ratio: Figure

    @classmethod
    def make(
        cls,
        label: str,
        unit: str,
        *,
        ratio_target: float | None = None,
        kdp_target: float | None = None,
        note: str = "",
    ) -> Row:
        return cls(
            label,
            unit,
            Figure(f"{label} [{GDP}]", unit, row=label, column=GDP, note=note),
            Figure(f"{label} [{KDP}]", unit, target=kdp_target, row=label, column=KDP, note=note),
            Figure(f"{label} [{RATIO}]", "x", target=ratio_target, row=label, column=RATIO),
        )

    def add(self, gdp: float | None, kdp: float) -> None:
        self.kdp.add(kdp)
        if gdp is not None:
            self.gdp.add(gdp)
            if gdp > 0:
                self.ratio.add(kdp / gdp)

    def skip_gdp(self, reason: str) -> None:
        self.gdp.note = f"not measured: {reason}"

    def figures(self) -> list[Figure]:
        return [self.gdp, self.kdp, self.ratio]


def run(opts: Options) -> list[Figure]:
    kubelet_missing = None if harness_binary() else missing_reason()
    gdp_missing = kubelet_missing or (
        None if harness_binary("generic-device-plugin") else missing_reason("generic-device-plugin")
    )
    rows: list[Row] = []
    if kubelet_missing is not None:
        rows += _not_run(
            ["Allocate through the kubelet", "Allocate RPC alone", "100 resources"],
            kubelet_missing,
        )
    else:
        rows += allocate_rows(opts, gdp_missing)
    rows.append(glob_hotplug_row(opts, gdp_missing))
    rows += sysfs_rows(opts)
    if kubelet_missing is None:
        rows += scale_rows(opts, gdp_missing)
    return [figure for row in rows for figure in row.figures()]


def _not_run(labels: list[str], reason: str) -> list[Row]:
    rows = []
    for label in labels:
        row = Row.make(label, "")
        row.skip_gdp(reason)
        row.kdp.note = f"not measured: {reason}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- processes


@dataclass
class Peers:
    """The kubelet, GDP (None when its binary is absent) and kdp-host, on one directory."""

    kubelet: RealKubelet
    gdp: GenericDevicePlugin | None
    kdp: KdpHost
    gdp_resources: list[str]
    kdp_resources: list[str]


@contextlib.contextmanager
def peers(
    workdir: Path,
    name: str,
    trees: list[Path],
    *,
    with_gdp: bool,
    start: bool = True,
) -> Iterator[Peers]:
    """A kubelet and both plugins, each serving one resource per directory of `trees`
    (every file in it a device). With `start`, both are started and registered."""
    socket_dir = workdir / f"{name}-dp"
    kubelet = RealKubelet(socket_dir)
    kubelet.start()
    gdp_devices = [gdp_device(f"r{i:03d}", f"{tree}/*") for i, tree in enumerate(trees)]
    gdp = (
        GenericDevicePlugin(socket_dir, gdp_devices, workdir / f"{name}-gdp.log")
        if with_gdp
        else None
    )
    kdp_resources = [f"{KDP_DOMAIN}/r{i:03d}" for i in range(len(trees))]
    kdp = KdpHost(
        workdir,
        socket_dir,
        [glob_resource(r, f"{tree}/*") for r, tree in zip(kdp_resources, trees, strict=True)],
        name=f"{name}-kdp",
        log_level="warning",
    )
    gdp_resources = [] if gdp is None else [gdp.resource(d["name"]) for d in gdp_devices]
    try:
        together = Peers(kubelet, gdp, kdp, gdp_resources, kdp_resources)
        if start:
            for plugin in (gdp, kdp):
                if plugin is not None:
                    start_and_wait(together, plugin)
        yield together
    finally:
        kdp.stop()
        if gdp is not None:
            gdp.stop()
        kubelet.stop()


def start_and_wait(together: Peers, plugin: GenericDevicePlugin | KdpHost) -> float:
    """Start one plugin; seconds from the spawn to the kubelet's last `registered` event."""
    kubelet = together.kubelet
    resources = together.kdp_resources if plugin is together.kdp else together.gdp_resources
    since = kubelet.last_seq()
    spawned = time.time_ns()
    plugin.start()
    try:
        times = kubelet.registered_at(resources, since, timeout=120)
    except TimeoutError as exc:
        plugin.check_alive()
        raise BenchError(str(exc)) from None
    return (max(times.values()) - spawned) / 1e9


def healthy(kubelet: RealKubelet, resources: list[str], count: int) -> bool:
    seen = kubelet.capacity()["resources"]
    return all(seen.get(r, {}).get("healthy") == count for r in resources)


# ---------------------------------------------------------------------------- allocation


def allocate_rows(opts: Options, gdp_missing: str | None) -> list[Row]:
    pods = opts.peer_pods
    through = Row.make(
        f"Allocate through the kubelet, p50 (1 device, {pods} pods)",
        "us",
        ratio_target=1.10,
        note="kubelet-harness /bench; kdp-host with its default preferred policy (the kubelet "
        "also calls GetPreferredAllocation)",
    )
    direct = Row.make(
        "Allocate RPC alone, p50 (direct_rpc, reused connection)",
        "us",
        ratio_target=1.6,
        note=f"kubelet-harness /bench direct_rpc, {opts.peer_rpc_calls} calls",
    )
    rows = [through, direct]
    if gdp_missing is not None:
        for row in rows:
            row.skip_gdp(gdp_missing)
    workdir = make_workdir("peer-alloc")
    try:
        tree = workdir / "dev"
        make_device_files(tree, ALLOCATE_DEVICES, "d")
        with peers(workdir, "alloc", [tree], with_gdp=gdp_missing is None) as p:
            kubelet = p.kubelet
            kubelet.wait_for(
                lambda k: healthy(k, p.gdp_resources + p.kdp_resources, ALLOCATE_DEVICES),
                30,
                "every device healthy at the kubelet",
            )
            targets = [p.kdp_resources[0], *p.gdp_resources]
            for run_index in range(opts.repeats):
                order = targets if run_index % 2 == 0 else targets[::-1]
                p50: dict[tuple[str, bool], float] = {}
                for direct_rpc in (False, True):
                    for resource in order:
                        iterations = opts.peer_rpc_calls if direct_rpc else pods
                        p50[resource, direct_rpc] = _bench_p50(
                            kubelet, resource, iterations, direct_rpc
                        )
                gdp = p.gdp_resources[0] if p.gdp_resources else None
                for row, direct_rpc in ((through, False), (direct, True)):
                    gdp_p50 = None if gdp is None else p50[gdp, direct_rpc]
                    row.add(gdp_p50, p50[p.kdp_resources[0], direct_rpc])
                p.kdp.check_alive()
                if p.gdp is not None:
                    p.gdp.check_alive()
    finally:
        remove_tree(workdir)
    return rows


def _bench_p50(kubelet: RealKubelet, resource: str, iterations: int, direct_rpc: bool) -> float:
    options: dict[str, Any] = {"direct_rpc": True} if direct_rpc else {}
    result = kubelet.bench(resource, iterations, **options)
    if result.get("errors"):
        raise BenchError(f"{resource}: {result['errors']} errors ({result.get('first_error')})")
    return float(result["allocate"]["p50_us"])


# ---------------------------------------------------------------------------- hot-plug


def glob_hotplug_row(opts: Options, gdp_missing: str | None) -> Row:
    row = Row.make(
        "glob hot-plug -> kubelet sees it, median",
        "ms",
        kdp_target=2.0,
        note="kdp-host: the hotplug benchmark (simulated kubelet, stamped on arrival); "
        "GDP: the real kubelet's receive time",
    )
    kdp = glob_hotplug.run(opts)[0]
    gdp: list[float | None] = [None] * len(kdp.values)
    if gdp_missing is not None:
        row.skip_gdp(gdp_missing)
    else:
        gdp = list(gdp_hotplug(opts, len(kdp.values)))
    for gdp_value, kdp_value in zip(gdp, kdp.values, strict=True):
        row.add(gdp_value, kdp_value)
    return row


def gdp_hotplug(opts: Options, repeats: int) -> Iterator[float]:
    """Per repeat, the median over `opts.peer_hotplug_events` of GDP's file-created -> the
    kubelet received the list that has it (GDP rescans every 5 s)."""
    workdir = make_workdir("peer-hotplug")
    rng = random.Random(11)
    base = 2
    try:
        tree = workdir / "dev"
        make_device_files(tree, base, "h")
        hot = tree / "hot"
        with peers(workdir, "hot", [tree], with_gdp=True, start=False) as p:
            assert p.gdp is not None
            start_and_wait(p, p.gdp)
            resource = p.gdp_resources[0]
            kubelet = p.kubelet
            for _ in range(repeats):
                adds = []
                for _ in range(opts.peer_hotplug_events):
                    since = kubelet.last_seq()
                    started = time.time_ns()
                    touch(hot)
                    arrived = _lists_healthy(kubelet, resource, base + 1, since)
                    adds.append((arrived - started) / 1e6)
                    since = kubelet.last_seq()
                    os.unlink(hot)
                    _lists_healthy(kubelet, resource, base, since)
                    time.sleep(rng.random() * 0.5)
                yield median(adds)
    finally:
        remove_tree(workdir)


def _lists_healthy(kubelet: RealKubelet, resource: str, count: int, since: int) -> int:
    """When (unix ns) the kubelet received the first list of `resource` after event
    `since` with `count` healthy devices."""
    found: list[int] = []

    def arrived(events: list[dict[str, Any]]) -> bool:
        for event in events:
            if (
                event["kind"] == "list_and_watch"
                and event["resource"] == resource
                and event["healthy"] == count
            ):
                found.append(int(event["t_recv_unix_ns"]))
                return True
        return False

    kubelet.wait_events(arrived, since, timeout=20, what=f"{resource}: {count} healthy")
    return found[0]


def sysfs_rows(opts: Options) -> list[Row]:
    rows = []
    for present in QUICK_SYSFS_PRESENT if opts.quick else SYSFS_PRESENT:
        row = Row.make(
            f"sysfs hot-plug with {present} USB adapters present, median",
            "ms",
            kdp_target=5.0 if present == SYSFS_PRESENT[-1] else None,
            note="kdp-host: the sysfs benchmark's hot-plug",
        )
        row.skip_gdp("GDP reads the machine's own /sys (no fake tree) and polls every 5 s")
        for value in sysfs_bench.hotplug(opts, present)[0].values:
            row.add(None, value)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- scale


def scale_rows(opts: Options, gdp_missing: str | None) -> list[Row]:
    n, m = opts.peer_resources, opts.peer_devices
    startup = Row.make(
        f"{n} resources x {m} devices: start to all registered",
        "ms",
        ratio_target=1.0,
        note="spawn -> the kubelet's last registered event, each plugin started alone",
    )
    idle = Row.make(
        f"{n} resources: idle CPU",
        "% of a core",
        kdp_target=0.10,
        note=f"over {opts.idle_seconds:g}s, every stream open, both plugins idle at once",
    )
    rss = Row.make(f"{n} resources: RSS", "MB", ratio_target=0.9, note="VmRSS, 1 MB = 10^6 B")
    rss_one = Row.make("1 resource: RSS", "MB", kdp_target=32.0, note="VmRSS, 1 MB = 10^6 B")
    rows = [startup, idle, rss, rss_one]
    with_gdp = gdp_missing is None
    if not with_gdp:
        assert gdp_missing is not None
        for row in rows:
            row.skip_gdp(gdp_missing)
    workdir = make_workdir("peer-scale")
    try:
        trees = [workdir / "trees" / f"d{i:03d}" for i in range(n)]
        for tree in trees:
            make_device_files(tree, m, "d")
        for run_index in range(opts.scale_repeats):
            with peers(workdir, f"s{run_index}", trees, with_gdp=with_gdp, start=False) as p:
                order: list[GenericDevicePlugin | KdpHost] = [p.kdp]
                if p.gdp is not None:
                    order = [p.gdp, p.kdp] if run_index % 2 == 0 else [p.kdp, p.gdp]
                seconds = {id(plugin): start_and_wait(p, plugin) for plugin in order}
                time.sleep(opts.settle_seconds)
                pids = [p.kdp.pid] + ([p.gdp.pid] if p.gdp is not None else [])
                memory = [rss_bytes(pid) / MB for pid in pids]
                busy = _idle_percent(pids, opts.idle_seconds)
                gdp_id = id(p.gdp)
                startup.add(seconds[gdp_id] * 1000 if p.gdp else None, seconds[id(p.kdp)] * 1000)
                rss.add(memory[1] if p.gdp else None, memory[0])
                idle.add(busy[1] if p.gdp else None, busy[0])
                p.kdp.check_alive()
            with peers(workdir, f"o{run_index}", trees[:1], with_gdp=with_gdp) as p:
                time.sleep(opts.settle_seconds)
                one = rss_bytes(p.kdp.pid) / MB
                rss_one.add(rss_bytes(p.gdp.pid) / MB if p.gdp else None, one)
    except HarnessError as exc:
        raise BenchError(str(exc)) from None
    finally:
        remove_tree(workdir)
    return rows


def _idle_percent(pids: list[int], seconds: float) -> list[float]:
    before = [cpu_seconds(pid) for pid in pids]
    time.sleep(seconds)
    return [(cpu_seconds(pid) - b) / seconds * 100.0 for pid, b in zip(pids, before, strict=True)]
