"""release.command and the clean-device guarantee, through the kubelet's real device manager
and PodResources server (tests/kubelet_harness.py) and through the simulator.

The release command of these tests appends `<ids> <namespace>/<pod>/<container> start|done`
lines to a log file; a container start through the real kubelet is its /allocate (Allocate,
then PreStartContainer, as GetDeviceRunContainerOptions calls it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from kdp_host.allocation import HookFailed
from kdp_host.config import ConfigError, load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.handed_out import HANDED_FILE, HandedOut, HandedRecord
from kdp_host.holdings import Holder, Holdings
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.release import ReleaseTracker
from kdp_host.release_state import STATE_FILE, ReleaseStateStore
from kdp_host.rules import MAX_PRE_START_TIMEOUT
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

from .conftest import script, wait_until
from .kubelet_harness import harness_binary

FPGA = "vendor.example/fpga"


def release_script(directory: Path, *, sleep: float = 0.0, fail: bool = False) -> str:
    log = directory / "release.log"
    body = f'echo "$1 $2 start" >> {log}\n'
    if sleep:
        body += f"sleep {sleep}\n"
    if fail:
        body += 'echo "fpga $1 stuck in reset" >&2\nexit 3\n'
    body += f'echo "$1 $2 done" >> {log}\n'
    return script(directory, "release.sh", body)


def release_lines(directory: Path) -> list[str]:
    path = directory / "release.log"
    return path.read_text().splitlines() if path.exists() else []


def host_yaml(
    socket_dir: Path,
    devices: Path,
    state_dir: Path,
    command: str,
    *,
    pod_resources: Path | None,
    interval: str = "1s",
    extra: str = "",
    pattern: str = "fpga0",
) -> str:
    socket = pod_resources / "kubelet.sock" if pod_resources else state_dir / "none.sock"
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: {socket}, "
        f"podResourcesInterval: {interval}}}\n"
        f"stateDir: {state_dir}\n"
        "metrics: {listen: 127.0.0.1:0}\n"
        "resources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{devices}/{pattern}"], gracePeriod: 1s}}\n'
        "    release:\n"
        f'      command: ["{command}", "{{ids}}", "{{namespace}}/{{pod}}/{{container}}"]\n'
        "      timeout: 10s\n" + "".join(f"      {line}\n" for line in extra.splitlines())
    )


def _registered(kubelet, healthy: int = 1):  # type: ignore[no-untyped-def]
    def check(k) -> bool:  # type: ignore[no-untyped-def]
        seen = k.resource(FPGA)
        return seen is not None and seen["healthy"] == healthy

    return check


async def real_host(  # type: ignore[no-untyped-def]
    real_kubelet_factory, start_host, short_dir: Path, devices: Path, command: str, **options
):
    """The kubelet's real device manager and PodResources server, and a host with the FPGA
    resource registered with it (started `fast`: conftest.FAST); returns (kubelet, running
    host)."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    running = await start_host(
        host_yaml(kubelet.socket_dir, devices, short_dir / "state", command,
                  pod_resources=pod_resources, **options),
        fast=True,
    )  # fmt: skip
    await kubelet.await_for(_registered(kubelet), what="fpga registered")
    return kubelet, running


# --------------------------------------------------------------------------- config


def test_release_config_defaults_and_bounds(short_dir: Path) -> None:
    base = f"kubelet: {{socketDir: {short_dir}}}\nresources:\n  - name: {FPGA}\n"
    base += '    glob: {paths: ["/dev/fpga*"]}\n'
    config = load_config_text(base + '    release: {command: ["reset", "{ids}", "{pod}"]}\n')
    release = config.resources[0].release
    assert release is not None
    assert (release.timeout, release.on_failure, release.parallelism) == (10.0, "unhealthy", 4)
    assert config.kubelet.pod_resources_interval == 5.0
    assert config.kubelet.pod_resources_socket == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert config.state_dir == "/var/lib/kdp-host"
    with pytest.raises(ConfigError, match=f"at most {MAX_PRE_START_TIMEOUT:g}s"):
        load_config_text(base + '    release: {command: ["reset"], timeout: 29s}\n')
    with pytest.raises(ConfigError, match=re.escape("unknown template field {id}")):
        load_config_text(base + '    release: {command: ["reset", "{id}"]}\n')
    with pytest.raises(ConfigError, match="0s \\(off\\) or at least 1s"):
        load_config_text(base.replace("}\n", ", podResourcesInterval: 200ms}\n", 1))


