"""What every benchmark needs: the real `kdp-host run` as a subprocess, a kubelet played by
grpcio in this process, raw grpcio clients, and small statistics helpers.

Timestamps are `time.monotonic()` (CLOCK_MONOTONIC, shared by all processes of the machine),
so times taken in helper subprocesses compare with times taken here.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from .proto import REPO, Api, load_api

KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT = "kubelet_internal_checkpoint"
HEALTHY = "Healthy"
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


def cleanup_plugin_directory(socket_dir: Path) -> list[str]:
    """What the kubelet does at start: remove every non-directory entry but the checkpoint."""
    removed = []
    for entry in os.scandir(socket_dir):
        if entry.name == CHECKPOINT or entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.005) -> None:
    deadline = now() + timeout
    while not check():
        if now() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


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


RICH_ALLOCATE: dict[str, Any] = {
    "env": {
        "FPGA_DEVICES": "{ids}",
        "FPGA_PATHS": "{paths}",
        "FPGA_COUNT": "{count}",
        "FPGA_RESOURCE": "{resource}",
    },
    "mounts": [
        {
            "hostPath": "/opt/vendor/lib",
            "containerPath": "/usr/local/vendor/lib",
            "readOnly": True,
        }
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
    ) -> None:
        self.workdir = workdir
        self.socket_dir = socket_dir
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.loop = loop
        self.log_level = log_level
        config = {
            "kubelet": {"socketDir": str(socket_dir)},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "resources": resources,
        }
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
        """VmRSS from /proc/<pid>/status."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise BenchError("no VmRSS line")

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads) from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

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
    resource: str
    endpoint: str
    kubelet_generation: int


@dataclass(frozen=True)
class Update:
    at: float
    message: Any
    """An official-protobuf ListAndWatchResponse."""

    def healthy(self) -> int:
        return sum(1 for d in self.message.devices if d.health == HEALTHY)

    def total(self) -> int:
        return len(self.message.devices)


class PluginConnection:
    """The kubelet's client of one registered plugin: GetDevicePluginOptions, then a
    ListAndWatch stream read on its own thread, kept open until `close()`."""

    def __init__(self, api: Api, resource: str, socket_path: Path) -> None:
        self.api = api
        self.resource = resource
        self.socket_path = socket_path
        self.channel = grpc.insecure_channel(
            f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]
        )
        self.stub = api.grpc.DevicePluginStub(self.channel)
        self.updates: list[Update] = []
        self.ended: str | None = None
        self._cond = threading.Condition()
        self._call: Any = None
        self._thread: threading.Thread | None = None

    def connect(self, timeout: float = 10.0) -> Any:
        options = self.stub.GetDevicePluginOptions(
            self.api.pb2.Empty(), timeout=timeout, wait_for_ready=True
        )
        self._call = self.stub.ListAndWatch(self.api.pb2.Empty())
        self._thread = threading.Thread(target=self._read, name=f"law:{self.resource}", daemon=True)
        self._thread.start()
        return options

    def _read(self) -> None:
        reason = "end of stream"
        try:
            for message in self._call:
                at = now()
                with self._cond:
                    self.updates.append(Update(at, message))
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}"
        with self._cond:
            self.ended = reason
            self._cond.notify_all()

    def wait_update(
        self, predicate: Callable[[Update], bool], after: int = 0, timeout: float = 10.0
    ) -> tuple[int, Update]:
        """The first update with index >= `after` that satisfies `predicate`."""
        deadline = now() + timeout
        index = after
        with self._cond:
            while True:
                while index < len(self.updates):
                    update = self.updates[index]
                    if predicate(update):
                        return index, update
                    index += 1
                if self.ended is not None:
                    raise BenchError(f"{self.resource}: ListAndWatch ended ({self.ended})")
                left = deadline - now()
                if left <= 0:
                    raise BenchError(f"{self.resource}: no matching ListAndWatch update")
                self._cond.wait(left)

    def count(self) -> int:
        with self._cond:
            return len(self.updates)

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self.channel.close()
        if self._thread is not None:
            self._thread.join(5)


