"""Where kdp-host's start-up goes: N resources x M devices on the kubelet's real device
manager (the peer section's set-up, `peer.peers`), from spawning the process to the
kubelet's last `registered` event.

    python -m tests.bench.startup_profile time [--runs 3]      spawn -> registered, -> the last
                                                  first list; CPU then and after a pause
    python -m tests.bench.startup_profile timeline             the phases, from the JSON log
    python -m tests.bench.startup_profile cprofile [--top 40]  cProfile of the real process
                                                  (on the CPU clock: a loaded machine's waits
                                                  are not charged to whatever ran before them)
    python -m tests.bench.startup_profile importtime           python -X importtime, summed
    python -m tests.bench.startup_profile floor [--repeats 5]  CPU and RSS of a fresh
                                                  interpreter importing each layer of the
                                                  stack, then kdp-host's modules of a run
    python -m tests.bench.startup_profile stack [--runs 3]     the least plugin on the chosen
                                                  stack (`bare_plugin`), the same with all
                                                  of the stack imported, kdp-host and GDP,
                                                  alternated: to all registered, CPU, RSS

Not part of `make bench`: a tool for issue 19's start-up row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..kubelet_harness import harness_binary
from .harness import cpu_seconds, make_device_files, make_workdir, remove_tree, rss_bytes
from .peer import Peers, peers, start_and_wait
from .run import compile_product


@contextlib.contextmanager
def prepared(resources: int, devices: int) -> Iterator[tuple[Path, list[Path]]]:
    workdir = make_workdir("startup")
    try:
        trees = [workdir / "trees" / f"d{i:03d}" for i in range(resources)]
        for tree in trees:
            make_device_files(tree, devices, "d")
        yield workdir, trees
    finally:
        remove_tree(workdir)


@contextlib.contextmanager
def command(argv: list[str]) -> Iterator[None]:
    """kdp-host started as `argv` (tests.bench.harness.kdp_host_command reads it)."""
    old = os.environ.get("KDP_BENCH_COMMAND")
    os.environ["KDP_BENCH_COMMAND"] = " ".join(argv)
    try:
        yield
    finally:
        if old is None:
            del os.environ["KDP_BENCH_COMMAND"]
        else:
            os.environ["KDP_BENCH_COMMAND"] = old


@contextlib.contextmanager
def started(
    workdir: Path, trees: list[Path], name: str, log_level: str = "warning"
) -> Iterator[tuple[Peers, float]]:
    """kdp-host alone on a fresh kubelet: seconds from its spawn to the last registration."""
    with peers(workdir, name, trees, with_gdp=False, start=False) as p:
        p.kdp.log_level = log_level
        yield p, start_and_wait(p, p.kdp)


def registered_spread(p: Peers, seconds: float) -> tuple[float, float]:
    """Seconds from kdp-host's spawn to the first and to the last `registered` event, given
    `seconds` to the last."""
    times = [int(e["t_unix_ns"]) for e in p.kubelet.events() if e["kind"] == "registered"]
    return seconds - (max(times) - min(times)) / 1e9, seconds


def last_first_list(p: Peers, seconds: float, timeout: float = 120.0) -> float:
    """Seconds from kdp-host's spawn to the kubelet receiving the last resource's first list
    (each resource's first ListAndWatch list after its registration, `t_recv_unix_ns`),
    given `seconds` to the last `registered` event."""
    wanted = set(p.kdp_resources)
    registered: dict[str, int] = {}
    listed: dict[str, int] = {}

    def all_listed(events: list[dict[str, Any]]) -> bool:
        for event in events:
            name = event["resource"]
            if name not in wanted:
                continue
            if event["kind"] == "registered":
                registered.setdefault(name, int(event["t_unix_ns"]))
            elif event["kind"] == "list_and_watch" and name in registered:
                listed.setdefault(name, int(event["t_recv_unix_ns"]))
        return len(listed) == len(wanted)

    p.kubelet.wait_events(all_listed, 0, timeout, f"{len(wanted)} first lists")
    return seconds + (max(listed.values()) - max(registered.values())) / 1e9


def cmd_time(args: argparse.Namespace) -> None:
    with prepared(args.resources, args.devices) as (workdir, trees):
        for run in range(args.runs):
            with started(workdir, trees, f"t{run}") as (p, seconds):
                listed = last_first_list(p, seconds)
                cpu = p.kdp.cpu_seconds()
                first, _ = registered_spread(p, seconds)
                time.sleep(args.settle)
                print(
                    f"run {run}: spawn -> all registered {seconds * 1000:.0f} ms "
                    f"(first registered at {first * 1000:.0f} ms), last first list "
                    f"{listed * 1000:.0f} ms, CPU {cpu * 1000:.0f} ms "
                    f"({p.kdp.cpu_seconds() * 1000:.0f} ms and RSS "
                    f"{p.kdp.rss_bytes() / 2**20:.1f} MiB {args.settle:g} s later)"
                )


def cmd_timeline(args: argparse.Namespace) -> None:
    """Phases from kdp-host's JSON log (info level) and the kubelet's events."""
    base = [sys.executable, "-m", "kdp_host", "--log-format", "json"]
    with (
        prepared(args.resources, args.devices) as (workdir, trees),
        command(base),
        started(workdir, trees, "tl", "info") as (p, seconds),
    ):
        time.sleep(0.5)
        # the wall clock of the spawn (the logs' and the kubelet's clock)
        spawned = time.time() - (time.monotonic() - p.kdp.started_at)
        marks: dict[str, list[float]] = {}
        for line in p.kdp.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                marks.setdefault(entry["event"], []).append(float(entry["ts"]) - spawned)
        for event in p.kubelet.events():
            if event["kind"] in ("registered", "list_and_watch"):
                at = int(event["t_unix_ns"]) / 1e9 - spawned
                marks.setdefault(f"kubelet:{event['kind']}", []).append(at)
    print(f"spawn -> all registered {seconds * 1000:.0f} ms")
    for name, times in sorted(marks.items(), key=lambda kv: min(kv[1])):
        print(
            f"  {name:32s} n={len(times):4d} first {min(times) * 1000:7.1f} ms  "
            f"last {max(times) * 1000:7.1f} ms"
        )


_CPU_PROFILE = """
import atexit, cProfile, runpy, sys, time
out = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
atexit.register(lambda: (profile.disable(), profile.dump_stats(out)))
profile.enable()
runpy.run_module("kdp_host", run_name="__main__", alter_sys=True)
"""


def cmd_cprofile(args: argparse.Namespace) -> None:
    with prepared(args.resources, args.devices) as (workdir, trees):
        out, script = workdir / "startup.prof", workdir / "cpu_profile.py"
        script.write_text(_CPU_PROFILE)  # a file: the command is passed on split at spaces
        argv = [sys.executable, str(script), str(out)]
        with command(argv), started(workdir, trees, "cp") as (_, seconds):
            print(f"spawn -> all registered {seconds * 1000:.0f} ms (under cProfile)")
        # stopped (SIGTERM): the profile covers exec -> registered -> a clean stop
        stats = pstats.Stats(str(out))
        if args.save:
            stats.dump_stats(args.save)
        if args.top:
            stats.sort_stats(args.sort).print_stats(args.top)


def cmd_importtime(args: argparse.Namespace) -> None:
    with prepared(args.resources, args.devices) as (workdir, trees):
        argv = [sys.executable, "-X", "importtime", "-m", "kdp_host"]
        with command(argv), started(workdir, trees, "it") as (p, seconds):
            print(f"spawn -> all registered {seconds * 1000:.0f} ms (with -X importtime)")
            text = p.kdp.log_path.read_text()
    rows: list[tuple[int, int, str]] = []
    for line in text.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((int(own), int(cumulative), name.rstrip()))
    top = [r for r in rows if not r[2].startswith("  ")]
    total = sum(r[1] for r in top)
    print(f"{len(rows)} modules, {total / 1000:.0f} ms in imports")
    for own, cumulative, name in sorted(rows, key=lambda r: -r[1])[: args.top]:
        print(f"  {cumulative / 1000:7.1f} ms cumulative {own / 1000:6.1f} ms own  {name}")


STACK = (
    "asyncio",
    "uvloop",
    "grpclib.server",
    "grpclib.client",
    "betterproto2.grpclib",
    "yaml",
    "prometheus_client",
)
"""The libraries every `kdp-host run` loads (h2 and hpack come with grpclib)."""

RUN_MODULES = (
    "kdp_host.cli",
    "kdp_host.host",
    "kdp_host.http",
    "kdp_host.metrics",
    "kdp_host.status",
    "kdp_host.drivers.glob",
    "kdp_host.podresources",
)
"""kdp-host's modules that a glob run imports (`cli.cmd_run`, its driver, and the features
its config uses: `features.py` imports them where they are chosen; PodResources polling is
on by default)."""

FLOOR_LAYERS = (
    ("python -c pass (site, the editable install's finder)", ()),
    ("+ asyncio (and ssl, which asyncio imports)", ("asyncio",)),
    ("+ the stack: uvloop, grpclib, h2, betterproto2, PyYAML, prometheus-client", STACK),
    ("+ kdp-host's modules of a glob run", (*STACK, *RUN_MODULES)),
)

_MEASURE = """
import sys, time
for name in sys.argv[1:]:
    __import__(name)
