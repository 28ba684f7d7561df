"""preStart.command (PreStartContainer) and allocate.command, end to end.

Through the kubelet simulator (which calls PreStartContainer as the kubelet does: after
Allocate, only when the options ask for it, with the container's devices and the 30 s
deadline) and through the grpcio kubelet (an independent gRPC stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from kdp_host.config import ConfigError, load_config_text
from kdp_host.rules import MAX_ALLOCATE_TIMEOUT, MAX_PRE_START_TIMEOUT
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError

from .conftest import glob_config, process_gone, script, wait_until

try:
    from .interop_kubelet import InteropKubelet, load_official_api
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).parent))
    from interop_kubelet import InteropKubelet, load_official_api  # type: ignore[no-redef]

FPGA = "vendor.example/fpga"
SERIAL = "vendor.example/serial"
HANG = "t.io/hang"
DEADLINE = "t.io/late"
SLOTS = "t.io/slots"


def _config(socket_dir: Path, devices: Path, resource_extra: str, *, serial: bool = True) -> str:
    """The FPGA resource with `resource_extra` (YAML lines of the resource), and a serial
    resource without hooks."""
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga[0-9]*"))
    text += "".join(f"    {line}\n" for line in resource_extra.strip().splitlines())
    if serial:
        text += f'  - name: {SERIAL}\n    glob: {{paths: ["{devices}/ttyA*"]}}\n'
    return text


def _counter(running: object, name: str, **labels: str) -> float:
    value = running.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)


# --------------------------------------------------------------------------- config


def test_a_process_that_exits_while_its_stat_is_read_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading /proc/<pid>/stat of a process that exits meanwhile fails with ESRCH, not
    ENOENT: the waits on hook processes took that for an error (a flaky test)."""
    import builtins

    real_open = builtins.open

    def exiting(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith("/proc/"):
            raise ProcessLookupError(3, "No such process")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", exiting)
    assert process_gone(os.getpid())


def test_allocate_timeout_is_bounded(short_dir: Path) -> None:
    """Issue 17 item 9: the kubelet gives Allocate no deadline and admits one pod at a
    time; `allocate.timeout` is what bounds the stall, so it cannot be hours."""
    for too_long in ("720h", "20s", "10.5s"):
        text = _config(short_dir, short_dir, f'allocate: {{command: ["x"], timeout: {too_long}}}')
        with pytest.raises(ConfigError) as caught:
            load_config_text(text)
        assert f"allocate.timeout: must be at most {MAX_ALLOCATE_TIMEOUT:g}s" in str(caught.value)
        assert "admits one pod at a time" in str(caught.value)
    text = _config(short_dir, short_dir, 'allocate: {command: ["x"], timeout: 10s}')
    assert load_config_text(text).resources[0].allocate.timeout == MAX_ALLOCATE_TIMEOUT


def test_a_literal_brace_pair_is_an_argument_not_a_field(short_dir: Path) -> None:
    """Issue 17 item 14a: `{}` (find -exec) and doubled braces are text; a name in braces
    is a field and must be known, and the error says how to write it literally."""
    for section, field in (("preStart", "hostPaths"), ("allocate", "ids"), ("health", "path")):
        argv = f'["find", "{{{field}}}", "-exec", "tool", "{{}}", ";", "{{{{ids}}}}"]'
        loaded = load_config_text(_config(short_dir, short_dir, f"{section}: {{command: {argv}}}"))
        command = getattr(loaded.resources[0], section.replace("preStart", "pre_start")).command
        assert command[4:] == ("{}", ";", "{{ids}}")
    with pytest.raises(ConfigError, match=re.escape("write {{HOME}} for the literal text {HOME}")):
        load_config_text(_config(short_dir, short_dir, 'preStart: {command: ["sh", "${HOME}"]}'))


def test_pre_start_timeout_longer_than_the_kubelet_allows_is_refused(short_dir: Path) -> None:
    text = _config(short_dir, short_dir, 'preStart: {command: ["true"], timeout: 29s}')
    with pytest.raises(ConfigError, match=f"at most {MAX_PRE_START_TIMEOUT:g}s"):
        load_config_text(text)
    config = load_config_text(_config(short_dir, short_dir, 'preStart: {command: ["true"]}'))
    pre_start = config.resources[0].pre_start
    assert pre_start is not None
    assert (pre_start.timeout, pre_start.on_failure, pre_start.parallelism) == (10.0, "ignore", 4)
    assert config.resources[0].allocate.timeout == 2.0


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('preStart: {command: ["x", "{id}"]}', "unknown template field {id}"),
        ('preStart: {command: ["x"], onFailure: drop}', "must be one of ignore, unhealthy"),
        ('preStart: {command: ["x"], parallelism: 0}', "between 1 and 64"),
        ('preStart: {command: "x"}', "must be a list of arguments"),
        ('allocate: {command: ["x", "{nope}"]}', "unknown template field {nope}"),
        ("allocate: {cdi: {kind: a.io/fpga, deviceFileMode: 660}}", "must be a string"),
        ('allocate: {cdi: {kind: a.io/fpga, deviceFileMode: "0980"}}', "octal mode"),
    ],
)
def test_hook_config_problems(short_dir: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config_text(_config(short_dir, short_dir, extra))


def test_cdi_options_for_non_root_containers(short_dir: Path) -> None:
    from kdp_host.cdi_spec import build_spec
    from kdp_host.device_table import DeviceTable
    from kdp_host.devices import Device, DeviceNode

    from .cdi_spec import validate_cdi_spec

    cdi = "{kind: vendor.example/fpga, deviceGid: 2000, deviceFileMode: '0660'"
    plain = load_config_text(_config(short_dir, short_dir, f"allocate: {{cdi: {cdi}}}}}"))
    gids = load_config_text(
        _config(short_dir, short_dir, f"allocate: {{cdi: {cdi}, additionalGids: [2000, 44]}}}}")
    )
    table = DeviceTable()
    table.publish([Device("fpga0", nodes=(DeviceNode("/dev/fpga0", "/dev/fpga0"),))])
    spec = build_spec(plain.resources[0], table.snapshot)
    assert spec is not None
    validate_cdi_spec(spec)
    assert spec["cdiVersion"] == "0.5.0"  # gid and fileMode need nothing newer
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [
        {
            "path": "/dev/fpga0",
            "hostPath": "/dev/fpga0",
            "permissions": "rw",
            "gid": 2000,
            "fileMode": 0o660,
        }
    ]
    assert "containerEdits" not in spec
    spec = build_spec(gids.resources[0], table.snapshot)
    assert spec is not None
    validate_cdi_spec(spec)
    assert spec["cdiVersion"] == "0.7.0"
    assert spec["containerEdits"] == {"additionalGids": [2000, 44]}


# --------------------------------------------------------------------------- preStart


async def test_pre_start_records_its_arguments_and_only_its_resource_asks(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    record = short_dir / "record.json"
    hook = script(
        short_dir,
        "record",
        f'{sys.executable} -c \'import json, os, sys; json.dump({{"argv": sys.argv[1:], '
        f'"env": os.environ.get("FPGA_IDS"), "count": os.environ.get("N")}}, '
        f'open("{record}", "w"))\' "$@"\n',
    )
    extra = (
        f'preStart: {{command: ["{hook}", "{{ids}}", "{{hostPaths}}", "{{paths}}", '
        '"{resource}"], env: {FPGA_IDS: "{ids}", N: "{count}"}}'
    )
    running = await start_host(_config(socket_dir, devices, extra))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    fpga_options, serial_options = kubelet.options(FPGA), kubelet.options(SERIAL)
    assert fpga_options is not None and fpga_options.pre_start_required
    assert serial_options is not None and not serial_options.pre_start_required

    await kubelet.allocate(FPGA, 2, pod_uid="p1")
    call = kubelet.pre_start_calls[-1]
    assert call.error is None and sorted(call.device_ids) == ["fpga0", "fpga1"]
    paths = f"{devices}/fpga0,{devices}/fpga1"
    assert json.loads(record.read_text()) == {
        "argv": ["fpga0,fpga1", paths, paths, FPGA],
        "env": "fpga0,fpga1",
        "count": "2",
    }
    await kubelet.allocate(SERIAL, 1, pod_uid="p2")
    assert len(kubelet.pre_start_calls) == 1  # the serial resource did not ask for it
    assert _counter(running, "kdp_pre_start_calls_total", resource=FPGA, result="ok") == 1
    assert _counter(running, "kdp_pre_start_calls_total", resource=FPGA, result="exit") == 0
    assert _counter(running, "kdp_pre_start_duration_seconds_count", resource=FPGA) == 1


async def test_failing_pre_start_fails_the_container_start_with_its_stderr(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    hook = script(short_dir, "fail", 'echo "no bitstream for $1" >&2\nexit 3\n')
    running = await start_host(
        _config(socket_dir, devices, f'preStart: {{command: ["{hook}", "{{ids}}"]}}')
    )
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    with pytest.raises(SimulatorAllocationError) as caught:
        await kubelet.allocate(FPGA, 1, pod_uid="p1")
    text = str(caught.value)
    assert "PreStartContainer rpc failed" in text
    assert "exited with status 3" in text and "no bitstream for fpga" in text
    assert kubelet.pre_start_calls[-1].error is not None
    assert _counter(running, "kdp_pre_start_calls_total", resource=FPGA, result="exit") == 1
    # onFailure: ignore (the default) keeps the devices Healthy
    assert kubelet.resource(FPGA).allocatable == 2


async def test_on_failure_unhealthy_reports_the_devices_unhealthy(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    flag = short_dir / "broken"
    flag.touch()
    hook = script(short_dir, "maybe", f'test ! -e "{flag}"\n')
    await start_host(
        _config(socket_dir, devices, f'preStart: {{command: ["{hook}"], onFailure: unhealthy}}')
    )
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    with pytest.raises(SimulatorAllocationError, match="exited with status 1"):
        await kubelet.allocate(FPGA, 1, pod_uid="p1")
    failed = kubelet.pre_start_calls[-1].device_ids
    await kubelet.wait_for(lambda: set(failed) <= kubelet.resource(FPGA).unhealthy_ids)
    # the container restarts, the hook passes: its devices are Healthy again
    flag.unlink()
    await kubelet.pre_start_container("p1", "c0", FPGA)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)


async def test_hanging_pre_start_is_killed_at_its_timeout_without_orphans(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    pids = short_dir / "pids"
    hook = script(
        short_dir,
        "hang",
        f'sleep 1000 &\necho "$$ $!" > "{pids}"\necho "waiting for firmware" >&2\nwait\n',
    )
    running = await start_host(
        _config(socket_dir, devices, f'preStart: {{command: ["{hook}"], timeout: 0.5s}}')
    )
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    with pytest.raises(SimulatorAllocationError) as caught:
        await kubelet.allocate(FPGA, 1, pod_uid="p1")
    assert "timed out after 0.5s" in str(caught.value)
    assert "waiting for firmware" in str(caught.value)
    for pid in map(int, pids.read_text().split()):
        await wait_until(lambda pid=pid: process_gone(pid), what=f"process {pid} to be gone")
    assert _counter(running, "kdp_pre_start_calls_total", resource=FPGA, result="timeout") == 1


async def test_ten_containers_start_at_once_and_overlap_up_to_the_bound(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    """Each hook marks its start, waits until `bound` hooks have started (so the first ones
    overlap whatever the machine's speed), marks its end. The semaphore keeps it at most
    `bound`; the marks show it reached `bound`, so they did not run one after the other."""
    bound = 3
    log = short_dir / "marks"
    log.touch()
    hook = _slow_hook(short_dir, log, bound)
    extra = (
        f'preStart: {{command: ["{hook}", "{{ids}}"], parallelism: {bound}, timeout: 25s}}\n'
        "replicas: 5"
    )
    running = await start_host(_config(socket_dir, devices, extra, serial=False))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 10)
    pods = [f"p{i}" for i in range(10)]
    for pod in pods:
        await kubelet.allocate(FPGA, 1, pod_uid=pod, pre_start=False)
    await asyncio.gather(*(kubelet.pre_start_container(pod, "c0", FPGA) for pod in pods))

    assert _peak_overlap(log) == (bound, 10)
    assert all(call.error is None for call in kubelet.pre_start_calls)
    assert _counter(running, "kdp_pre_start_waits_total", resource=FPGA) >= 10 - bound
    assert _counter(running, "kdp_pre_start_calls_total", resource=FPGA, result="ok") == 10


@pytest.mark.parametrize(
    ("hook_yaml", "counted"),
    [
        ('preStart: {{command: ["{hook}"]}}', ("kdp_pre_start_calls_total", "invalid")),
        ('allocate: {{env: {{SERIAL: "{{{{ids}}}}"}}, command: ["{hook}"]}}',
         ("kdp_allocations_total", "invalid")),
    ],
)  # fmt: skip
async def test_hooks_refuse_device_values_that_would_not_split_back(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host,
    hook_yaml: str,
    counted: tuple[str, str],
) -> None:
    """A hook gets the devices' own env joined with `,`: a value holding a `,` (a USB serial
    `A,B` beside a stick whose serial is `B`) would name another device, so the call is
    refused (INVALID_ARGUMENT) instead of running the command with it (Allocate itself
    joins nothing here: the configured SERIAL wins there)."""
    ran = short_dir / "ran"
    hook = script(short_dir, "hook", f'touch "{ran}"\n')
    devices = [{"id": "usb0", "env": {"SERIAL": "A,B"}}, {"id": "usb1", "env": {"SERIAL": "B"}}]
    allocate = (
        "" if hook_yaml.startswith("allocate") else "    allocate: {env: {SERIAL: '{ids}'}}\n"
    )
    text = (
        f"kubelet: {{socketDir: {socket_dir}}}\nresources:\n"
        f"  - name: {FPGA}\n"
        f"    shell: {{command: [echo, '{json.dumps(devices)}'], format: json}}\n"
        f"{allocate}    {hook_yaml.format(hook=hook)}\n"
    )
    running = await start_host(text)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    with pytest.raises(SimulatorAllocationError) as caught:
        await kubelet.allocate(FPGA, 2, pod_uid="p1")
    assert "code = InvalidArgument" in str(caught.value)
    assert "env SERIAL of device usb0 is 'A,B'" in str(caught.value)
    assert not ran.exists()
    metric, result = counted
    assert _counter(running, metric, resource=FPGA, result=result) == 1


# --------------------------------------------------------------------------- allocate.command


async def test_allocate_command_output_is_merged_into_the_response(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    (devices / "fpga-mgr").touch()
    session = short_dir / "mounted"  # (not a directory above the devices: that is refused)
    session.mkdir()
    output = {
        "env": {"SESSION": "s-42", "FPGA_DEVICES": "ignored: configured keys win"},
        "annotations": {"vendor.example/session": "s-42"},
        "mounts": [{"hostPath": str(session), "containerPath": "/session"}],
        "paths": [f"{devices}/fpga-mgr:/dev/fpga-mgr"],
        "cdiDevices": ["vendor.example/fpga-mgr=mgr0"],
    }
    hook = script(short_dir, "session", f"echo '{json.dumps(output)}'\n")
    extra = f'allocate: {{command: ["{hook}", "{{ids}}"], env: {{FPGA_DEVICES: "{{ids}}"}}}}'
    running = await start_host(_config(socket_dir, devices, extra))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    response = await kubelet.allocate(FPGA, 1, pod_uid="p1")
    assert response is not None
    assert response.envs["SESSION"] == "s-42"
    assert response.envs["FPGA_DEVICES"] in ("fpga0", "fpga1")
    assert response.annotations["vendor.example/session"] == "s-42"
    assert [(m.host_path, m.container_path, m.read_only) for m in response.mounts] == [
        (str(session), "/session", True)
    ]
    assert (f"{devices}/fpga-mgr", "/dev/fpga-mgr", "rw") in [
        (d.host_path, d.container_path, d.permissions) for d in response.devices
    ]
    assert [d.name for d in response.cdi_devices] == ["vendor.example/fpga-mgr=mgr0"]
    assert _counter(running, "kdp_allocate_hook_runs_total", resource=FPGA, result="ok") == 1
    # the resource without a hook has no hook series
    assert (
        running.metrics.registry.get_sample_value(
            "kdp_allocate_hook_runs_total", {"resource": SERIAL, "result": "ok"}
        )
        is None
    )


async def test_allocate_command_output_is_checked_like_probe_output(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    hook = script(short_dir, "bad", """echo '{"env": {"1BAD": "x"}}'\n""")
    running = await start_host(_config(socket_dir, devices, f'allocate: {{command: ["{hook}"]}}'))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    with pytest.raises(SimulatorAllocationError, match=r"does not parse.*1BAD"):
        await kubelet.allocate(FPGA, 1, pod_uid="p1")
    assert _counter(running, "kdp_allocations_total", resource=FPGA, result="hook_failed") == 1
    assert _counter(running, "kdp_allocate_hook_runs_total", resource=FPGA, result="parse") == 1


async def test_a_hung_allocate_command_does_not_delay_another_resources_allocate(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    """Issue 17 item 9, inside kdp-host: resource A's command hangs; an Allocate of resource
    B sent meanwhile is answered while A's is still waiting (nothing is shared between the
    resources' Allocates: no lock, no queue, no blocked loop). The calls go straight to the
    plugins' sockets: the kubelet admits one pod at a time, so through it B waits for A's
    timeout instead (tests/test_hooks_real_kubelet.py)."""
    from grpclib.client import Channel

    from kdp_host.api.v1beta1 import AllocateRequest, ContainerAllocateRequest, DevicePluginStub

    started = short_dir / "started"
    hang = script(short_dir, "hang", f'touch "{started}"\nexec sleep 1000\n')
    quick = script(short_dir, "quick", 'echo \'{"env": {"QUICK": "1"}}\'\n')
    text = (
        f"kubelet: {{socketDir: {socket_dir}}}\nresources:\n"
        f'  - name: {HANG}\n    glob: {{paths: ["{devices}/fpga0"]}}\n'
        f'    allocate: {{command: ["{hang}"], timeout: 10s}}\n'
        f'  - name: {SERIAL}\n    glob: {{paths: ["{devices}/ttyA*"]}}\n'
        f'    allocate: {{command: ["{quick}"]}}\n'
    )
    running = await start_host(text)
    await kubelet.wait_for(lambda: kubelet.resource(HANG).allocatable == 1)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    channels = {
        name: Channel(path=runtime.socket_path) for name, runtime in running.host.resources.items()
    }
    try:

        def allocate(name: str, device: str) -> Any:
            request = AllocateRequest([ContainerAllocateRequest(devices_ids=[device])])
            return DevicePluginStub(channels[name]).allocate(request)

        hung = asyncio.ensure_future(allocate(HANG, "fpga0"))
        await wait_until(started.exists, what="A's command started")
        answer = await asyncio.wait_for(allocate(SERIAL, "ttyA0"), 30)
        assert not hung.done(), "A's Allocate must still be waiting for its command"
        assert answer.container_responses[0].envs["QUICK"] == "1"
        hung.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hung
    finally:
        for channel in channels.values():
            channel.close()
    assert _counter(running, "kdp_allocate_hook_runs_total", resource=SERIAL, result="ok") == 1


# --------------------------------------------------------------------------- grpcio kubelet


def _slow_hook(directory: Path, log: Path, bound: int) -> str:
    """A hook that marks its start, waits until `bound` hooks have started (so the first ones
    overlap whatever the machine's speed), then marks its end."""
    return script(
        directory,
        "slow",
        f'echo "S $1" >> "{log}"\n'
        "i=0\n"
        f'while [ "$(grep -c "^S" "{log}")" -lt {bound} ] && [ $i -lt 2000 ]; do\n'
        "  sleep 0.01; i=$((i+1))\n"
        "done\n"
        f'echo "E $1" >> "{log}"\n',
    )


def _peak_overlap(log: Path) -> tuple[int, int]:
    """(most hooks running at once, hooks that ended) from the start and end marks."""
    running = peak = ended = 0
    for mark in filter(None, log.read_text().split("\n")):
        running += 1 if mark.startswith("S") else -1
        ended += mark.startswith("E")
        peak = max(peak, running)
    return peak, ended


async def test_pre_start_through_the_grpcio_kubelet(
    socket_dir: Path, devices: Path, short_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every preStart case against an independent gRPC stack: kdp-host in its own process
    (a process holding grpcio's threads cannot fork commands safely)."""
    official = load_official_api(tmp_path_factory.mktemp("proto"))
    args, pids, marks = short_dir / "args", short_dir / "pids", short_dir / "marks"
    marks.touch()
    for index in range(10):
        (devices / f"slot{index}").touch()
    for name in ("hang0", "hang1"):  # one node is in one resource's devices only
        (devices / name).touch()
    hooks = {
        FPGA: (script(short_dir, "ok", f'echo "$@" > "{args}"\n'), '"{ids}", "{count}"', ""),
        SERIAL: (script(short_dir, "nope", 'echo "device busy" >&2\nexit 7\n'), "", ""),
        HANG: (
            script(short_dir, "hang", f'sleep 1000 &\necho "$$ $!" >> "{pids}"\nwait\n'),
            "",
            ", timeout: 0.5s",
        ),
        DEADLINE: (script(short_dir, "hang2", f'sleep 1000 &\necho "$$ $!" >> "{pids}"\nwait\n'),
                   "", ", timeout: 20s"),
        SLOTS: (_slow_hook(short_dir, marks, 3), '"{ids}"', ", parallelism: 3, timeout: 25s"),
    }  # fmt: skip
    patterns = {
        FPGA: "fpga[0-9]*",
        SERIAL: "ttyA*",
        HANG: "hang0",
        DEADLINE: "hang1",
        SLOTS: "slot*",
    }
    lines = [f"kubelet: {{socketDir: {socket_dir}}}", "metrics: {listen: '127.0.0.1:0'}"]
    lines += [f"stateDir: {short_dir}/state"]
    lines += ["resources:"]
    for name, (hook, hook_args, extra) in hooks.items():
        argv = ", ".join(filter(None, [f'"{hook}"', hook_args]))
        lines += [
            f"  - name: {name}",
            f'    glob: {{paths: ["{devices}/{patterns[name]}"]}}',
            f"    preStart: {{command: [{argv}]{extra}}}",
        ]
    config = short_dir / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    kubelet = InteropKubelet(socket_dir, official, dial_timeout=5.0)
    await kubelet.start()
    log = (short_dir / "host.log").open("wb")
    host = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config),
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        await wait_until(
            lambda: host.returncode is not None or set(hooks) <= set(kubelet.plugins),
            timeout=30,
            what="every resource registered (or the host exited)",
        )
        assert host.returncode is None, (short_dir / "host.log").read_text()
        clients = {name: kubelet.plugins[name] for name in hooks}
        await kubelet.wait_for(lambda: all(c.options is not None for c in clients.values()))
        assert all(c.options.pre_start_required for c in clients.values())

        # records its arguments
        await kubelet.pre_start(FPGA, ["fpga1", "fpga0"])
        assert args.read_text().split() == ["fpga0,fpga1", "2"]
        # fails: the exit status and stderr reach the kubelet side
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await kubelet.pre_start(SERIAL, ["ttyA0"])
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = caught.value.details() or ""
        assert "exited with status 7" in details and "device busy" in details
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await kubelet.pre_start(FPGA, ["fpga9"])
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # hangs: killed at its own timeout, or when the kubelet gives up on the call
        with pytest.raises(grpc.aio.AioRpcError) as timed_out:
            await kubelet.pre_start(HANG, ["hang0"])
        assert "timed out after 0.5s" in (timed_out.value.details() or "")
        # its 20 s do not fit in a 1 s deadline: not run, kdp-host's error before the deadline
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await clients[DEADLINE].pre_start(["hang1"], timeout=1.0)
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not run: its timeout (20 s) does not fit" in (late.value.details() or "")
        assert len(pids.read_text().split()) == 2  # (only the first hang ran)
        given_up = asyncio.ensure_future(clients[DEADLINE].pre_start(["hang1"], timeout=25.0))
        await wait_until(lambda: len(pids.read_text().split()) == 4, what="both hangs started")
        given_up.cancel()  # (the call is cancelled: the handler too)
        with contextlib.suppress(asyncio.CancelledError):
            await given_up
        for pid in map(int, pids.read_text().split()):
            await wait_until(lambda pid=pid: process_gone(pid), what=f"process {pid} gone")
        # ten containers at once: they overlap up to the bound, never more
        ids = [f"slot{index}" for index in range(10)]
        await asyncio.gather(*(kubelet.pre_start(SLOTS, [device]) for device in ids))
        assert _peak_overlap(marks) == (3, 10)
    finally:
        if host.returncode is None:
            host.terminate()
        async with asyncio.timeout(10):
            await host.wait()
        log.close()
        await kubelet.stop()
