"""Hostile commands: what a flooding stream command and a daemon-leaving probe cost.

- Stream flood: two kdp-host processes serve the same glob resource (rich allocate section);
  one also runs a stream command printing two alternating device lists as fast as it can.
  Allocate p99 is measured on both in rotating order; the figure is the ratio flood/none
  within the same run (target 2x: the flood is rate-limited, the command blocks on its pipe).
- Renaming probe: the same, beside a probe listing 12,000 devices whose IDs all change on
  every 200 ms run (same paths): the ownership index admits each list in bounded turns of
  the loop (target 2x).
- Scraped `/devices`: the same, beside a probe listing 20,000 devices with `replicas: 5`
  (100,000 advertised IDs) while a flooder child scrapes `/devices` and `/metrics` in turn,
  10 a second (Issue 17, hostile4 H9: each request built and encoded the 8 MB document
  again, holding the GIL; Allocate waited seconds). The answer is now built once per change
  (target 2x).
- File churn: the same, beside a glob resource whose directory (on tmpfs, as /dev is) a
  flooder child churns at 2,000 file events a second (create a file, remove the oldest of
  500; hostile4 H7: every event made a scan and a published list). Scans of a resource now
  start at least 0.25 s apart (target 2x).
- Both floods run at a fixed rate, paced by the clock in a process of their own: each run
  reports the rate achieved and kdp-host's CPU per 1,000 events (the flooded host's CPU
  over FLOOD_WINDOW seconds of the flood after its Allocate calls). They ran as fast as
  they could before, so a host that took less CPU per event got a larger flood (0.97 and
  4.8 million file events in two runs) and the ratio measured the flooder; and as threads
  of this process they shared the GIL with the Allocate client being timed.
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import (
    BenchError,
    Figure,
    Options,
    glob_resource,
    helper_process,
    make_device_files,
    make_workdir,
    read_line,
    remove_tree,
    rich_allocate,
)
from .latency import (
    RESOURCE,
    ServedHost,
    allocate_request,
    allocate_targets,
    measure,
    served_host,
)

FLOOD = (
    "import sys\n"
    "write = sys.stdout.write\n"
    "while True:\n"
    '    write(\'[{"id": "a"}]\\n[{"id": "b"}]\\n\')\n'
)
MS = 1000.0
PROBE_RUNS = 100
RENAMED = 12_000
SCRAPED = 20_000
CHURNED = 500
CHURN_RATE = 2000.0
"""File events a second (a create or a remove each): the flooder's CPU stays under 5 % of a
core on tmpfs, so the rate is the same in every run."""
SCRAPE_RATE = 10.0
"""Scrapes a second, /devices and /metrics in turn."""
FLOOD_WINDOW = 10.0
"""Seconds of each run over which a flood's CPU per event is taken (no Allocate calls then:
the host's CPU is the flood's; 100 scrapes, 20,000 file events)."""
SCRAPED_REPLICAS = 5
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


def _ratio(what: str, without: str) -> Figure:
    """hostile/none Allocate p99 within one run (target 2x)."""
    return Figure(
        f"hostile: allocate p99 ratio, {what}/none",
        "x",
        target=2.0,
        note=f"same run, vs the same host without {without}",
    )


def _allocate_beside(
    opts: Options,
    labels: tuple[str, str],
    hostile: dict[str, Any],
    ratio: Figure,
    setup: Callable[[Path], None] = lambda workdir: None,
    ready: Callable[[ServedHost], None] = lambda served: None,
    after: Callable[[ServedHost], list[Figure]] = lambda served: [],
    flood: _Flood | None = None,
) -> list[Figure]:
    """Allocate p50/p99 of the same glob resource (rich allocate section) on two kdp-host
    processes, one of which also runs the `hostile` resource, in rotating order; `ratio`
    gets hostile/none p99 of each run. `setup` makes its files, `ready` waits for it to be
    at work (and starts `flood`, whose rate and cost each run measures), `after` reads
    figures of its own."""
    none, label = labels
    figures = {
        f"allocate {q} {name}": Figure(f"hostile: allocate {q}, {name}", "ms")
        for name in labels
        for q in ("p50", "p99")
    }
    workdir = make_workdir(label.split()[0])
    fpga = glob_resource(RESOURCE, f"{workdir}/dev/fpga*", rich_allocate(workdir))
    try:
        make_device_files(workdir / "dev", 16, "fpga")
        setup(workdir)
        with contextlib.ExitStack() as stack:
            plain = stack.enter_context(served_host(workdir, "kdp-plain", [fpga]))
            beside = stack.enter_context(
                served_host(workdir, "kdp-hostile", [fpga, hostile], wait_for=[RESOURCE])
            )
            ready(beside)
            request = allocate_request(plain.device_ids[:2])
            targets = allocate_targets(stack, list(labels), [plain, beside], request)
            sized = Options(**{**opts.__dict__, "calls": opts.containment_calls})
            for i in range(opts.repeats):
                result = measure(targets, request, sized, figures, i)
                ratio.add(result[label][1] / result[none][1])
                if flood:
                    flood.measure(beside)
                for served in (plain, beside):
                    served.host.check_alive()
            extra = after(beside)
            if flood:
                extra += flood.figures()
    finally:
        remove_tree(workdir)
    return [*figures.values(), ratio, *extra]


def _flood(opts: Options) -> list[Figure]:
    ratio = _ratio("stream flood", "the flooding stream command")
    flood: dict[str, Any] = {
        "name": "bench.kdp-host.io/flood",
        "shell": {
            "command": [sys.executable, "-c", FLOOD],
            "mode": "stream",
            "format": "json",
        },
    }

    def dropped(served: ServedHost) -> list[Figure]:
        counts = dict(_RATE_LIMITED.findall(_metrics(served.host.config_path)))
        figure = Figure("hostile: stream lists dropped by the rate limit", "lists")
        figure.add(float(counts.get(flood["name"], 0.0)))
        return [figure]

    return _allocate_beside(opts, ("no flood", "stream flood"), flood, ratio, after=dropped)


def _renaming_probe(opts: Options) -> list[Figure]:
    """A probe listing RENAMED devices whose IDs flip (d<i> / e<i>) on every 200 ms run,
    on the same paths: every run renames every device (Issue 17, Hostile #11)."""
    n = RENAMED // 10 if opts.quick else RENAMED
    name = "bench.kdp-host.io/renamed"
    ratio = _ratio(f"renaming probe ({n} IDs every 200 ms)", "the renaming probe")
    probe: dict[str, Any] = {"name": name, "shell": {"format": "json", "interval": "200ms"}}

    def setup(workdir: Path) -> None:
        paths = [str(p) for p in make_device_files(workdir / "many", n)]
        for prefix in "de":
            listed = [{"id": f"{prefix}{i}", "paths": [p]} for i, p in enumerate(paths)]
            (workdir / f"{prefix}.json").write_text(json.dumps(listed))
        flag = workdir / "renamed"
        script = (
            f"if [ -e {flag} ]; then rm -f {flag}; cat {workdir}/d.json; "
            f"else : > {flag}; cat {workdir}/e.json; fi"
        )
        probe["shell"]["command"] = ["sh", "-c", script]

    def ready(served: ServedHost) -> None:
        served.kubelet.wait_registrations([name], timeout=60)
        served.kubelet.plugins[name].wait_update(lambda u: u.healthy() == n, timeout=120)

    labels = ("no renaming probe", "renaming probe")
    return _allocate_beside(opts, labels, probe, ratio, setup, ready)


class _Flood:
    """A flooder child (tests/bench/flooder.py) making `rate` events a second from the start
    of the first measurement on. After each run's Allocate calls, a window of `window` seconds
    with no call gets the rate achieved and kdp-host's CPU per 1,000 events (the flooded
    host's CPU over the window: its idle CPU is within a clock tick of nothing)."""

    def __init__(self, what: str, unit: str, rate: float, window: float) -> None:
        self.rate = rate
        self.window = window
        self.achieved = Figure(
            f"hostile: {what} rate achieved", f"{unit}/s", note=f"asked for {rate:g}/s"
        )
        self.cpu = Figure(
            f"hostile: kdp-host CPU per 1,000 {unit}, {what}",
            "ms",
            note=f"at {rate:g} {unit}/s, over {window:g}s without Allocate calls",
        )
        self.stack = contextlib.ExitStack()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *args: str) -> None:
        self.proc = self.stack.enter_context(
            helper_process("flooder", *args, "--rate", str(self.rate))
        )
        if read_line(self.proc, 30, "ready line") != "ready":
            raise BenchError("the flooder did not start")

    def close(self) -> None:
        self.stack.close()

    def _count(self) -> tuple[float, float]:
        """(events made, monotonic)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        events, at = json.loads(read_line(self.proc, 30, "count"))
        return float(events), float(at)

    def measure(self, flooded: ServedHost) -> None:
        """One window: the rate achieved and the flooded host's CPU per 1,000 events."""
        events, at = self._count()
        cpu = flooded.host.cpu_seconds()
        time.sleep(self.window)
        spent = flooded.host.cpu_seconds() - cpu
        made, now = self._count()
        if made <= events:
            raise BenchError(f"the flooder made no events in {now - at:.1f}s")
        self.achieved.add((made - events) / (now - at))
        self.cpu.add(spent / (made - events) * 1000 * MS)

    def figures(self) -> list[Figure]:
        return [self.achieved, self.cpu]


