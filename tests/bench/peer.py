"""kdp-host beside the Go peer, squat/generic-device-plugin (GDP), on the kubelet's real
device manager: the figures of issue 19's table, both columns measured in the same run.

Both plugins register with one `kubelet-harness serve` (tests/kubelet_harness.py) and serve
the same device files. Per repeat, in alternating order:

* Allocate through the kubelet: the harness's `/bench`, a fresh pod per iteration asking for
  one device (the kubelet's admission path: GetPreferredAllocation when the plugin offers it,
  Allocate, the checkpoint write), p50;
* the plugin's Allocate RPC alone: `/bench` with `direct_rpc` (a grpc-go client dialled like
  the kubelet's, one connection reused), p50;
* both Allocate figures also of the stack's floor, in the same repeats: `bare_plugin.py
  --plugin-server` on the same kubelet and files (uvloop, grpclib, betterproto2 and
  kdp-host's server, a fixed answer of the same shape, nothing else), with kdp-host/floor
  and floor/GDP: what a plugin on the chosen stack cannot go below;
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
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fake_sysfs import FakeSysfs
from ..kubelet_harness import (
    GenericDevicePlugin,
    HarnessError,
    RealKubelet,
    gdp_device,
    harness_binary,
    missing_reason,
)
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
    remove_tree,
    rss_bytes,
    touch,
)
from .hotplug import Arm, measure_hotplug

GDP, KDP, RATIO = "GDP", "kdp-host", "ratio"
MB = 1e6
US_PER_NS = 1e-3
KDP_DOMAIN = "kdp.example"
ALLOCATE_DEVICES = 8
SYSFS_PRESENT = (10, 100, 1000)
QUICK_SYSFS_PRESENT = (10,)
FIRST_LOOK = 0.03
"""Seconds after a hot-plug event before the first look at the kubelet's events."""


@dataclass
class Row:
    """One line of the table: GDP's figure, kdp-host's, and their ratio per repeat."""

    label: str
    unit: str
    gdp: Figure
    kdp: Figure
    ratio: Figure
    extra: list[Figure] = field(default_factory=list)
    """Figures of the row's own that are no column of the table (the stack's floor)."""

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
        return [self.gdp, self.kdp, self.ratio, *self.extra]


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
        rows += _guarded(lambda: allocate_rows(opts, gdp_missing), ["Allocate through the kubelet"])
    rows += hotplug_rows(opts, kubelet_missing, gdp_missing)
    if kubelet_missing is None:
        rows += _guarded(lambda: scale_rows(opts, gdp_missing), ["100 resources"])
    return [figure for row in rows for figure in row.figures()]


def _failed(row: Row, exc: Exception) -> None:
    """Say on `row` that its measurement crashed (the section's other rows are kept)."""
    why = f"FAILED ({type(exc).__name__}: {exc})"
    row.kdp.note = row.gdp.note = why


