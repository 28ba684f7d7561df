"""The kubelet's real device manager (and the Go peer plugin) as test and benchmark clients.

The binaries live beside the repository, in `../shared/kubelet-harness/` (or the directory named
by `KDP_KUBELET_HARNESS`). They are not part of the project: where they are absent, tests that
need them skip with the reason, and benchmarks print it instead of the figure.

`RealKubelet` runs `kubelet-harness serve` on a temporary device-plugin directory and drives it
through its loopback HTTP API (the same calls its README lists): capacity, allocate, release,
restart, events, bench. Every call is blocking and small; async tests call the `a*` twins, which
run them in a thread so the host under test keeps its event loop.

`GenericDevicePlugin` runs the Go peer, squat/generic-device-plugin, on the same directory, for
side-by-side figures (`make bench`, section `peer`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HARNESS_ENV = "KDP_KUBELET_HARNESS"


def harness_dir() -> Path:
    """Where the harness binaries are expected."""
    configured = os.environ.get(HARNESS_ENV)
    return Path(configured) if configured else REPO.parent / "shared" / "kubelet-harness"


def harness_binary(name: str = "kubelet-harness") -> Path | None:
    """The path of an executable harness binary, or None."""
    path = harness_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_reason(name: str = "kubelet-harness") -> str:
    return f"{name} not found at {harness_dir() / name} (set {HARNESS_ENV} to its directory)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class HarnessError(RuntimeError):
    pass


@dataclass
class RealKubelet:
    """One `kubelet-harness serve` process on `socket_dir`.

    `pod_resources_dir` and `plugins_registry_dir` switch on the harness's PodResources server
    and the kubelet's plugin manager (both off by default, as in its README).
    """

    socket_dir: Path
    pod_resources_dir: Path | None = None
    plugins_registry_dir: Path | None = None
    numa: int = 1
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.socket_dir / "harness-logs" / "kubelet-harness.log"

    @property
    def pod_resources_socket(self) -> Path | None:
        return None if self.pod_resources_dir is None else self.pod_resources_dir / "kubelet.sock"

    def start(self, timeout: float = 30.0) -> None:
        binary = harness_binary()
        if binary is None:
            raise HarnessError(missing_reason())
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [str(binary), "serve", "--dir", str(self.socket_dir)]
        argv += ["--http", f"127.0.0.1:{self.port}", "--numa", str(self.numa)]
        if self.pod_resources_dir is not None:
            argv += ["--pod-resources", str(self.pod_resources_dir)]
        if self.plugins_registry_dir is not None:
            argv += ["--plugins-registry", str(self.plugins_registry_dir)]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise HarnessError(f"kubelet-harness exited {self.process.returncode}: {err}")
            try:
                if self._request("GET", "/healthz", raw=True) == b"ok":
                    break
            except (OSError, HarnessError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise HarnessError(f"kubelet-harness did not answer within {timeout}s")
            time.sleep(0.02)
        if not (self.socket_dir / "kubelet.sock").exists():
            raise HarnessError("kubelet-harness answers but kubelet.sock is missing")

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)
        if process is not None and process.stderr:
            process.stderr.close()

    def _request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise HarnessError(f"{method} {path}: HTTP {error.code}: {error.read()!r}") from error
        return payload if raw else json.loads(payload)

    # The HTTP API (see the harness README); errors of /allocate come back in "error".
    def capacity(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/capacity")
        return result

    def resource(self, name: str) -> dict[str, Any] | None:
        """What the kubelet sees of a live (registered) resource, or None."""
        found: dict[str, Any] | None = self.capacity()["resources"].get(name)
        return found

    def allocate(
        self,
        pod: str,
        resources: dict[str, int],
        container: str = "c",
        numa_affinity: list[int] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"pod": pod, "container": container, "resources": resources}
        if numa_affinity is not None:
            body["numa_affinity"] = numa_affinity
        result: dict[str, Any] = self._request("POST", "/allocate", body)
        return result

    def release(self, pod: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/release", {"pod": pod})
        return result

    def restart(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/restart", {})
        return result

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", f"/events?since={since}")
        return result

    def last_seq(self) -> int:
        """The sequence number of the newest event (0 when there is none)."""
        events = self.events()
        return int(events[-1]["seq"]) if events else 0

    def wait_events(
        self,
        done: Callable[[list[dict[str, Any]]], bool],
        since: int = 0,
        timeout: float = 30.0,
        what: str = "",
    ) -> list[dict[str, Any]]:
        """Poll the events after `since` until `done(events)`; returns them."""
        found: list[dict[str, Any]] = []

        def seen(kubelet: RealKubelet) -> bool:
            after = found[-1]["seq"] if found else since
            found.extend(kubelet.events(after))
            return done(found)

        self.wait_for(seen, timeout, what)
        return found

    def registered_at(
        self, resources: Iterable[str], since: int = 0, timeout: float = 60.0
    ) -> dict[str, int]:
        """When (unix ns) each resource's first registration after event `since` reached the
        kubelet (PluginConnected entered, inside the Register call)."""
        wanted = set(resources)
        times: dict[str, int] = {}

        def all_registered(events: list[dict[str, Any]]) -> bool:
            for event in events:
                if event["kind"] == "registered" and event["resource"] in wanted:
                    times.setdefault(event["resource"], int(event["t_unix_ns"]))
            return len(times) == len(wanted)

        self.wait_events(all_registered, since, timeout, f"{len(wanted)} registrations")
        return times

    def list_received(
        self, resource: str, healthy: int, since: int, timeout: float = 30.0
    ) -> tuple[int, int]:
        """The first ListAndWatch list of `resource` with `healthy` healthy devices that the
        kubelet received after event `since`: (its seq, when it arrived in unix ns, the
        `t_recv_unix_ns` the kubelet stamps before it processes the list)."""
        found: list[tuple[int, int]] = []

        def arrived(events: list[dict[str, Any]]) -> bool:
            for event in events:
                if (
                    event["kind"] == "list_and_watch"
                    and event["resource"] == resource
                    and event["healthy"] == healthy
                ):
                    found.append((int(event["seq"]), int(event["t_recv_unix_ns"])))
                    return True
            return False

        self.wait_events(arrived, since, timeout, f"{resource}: a list with {healthy} healthy")
        return found[0]

    def first_list_after_registering(
        self, resource: str, since: int, timeout: float = 60.0
    ) -> dict[str, Any]:
        """The first ListAndWatch list of `resource` after its first registration after
        event `since` (what a restarted or reloaded plugin shows first)."""
        registered: list[int] = []
        found: list[dict[str, Any]] = []

        def listed(events: list[dict[str, Any]]) -> bool:
            for event in events:
                if event["resource"] != resource:
                    continue
                if event["kind"] == "registered" and not registered:
                    registered.append(int(event["seq"]))
                elif (  # (the events are seen again at each poll: only a later list)
                    event["kind"] == "list_and_watch"
                    and registered
                    and not found
                    and int(event["seq"]) > registered[0]
                ):
                    found.append(event)
            return bool(found)

        self.wait_events(listed, since, timeout, f"{resource}: registered and listed")
        return found[0]

    def bench(self, resource: str, iterations: int, per_pod: int = 1, **options: Any) -> Any:
        body = {"resource": resource, "per_pod": per_pod, "iterations": iterations, **options}
        return self._request("POST", "/bench", body)

    def wait_for(
        self, predicate: Callable[[RealKubelet], object], timeout: float = 30.0, what: str = ""
    ) -> None:
        """Poll the harness until `predicate(self)` is true (there is no push channel)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    # Async twins: the blocking call runs in a thread so the host under test keeps its loop.
    async def acall(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, **kwargs)

    async def await_for(
        self, predicate: Callable[[RealKubelet], object], timeout: float = 30.0, what: str = ""
    ) -> None:
        await asyncio.to_thread(self.wait_for, predicate, timeout, what)