# --------------------------------------------------------------------------- real kubelet


async def test_a_pod_ends_and_its_device_is_released_with_its_ids_and_pod(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    kubelet, running = await real_host(
        real_kubelet_factory, start_host, short_dir, devices, release_script(short_dir)
    )
    assert kubelet.resource(FPGA)["options"]["pre_start_required"] is True
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == ""
    assert release_lines(short_dir) == []  # a clean device: nothing to release before p1
    host = running.host
    await wait_until(
        lambda: (
            host.pod_resources.holdings is not None
            and host.pod_resources.holdings.of(FPGA).get("fpga0")
        ),
        what="PodResources shows p1 holding fpga0",
    )
    assert (
        running.metrics.registry.get_sample_value("kdp_devices_in_use", {"resource": FPGA}) == 1.0
    )
    await kubelet.acall(kubelet.release, "p1")
    await wait_until(lambda: len(release_lines(short_dir)) == 2, what="the release ran")
    assert release_lines(short_dir) == ["fpga0 default/p1/c start", "fpga0 default/p1/c done"]
    await wait_until(
        lambda: running.metrics.registry.get_sample_value(
            "kdp_release_runs_total", {"resource": FPGA, "result": "ok"}
        ) == 1.0,
        what="the release counted",
    )  # fmt: skip

    def state() -> dict[str, object]:
        return json.loads((short_dir / "state" / STATE_FILE).read_text())["resources"]

    await wait_until(lambda: state().get(FPGA) is None, what="the state file says clean")


async def test_a_kubelet_restart_in_between_changes_nothing(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """The kubelet restarts while p1 holds fpga0 (allocations come back from its checkpoint,
    kdp-host registers again, no Allocate): p1's end is still seen and released, once."""
    kubelet, running = await real_host(
        real_kubelet_factory, start_host, short_dir, devices, release_script(short_dir)
    )
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="p1 seen")
    await kubelet.acall(kubelet.restart)
    await kubelet.await_for(_registered(kubelet), what="registered again")
    # p1 shown again: the kubelet's pod sources are back (until then an ID its checkpoint
    # lists is held whatever the answers lack: a restart while the API server is away)
    await wait_until(lambda: not poller.waiting, what="p1 shown after the restart")
    assert release_lines(short_dir) == []
    await kubelet.acall(kubelet.release, "p1")
    await wait_until(lambda: len(release_lines(short_dir)) == 2, what="released")
    assert release_lines(short_dir) == ["fpga0 default/p1/c start", "fpga0 default/p1/c done"]
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and len(release_lines(short_dir)) == 2  # clean: no release


async def test_a_new_pod_on_a_device_not_yet_released_waits_for_the_release(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """The kubelet hands the freed device to the next pod before any poll saw it free: the
    plugin knows from the second Allocate, and PreStartContainer waits for the release."""
    kubelet, _ = await real_host(
        real_kubelet_factory,
        start_host,
        short_dir,
        devices,
        release_script(short_dir, sleep=1.0),
        interval="1h",
    )
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    await kubelet.acall(kubelet.release, "p1")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"]
    # The container start (/allocate includes PreStartContainer) returned only after the
    # release of p1's use had finished.
    assert release_lines(short_dir) == ["fpga0 // start", "fpga0 // done"]


async def test_a_failed_release_makes_the_device_unhealthy_and_fails_the_next_start(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    kubelet, running = await real_host(
        real_kubelet_factory,
        start_host,
        short_dir,
        devices,
        release_script(short_dir, fail=True),
        interval="1h",
    )
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    await kubelet.acall(kubelet.release, "p1")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert "PreStartContainer rpc failed" in second["error"]
    assert "fpga fpga0 stuck in reset" in second["error"]
    assert "exited with status 3" in second["error"]
    await kubelet.await_for(
        lambda k: k.resource(FPGA)["unhealthy"] == 1, what="fpga0 reported Unhealthy"
    )
    tracker = running.host.resources[FPGA].release
    assert tracker is not None and tracker.view("fpga0")["state"] in ("failed", "running")


async def test_kdp_host_killed_while_a_pod_ends_releases_after_restart(
    real_kubelet_factory, short_dir: Path, devices: Path
) -> None:
    """SIGKILL kdp-host while a pod holds the device, end the pod, start kdp-host again: the
    state file says the device was used, PodResources says it is free: it is released."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    command = release_script(short_dir)
    config = short_dir / "kdp.yaml"
    config.write_text(
        host_yaml(kubelet.socket_dir, devices, short_dir / "state", command,
                  pod_resources=pod_resources)
    )  # fmt: skip
    argv = [sys.executable, "-m", "kdp_host", "run", "--config", str(config)]
    log = (short_dir / "host.log").open("wb")
    first = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        await kubelet.await_for(_registered(kubelet), what="fpga registered")
        assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
        assert (short_dir / "state" / STATE_FILE).exists()
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    await kubelet.acall(kubelet.release, "p1")
    assert release_lines(short_dir) == []
    second = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        await wait_until(
            lambda: len(release_lines(short_dir)) == 2, what="released after the restart"
        )
        assert release_lines(short_dir)[0].startswith("fpga0 ")
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
        log.close()


async def test_the_real_kubelet_refusing_for_a_while_delays_but_never_loses_a_release(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """Another client floods the kubelet's PodResources (the kubelet's own client, 1,000
    calls/s against its 100/s limit): kdp-host is refused, backs off, keeps its last answer,
    and releases the ended pod's device once the flood is over."""
    kubelet, running = await real_host(
        real_kubelet_factory, start_host, short_dir, devices, release_script(short_dir)
    )
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="p1 seen")
    binary = harness_binary()
    assert binary is not None
    flood = await asyncio.create_subprocess_exec(
        str(binary), "podresources-list", "--socket", str(short_dir / "pr" / "kubelet.sock"),
        "--repeat", "1000000", "--interval", "1ms",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until(lambda: poller.status.state == "rate_limited", what="refused")
        await kubelet.acall(kubelet.release, "p1")
        refused = running.metrics.registry.get_sample_value(
            "kdp_pod_resources_polls_total", {"result": "rate_limited"}
        )
        assert refused is not None and refused >= 1
    finally:
        flood.kill()
        await flood.wait()
    await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=90, what="released")
    assert release_lines(short_dir)[0] == "fpga0 default/p1/c start"
    assert poller.status.state == "ok"


# --------------------------------------------------------------------------- simulator


@pytest.fixture
async def kubelet_pr(socket_dir: Path, short_dir: Path):  # type: ignore[no-untyped-def]
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0, pod_resources_dir=short_dir / "pr")
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def test_simulator_pod_end_release_and_a_refusing_kubelet(
    kubelet_pr: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    """Through the simulator, with its rate limit exhausted by another client for a while:
    kdp-host backs off (counted), keeps its last answer, and releases once answered again."""
    sim = kubelet_pr
    command = release_script(short_dir)
    running = await start_host(
        host_yaml(socket_dir, devices, short_dir / "state", command,
                  pod_resources=short_dir / "pr"),
        fast=True,
    )  # fmt: skip
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
    await sim.allocate(FPGA, 1, pod_uid="p1")
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="p1 seen")
    assert sim.pod_resources is not None
    bucket = sim.pod_resources.limiter
    bucket.qps = 0.0  # another client takes every token: refuse everything
    bucket.exhaust()
    await wait_until(lambda: poller.status.state == "rate_limited", what="refused")
    await sim.release("p1")
    await wait_until(
        lambda: (running.metrics.registry.get_sample_value(
            "kdp_pod_resources_polls_total", {"result": "rate_limited"}) or 0) >= 2,
        what="two refused polls",
    )  # fmt: skip
    assert release_lines(short_dir) == []  # the last answer (p1 holds it) stands
    assert poller.holdings.of(FPGA)
    refused_at = sim.pod_resources.calls.times[-2:]
    assert refused_at[1] - refused_at[0] >= 1.5 * poller.interval  # backed off beyond it
    bucket.qps = 100.0
    await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
    assert release_lines(short_dir)[0] == "fpga0 default/p1/c0 start"