def _scraped_devices(opts: Options) -> list[Figure]:
    """Allocate of another resource while a flooder scrapes `/devices` and `/metrics` in
    turn, SCRAPE_RATE a second, of a host advertising SCRAPED x SCRAPED_REPLICAS IDs
    (hostile4 H9)."""
    n = SCRAPED // 10 if opts.quick else SCRAPED
    name = "bench.kdp-host.io/scraped"
    ratio = _ratio(
        f"/devices scraped ({n * SCRAPED_REPLICAS} IDs, {SCRAPE_RATE:g} scrapes/s)",
        "the large resource and the scrapes",
    )
    probe: dict[str, Any] = {
        "name": name,
        "replicas": SCRAPED_REPLICAS,
        # One run: a run every 2 s (parsing 20,000 entries) fell in a measured window or not,
        # and moved the CPU per scrape by a third from run to run.
        "shell": {"format": "json", "interval": "1h"},
    }
    window = FLOOD_WINDOW / 5 if opts.quick else FLOOD_WINDOW
    scrapes = _Flood("/devices and /metrics scraped", "scrapes", SCRAPE_RATE, window)

    def setup(workdir: Path) -> None:
        listed = [{"id": f"s{i}"} for i in range(n)]
        (workdir / "scraped.json").write_text(json.dumps(listed))
        probe["shell"]["command"] = ["cat", str(workdir / "scraped.json")]

    def ready(served: ServedHost) -> None:
        served.kubelet.wait_registrations([name], timeout=60)
        total = n * SCRAPED_REPLICAS
        served.kubelet.plugins[name].wait_update(lambda u: u.healthy() == total, timeout=120)
        base = f"http://{served.host.metrics_address}"
        scrapes.start("scrape", "--url", f"{base}/devices", "--url", f"{base}/metrics")

    labels = ("no scrapers", "devices scraped")
    try:
        return _allocate_beside(opts, labels, probe, ratio, setup, ready, flood=scrapes)
    finally:
        scrapes.close()