def _guarded(measure: Callable[[], list[Row]], labels: list[str]) -> list[Row]:
    """`measure()`'s rows, or rows saying it failed and why."""
    try:
        return measure()
    except (BenchError, HarnessError, TimeoutError, OSError) as exc:
        rows = [Row.make(label, "") for label in labels]
        for row in rows:
            _failed(row, exc)
        return rows


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
    kdp_config: list[dict[str, Any]] | None = None,
) -> Iterator[Peers]:
    """A kubelet and both plugins, each serving one resource per directory of `trees`
    (every file in it a device), or kdp-host the resources of `kdp_config` instead. With
    `start`, both are started and registered."""
    socket_dir = workdir / f"{name}-dp"
    kubelet = RealKubelet(socket_dir)
    kubelet.start()
    gdp_devices = [gdp_device(f"r{i:03d}", f"{tree}/*") for i, tree in enumerate(trees)]
    gdp = (
        GenericDevicePlugin(socket_dir, gdp_devices, workdir / f"{name}-gdp.log")
        if with_gdp
        else None
    )
    if kdp_config is None:
        names = [f"{KDP_DOMAIN}/r{i:03d}" for i in range(len(trees))]
        kdp_config = [glob_resource(r, f"{t}/*") for r, t in zip(names, trees, strict=True)]
    kdp_resources = [str(resource["name"]) for resource in kdp_config]
    kdp = KdpHost(workdir, socket_dir, kdp_config, name=f"{name}-kdp", log_level="warning")
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
        note="kubelet-harness /bench; kdp-host with its default preferred policy, which does "
        "not offer GetPreferredAllocation for these devices (no NUMA node, no replicas: "
        "preferred_can_matter)",
    )
    direct = Row.make(
        "Allocate RPC alone, p50 (direct_rpc, reused connection)",
        "us",
        ratio_target=1.6,
        note=f"kubelet-harness /bench direct_rpc, {opts.peer_rpc_calls} calls",
    )
    rows = [through, direct]
    for row in rows:
        # extra: the floor, kdp-host/floor and, with GDP, floor/GDP
        row.extra += [
            Figure(
                f"{row.label}, the stack's floor",
                "us",
                note="tests/bench/bare_plugin.py --plugin-server on the same kubelet: uvloop, "
                "grpclib, betterproto2 and kdp-host's server (codec, one write per answer), a "
                "fixed answer of the same shape, nothing else",
            ),
            Figure(f"{row.label}, kdp-host/floor", "x"),
        ]
        if gdp_missing is not None:
            row.skip_gdp(gdp_missing)
        else:
            row.extra.append(Figure(f"{row.label}, floor/GDP", "x"))
    workdir = make_workdir("peer-alloc")
    try:
        # Each plugin serves its own files: kdp-host holds a node another plugin's pod was
        # handed (it follows the kubelet's checkpoint), so one shared tree would leave it
        # nothing healthy once GDP's or the floor's pods were admitted.
        tree, kdp_tree, floor_tree = (workdir / n for n in ("dev", "dev-kdp", "dev-floor"))
        for each in (tree, kdp_tree, floor_tree):
            make_device_files(each, ALLOCATE_DEVICES, "d")
        kdp_config = [glob_resource(f"{KDP_DOMAIN}/r000", f"{kdp_tree}/*")]
        with (
            peers(
                workdir, "alloc", [tree], with_gdp=gdp_missing is None, kdp_config=kdp_config
            ) as p,
            stack_floor(workdir, p.kubelet, floor_tree) as floor_resource,
        ):
            kubelet = p.kubelet
            kubelet.wait_for(
                lambda k: healthy(
                    k, [*p.gdp_resources, *p.kdp_resources, floor_resource], ALLOCATE_DEVICES
                ),
                30,
                "every device healthy at the kubelet",
            )
            targets = [p.kdp_resources[0], *p.gdp_resources, floor_resource]
            for run_index in range(opts.repeats):
                shift = run_index % len(targets)
                order = targets[shift:] + targets[:shift]
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
                    kdp_p50, floor_p50 = (
                        p50[p.kdp_resources[0], direct_rpc],
                        p50[floor_resource, direct_rpc],
                    )
                    row.add(gdp_p50, kdp_p50)
                    row.extra[0].add(floor_p50)
                    row.extra[1].add(kdp_p50 / floor_p50)
                    if gdp_p50:
                        row.extra[2].add(floor_p50 / gdp_p50)
                p.kdp.check_alive()
                if p.gdp is not None:
                    p.gdp.check_alive()
    finally:
        remove_tree(workdir)
    return rows


