"""What every benchmark needs: the real `kdp-host run` as a subprocess, the kubelet simulator
in this process (on its own thread), raw grpcio clients, and small statistics helpers.

Timestamps are `time.monotonic()` (CLOCK_MONOTONIC, shared by all processes of the machine),
so times taken in helper subprocesses compare with times taken here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from kdp_host.simulator import KUBELET_SOCKET_NAME, KubeletSimulator

from .proto import REPO

T = TypeVar("T")

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

now = time.monotonic


class BenchError(RuntimeError):
    """A benchmark could not be carried out (not a missed target)."""


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of no values")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


@dataclass
class Figure:
    """One reported figure: one value per repeated run, summarised as median/min/max."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: float | None = None
    """Upper bound the median must not exceed (None: reported only)."""
    note: str = ""
    row: str = ""
    """Set on the figures of a side-by-side table (`make bench` section `peer`): the row..."""
    column: str = ""
    """...and the column (`GDP`, `kdp-host`, `ratio`) the figure fills."""

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return median(self.values) if self.values else math.nan

    @property
    def min(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.values else math.nan

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if not self.values:
            return False
        return self.median <= self.target

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median if self.values else None,
            "min": self.min if self.values else None,
            "max": self.max if self.values else None,
            "values": self.values,
            "target": self.target,
            "passed": self.passed,
            "note": self.note,
            "row": self.row,
            "column": self.column,
        }


# --------------------------------------------------------------------------- files, sockets