def _churn_directory(workdir: Path) -> Path:
    """A directory on tmpfs (/dev/shm) where there is one, as /dev (devtmpfs) is: on a disk
    file system each create and unlink costs the flooder ~0.13 ms of kernel time (ext4,
    measured), on tmpfs a tenth of it."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="kdpb-churn-", dir=shm))
    return workdir / "churn"


def _churn(opts: Options) -> list[Figure]:
    """Allocate of another resource while a flooder creates and removes files in a glob
    resource's directory, CHURN_RATE events a second (hostile4 H7)."""
    name = "bench.kdp-host.io/churned"
    ratio = _ratio(f"file churn ({CHURNED} files, {CHURN_RATE:g} events/s)", "the churned resource")
    churned: dict[str, Any] = {"name": name, "glob": {"gracePeriod": "0s"}}
    window = FLOOD_WINDOW / 5 if opts.quick else FLOOD_WINDOW
    churner = _Flood("file churn", "file events", CHURN_RATE, window)
    directory: list[Path] = []

    def setup(workdir: Path) -> None:
        directory.append(_churn_directory(workdir))
        make_device_files(directory[0], CHURNED, "f")
        churned["glob"]["paths"] = [f"{directory[0]}/*"]

    def ready(served: ServedHost) -> None:
        served.kubelet.wait_registrations([name], timeout=60)
        churner.start("churn", "--dir", str(directory[0]))

    labels = ("no churn", "file churn")
    try:
        return _allocate_beside(opts, labels, churned, ratio, setup, ready, flood=churner)
    finally:
        churner.close()
        for path in directory:
            remove_tree(path)


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
    return [
        *_flood(opts),
        *_renaming_probe(opts),
        *_scraped_devices(opts),
        *_churn(opts),
        *_daemon_probe(opts),
    ]