@contextlib.contextmanager
def stack_floor(workdir: Path, kubelet: RealKubelet, tree: Path) -> Iterator[str]:
    """The bare plugin (`bare_plugin.py --plugin-server`) serving `tree` as one resource on
    `kubelet`, registered; yields its resource name."""
    resource = "floor.example/r000"
    config = workdir / "floor.json"
    config.write_text(
        json.dumps(
            {
                "kubelet": {"socketDir": str(kubelet.socket_dir)},
                "resources": [{"name": resource, "glob": {"paths": [f"{tree}/*"]}}],
            }
        )
    )
    since = kubelet.last_seq()
    script = Path(__file__).with_name("bare_plugin.py")
    command = [sys.executable, str(script), "--plugin-server", "run", "--config", str(config)]
    with open(workdir / "floor.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            kubelet.registered_at([resource], since, timeout=60)
        except TimeoutError as exc:
            raise BenchError(f"the stack's floor plugin did not register: {exc}") from None
        yield resource
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _bench_p50(kubelet: RealKubelet, resource: str, iterations: int, direct_rpc: bool) -> float:
    options: dict[str, Any] = {"direct_rpc": True} if direct_rpc else {}
    result = kubelet.bench(resource, iterations, **options)
    if result.get("errors"):
        raise BenchError(f"{resource}: {result['errors']} errors ({result.get('first_error')})")
    return float(result["allocate"]["p50_us"])


# ---------------------------------------------------------------------------- hot-plug


@dataclass
class KubeletArrivals:
    """`hotplug.Arrivals` of the real kubelet: the lists of one resource it received, from
    its events, stamped on receipt (`t_recv_unix_ns`, the machine's real-time clock)."""

    kubelet: RealKubelet
    resource: str

    def mark(self) -> int:
        return self.kubelet.last_seq()

    def now(self) -> float:
        return time.time_ns() / 1e9

    def arrival(self, healthy: int, after: int) -> tuple[float, int]:
        # The kubelet stamps the arrival: the first look waits until the update is likely
        # there, so this process's polling does not compete for the CPU with what it times.
        time.sleep(FIRST_LOOK)
        # GDP rescans every 5 s: generous.
        seq, received = self.kubelet.list_received(self.resource, healthy, after, timeout=30)
        return received / 1e9, seq


def hotplug_rows(opts: Options, kubelet_missing: str | None, gdp_missing: str | None) -> list[Row]:
    """Glob and sysfs hot-plug -> the real kubelet received the list with the device."""
    glob = Row.make(
        "glob hot-plug -> kubelet sees it, median",
        "ms",
        kdp_target=2.0,
        note="a matching file created -> the kubelet received the list with it (its receive "
        "time); both plugins on one kubelet, watching one directory",
    )
    presents = QUICK_SYSFS_PRESENT if opts.quick else SYSFS_PRESENT
    sysfs = [
        Row.make(
            f"sysfs hot-plug with {present} USB adapters present, median",
            "ms",
            kdp_target=5.0 if present == SYSFS_PRESENT[-1] else None,
            note="fake sysfs tree: the adapter's entries, then its nodes created -> the "
            "kubelet received the list with it",
        )
        for present in presents
    ]
    removal = Row.make(
        f"sysfs removal with {presents[-1]} USB adapters present, median",
        "ms",
        kdp_target=5.0 if presents[-1] == SYSFS_PRESENT[-1] else None,
        note="the adapter's nodes, then its entries removed -> the kubelet received the list",
    )
    rows = [glob, *sysfs, removal]
    if kubelet_missing is not None:
        return _not_run([row.label for row in rows], kubelet_missing)
    if gdp_missing is not None:
        glob.skip_gdp(gdp_missing)
    try:
        glob_hotplug(opts, glob, with_gdp=gdp_missing is None)
    except (BenchError, HarnessError, TimeoutError, OSError) as exc:
        _failed(glob, exc)
    for row in (*sysfs, removal):
        row.skip_gdp("GDP reads the machine's own /sys (no fake tree) and polls every 5 s")
    for present, row in zip(presents, sysfs, strict=True):
        try:
            plug, unplug = sysfs_hotplug(opts, present)
        except (BenchError, HarnessError, TimeoutError, OSError) as exc:
            _failed(row, exc)
            continue
        for value in plug.values:
            row.add(None, value)
        if present == presents[-1]:
            for value in unplug.values:
                removal.add(None, value)
    return rows


def glob_hotplug(opts: Options, row: Row, *, with_gdp: bool) -> None:
    """Per repeat, the median over `opts.hotplug_events` of kdp-host's file created -> the
    kubelet received the list that has it, and GDP's over `opts.peer_hotplug_events` (it
    rescans every 5 s), on one kubelet."""
    workdir = make_workdir("peer-hotplug")
    base = 2
    try:
        tree = workdir / "dev"
        make_device_files(tree, base, "h")
        hot = tree / "hot"

        def arm() -> tuple[Callable[[], None], Callable[[], None]]:
            return (lambda: touch(hot)), (lambda: os.unlink(hot))

        with peers(workdir, "hot", [tree], with_gdp=with_gdp) as p:
            kubelet = p.kubelet
            kubelet.wait_for(
                lambda k: healthy(k, p.gdp_resources + p.kdp_resources, base),
                30,
                "every device healthy at the kubelet",
            )
            kdp, _ = kubelet_hotplug(opts, p, p.kdp_resources[0], base, arm)
            gdp: list[float | None] = [None] * len(kdp.values)
            if p.gdp_resources:
                events = opts.peer_hotplug_events
                try:
                    got = kubelet_hotplug(opts, p, p.gdp_resources[0], base, arm, events)[0]
                except (BenchError, HarnessError, TimeoutError, OSError) as exc:
                    row.gdp.note = f"FAILED ({type(exc).__name__}: {exc})"
                else:
                    gdp = list(got.values)
            for gdp_value, kdp_value in zip(gdp, kdp.values, strict=True):
                row.add(gdp_value, kdp_value)
    finally:
        remove_tree(workdir)


def kubelet_hotplug(
    opts: Options, p: Peers, resource: str, present: int, arm: Arm, events: int | None = None
) -> tuple[Figure, Figure]:
    """`hotplug.measure_hotplug` of one of the peers' resources on the real kubelet: per
    repeat, the median plug and the median removal."""
    plug, removal = Figure(f"{resource}: plug", "ms"), Figure(f"{resource}: removal", "ms")
    plugin = p.kdp if resource in p.kdp_resources else p.gdp
    assert plugin is not None
    # The kubelet must hold the plugin's list of the devices there now before the first
    # plug: GDP reports only changes, at its 5 s rescan, so after the previous measurement
    # on the same files its last list may still show the device plugged; a plug would then
    # change nothing it reports, and no list with one more healthy device would ever come.
    p.kubelet.wait_for(
        lambda k: healthy(k, [resource], present), 30, f"{resource}: {present} healthy"
    )
    arrivals = KubeletArrivals(p.kubelet, resource)
    figures = (plug, removal, Figure(f"{resource}: plug, max", "ms"))
    measure_hotplug(opts, arrivals, present, arm, figures, plugin.check_alive, events)
    return plug, removal


def sysfs_hotplug(opts: Options, present: int) -> tuple[Figure, Figure]:
    """kdp-host's sysfs hot-plug of one adapter while `present` others are listed, through
    the real kubelet (the tree and the events are the sysfs benchmark's): plug and removal."""
    workdir = make_workdir("peer-sysfs")
    try:
        fake = FakeSysfs(workdir / "root")
        controller = sysfs_bench.build_adapters(fake, present)[0]
        # A long grace period: an unplugged adapter stays listed Unhealthy, so each event
        # moves the healthy count by one.
        config = sysfs_bench.resource(fake, gracePeriod="1h")
        with peers(workdir, "sysfs", [], with_gdp=False, kdp_config=[config]) as p:
            p.kubelet.wait_for(
                lambda k: healthy(k, [sysfs_bench.RESOURCE], present),
                120,
                f"{present} adapters healthy at the kubelet",
            )
            arm = sysfs_bench.hot_adapter(fake, controller)
            return kubelet_hotplug(opts, p, sysfs_bench.RESOURCE, present, arm)
    finally:
        remove_tree(workdir)


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