def make_workdir(prefix: str) -> Path:
    """A fresh directory under /tmp (short paths: unix socket names are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"kdpb-{prefix}-", dir="/tmp"))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def touch(path: Path) -> None:
    with open(path, "wb"):
        pass


def make_device_files(directory: Path, count: int, prefix: str = "dev") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{prefix}{i:05d}" for i in range(count)]
    for path in paths:
        touch(path)
    return paths


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.005) -> None:
    deadline = now() + timeout
    while not check():
        if now() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


# --------------------------------------------------------------------------- processes


def rss_bytes(pid: int) -> int:
    """VmRSS from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError("no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --------------------------------------------------------------------------- the product


def kdp_host_command() -> list[str]:
    """The product's console script (`KDP_BENCH_COMMAND` overrides it, for experiments)."""
    override = os.environ.get("KDP_BENCH_COMMAND")
    if override:
        return override.split()
    script = Path(sys.executable).parent / "kdp-host"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kdp_host"]


def glob_resource(
    name: str, pattern: str, allocate: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {"name": name, "glob": {"paths": [pattern]}}
    if allocate:
        resource["allocate"] = allocate
    resource.update(extra)
    return resource


VENDOR_LIB_FILES = (8, 32)
"""Directories and files a directory in each of the bench's vendor library tree holds."""


def rich_allocate(workdir: Path) -> dict[str, Any]:
    """An `allocate` section with env, annotations, permissions and a vendor library mount: a
    tree of its own under `workdir` (8 directories of 32 files), made here. Not a system
    directory such as /usr/lib, whose size is the machine's: past 65,536 entries, where the
    user's inotify watches run out (several hosts at once), kdp-host refuses to hand out a
    tree it can neither follow nor read in full, and the figures would be the machine's."""
    library = workdir / "vendor-lib"
    directories, files = VENDOR_LIB_FILES
    for d in range(directories):
        (library / f"lib{d}").mkdir(parents=True, exist_ok=True)
        for f in range(files):
            (library / f"lib{d}" / f"libvendor{f}.so").touch()
    return {
        "env": {
            "FPGA_DEVICES": "{ids}",
            "FPGA_PATHS": "{paths}",
            "FPGA_COUNT": "{count}",
            "FPGA_RESOURCE": "{resource}",
        },
        "mounts": [
            {"hostPath": str(library), "containerPath": "/usr/local/vendor/lib", "readOnly": True}
        ],
        "annotations": {
            "vendor.example/devices": "{ids}",
            "vendor.example/resource": "{resource}",
        },
        "permissions": "rw",
    }


class KdpHost:
    """`kdp-host run --config <file>` as a child process (so its RSS and CPU are its own)."""

    def __init__(
        self,
        workdir: Path,
        socket_dir: Path,
        resources: list[dict[str, Any]],
        *,
        loop: str = "auto",
        log_level: str = "info",
        name: str = "kdp-host",
        settings: dict[str, Any] | None = None,
    ) -> None:
        """`settings`: more top-level config keys; a section given (`kubelet`) is merged
        over the one made here."""
        self.workdir = workdir
        self.socket_dir = socket_dir
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.loop = loop
        self.log_level = log_level
        config = {
            "kubelet": {"socketDir": str(socket_dir)},
            "stateDir": str(workdir / f"{name}.state"),
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "resources": resources,
        }
        for key, value in (settings or {}).items():
            section = config.get(key)
            config[key] = {**section, **value} if isinstance(section, dict) else value
        self.metrics_address = config["metrics"]["listen"]
        # JSON is YAML.
        self.config_path.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = math.nan
        self._log_file: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        cmd = [
            *kdp_host_command(),
            "run",
            "--config",
            str(self.config_path),
            "--loop",
            self.loop,
            "--log-level",
            self.log_level,
        ]
        self.started_at = now()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=str(self.workdir)
        )
        return self.started_at

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"kdp-host exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> KdpHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the kubelet


@dataclass(frozen=True)
class RegisterEvent:
    at: float
    """When the Register call arrived (the simulator's clock is `now`)."""
    resource: str
    endpoint: str


@dataclass(frozen=True)
class Update:
    at: float
    """When the ListAndWatch message arrived, before it was decoded."""
    total_devices: int
    healthy_devices: int

    def healthy(self) -> int:
        return self.healthy_devices

    def total(self) -> int:
        return self.total_devices


class PluginConnection:
    """The ListAndWatch messages the kubelet received for one resource (every registration
    of it), for waiting on from the benchmark's thread."""

    def __init__(self, kubelet: BenchKubelet, resource: str) -> None:
        self._kubelet = kubelet
        self.resource = resource

    def count(self) -> int:
        return len(self._kubelet.updates(self.resource))

    def device_ids(self) -> list[str]:
        """The resource's devices as the kubelet stored them from the last message."""
        sim = self._kubelet.simulator
        return sorted(self._kubelet.call(_resource_devices(sim, self.resource)))

    def wait_update(
        self, predicate: Callable[[Update], bool], after: int = 0, timeout: float = 10.0
    ) -> tuple[int, Update]:
        """The first update with index >= `after` that satisfies `predicate`."""
        found: list[tuple[int, Update]] = []

        def matched() -> bool:
            updates = self._kubelet.updates(self.resource)
            for index in range(after, len(updates)):
                if predicate(updates[index]):
                    found.append((index, updates[index]))
                    return True
            return False

        self._kubelet.wait(matched, timeout, f"{self.resource}: a matching ListAndWatch update")
        return found[0]


async def _resource_devices(sim: KubeletSimulator, resource: str) -> list[str]:
    return list(sim.resource(resource).devices)


class BenchKubelet:
    """The kubelet of the benchmarks: kdp-host's kubelet simulator (the one kubelet fake of
    the project, docs/kubelet-contract.md) on its own event loop in a thread, driven from the
    benchmark's synchronous code. It dials back inside Register, holds every ListAndWatch
    stream open and stamps each message on arrival, before decoding it.

    `restart()` does what a kubelet restart does to the directory: stop, remove every
    non-directory entry but the checkpoint, listen again.
    """

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.path = socket_dir / KUBELET_SOCKET_NAME
        self._runner: asyncio.Runner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sim: KubeletSimulator | None = None
        self._lock = threading.Lock()
        self._scanned = 0
        self._updates: dict[str, list[Update]] = {}
        self.plugins: dict[str, PluginConnection] = {}

    @property
    def simulator(self) -> KubeletSimulator:
        if self._sim is None:
            raise BenchError("the kubelet is not running")
        return self._sim

    # -- the loop thread

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            ready = threading.Event()

            def run() -> None:
                factory = _uvloop_factory()
                with asyncio.Runner(loop_factory=factory) as runner:
                    self._loop = runner.get_loop()
                    ready.set()
                    self._loop.run_forever()

            self._thread = threading.Thread(target=run, name="bench-kubelet", daemon=True)
            self._thread.start()
            ready.wait(10)
        assert self._loop is not None
        return self._loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coro` on the kubelet's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result(timeout)

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until `check()` (run on the kubelet's loop at every change) is true."""
        try:
            self.call(self.simulator.wait_for(check, timeout, description=what), timeout + 5)
        except TimeoutError as exc:
            raise BenchError(str(exc)) from None

    # -- records

    def _scan(self) -> None:
        """Sort the simulator's new ListAndWatch records by resource."""
        with self._lock:
            records = self.simulator.list_and_watch_updates
            for record in records[self._scanned :]:
                update = Update(record.received_at, record.total, record.healthy)
                self._updates.setdefault(record.resource, []).append(update)
                if record.resource not in self.plugins:
                    self.plugins[record.resource] = PluginConnection(self, record.resource)
            self._scanned = len(records)

    def updates(self, resource: str) -> list[Update]:
        self._scan()
        return self._updates.get(resource, [])

    @property
    def registrations(self) -> list[RegisterEvent]:
        return [
            RegisterEvent(a.received_at, a.resource, a.endpoint)
            for a in list(self.simulator.register_attempts)
        ]

    # -- lifecycle

    def start(self) -> float:
        """Clean the directory and listen on kubelet.sock; returns the time just before the
        socket was created."""
        if self._sim is None:
            self._sim = self.call(_new_simulator(self.socket_dir))
        self.call(self._sim.start())
        return self._sim.listening_since

    def stop(self, clients_first: bool = False) -> None:
        """Go away like a kubelet process does: the server and kubelet.sock first, then every
        plugin connection. `clients_first` follows the kubelet's graceful `Server.Stop`
        instead (clients dropped while the Registration server still answers)."""
        if self._sim is not None:
            self.call(self._sim.stop(crash=not clients_first))

    def restart(self, gap: float = 0.0, clients_first: bool = False) -> float:
        """Stop, wait `gap`, clean the directory, listen again (returns the listen time)."""
        self.stop(clients_first)
        if gap:
            time.sleep(gap)
        return self.start()

    def close(self) -> None:
        """Stop the kubelet and its loop thread."""
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def wait_registrations(
        self,
        resources: Iterable[str],
        since: float = -math.inf,
        timeout: float = 10.0,
        connected: bool = True,
    ) -> dict[str, RegisterEvent]:
        """The first Register of each resource at or after `since` (and, with `connected`,
        its ListAndWatch stream delivered a first list)."""
        wanted = set(resources)
        found: dict[str, RegisterEvent] = {}
        sim = self.simulator

        def ready() -> bool:
            for attempt in sim.register_attempts:
                if attempt.received_at >= since and attempt.resource in wanted:
                    found.setdefault(
                        attempt.resource,
                        RegisterEvent(attempt.received_at, attempt.resource, attempt.endpoint),
                    )
            if len(found) < len(wanted):
                return False
            if not connected:
                return True
            return all(any(u.at >= found[name].at for u in self.updates(name)) for name in wanted)

        try:
            self.wait(ready, timeout, f"{len(wanted)} resources registered")
        except BenchError:
            missing = sorted(wanted - found.keys())
            raise BenchError(
                f"{len(found)}/{len(wanted)} resources registered in {timeout:g}s "
                f"(missing e.g. {missing[:3]})"
            ) from None
        return found

    def __enter__(self) -> BenchKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _new_simulator(socket_dir: Path) -> KubeletSimulator:
    return KubeletSimulator(socket_dir)


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the kubelet's loop when installed (kdp-host's default loop too)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# --------------------------------------------------------------------------- raw clients


class RawClient:
    """A grpcio client that sends pre-serialized requests and returns raw response bytes,
    so the client side costs the same whichever server answers."""

    def __init__(self, socket_path: Path) -> None:
        self.channel = grpc.insecure_channel(
            f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]
        )

    def unary(self, method: str) -> Callable[..., bytes]:
        call: Callable[..., bytes] = self.channel.unary_unary(
            f"/v1beta1.DevicePlugin/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        return call

    def close(self) -> None:
        self.channel.close()


def time_calls(call: Callable[[bytes], bytes], request: bytes, n: int) -> list[float]:
    """Round-trip times in seconds of `n` sequential calls."""
    out = []
    clock = time.perf_counter
    for _ in range(n):
        started = clock()
        call(request)
        out.append(clock() - started)
    return out


@contextlib.contextmanager
def helper_process(module: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m tests.bench.<module> args...` with line-buffered text pipes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tests.bench.{module}", *args],
        cwd=str(REPO),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout):  # ours to close, not the garbage collector's
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin: a helper gone before the flush
                    pipe.close()


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """One line from a helper's stdout, or BenchError after `timeout`."""
    assert proc.stdout is not None
    result: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        result.append(proc.stdout.readline())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result or not result[0]:
        raise BenchError(f"helper gave no {what} within {timeout:g}s")
    return result[0].strip()


