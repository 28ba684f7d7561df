"""One way off the event loop: the host's offload (`files.Offload`), passed in.

Product code never starts its own threads or uses asyncio's executor: blocking work goes
through the offload the host made (daemon threads, so a call stuck in the kernel never
keeps the process from exiting). The kubelet simulator is the kubelet's model, not the
product, and is left out.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kdp_host.atomic_files import read_or_none
from kdp_host.config import load_config_text
from kdp_host.devices import Device
from kdp_host.drivers import Driver, DriverDeps, make_driver
from kdp_host.files import DaemonThreads, FileReadError, OffloadScope
from kdp_host.host import Host
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import glob_config, wait_until

T = TypeVar("T")
PACKAGE = Path(__file__).resolve().parent.parent / "kdp_host"
THREAD_OWNERS = {"files.py", "http.py", "http_server.py"}
"""files.py is the offload (and the attribute reader's workers); http.py and its server
(http_server.py) serve /metrics from threads of their own, outside the loop entirely."""


def _calls(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in (
            "to_thread",
            "run_in_executor",
            "Thread",
        ):
            names.append(node.attr)
        elif isinstance(node, ast.alias) and node.name.split(".")[0] == "aiofiles":
            names.append("aiofiles")
    return names


def test_product_code_leaves_the_loop_only_through_the_offload() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("simulator", "api") or str(relative) in THREAD_OWNERS:
            continue
        found = _calls(ast.parse(path.read_text(), str(path)))
        offenders += [f"{relative}: {name}" for name in found]
    assert offenders == []


class CountingOffload:
    def __init__(self) -> None:
        self.calls = 0
        self._threads = DaemonThreads()

    async def run(self, function: Callable[[], T]) -> T:
        self.calls += 1
        return await self._threads.run(function)


async def test_the_host_passes_its_offload_to_everything(
    socket_dir: Path, devices: Path, tmp_path: Path
) -> None:
    """Stale-socket cleanup, the glob scan and the CDI spec writes all go through the one
    offload the host was given."""
    config = load_config_text(
        f"""
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: t.io/fpga
    glob: {{paths: ["{devices}/fpga*"]}}
    allocate: {{cdi: {{kind: t.io/fpga, specDir: {tmp_path / "cdi"}}}}}
"""
    )
    offload = CountingOffload()
    host = Host(config=config, metrics=Metrics(), log=get_logger(), offload=offload)
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    try:
        await wait_until(lambda: (tmp_path / "cdi").is_dir() and any((tmp_path / "cdi").iterdir()))
        # stale sockets (1), one scan (1), render and write of the spec (2), its first read (1)
        assert offload.calls >= 5
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_a_fifo_in_place_of_the_spec_file_never_blocks_its_read(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[bytes | None] = []

    def read() -> None:
        result.append(read_or_none(str(fifo)))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "the read of a FIFO blocked"
    assert result == [None]
    (tmp_path / "real.json").write_bytes(b"{}")
    assert read_or_none(str(tmp_path / "real.json")) == b"{}"
    assert read_or_none(str(tmp_path / "missing.json")) is None


class Gate:
    """A call off the loop that waits until the test opens it: `entered` once it waits."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        assert self.opened.wait(30), "the gate was never opened"


async def test_a_scope_waits_for_its_running_calls_when_it_closes() -> None:
    scope, gate, done = OffloadScope(DaemonThreads()), Gate(), threading.Event()

    def slow() -> str:
        gate.wait()
        done.set()
        return "written"

    call = asyncio.create_task(scope.run(slow))
    await wait_until(gate.entered.is_set, what="the call runs")
    closing = asyncio.create_task(scope.close(30.0, get_logger()))
    await asyncio.sleep(0)  # `close` waits now
    gate.opened.set()
    assert await closing == 0 and done.is_set()
    assert await call == "written"  # its caller still gets what it did
    with pytest.raises(asyncio.CancelledError):
        await scope.run(lambda: "refused once closed")


async def test_a_call_still_running_past_the_wait_is_abandoned_and_silenced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log, gate, ran = get_logger(), Gate(), threading.Event()
    threads = DaemonThreads(workers=1, stuck_after=30.0)  # the queued call waits its turn
    scope = OffloadScope(threads)

    def stuck() -> str:
        gate.wait()
        log.error("late_line")
        return "late"

    call = asyncio.create_task(scope.run(stuck))
    await wait_until(gate.entered.is_set, what="the call runs")
    queued = asyncio.create_task(scope.run(ran.set))
    await asyncio.sleep(0)
    assert await scope.close(0.01, log) == 1
    gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await call  # its result is dropped
    with pytest.raises(asyncio.CancelledError):
        await queued  # never started
    assert not ran.is_set()
    assert "late_line" not in [r.getMessage() for r in caplog.records]


class TrackingOffload:
    """DaemonThreads, counting the calls running on a thread now."""

    def __init__(self) -> None:
        self.running = 0
        self._lock = threading.Lock()
        self._threads = DaemonThreads()

    async def run(self, function: Callable[[], T]) -> T:
        def tracked() -> T:
            with self._lock:
                self.running += 1
            try:
                return function()
            finally:
                with self._lock:
                    self.running -= 1

        return await self._threads.run(tracked)


def gated_ownership_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Gate, Callable[[], None]]:
    """Reads of ownership.json, once armed, wait at the gate, then fail as on a stateDir
    replaced by a file (the CI case: "Not a directory"); returns the gate and `arm`."""
    from kdp_host import state_document

    gate, armed = Gate(), threading.Event()
    real = state_document.read_attribute

    def read(path: str, limit: int) -> bytes | None:
        if not (armed.is_set() and path.endswith(OWNERSHIP_FILE)):
            return real(path, limit)
        gate.wait()
        raise FileReadError("read_error", f"cannot open {path!r}: Not a directory")

    monkeypatch.setattr(state_document, "read_attribute", read)
    return gate, armed.set