class BenchKubelet:
    """The kubelet's Registration service on `<socket_dir>/kubelet.sock`, played by grpcio.

    Like the kubelet it dials the plugin back inside Register, calls GetDevicePluginOptions
    before answering, then holds a ListAndWatch stream open. `restart()` does what a kubelet
    restart does to the directory: drop every client, stop, remove all non-directory entries
    but the checkpoint, listen again.
    """

    def __init__(self, socket_dir: Path, *, dial_back: bool = True, workers: int = 32) -> None:
        self.api = load_api()
        self.socket_dir = socket_dir
        self.path = socket_dir / KUBELET_SOCKET
        self.dial_back = dial_back
        self.workers = workers
        self.registrations: list[RegisterEvent] = []
        self.plugins: dict[str, PluginConnection] = {}
        self.generation = 0
        self.listening_at = math.nan
        self._old: list[PluginConnection] = []
        self._server: Any = None
        self._cond = threading.Condition()

    # The Registration servicer, duck-typed for add_RegistrationServicer_to_server.
    def Register(self, request: Any, context: Any) -> Any:
        at = now()
        generation = self.generation
        event = RegisterEvent(at, request.resource_name, request.endpoint, generation)
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.UNKNOWN, f"unsupported version {request.version!r}")
        with self._cond:
            self.registrations.append(event)
            self._cond.notify_all()
        if self.dial_back:
            connection = PluginConnection(
                self.api, request.resource_name, self.socket_dir / request.endpoint
            )
            try:
                connection.connect()
            except grpc.RpcError as exc:
                connection.close()
                context.abort(grpc.StatusCode.UNKNOWN, f"failed to dial device plugin: {exc}")
            with self._cond:
                previous = self.plugins.get(request.resource_name)
                if previous is not None:
                    self._old.append(previous)
                self.plugins[request.resource_name] = connection
                self._cond.notify_all()
        return self.api.pb2.Empty()

    def start(self) -> float:
        """Listen on kubelet.sock; returns the time just before the socket was created."""
        self.generation += 1
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers))
        self.api.grpc.add_RegistrationServicer_to_server(self, server)
        at = now()
        server.add_insecure_port(f"unix:{self.path}")
        server.start()
        self._server = server
        self.listening_at = at
        return at

    def stop(self, clients_first: bool = False) -> None:
        """Go away like a kubelet process does: the server and kubelet.sock first, then every
        plugin connection. `clients_first` follows the kubelet's graceful `Server.Stop`
        instead (clients dropped while the Registration server still answers)."""
        with self._cond:
            clients = [*self.plugins.values(), *self._old]
            self.plugins.clear()
            self._old.clear()
        if clients_first:
            for client in clients:
                client.close()
        if self._server is not None:
            self._server.stop(None).wait(5)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if not clients_first:
            for client in clients:
                client.close()

    def restart(self, gap: float = 0.0, clients_first: bool = False) -> float:
        """Stop, wait `gap`, clean the directory, listen again (returns the listen time)."""
        self.stop(clients_first)
        if gap:
            time.sleep(gap)
        cleanup_plugin_directory(self.socket_dir)
        return self.start()

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
        deadline = now() + timeout
        with self._cond:
            while True:
                found: dict[str, RegisterEvent] = {}
                for event in self.registrations:
                    if event.at >= since and event.resource in wanted:
                        found.setdefault(event.resource, event)
                ready = len(found) == len(wanted)
                if ready and connected:
                    ready = all(
                        name in self.plugins and self.plugins[name].count() > 0 for name in wanted
                    )
                if ready:
                    return found
                left = deadline - now()
                if left <= 0:
                    missing = sorted(wanted - found.keys())
                    raise BenchError(
                        f"{len(found)}/{len(wanted)} resources registered in {timeout:g}s "
                        f"(missing e.g. {missing[:3]})"
                    )
                self._cond.wait(min(left, 0.05))

    def __enter__(self) -> BenchKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    ping_interval: float = 0.001
    containment_calls: int = 2000

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
            containment_calls=200,
        )