# --------------------------------------------------------------------------- options


@dataclass
class Options:
    """Sizes and repetitions; `quick()` shrinks everything for a smoke run."""

    quick: bool = False
    repeats: int = 5
    calls: int = 2000
    warmup: int = 200
    hotplug_events: int = 20
    restarts: int = 20
    restart_gap: float = 0.2
    scale_resources: int = 100
    scale_devices: int = 1000
    scale_repeats: int = 3
    idle_seconds: float = 30.0
    settle_seconds: float = 3.0
    large_devices: int = 10_000
    large_replicas: int = 10
    large_probe_devices: int = 120_000
    ping_interval: float = 0.001
    containment_calls: int = 2000
    peer_pods: int = 1000
    peer_rpc_calls: int = 2000
    peer_resources: int = 100
    peer_devices: int = 10
    peer_hotplug_events: int = 2
    preferred_devices: int = 20_000

    @classmethod
    def quick_options(cls) -> Options:
        return cls(
            quick=True,
            repeats=2,
            calls=200,
            warmup=50,
            hotplug_events=5,
            restarts=5,
            scale_resources=5,
            scale_devices=100,
            scale_repeats=1,
            idle_seconds=3.0,
            settle_seconds=1.0,
            large_devices=1000,
            large_replicas=10,
            large_probe_devices=10_000,
            containment_calls=200,
            peer_pods=100,
            peer_rpc_calls=200,
            peer_resources=10,
            peer_hotplug_events=1,
            preferred_devices=2000,
        )