with open("/proc/self/status") as status:
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
print(time.process_time(), rss * 1024, len(sys.modules))
"""


def cmd_floor(args: argparse.Namespace) -> None:
    """Each layer in a fresh interpreter, the layers alternated within each repeat: the
    process's CPU time from exec to the end of its imports, and its VmRSS then."""
    samples: dict[str, list[tuple[float, int, int]]] = {name: [] for name, _ in FLOOR_LAYERS}
    for _ in range(args.repeats):
        for name, modules in FLOOR_LAYERS:
            out = subprocess.run(
                [sys.executable, "-c", _MEASURE, *modules],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            samples[name].append((float(out[0]), int(out[1]), int(out[2])))
    load = os.getloadavg()[0]
    print(f"{args.repeats} repeats, load average {load:.1f}: CPU ms median (min), RSS MB")
    for name, runs in samples.items():
        cpu = [run[0] * 1000 for run in runs]
        rss = statistics.median(run[1] for run in runs) / 1e6
        print(
            f"  {statistics.median(cpu):6.0f} ({min(cpu):4.0f}) ms  {rss:5.1f} MB  "
            f"{runs[0][2]:4d} modules  {name}"
        )


_BARE = [sys.executable, str(Path(__file__).with_name("bare_plugin.py"))]
STACK_PLUGINS = {
    "bare plugin (uvloop, grpclib, betterproto2)": _BARE,
    "bare plugin + PyYAML, prometheus-client": [*_BARE, "--stack"],
    "kdp-host": [sys.executable, "-m", "kdp_host"],
}
"""What `stack` starts in turn in kdp-host's place (`KDP_BENCH_COMMAND`; the bare plugin as
a script: the harness starts it in its work directory)."""


def cmd_stack(args: argparse.Namespace) -> None:
    """Each plugin of `STACK_PLUGINS` (and GDP beside kdp-host, where its binary is) started
    alone on a fresh kubelet, in turn, `--runs` times: seconds from the spawn to the last
    `registered` event, the process's CPU then, and its VmRSS `--settle` seconds later."""
    samples: dict[str, list[tuple[float, float, float]]] = {"GDP": []}
    samples.update({name: [] for name in STACK_PLUGINS})
    with prepared(args.resources, args.devices) as (workdir, trees):
        for run in range(args.runs):
            for index, (name, argv) in enumerate(STACK_PLUGINS.items()):
                with_gdp = argv[-1] == "kdp_host" and harness_binary("generic-device-plugin")
                with (
                    command(argv),
                    peers(
                        workdir, f"s{run}-{index}", trees, with_gdp=bool(with_gdp), start=False
                    ) as p,
                ):
                    for plugin, key in ((p.gdp, "GDP"), (p.kdp, name)):
                        if plugin is None:
                            continue
                        seconds = start_and_wait(p, plugin)
                        cpu = cpu_seconds(plugin.pid)
                        time.sleep(args.settle)
                        samples[key].append((seconds, cpu, rss_bytes(plugin.pid) / 1e6))
    load = os.getloadavg()[0]
    print(
        f"{args.resources} x {args.devices}, {args.runs} runs, load average {load:.1f}: "
        "medians (min) of to all registered and CPU then, RSS"
    )
    for name, runs in samples.items():
        if not runs:
            continue
        wall, cpu = [r[0] * 1000 for r in runs], [r[1] * 1000 for r in runs]
        print(
            f"  {statistics.median(wall):6.0f} ({min(wall):4.0f}) ms  "
            f"CPU {statistics.median(cpu):4.0f} ({min(cpu):4.0f}) ms  "
            f"{statistics.median(r[2] for r in runs):5.1f} MB  {name}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--devices", type=int, default=10)
    sub = parser.add_subparsers(dest="what", required=True)
    timed = sub.add_parser("time")
    timed.add_argument("--runs", type=int, default=3)
    timed.add_argument("--settle", type=float, default=3.0)
    sub.add_parser("timeline")
    profile = sub.add_parser("cprofile")
    profile.add_argument("--top", type=int, default=40)
    profile.add_argument("--sort", default="cumulative")
    profile.add_argument("--save", default="")
    sub.add_parser("importtime").add_argument("--top", type=int, default=40)
    sub.add_parser("floor").add_argument("--repeats", type=int, default=5)
    stack = sub.add_parser("stack")
    stack.add_argument("--runs", type=int, default=3)
    stack.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args(argv)
    compile_product()  # as `make bench` does (and installing the package)
    handlers = {
        "time": cmd_time,
        "timeline": cmd_timeline,
        "cprofile": cmd_cprofile,
        "importtime": cmd_importtime,
        "floor": cmd_floor,
        "stack": cmd_stack,
    }
    handlers[args.what](args)


if __name__ == "__main__":
    main()
