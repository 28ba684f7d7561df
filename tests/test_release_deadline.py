"""A container start's one budget, the kubelet's PreStartContainer deadline (hostile13 M13):
the releases it waits for go first in the queue, and it is answered with kdp-host's own error
(the releases still running, or preStart not run: it would not fit) before that deadline,
never the kubelet's `DeadlineExceeded`. Through the simulator with a short deadline (the one
the kubelet sends with the call) and releases that wait for a file: no timed assertion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kdp_host.cli import main
from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.process import CommandResult
from kdp_host.release import ReleaseTracker
from kdp_host.release_state import ReleaseStateStore
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError
from kdp_host.simulator.gotext import DEADLINE_EXCEEDED

from .conftest import script, wait_until

T = TypeVar("T")
FPGA = "vendor.example/fpga"
DEADLINE = 4.0
"""The kubelet's PreStartContainer deadline in these tests (the real one is 30 s)."""


@pytest.fixture
async def kubelet(socket_dir: Path) -> AsyncIterator[KubeletSimulator]:
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0, pre_start_timeout=DEADLINE)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def _gated_release(directory: Path) -> str:
    """A release that logs `<id> start`, waits for the file `go`, then logs `<id> done`."""
    log, gate = directory / "release.log", directory / "go"
    return script(
        directory,
        "release.sh",
        f'echo "$1 start" >> "{log}"\n'
        f'while [ ! -e "{gate}" ]; do sleep 0.02; done\n'
        f'echo "$1 done" >> "{log}"\n',
    )


def _lines(directory: Path) -> list[str]:
    path = directory / "release.log"
    return path.read_text().splitlines() if path.exists() else []


def _config(socket_dir: Path, devices: Path, state: Path, release: str, extra: str = "") -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: {state}/none.sock}}\n"
        f"stateDir: {state}\nmetrics: {{listen: 127.0.0.1:0}}\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
        f'    release: {{command: ["{release}", "{{ids}}"], timeout: 20s, parallelism: 1}}\n'
        + extra
    )


async def test_a_start_waiting_for_queued_releases_is_answered_before_the_deadline(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three owed releases, one at a time (`parallelism: 1`), none done by the deadline:
    the start fails with kdp-host's error naming them, not the kubelet's DeadlineExceeded;
    the kubelet's next try, once they ran, starts the container."""
    (devices / "fpga2").touch()
    release = _gated_release(short_dir)
    await start_host(_config(socket_dir, devices, short_dir / "state", release))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 3)
    await kubelet.allocate(FPGA, 3, pod_uid="p1")
    await kubelet.release("p1")
    with pytest.raises(SimulatorAllocationError) as caught:
        await kubelet.allocate(FPGA, 3, pod_uid="p2")  # the same three IDs: three owed
    text = str(caught.value)
    assert DEADLINE_EXCEEDED not in text
    assert "release of fpga0,fpga1,fpga2 (used by an earlier container) not done yet" in text
    assert "before the kubelet's PreStartContainer deadline" in text
    refused = [r for r in caplog.records if r.getMessage() == "pre_start_refused"]
    assert len(refused) == 1  # (logged with the resource and the devices)
    assert len(_lines(short_dir)) == 1  # (one at a time: the others queued)
    (short_dir / "go").touch()
    await kubelet.pre_start_container("p2", "c0", FPGA)  # the kubelet's retry
    ran = sorted(_lines(short_dir))
    assert ran == sorted(f"fpga{i} {s}" for i in range(3) for s in ("start", "done"))


