"""Shared fixtures: short socket directories, a kubelet simulator, an in-process host."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from kdp_host.config import Config, load_config, load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Snapshot
from kdp_host.drivers import DeviceReporter
from kdp_host.host import Host
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.simulator import KubeletSimulator

from .fast import FAST, kdp_host_command, polling_fast
from .kubelet_harness import RealKubelet, harness_binary, missing_reason


def in_ci() -> bool:
    """Whether the suite runs in CI (`.ci/run` runs it with CI=true)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# Hypothesis: in CI every run tries the same examples (derandomize: a red CI is a property
# that fails, never the luck of a draw; no timing deadline on a loaded machine); local runs
# keep exploring with fresh random examples. A counter-example found either way is kept in
# its test as an @example, so every later run tries it first.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci" if in_ci() else "default")


def script(directory: Path, name: str, body: str) -> str:
    """An executable /bin/sh script in `directory`; returns its path."""
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def process_gone(pid: int) -> bool:
    """The process no longer runs: gone, or a zombie waiting for its reaper (this test
    process may not be it). A process that exits while its stat is read is gone too: the
    read then fails with ESRCH (ProcessLookupError), not ENOENT."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """The `kdp_host` logger as it was before the block: `cli.main` sets up the process's
    logging (a handler on sys.stderr, in a test capsys's capture, closed after it, and no
    propagation to caplog), which must not outlive its test."""
    logger = logging.getLogger("kdp_host")
    handlers, propagate, level = logger.handlers[:], logger.propagate, logger.level
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def _logging_kept() -> Iterator[None]:
    with logging_kept():
        yield


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="kdp", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def socket_dir(short_dir: Path) -> Path:
    path = short_dir / "dp"
    path.mkdir()
    return path


@pytest.fixture
def devices(short_dir: Path) -> Path:
    """Fake device files: dev/fpga0, dev/fpga1, dev/ttyA0."""
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1", "ttyA0"):
        (dev / name).touch()
    return dev


@pytest.fixture
async def kubelet(socket_dir: Path) -> AsyncIterator[KubeletSimulator]:
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def pod_resources_kubelet(
    socket_dir: Path, short_dir: Path
) -> AsyncIterator[KubeletSimulator]:
    """The simulated kubelet with its PodResources server, on `short_dir`/pr/kubelet.sock."""
    async with KubeletSimulator(
        socket_dir, dial_timeout=5.0, pod_resources_dir=short_dir / "pr"
    ) as sim:
        yield sim


async def wait_until(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = ""
) -> None:
    """Poll a condition that has no event to wait on (file system state, counters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def reporter(
    table: DeviceTable,
    metrics: Metrics | None = None,
    *,
    resource: str = "t.io/r",
    threshold: int = 3,
    logger: str = "kdp_host",
) -> DeviceReporter:
    """The notifier a resource hands its driver, writing to `table`."""
    return DeviceReporter(
        table,
        resource=resource,
        log=get_logger(logger, resource=resource),
        metrics=metrics or Metrics(),
        failure_threshold=threshold,
    )


async def wait_table(
    table: DeviceTable, predicate: Callable[[Snapshot], bool], timeout: float = 15.0
) -> Snapshot:
    """Wait until the table's snapshot satisfies `predicate` (woken by every change)."""
    async with asyncio.timeout(timeout):
        while not predicate(snapshot := table.snapshot):
            await table.wait_newer(snapshot.version)
    return snapshot


@dataclass
class RunningHost:
    host: Host
    stop: asyncio.Event
    task: asyncio.Task[None]
    metrics: Metrics
    config_path: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)

    async def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout)

    def sample(self, name: str, **labels: str) -> float:
        """A series of the host's metrics now (0 when it has none yet)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def start_host(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., object]]:
    """`await start_host(config_or_yaml, config_path=None, fast=None, **host_options)` runs
    a Host in this event loop; `host_options` are further Host fields (a restart policy, ...).
    A config that keeps the default `stateDir` gets a temporary one, also when reloaded from
    its file (never the real /var/lib). `fast`: the host waits `FAST` and polls PodResources
    every `FAST_POLL` where its config polls at the floor (also when reloaded); by default
    in a test marked `fast` (`pytestmark = pytest.mark.fast`: every host of its file)."""
    marked = request.node.get_closest_marker("fast") is not None
    running: list[RunningHost] = []
    state_dir = str(tmp_path_factory.mktemp("state"))

    def in_temporary_state(config: Config) -> Config:
        if config.state_dir != Config.state_dir:
            return config
        return dataclasses.replace(config, state_dir=state_dir)

    async def start(
        config: Config | str,
        config_path: Path | None = None,
        fast: bool | None = None,
        **host_options: Any,
    ) -> RunningHost:
        fast = marked if fast is None else fast
        if isinstance(config, str):
            config = load_config_text(config)
        adjust = (lambda c: polling_fast(in_temporary_state(c))) if fast else in_temporary_state
        config = adjust(config)
        if fast:
            host_options.setdefault("timings", FAST)
        if config_path is not None or fast:
            host_options.setdefault("load_config", lambda path: adjust(load_config(path)))
        metrics = host_options.pop("metrics", None) or Metrics()
        host = Host(
            config=config,
            metrics=metrics,
            log=get_logger(),
            config_path=config_path,
            **host_options,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(host.run(stop))
        handle = RunningHost(host, stop, task, metrics, config_path)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.shutdown()


def glob_config(socket_dir: Path, *resources: tuple[str, str], extra: str = "") -> str:
    """YAML for glob resources given as (name, pattern) pairs (`stateDir` beside the socket
    directory, so a kdp-host run as a process of its own never writes the real one)."""
    lines = [f"kubelet: {{socketDir: {socket_dir}}}", f"stateDir: {Path(socket_dir).parent}/state"]
    lines += ["resources:"]
    for name, pattern in resources:
        lines += [f"  - name: {name}", f'    glob: {{paths: ["{pattern}"], gracePeriod: 1s}}']
        if extra:
            lines += ["    " + line for line in extra.strip().splitlines()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def real_kubelet_factory(short_dir: Path) -> Iterator[Callable[..., RealKubelet]]:
    """`real_kubelet_factory(**options)` starts the kubelet's real device manager
    (tests/kubelet_harness.py) on `short_dir/dp`; skips, saying why, where the binary is absent."""
    if harness_binary() is None:
        pytest.skip(missing_reason())
    started: list[RealKubelet] = []

    def start(**options: Any) -> RealKubelet:
        options.setdefault("socket_dir", short_dir / "dp")
        kubelet = RealKubelet(**options)
        started.append(kubelet)
        kubelet.start()
        return kubelet

    yield start
    for kubelet in started:
        kubelet.stop()


class KdpProcess:
    """kdp-host as a process of its own: SIGKILLed and started again on the same stateDir.
    `fast`: its host waits `FAST` and polls fast, as `start_host`'s (`python -m tests.fast`);
    `polling`: its watcher never uses inotify."""

    def __init__(self, config: Path, log: Path, fast: bool = False, polling: bool = False) -> None:
        self.config = config
        self.log = log
        self.fast = fast
        self.polling = polling
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        argv, env = kdp_host_command(self.fast, self.polling)
        argv += ["--log-format", "text", "run", "--config", str(self.config)]
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=out, env=env
            )

    async def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), 30)

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def logged(self, *texts: str) -> Callable[[RealKubelet], bool]:
        """A predicate for `await_for`: the log has a line with every one of `texts`."""

        def check(_: RealKubelet) -> bool:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            return any(all(text in line for text in texts) for line in lines)

        return check


@pytest.fixture
async def kdp_process(
    short_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[Path], Awaitable[KdpProcess]]]:
    """`await kdp_process(config, fast=None)`: kdp-host started as a process of its own on
    `config` (stopped at the end of the test); `fast` (by default in a test marked `fast`):
    its host waits `FAST` and polls fast, as `start_host`'s."""
    started: list[KdpProcess] = []
    marked = request.node.get_closest_marker("fast") is not None

    async def make(config: Path, fast: bool | None = None) -> KdpProcess:
        started.append(KdpProcess(config, short_dir / "kdp.log", marked if fast is None else fast))
        await started[-1].start()
        return started[-1]

    yield make
    for process in started:
        await process.stop()
