"""Hostile commands: what a flooding stream command and a daemon-leaving probe cost.

- Stream flood: two kdp-host processes serve the same glob resource (rich allocate section);
  one also runs a stream command printing two alternating device lists as fast as it can.
  Allocate p99 is measured on both in rotating order; the figure is the ratio flood/none
  within the same run (target 2x: the flood is rate-limited, the command blocks on its pipe).
- Renaming probe: the same, beside a probe listing 12,000 devices whose IDs all change on
  every 200 ms run (same paths): the ownership index admits each list in bounded turns of
  the loop (target 2x).
- Scraped `/devices`: the same, beside a probe listing 20,000 devices with `replicas: 5`
  (100,000 advertised IDs) while two clients poll `/devices` and two `/metrics` in a loop
  (Issue 17, hostile4 H9: each request built and encoded the 8 MB document again, holding
  the GIL; Allocate waited seconds). The answer is now built once per change (target 2x).
- File churn: the same, beside a glob resource whose directory a thread churns (create one
  of 500 files, remove another, without pause; hostile4 H7: every event made a scan and a
  published list). Scans of a resource now start at least 0.25 s apart (target 2x).
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
import threading
import time
import urllib.request
from collections.abc import Callable
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
PROBE_RUNS = 100
RENAMED = 12_000
SCRAPED = 20_000
CHURNED = 500
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
) -> list[Figure]:
    """Allocate p50/p99 of the same glob resource (rich allocate section) on two kdp-host
    processes, one of which also runs the `hostile` resource, in rotating order; `ratio`
    gets hostile/none p99 of each run. `setup` makes its files, `ready` waits for it to be
    at work, `after` reads figures of its own."""
    none, label = labels
    figures = {
        f"allocate {q} {name}": Figure(f"hostile: allocate {q}, {name}", "ms")
        for name in labels
        for q in ("p50", "p99")
    }
    workdir = make_workdir(label.split()[0])
    fpga = glob_resource(RESOURCE, f"{workdir}/dev/fpga*", RICH_ALLOCATE)
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
                for served in (plain, beside):
                    served.host.check_alive()
            extra = after(beside)
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


class _Background:
    """Threads a hostile run starts once its host is at work and stops after the
    measurement, with one figure of what they did (`count`)."""

    def __init__(self, figure: Figure) -> None:
        self.figure = figure
        self.stop = threading.Event()
        self.count = 0

    def start(self, work: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=work, args=args, daemon=True).start()

    def after(self, served: ServedHost) -> list[Figure]:
        self.stop.set()
        self.figure.add(float(self.count))
        return [self.figure]


def _scraped_devices(opts: Options) -> list[Figure]:
    """Allocate of another resource while 2 clients poll `/devices` and 2 `/metrics` of a
    host advertising SCRAPED x SCRAPED_REPLICAS IDs (hostile4 H9)."""
    n = SCRAPED // 10 if opts.quick else SCRAPED
    name = "bench.kdp-host.io/scraped"
    ratio = _ratio(
        f"/devices scraped ({n * SCRAPED_REPLICAS} IDs)", "the large resource and the scrapers"
    )
    probe: dict[str, Any] = {
        "name": name,
        "replicas": SCRAPED_REPLICAS,
        "shell": {"format": "json", "interval": "2s"},
    }
    scrapers = _Background(Figure("hostile: scrapes answered during the /devices run", "scrapes"))

    def setup(workdir: Path) -> None:
        listed = [{"id": f"s{i}"} for i in range(n)]
        (workdir / "scraped.json").write_text(json.dumps(listed))
        probe["shell"]["command"] = ["cat", str(workdir / "scraped.json")]

    def scrape(url: str) -> None:
        while not scrapers.stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    response.read()
                scrapers.count += 1
            except OSError:
                if scrapers.stop.wait(0.1):
                    return

    def ready(served: ServedHost) -> None:
        served.kubelet.wait_registrations([name], timeout=60)
        total = n * SCRAPED_REPLICAS
        served.kubelet.plugins[name].wait_update(lambda u: u.healthy() == total, timeout=120)
        base = f"http://{served.host.metrics_address}"
        for path in ("/devices", "/devices", "/metrics", "/metrics"):
            scrapers.start(scrape, base + path)

    labels = ("no scrapers", "devices scraped")
    try:
        return _allocate_beside(opts, labels, probe, ratio, setup, ready, scrapers.after)
    finally:
        scrapers.stop.set()


def _churn(opts: Options) -> list[Figure]:
    """Allocate of another resource while a thread creates and removes files in a glob
    resource's directory without pause (hostile4 H7)."""
    name = "bench.kdp-host.io/churned"
    ratio = _ratio(f"file churn ({CHURNED} files)", "the churned resource")
    churned: dict[str, Any] = {"name": name, "glob": {"gracePeriod": "0s"}}
    churner = _Background(Figure("hostile: file events made during the churn run", "events"))

    def setup(workdir: Path) -> None:
        make_device_files(workdir / "churn", CHURNED, "f")
        churned["glob"]["paths"] = [f"{workdir}/churn/*"]

    def churn(directory: Path) -> None:
        i = 0
        while not churner.stop.is_set():
            with contextlib.suppress(OSError):
                (directory / f"f{i % CHURNED}_{i}").touch()
                (directory / f"f{(i + CHURNED // 2) % CHURNED}_{i - CHURNED // 2}").unlink()
            churner.count += 2
            i += 1

    def ready(served: ServedHost) -> None:
        served.kubelet.wait_registrations([name], timeout=60)
        churner.start(churn, Path(churned["glob"]["paths"][0]).parent)

    labels = ("no churn", "file churn")
    try:
        return _allocate_beside(opts, labels, churned, ratio, setup, ready, churner.after)
    finally:
        churner.stop.set()


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