async def test_without_pod_resources_the_release_runs_at_the_next_start(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    command = release_script(short_dir)
    running = await start_host(
        host_yaml(socket_dir, devices, short_dir / "state", command, pod_resources=None)
    )
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await kubelet.pre_start_container("p1", "c0", FPGA)  # a restart of p1's container
    assert release_lines(short_dir) == []
    await kubelet.release("p1")
    await kubelet.allocate(FPGA, 1, pod_uid="p2")
    assert release_lines(short_dir) == ["fpga0 // start", "fpga0 // done"]
    assert running.host.pod_resources.status.state == "absent"


async def test_simulator_failed_release_is_the_start_error(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    command = release_script(short_dir, fail=True)
    await start_host(
        host_yaml(socket_dir, devices, short_dir / "state", command, pod_resources=None,
                  extra="onFailure: ignore")
    )  # fmt: skip
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await kubelet.release("p1")
    with pytest.raises(SimulatorAllocationError, match="fpga fpga0 stuck in reset"):
        await kubelet.allocate(FPGA, 1, pod_uid="p2")
    assert kubelet.allocatable(FPGA) == 1  # onFailure: ignore keeps it Healthy
    with pytest.raises(SimulatorAllocationError, match="stuck in reset"):
        await kubelet.pre_start_container("p2", "c0", FPGA)  # the kubelet's retry: again


# --------------------------------------------------------------------------- the tracker


class _Commands:
    """Records release runs; each run waits for `gate`."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, argv, *, timeout, env=None, cwd=None, max_output=0):  # type: ignore[no-untyped-def]
        from kdp_host.process import CommandResult

        self.runs.append(list(argv))
        await self.gate.wait()
        return CommandResult(0, b"", "")

    def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _successor(short_dir: Path, table: DeviceTable, store: ReleaseStateStore, commands: _Commands):  # type: ignore[no-untyped-def]
    """The tracker a reload makes for the resource (its release command changed to `reset2`),
    on the table and state store of the one `_tracker` made."""
    config = load_config_text(
        f"kubelet: {{socketDir: {short_dir}}}\nresources:\n  - name: {FPGA}\n"
        '    glob: {paths: ["/dev/fpga*"]}\n    release: {command: ["reset2", "{ids}"]}\n'
    )
    return ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(),
    )  # fmt: skip


def _tracker(  # type: ignore[no-untyped-def]
    short_dir: Path, commands: _Commands, *, replicas: int = 1, clock=None, start=True, handed=None
):
    text = (
        f"kubelet: {{socketDir: {short_dir}/dp}}\nstateDir: {short_dir}/state\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["/dev/fpga*"]}}\n    replicas: {replicas}\n'
        '    release: {command: ["reset", "{ids}", "{pod}"]}\n'
    )
    config = load_config_text(text)
    table = DeviceTable(replicas=replicas)
    table.publish([Device("fpga0", path="/dev/fpga0"), Device("fpga1", path="/dev/fpga1")])
    store = ReleaseStateStore(config.state_dir, get_logger(), DaemonThreads())
    store.load()
    options = {} if clock is None else {"clock": clock}
    if handed is not None:
        options["handed"] = handed
    tracker = ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(), **options,
    )  # fmt: skip
    if start:
        tracker.start()
    return tracker, table, store


def _answer(asked_at: float, **held: str) -> Holdings:
    return Holdings(
        asked_at, 0.0, {FPGA: {d: (Holder("ns", pod, "c", 0.0),) for d, pod in held.items()}}
    )


async def test_an_answer_older_than_an_allocation_never_releases_under_a_new_pod(
    short_dir: Path,
) -> None:
    """A List sent before the device was handed to p2 and answered after: it says the device
    is free (p1 left), but p2 has it now. It must not start a release under p2."""
    now = [100.0]
    commands = _Commands()
    tracker, _, _ = _tracker(short_dir, commands, clock=lambda: now[0])
    tracker.allocated(["fpga0"])  # p1
    tracker.holdings(_answer(100.5, fpga0="p1"))
    now[0] = 101.0
    asked = 101.5  # the List is sent ...
    now[0] = 102.0
    tracker.allocated(["fpga0"])  # ... p1 ended, p2 got fpga0: release owed, runs now
    await tracker.before_start(["fpga0"])
    assert commands.runs == [["reset", "fpga0", "p1"]]
    tracker.holdings(_answer(asked))  # ... and answered: nothing held
    await asyncio.sleep(0)
    assert len(commands.runs) == 1 and tracker.view("fpga0")["state"] == "in_use"
    tracker.holdings(_answer(103.0, fpga0="p2"))
    tracker.holdings(_answer(104.0))  # p2 ended
    await tracker.before_start(["fpga0"])
    assert commands.runs[-1] == ["reset", "fpga0", "p2"]
    await tracker.close()


async def test_shared_device_is_released_once_no_replica_is_held(short_dir: Path) -> None:
    commands = _Commands()
    tracker, _, _ = _tracker(short_dir, commands, replicas=2)
    tracker.allocated(["fpga0::0"])
    tracker.allocated(["fpga0::1"])
    tracker.holdings(_answer(10.0**9, **{"fpga0::0": "a", "fpga0::1": "b"}))
    tracker.holdings(_answer(10.0**9 + 1, **{"fpga0::1": "b"}))
    await asyncio.sleep(0)
    assert commands.runs == []
    tracker.holdings(_answer(10.0**9 + 2))
    await tracker.before_start(["fpga0::0"])
    assert commands.runs == [["reset", "fpga0", "b"]]
    await tracker.close()


async def test_an_unreadable_state_file_counts_every_device_as_used(short_dir: Path) -> None:
    state = short_dir / "state"
    state.mkdir()
    (state / STATE_FILE).write_text("{not json")
    commands = _Commands()
    tracker, _, store = _tracker(short_dir, commands)
    assert store.unknown
    assert (state / (STATE_FILE + ".unreadable")).read_text() == "{not json"
    tracker.holdings(_answer(10.0**9, fpga1="p9"))
    await asyncio.sleep(0)
    await tracker.before_start(["fpga0"])
    assert commands.runs == [["reset", "fpga0", ""]]  # fpga1 is held: released when freed
    await tracker.close()
    written = json.loads((state / STATE_FILE).read_text())
    kept = {"used": ["fpga1"], "owed": False, "holders": [["ns", "p9", "c"]]}  # (whose use)
    assert written["resources"][FPGA] == {"fpga1": kept}
    assert os.path.exists(state / (STATE_FILE + ".unreadable"))


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 1, "resources": {"vendor.example/fpga": {"fpga0": {"used": "fpga0", '
        '"owed": false}}}}',
        '{"version": 1, "resources": {"vendor.example/fpga": {"fpga0": {"used": [1], '
        '"owed": false}}}}',
        '{"version": 1, "resources": {"vendor.example/fpga": {"fpga0": {"used": [], '
        '"owed": "yes"}}}}',
        '{"version": 2, "resources": {}}',
        "[]",
    ],
)
def test_a_state_file_with_wrong_shapes_is_unreadable_not_half_read(
    short_dir: Path, text: str
) -> None:
    state = short_dir / "state"
    state.mkdir()
    (state / STATE_FILE).write_text(text)
    store = ReleaseStateStore(str(state), get_logger(), DaemonThreads())
    store.load()
    assert store.unknown and store.entries(FPGA) == {}
    assert (state / (STATE_FILE + ".unreadable")).read_text() == text


async def test_a_state_dir_that_cannot_be_written_is_logged_and_the_start_goes_on(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (short_dir / "state").write_text("a file where the directory should be")
    commands = _Commands()
    tracker, _, store = _tracker(short_dir, commands)
    tracker.allocated(["fpga0"])
    await tracker.before_start(["fpga0"])
    assert store.write_failures >= 1
    assert any(r.getMessage() == "release_state_write_failed" for r in caplog.records)
    await tracker.close()


async def test_a_restarted_runtime_takes_up_the_state_of_the_one_before(short_dir: Path) -> None:
    """A reload restarts a changed resource: the new tracker is made while the old one still
    runs, and takes up what the old one left when it starts."""
    commands = _Commands()
    old, table, store = _tracker(short_dir, commands)
    new = _successor(short_dir, table, store, commands)
    old.allocated(["fpga0"])  # used under the old runtime
    await old.close()
    new.start()
    new.holdings(_answer(10.0**9))  # nothing held: fpga0's user is gone
    await new.before_start(["fpga0"])
    assert commands.runs == [["reset2", "fpga0"]]
    await new.close()


async def test_an_answer_asked_just_after_an_allocation_does_not_end_it(short_dir: Path) -> None:
    """The kubelet records an allocation only once Allocate's answer reached it: a List in
    that moment shows the device free although a container is about to hold it. Were that
    taken as its end, a container living less than one poll would never be released."""
    now = [100.0]
    commands = _Commands()
    tracker, _, _ = _tracker(short_dir, commands, clock=lambda: now[0])
    tracker.allocated(["fpga0"])
    tracker.holdings(_answer(100.001))  # asked a moment after Allocate answered: free
    await asyncio.sleep(0)
    assert commands.runs == [] and tracker.view("fpga0")["state"] == "in_use"
    now[0] = 103.0
    tracker.holdings(_answer(102.0))  # the container came and went between two polls
    await tracker.before_start(["fpga0"])
    assert commands.runs == [["reset", "fpga0", ""]]
    await tracker.close()


async def test_a_hung_release_is_killed_at_its_timeout_and_fails_the_start(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    hung = script(short_dir, "hang.sh", "exec sleep 600\n")
    running = await start_host(
        host_yaml(socket_dir, devices, short_dir / "state", hung, pod_resources=None,
                  extra="onFailure: ignore").replace("timeout: 10s", "timeout: 200ms")
    )  # fmt: skip
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await kubelet.release("p1")
    with pytest.raises(SimulatorAllocationError, match="timed out"):
        await kubelet.allocate(FPGA, 1, pod_uid="p2")
    timeouts = running.metrics.registry.get_sample_value(
        "kdp_release_runs_total", {"resource": FPGA, "result": "timeout"}
    )
    assert timeouts is not None and timeouts >= 1


async def test_a_reload_just_after_an_allocation_never_releases_under_the_pod(
    real_kubelet_factory, start_host, short_dir: Path, devices: Path
) -> None:
    """hostile4 H14: p1 is allocated fpga0, then a reload restarts the resource at once. The
    restarted resource is handed the last PodResources answer, asked before the Allocate
    (fpga0 free): that is no news about fpga0, for the new tracker as for the old one, so no
    release runs under p1. When p1 ends, the release runs on the paths p1 was handed."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    command = release_script(short_dir)
    config = short_dir / "kdp.yaml"

    def write(interval: str, grace: str) -> None:
        text = host_yaml(kubelet.socket_dir, devices, short_dir / "state", command,
                         pod_resources=pod_resources, interval=interval)  # fmt: skip
        config.write_text(text.replace("gracePeriod: 1s", f"gracePeriod: {grace}"))

    write("1h", "1m")  # one answer, at start: asked before the Allocate
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(_registered(kubelet), what="fpga registered")
    poller = running.host.pod_resources
    assert poller is not None
    await wait_until(lambda: poller.holdings is not None, what="a first PodResources answer")
    since = await kubelet.acall(kubelet.last_seq)
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    write("1h", "2m")  # changes the resource: it is restarted
    assert await running.host.reload_from(config) == "ok"
    await kubelet.acall(kubelet.first_list_after_registering, FPGA, since)
    registry = running.metrics.registry
    assert registry.get_sample_value("kdp_releases_pending", {"resource": FPGA}) == 0
    ok = registry.get_sample_value("kdp_release_runs_total", {"resource": FPGA, "result": "ok"})
    assert ok == 0, "released under the running pod p1"
    assert release_lines(short_dir) == []
    entries = json.loads((short_dir / "state" / STATE_FILE).read_text())["resources"][FPGA]
    assert entries["fpga0"]["used"] == ["fpga0"] and not entries["fpga0"]["owed"]
    handed = json.loads((short_dir / "state" / HANDED_FILE).read_text())["resources"][FPGA]
    assert handed["fpga0"]["nodes"] == [[str(devices / "fpga0")] * 2 + [None]]


def _restarted(
    short_dir: Path, commands: _Commands, table: DeviceTable, handed: HandedOut | None = None
) -> ReleaseTracker:
    """A tracker of `{ids} {hostPaths}` after kdp-host restarted: a new store read from the
    state directory `_tracker` wrote."""
    config = load_config_text(
        f"kubelet: {{socketDir: {short_dir}/dp}}\nstateDir: {short_dir}/state\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["/dev/fpga*"]}}\n'
        '    release: {command: ["reset", "{ids}", "{hostPaths}"]}\n'
    )
    store = ReleaseStateStore(config.state_dir, get_logger(), DaemonThreads())
    store.load()
    return ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(), handed=handed,
    )  # fmt: skip


def _record(short_dir: Path) -> HandedRecord:
    """The record of what was handed out, as a (re)started host reads it."""
    record = HandedRecord(str(short_dir / "state"), get_logger(), DaemonThreads())
    record.load()
    return record


async def test_a_release_owed_after_a_restart_acts_on_the_paths_handed_out(
    short_dir: Path,
) -> None:
    """hostile4 H6: fpga0 was handed out as /dev/fpga0; kdp-host stops; the pod ends
    meanwhile; at the next start fpga0 is not listed (yet). The release acts on the paths
    the Allocate handed out, kept in the state file, not on nothing."""
    commands = _Commands()
    record = _record(short_dir)
    tracker, table, _ = _tracker(short_dir, commands, handed=record.of(FPGA))
    table.publish([Device("fpga0", nodes=None, path="/dev/fpga0")])
    tracker.allocated(["fpga0"])
    record.hand_out(FPGA, table.snapshot, ["fpga0"])  # (as Allocate does, after the tracker)
    await record.written()
    await tracker.before_start(["fpga0"])
    await tracker.close()
    restarted = _restarted(short_dir, commands, DeviceTable(), _record(short_dir).of(FPGA))
    restarted.start()
    restarted.holdings(_answer(10.0**9))  # nothing held: the pod ended while down
    await restarted.before_start(["fpga0"])
    assert commands.runs == [["reset", "fpga0", "/dev/fpga0"]]
    await restarted.close()


async def test_a_release_with_nothing_to_act_on_fails_and_stays_owed(short_dir: Path) -> None:
    """A state file of an older version keeps no handed-out paths; with the device not
    listed either, the release has nothing to act on: it fails (`invalid`, not run), the
    device stays owed, and the release runs on its paths once it is listed again."""
    state = short_dir / "state"
    state.mkdir()
    (state / STATE_FILE).write_text(
        json.dumps({"version": 1, "resources": {FPGA: {"fpga0": {"used": [], "owed": True}}}})
    )
    commands = _Commands()
    table = DeviceTable()
    table.publish([])  # listed: fpga0 is not (before the first list, the release waits)
    tracker = _restarted(short_dir, commands, table)
    tracker.start()
    with pytest.raises(HookFailed, match="nothing to release"):
        await tracker.before_start(["fpga0"])
    assert commands.runs == [] and tracker.view("fpga0")["state"] == "failed"
    assert json.loads((state / STATE_FILE).read_text())["resources"][FPGA]["fpga0"]["owed"]
    table.publish([Device("fpga0", nodes=None, path="/dev/fpga0")])
    await tracker.before_start(["fpga0"])
    assert commands.runs == [["reset", "fpga0", "/dev/fpga0"]]
    await tracker.close()


async def test_every_change_of_the_view_counts_a_change(short_dir: Path) -> None:
    """`/devices` is built again only when `changes` moves (status.DevicesAnswer): two
    moments with the same count show the same view, through allocation, a release running,
    its success and the next use."""
    commands = _Commands()
    tracker, _, _ = _tracker(short_dir, commands)
    seen: dict[int, dict[str, object]] = {}

    def note() -> None:
        view = tracker.view("fpga0")
        assert seen.setdefault(tracker.changes, view) == view, (tracker.changes, view)

    note()
    tracker.allocated(["fpga0"])
    note()
    tracker.holdings(_answer(1.0, fpga0="p1"))
    note()
    tracker.allocated(["fpga0"])  # p1 left: the release is owed
    note()
    task = asyncio.ensure_future(tracker.before_start(["fpga0"]))
    await asyncio.sleep(0)
    note()  # running
    await task
    note()
    assert len(commands.runs) == 1
    assert {str(v) for v in seen.values()} >= {
        str({"state": "clean"}),
        str({"state": "in_use"}),
        str({"state": "running"}),
    }
    await tracker.close()


async def test_a_kill_while_the_state_file_cannot_be_written_fails_closed(
    short_dir: Path,
) -> None:
    """hostile4 H8: while release-state.json cannot be written (here a directory stands in
    its way; a full disk alike), fpga0 is allocated, then kdp-host is killed. The failed
    write left a marker (an empty file: made on a full disk too), so the next start reads
    the state as unknown: every device counts as used and is released once it is free,
    instead of fpga0 counting as never used. The first write that succeeds removes the
    marker."""
    state = short_dir / "state"
    commands = _Commands()
    tracker, table, store = _tracker(short_dir, commands)
    store.file.retry_first = 3600.0  # no background retry after the "kill"
    (state / STATE_FILE).mkdir(parents=True)  # writes fail from now on
    tracker.allocated(["fpga0"])
    await tracker.before_start(["fpga0"])  # the write fails; the start goes on
    marker = state / f"{STATE_FILE}.unsaved"
    assert store.write_failures >= 1 and marker.exists()
    await tracker.close()  # (a SIGKILL: the state never reached the file)
    (state / STATE_FILE).rmdir()  # the disk has room again
    restarted = _restarted(short_dir, commands, table)
    restarted.start()
    restarted.holdings(_answer(10.0**9))  # nothing held: p1 ended while kdp-host was down
    await restarted.before_start(["fpga0", "fpga1"])
    assert sorted(run[1] for run in commands.runs) == ["fpga0", "fpga1"]
    assert not marker.exists(), "the first write that succeeded removes the marker"
    await restarted.close()


async def test_the_unsaved_marker_stays_until_the_state_is_known_again(short_dir: Path) -> None:
    """hostile4 H8, the gap release2 named: after a start that found the marker, a write that
    succeeds before the first PodResources answer (an Allocate) must not remove it: the file
    still lacks what the killed host knew (every device counts as used until an answer says
    otherwise). A second kill then still fails closed. The first write after an answer
    removes it."""
    state = short_dir / "state"
    commands = _Commands()
    tracker, table, store = _tracker(short_dir, commands)
    store.file.retry_first = 3600.0
    (state / STATE_FILE).mkdir(parents=True)
    tracker.allocated(["fpga0"])
    await tracker.before_start(["fpga0"])
    marker = state / f"{STATE_FILE}.unsaved"
    assert marker.exists()
    await tracker.close()  # killed
    (state / STATE_FILE).rmdir()
    second = _restarted(short_dir, commands, table)
    second.start()
    second.allocated(["fpga1"])  # before any PodResources answer
    await second.before_start(["fpga1"])  # its write succeeds
    assert (state / STATE_FILE).is_file()
    assert marker.exists(), "a write before the state is known removed the marker"
    await second.close()  # killed again
    third = _restarted(short_dir, commands, table)
    assert third._store.unknown
    third.start()
    third.holdings(_answer(10.0**9))  # nothing held
    await third.before_start(["fpga0", "fpga1"])
    assert sorted(run[1] for run in commands.runs) == ["fpga0", "fpga1", "fpga1"]
    await third._store.flush()
    assert not marker.exists(), "the first write once the state is known removes the marker"
    await third.close()