GDP_DOMAIN = "gdp.example"


def gdp_device(name: str, pattern: str) -> dict[str, Any]:
    """One `--device` of generic-device-plugin: every file matching `pattern` is a device."""
    return {"name": name, "groups": [{"paths": [{"path": pattern}]}]}


@dataclass
class GenericDevicePlugin:
    """squat/generic-device-plugin (the harness's build) serving `devices` (see `gdp_device`)
    as `gdp.example/<name>` resources, registering with the kubelet on `socket_dir`."""

    socket_dir: Path
    devices: list[dict[str, Any]]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def resource(self, name: str) -> str:
        return f"{GDP_DOMAIN}/{name}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise HarnessError("generic-device-plugin is not running")
        return self.process.pid

    def start(self) -> None:
        """Spawn it (returns at once: wait for its `registered` events on the kubelet)."""
        binary = harness_binary("generic-device-plugin")
        if binary is None:
            raise HarnessError(missing_reason("generic-device-plugin"))
        argv = [str(binary), "--domain", GDP_DOMAIN, "--plugin-directory", f"{self.socket_dir}/"]
        argv += ["--listen", f"127.0.0.1:{free_port()}", "--log-level", "warn"]
        for device in self.devices:
            argv += ["--device", json.dumps(device)]
        with open(self.log_path, "ab") as log:
            # A clean environment and working directory: the plugin reads flags from env
            # vars named like them and ./config.yaml when present.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.log_path.parent),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(f"generic-device-plugin exited {self.process.returncode}")

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s (a process already gone is left alone)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def healthy(resource: str, count: int) -> Callable[[RealKubelet], bool]:
    """A predicate for `wait_for`/`await_for`: the kubelet sees `resource` live with exactly
    `count` healthy devices."""

    def check(kubelet: RealKubelet) -> bool:
        seen = kubelet.resource(resource)
        return seen is not None and seen["healthy"] == count

    return check


@contextmanager
def real_kubelet(socket_dir: Path, **options: Any) -> Iterator[RealKubelet]:
    kubelet = RealKubelet(socket_dir, **options)
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()