async def host_reading_ownership(
    socket_dir: Path, devices: Path, start_host, gate: Gate, arm: Callable[[], None], **options
):
    config = glob_config(socket_dir, ("t.io/fpga", f"{devices}/fpga*"))
    offload = TrackingOffload()
    running = await start_host(config, offload=offload, **options)
    await wait_until(lambda: running.host.resources, what="the host runs")
    state = socket_dir.parent / "state"
    arm()
    (state / OWNERSHIP_FILE).write_text('{"version": 1}')  # another host's write: read again
    await wait_until(gate.entered.is_set, what="the host reads the bookings again")
    return running, offload


async def test_a_host_stopped_during_a_state_read_leaves_no_thread_and_no_line_behind(
    socket_dir: Path, devices: Path, start_host, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CI: a thread of a stopped host read ownership.json and logged after its test ended
    (the stream closed: "--- Logging error ---"); a production host would touch stateDir
    after its stop (the next instance already writing). The stop waits for that read: a
    stuck one is abandoned, and nothing it does is logged."""
    gate, arm = gated_ownership_reads(monkeypatch)
    running, offload = await host_reading_ownership(
        socket_dir, devices, start_host, gate, arm, offload_wait=0.05
    )
    await running.shutdown()
    stopped = len(caplog.records)
    assert [r.getMessage() for r in caplog.records].count("offload_abandoned") == 1
    gate.opened.set()
    await wait_until(lambda: offload.running == 0, what="the abandoned read ends")
    assert [r.getMessage() for r in caplog.records[stopped:]] == []


async def test_a_host_stop_waits_for_a_slow_state_read(
    socket_dir: Path, devices: Path, start_host, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate, arm = gated_ownership_reads(monkeypatch)
    running, offload = await host_reading_ownership(
        socket_dir, devices, start_host, gate, arm, offload_wait=30.0
    )

    class OpenAtStop(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "host_stopped":
                gate.opened.set()  # the read ends once the host has stopped all else

    handler = OpenAtStop()
    logging.getLogger("kdp_host").addHandler(handler)
    try:
        await running.shutdown()
    finally:
        logging.getLogger("kdp_host").removeHandler(handler)
    assert offload.running == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "ownership_state_unreadable" in messages and "offload_abandoned" not in messages


async def test_a_removed_resource_leaves_nothing_running_off_the_loop(
    socket_dir: Path, devices: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    """Each owner waits for its own calls: a resource a reload removes (or one that crashed,
    restarted) stops with what it sent off the loop, not with the host; a call stuck past
    the wait is abandoned, and its lines dropped."""
    gate, offload = Gate(), TrackingOffload()

    class OffLoopDriver:
        def __init__(self, deps: DriverDeps) -> None:
            self._deps = deps

        async def run(self, notifier: object) -> None:
            def stuck() -> None:
                gate.wait()
                self._deps.log.error("late_line")

            await self._deps.offload.run(stuck)

        async def scan(self) -> list[Device]:
            return []

    def drivers(config, deps: DriverDeps) -> Driver:
        return OffLoopDriver(deps) if "ttyA" in str(config) else make_driver(config, deps)

    fpga = ("t.io/fpga", f"{devices}/fpga*")
    both = glob_config(socket_dir, fpga, ("t.io/serial", f"{devices}/ttyA*"))
    running = await start_host(both, drivers=drivers, offload=offload)
    await wait_until(gate.entered.is_set, what="the serial resource's call runs")
    running.host.apply(load_config_text(glob_config(socket_dir, fpga)))
    await wait_until(lambda: abandoned(caplog), what="the removed resource stops")
    assert abandoned(caplog) == [{"resource": "t.io/serial", "calls": 1}]
    gate.opened.set()
    await wait_until(lambda: offload.running == 0, what="the abandoned call ends")
    assert "late_line" not in [r.getMessage() for r in caplog.records]


def abandoned(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        {k: v for k, v in r.__dict__["kdp_fields"].items() if k in ("resource", "calls")}
        for r in caplog.records
        if r.getMessage() == "offload_abandoned"
    ]