async def test_pre_start_is_not_run_when_the_release_leaves_too_little_time(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    """A release owed, then preStart: the wait for the release ends in time for preStart's
    timeout and kill grace to fit, and the start fails with kdp-host's error; preStart runs
    at the kubelet's next try, once the release is done (hostile13 t34)."""
    release = _gated_release(short_dir)
    started = short_dir / "prestart.log"
    pre_start = script(short_dir, "prestart.sh", f'echo "$1" >> "{started}"\n')
    extra = f'    preStart: {{command: ["{pre_start}", "{{ids}}"], timeout: 2s}}\n'
    await start_host(_config(socket_dir, devices, short_dir / "state", release, extra))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 2)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")  # (nothing owed: preStart runs)
    assert started.read_text().split() == ["fpga0"]
    await kubelet.release("p1")
    with pytest.raises(SimulatorAllocationError) as caught:
        await kubelet.allocate(FPGA, 1, pod_uid="p2")
    text = str(caught.value)
    assert DEADLINE_EXCEEDED not in text
    assert "release of fpga0 (used by an earlier container) not done yet" in text
    assert "keeping 3 s for preStart and its kill" in text
    assert started.read_text().split() == ["fpga0"]  # not run for the failed start
    (short_dir / "go").touch()
    await kubelet.pre_start_container("p2", "c0", FPGA)
    assert started.read_text().split() == ["fpga0", "fpga0"]
    assert _lines(short_dir) == ["fpga0 start", "fpga0 done"]


# --------------------------------------------------------------------------- the queue


class _Inline:
    """An offload that runs each call at once, on the loop: the releases take their locks
    and queue for the slot in the order they were owed."""

    async def run(self, function: Callable[[], T]) -> T:
        return function()


class _Commands:
    """Records release runs; the run of a device waits for its gate."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def run(self, argv, *, timeout, env=None, cwd=None, max_output=0):  # type: ignore[no-untyped-def]
        self.runs.append(argv[1])
        await self.gates.setdefault(argv[1], asyncio.Event()).wait()
        return CommandResult(0, b"", "")

    def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


async def test_the_releases_a_start_waits_for_go_first_in_the_queue(short_dir: Path) -> None:
    """`parallelism: 1`, fpga0's release runs, fpga1's then fpga2's queued; a container start
    waits for fpga2: it runs next, before fpga1 (which no start waits for yet)."""
    config = load_config_text(
        f"kubelet: {{socketDir: {short_dir}/dp}}\nstateDir: {short_dir}/state\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["/dev/fpga*"]}}\n'
        '    release: {command: ["reset", "{ids}"], parallelism: 1}\n'
    )
    table = DeviceTable(replicas=1)
    table.publish([Device(f"fpga{i}", path=f"/dev/fpga{i}") for i in range(3)])
    store = ReleaseStateStore(config.state_dir, get_logger(), _Inline())  # (queued in order)
    store.load()
    commands = _Commands()
    tracker = ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(),
    )  # fmt: skip
    tracker.start()
    devices = ["fpga0", "fpga1", "fpga2"]
    for device in devices:
        tracker.allocated([device])  # first uses
    for device in devices:
        tracker.allocated([device])  # handed out again: owed, started in this order
    await wait_until(lambda: commands.runs == ["fpga0"], what="fpga0's release runs")
    start = asyncio.create_task(tracker.before_start(["fpga2"]))
    await asyncio.sleep(0)  # (the start waits for fpga2 now)
    commands.gates["fpga0"].set()
    await wait_until(lambda: len(commands.runs) == 2, what="the next release runs")
    assert commands.runs == ["fpga0", "fpga2"]
    commands.gates["fpga2"].set()
    await start
    commands.gates.setdefault("fpga1", asyncio.Event()).set()
    await wait_until(lambda: commands.runs == ["fpga0", "fpga2", "fpga1"], what="fpga1 last")
    await tracker.close()


# --------------------------------------------------------------------------- check


def test_check_warns_when_release_and_pre_start_do_not_fit_together(
    short_dir: Path, socket_dir: Path, devices: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = short_dir / "config.yaml"
    extra = '    preStart: {command: ["/bin/true"], timeout: 16s}\n'
    text = _config(socket_dir, devices, short_dir / "state", "/bin/true", extra)
    config.write_text(text.replace("timeout: 20s", "timeout: 16s"))
    assert main(["check", "--config", str(config)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "PreStart" in line]
    assert warnings == [
        f"warning: {FPGA}: release.timeout (16s) and preStart.timeout (16s) take 32s together, "
        "more than the 28s a container start has in the kubelet's PreStartContainer deadline: "
        "a start that waits for a release that long fails (kdp-host's error; the kubelet tries "
        "again with backoff)"
    ]
    config.write_text(text.replace("timeout: 20s", "timeout: 12s"))
    assert main(["check", "--config", str(config)]) == 0
    assert "PreStart" not in capsys.readouterr().err
