"""The command line: flags, help, `check` output, the bound port, the inotify fallback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kdp_host import __version__
from kdp_host.check import device_cell
from kdp_host.cli import build_parser, main
from kdp_host.devices import Device, DeviceNode
from kdp_host.inotify_watch import make_watcher
from kdp_host.logs import get_logger, quote_text
from kdp_host.ownership_document import OWNERSHIP_FILE
from kdp_host.simulator import KubeletSimulator
from kdp_host.watch import PollingWatcher, Watcher

from .conftest import glob_config

FPGA = "vendor.example/fpga"


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdp-host {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--log-level", "debug", "--loop", "asyncio", "version"],
        ["version", "--log-format", "json", "--log-level", "debug", "--loop", "asyncio"],
        ["--log-format", "json", "version", "--log-level", "debug", "--loop", "asyncio"],
    ],
)
def test_common_flags_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_format, args.log_level, args.loop) == ("json", "debug", "asyncio")


def test_common_flags_default_when_not_given() -> None:
    args = build_parser().parse_args(["check", "--config", "x.yaml"])
    assert (args.log_format, args.log_level, args.loop) == ("text", "info", "auto")


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [parser, *subparsers.choices.values()]
    missing = [
        f"{p.prog} {'/'.join(action.option_strings)}"
        for p in parsers
        for action in p._actions
        if action.option_strings and not action.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("fpga0", "fpga0"),
        ("two words", '"two words"'),
        ("a\nb", '"a\\nb"'),
        ("esc\x1b[2J", '"esc\\x1b[2J"'),
        ("back\\slash", '"back\\\\slash"'),
        ("rtl\u202eoverride", '"rtl\\u202eoverride"'),
        ("caf\u00e9", "caf\u00e9"),
        ("", '""'),
    ],
)
def test_quote_text_keeps_every_value_on_one_line(text: str, shown: str) -> None:
    assert quote_text(text) == shown
    assert "\n" not in quote_text(text) and all(c.isprintable() for c in quote_text(text))


def test_check_quotes_device_ids_and_paths() -> None:
    device = Device(
        "id\nEVIL",
        nodes=(DeviceNode("/dev/a b", "/dev/x"), DeviceNode("/dev/\x1b[2J", "/dev/y")),
        numa=0,
    )
    assert device_cell(device) == '"id\\nEVIL" Healthy numa=0 "/dev/a b", "/dev/\\x1b[2J"'


def test_check_table_stays_one_line_per_device(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga\nEVIL Healthy", "fpga\x1b[2J", "fpga \u2028x"):
        (dev / name).touch()
    config = short_dir / "config.yaml"
    config.write_text(glob_config(socket_dir, (FPGA, f"{dev}/fpga*")))
    assert main(["check", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("RESOURCE")
    assert all(line.startswith(FPGA) for line in lines[2:])
    assert all(c.isprintable() for line in lines for c in line)
    assert any(line.endswith("fpga0 Healthy " + str(dev / "fpga0")) for line in lines)


def test_check_warns_when_one_node_is_reachable_from_two_resources(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "fpga0").touch()
    (dev / "fpga1").touch()
    (dev / "alias0").symlink_to(dev / "fpga0")
    config = short_dir / "config.yaml"
    alias = "vendor.example/alias"
    config.write_text(glob_config(socket_dir, (FPGA, f"{dev}/fpga*"), (alias, f"{dev}/alias*")))
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning:")]
    assert warnings == [
        f"warning: {dev}/fpga0 is reachable from {FPGA} (device fpga0) and {alias} (device "
        "fpga0): only one is advertised at a time, the one a pod holds it through, else the "
        "first to list it"
    ]


def test_check_warns_when_allocate_mounts_reach_another_resources_device(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile2 F3: a mount every pod of a resource gets, over another resource's device
    (a resource with no device now still hands it out)."""
    dev = short_dir / "dev"
    for name in ("a", "b"):
        (dev / name).mkdir(parents=True)
    (dev / "a" / "a0").touch()
    (dev / "b" / "b0").touch()
    config = short_dir / "config.yaml"
    other = "vendor.example/b"
    mounts = f"[{{hostPath: {dev}/b, containerPath: /mnt/b}}]"
    config.write_text(
        glob_config(socket_dir, (FPGA, f"{dev}/a/*"), (other, f"{dev}/b/*"))
        + f"  - name: vendor.example/c\n    glob: {{paths: [{dev}/c*]}}\n"
        f"    allocate: {{mounts: {mounts}}}\n"
    )
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning:")]
    assert warnings == [
        f"warning: {dev}/b/b0 is reachable from the allocate.mounts of vendor.example/c and "
        f"{other} (device b0): an Allocate of vendor.example/c is refused while that device "
        "is advertised or held, and the device is not advertised while a pod holds the mount"
    ]


def test_check_warns_when_two_resources_land_on_one_container_path(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile18 F8: two resources pass `x` at /dev/x and mount their data at /data: a
    container asking for both gets one of each, charged for both (two Allocates: only a
    warning can say it)."""
    for name in ("a", "b", "ma", "mb"):
        (short_dir / name).mkdir()
    (short_dir / "a" / "x").touch()
    (short_dir / "b" / "x").touch()
    lines = [f"kubelet: {{socketDir: {socket_dir}}}", f"stateDir: {short_dir}/state", "resources:"]
    for name in ("a", "b"):
        lines += [
            f"  - name: t.example/{name}",
            f'    glob: {{paths: ["{short_dir}/{name}/*"], containerPath: "/dev/{{name}}"}}',
            f"    allocate: {{mounts: [{{hostPath: {short_dir}/m{name}, containerPath: /data}}]}}",
        ]
    config = short_dir / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert main(["check", "--config", str(config)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "container" in line]
    assert warnings == [
        "warning: t.example/a and t.example/b hand out /data, /dev/x: a container that asks "
        "for both gets only one of each (the kubelet keeps one device node and one mount per "
        "container path), charged for both"
    ]


def test_check_warns_when_two_resources_container_paths_nest(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile28 G5: a mounts a writable directory at /dev/fpga, b passes its nodes at
    /dev/fpga/{name}: a container asking for both has b's node made inside a's host directory
    (runc mounts, then makes the nodes); check was silent. A mount below a mount is not a
    clash (the runtime mounts in order)."""
    for name in ("a", "fpga", "shared", "data"):
        (short_dir / name).mkdir()
    (short_dir / "a" / "x1").touch()
    (short_dir / "fpga" / "n0").touch()
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {short_dir}/state\nresources:\n"
        f"  - name: t.example/a\n"
        f'    glob: {{paths: ["{short_dir}/a/*"], containerPath: "/dev/x/{{name}}"}}\n'
        f"    allocate: {{mounts: [{{hostPath: {short_dir}/shared, containerPath: /dev/fpga,"
        " readOnly: false}, {hostPath: " + f"{short_dir}/data, containerPath: /data}}]}}\n"
        f"  - name: t.example/b\n"
        f'    glob: {{paths: ["{short_dir}/fpga/*"], containerPath: "/dev/fpga/{{name}}"}}\n'
        f"    allocate: {{mounts: [{{hostPath: {short_dir}/data, containerPath: /data/b}}]}}\n"
    )
    assert main(["check", "--config", str(config)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if " nest" in line]
    assert warnings == [
        "warning: t.example/a and t.example/b nest: t.example/b's /dev/fpga/n0 below /dev/fpga "
        "of t.example/a: a container that asks for both has a device node made inside a "
        "mount's host directory (the runtime mounts first): keep them out of one container "
        "(two Allocates: kdp-host cannot refuse it, only warn)"
    ], warnings


def test_check_warns_when_two_devices_of_a_resource_share_a_container_path(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile22 F8: a/x, b/x and c/z at /dev/usb/{name}: a/x and b/x share /dev/usb/x (the
    table said all three Healthy, and nothing more)."""
    for bus, name in (("a", "x"), ("b", "x"), ("c", "z")):
        (short_dir / bus).mkdir()
        (short_dir / bus / name).touch()
    patterns = ", ".join(f'"{short_dir}/{bus}/*"' for bus in "abc")
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {short_dir}/state\nresources:\n"
        f"  - name: t.example/usb\n"
        f'    glob: {{paths: [{patterns}], containerPath: "/dev/usb/{{name}}"}}\n'
    )
    assert main(["check", "--config", str(config)]) == 0
    [warning] = [line for line in capsys.readouterr().err.splitlines() if "share" in line]
    assert warning.startswith(
        f"warning: t.example/usb: devices a-x ({short_dir}/a/x) and b-x ({short_dir}/b/x) "
        "share container path /dev/usb/x: never both in one container"
    )


def test_check_warns_when_two_colliding_devices_sit_on_one_numa_node(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile25 F2: a-x and b-x (both at /dev/usb/x) on NUMA node 0: a topology manager
    that aligns a two-device container to node 0, whose free devices are exactly those two,
    has the kubelet take them without GetPreferredAllocation, and Allocate refuses the pod.
    c-x collides with both too, but alone on node 1: only the shared-path warning names it."""
    lines = []
    for device, numa in (("a-x", 0), ("b-x", 0), ("c-x", 1), ("d-z", 1)):
        (short_dir / device).touch()
        lines.append(
            f"{device} Healthy path={short_dir}/{device}:/dev/usb/{device[-1]} numa={numa}"
        )
    (short_dir / "list.txt").write_text("\n".join(lines) + "\n")
    probe = short_dir / "probe.sh"
    probe.write_text(f"#!/bin/sh\ncat {short_dir}/list.txt\n")
    probe.chmod(0o755)
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {short_dir}/state\nresources:\n"
        f'  - {{name: t.example/usb, shell: {{command: ["{probe}"]}}}}\n'
    )
    assert main(["check", "--config", str(config)]) == 0
    shared, numa = [line for line in capsys.readouterr().err.splitlines() if "share" in line]
    assert "devices a-x" in shared and "and c-x" in shared
    assert numa.startswith(
        f"warning: t.example/usb: devices a-x ({short_dir}/a-x) and b-x ({short_dir}/b-x) "
        "share container path /dev/usb/x and sit on NUMA node 0: with the topology manager"
    )
    assert "without GetPreferredAllocation" in numa and "c-x" not in numa


@contextlib.asynccontextmanager
async def kdp_host_run(config: Path) -> AsyncIterator[tuple[str, int]]:
    """`kdp-host run` in a subprocess; yields the host and port its http_serving line names."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(30):
            while b"http_serving" not in (line := await proc.stderr.readline()):
                assert line, "kdp-host exited before serving HTTP"
        drain = asyncio.create_task(proc.stderr.read())
        listen = next(p for p in line.decode().split() if p.startswith("listen="))
        host, _, port = listen.removeprefix("listen=").rpartition(":")
        assert port.isdigit(), listen
        yield host, int(port)
    finally:
        proc.terminate()
        await proc.wait()
        if drain is not None:
            await drain


def ephemeral_port_config(short_dir: Path, socket_dir: Path) -> Path:
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "fpga0").touch()
    config = short_dir / "config.yaml"
    config.write_text(
        glob_config(socket_dir, (FPGA, f"{dev}/fpga*")) + "metrics: {listen: '127.0.0.1:0'}\n"
    )
    return config


async def test_run_logs_the_port_actually_bound(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path
) -> None:
    async with kdp_host_run(ephemeral_port_config(short_dir, socket_dir)) as (host, port):
        assert host == "127.0.0.1" and port > 0
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1, timeout=30)
        body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
    assert b"process_resident_memory_bytes" in body and b"kdp_registered{" in body


async def test_promtool_accepts_what_a_running_host_exposes(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path
) -> None:
    """`promtool check metrics` on a real `kdp-host run` scrape (CI installs promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    async with kdp_host_run(ephemeral_port_config(short_dir, socket_dir)) as (_, port):
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1, timeout=30)
        await kubelet.allocate(FPGA, 1)
        body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
    checked = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(checked.communicate(body), 60)
    assert (checked.returncode, output.decode()) == (0, "")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


def test_inotify_failures_other_than_oserror_fall_back_to_polling() -> None:
    """macOS: asyncinotify fails with AttributeError (no inotify symbol in libc) or
    ImportError, not OSError."""
    for error in (AttributeError("inotify_init1"), ImportError("asyncinotify"), OSError(24)):

        def broken(log: object, error: Exception = error) -> Watcher:
            raise error

        watcher = make_watcher(get_logger(), inotify=broken)
        assert isinstance(watcher, PollingWatcher) and watcher.kind == "poll"


async def test_host_runs_where_asyncinotify_cannot_even_be_imported(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path
) -> None:
    """A whole `kdp-host run` on a system where importing asyncinotify fails (macOS)."""
    fake = short_dir / "fake-lib" / "asyncinotify"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise AttributeError("dlsym(RTLD_DEFAULT, inotify_init1): symbol not found")\n'
    )
    config = ephemeral_port_config(short_dir, socket_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), *sys.path])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    stderr = bytearray()

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            stderr.extend(line)

    reader = asyncio.create_task(drain())
    try:
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1, timeout=30)
        (short_dir / "dev" / "fpga1").touch()
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
    finally:
        proc.terminate()
        await proc.wait()
        await reader
    assert b"inotify_unavailable" in stderr and b"watcher=poll" in stderr


async def test_status_asks_a_running_host_and_devices_can_be_turned_off(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path
) -> None:
    config = ephemeral_port_config(short_dir, socket_dir)
    nowhere = f"{short_dir}/no-pod-resources/kubelet.sock"
    config.write_text(
        config.read_text().replace("kubelet: {", f"kubelet: {{podResourcesSocket: {nowhere}, ")
    )
    async with kdp_host_run(config) as (_, port):
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1, timeout=30)
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kdp_host", "status", "--address", f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(status.communicate(), 60)
    assert status.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0].startswith("podresources: absent")  # no PodResources socket here
    assert lines[2].split()[:4] == [FPGA, "fpga0", "Healthy", "-"]
    config.write_text(config.read_text().replace("'127.0.0.1:0'", "'127.0.0.1:0', devices: false"))
    async with kdp_host_run(config) as (_, port):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/devices")


def write_bookings(state: Path, *ids: str) -> None:
    state.mkdir(exist_ok=True)
    claims = [{"kind": "path", "key": "/dev/x", "path": "/dev/x", "real": "/dev/x"}]
    bookings = [
        {"resource": FPGA, "id": i, "device": i.split("::")[0], "claims": claims} for i in ids
    ]
    (state / OWNERSHIP_FILE).write_text(json.dumps({"version": 1, "bookings": bookings}))


def booked(state: Path) -> list[str]:
    return [b["id"] for b in json.loads((state / OWNERSHIP_FILE).read_text())["bookings"]]


def test_unbook_drops_the_bookings_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    write_bookings(state, "fpga0::0", "fpga0::1")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"stateDir: {state}\nresources:\n  - name: {FPGA}\n    glob: {{paths: [/dev/fpga*]}}\n"
    )
    assert main(["unbook", "--config", str(config), FPGA, "fpga0::1"]) == 0
    assert booked(state) == ["fpga0::0"]
    assert main(["unbook", "--config", str(config), "other.example/x"]) == 1
    assert "no booking" in capsys.readouterr().err
    config.write_text("resources: [")
    assert main(["unbook", "--config", str(config), FPGA]) == 2


async def test_unbook_refuses_while_a_host_runs_whatever_its_metrics_port(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path
) -> None:
    """The host's config names no port (`127.0.0.1:0`), and unbook is given another config
    (another port) on the same stateDir: it still sees the host, until the host is killed."""
    config = ephemeral_port_config(short_dir, socket_dir)
    state = short_dir / "state"
    write_bookings(state, "fpga0")
    other = short_dir / "other.yaml"
    other.write_text(config.read_text().replace("127.0.0.1:0", "127.0.0.1:1"))
    unbook = [sys.executable, "-m", "kdp_host", "unbook", "--config"]
    log = (short_dir / "host.log").open("wb")
    host = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config), stderr=log
    )
    try:
        await kubelet.wait_for(lambda: kubelet.resource(FPGA) is not None, timeout=30)
        for path in (config, other):
            refused = await asyncio.create_subprocess_exec(
                *unbook, str(path), FPGA, stderr=asyncio.subprocess.PIPE
            )
            _, err = await asyncio.wait_for(refused.communicate(), 60)
            assert refused.returncode == 1, err
            assert b"stop it first" in err and b"kdp-host.lock" in err, err
    finally:
        host.kill()  # SIGKILL: the kernel drops its lock
        await host.wait()
        log.close()
    assert booked(state) == ["fpga0"]
    done = await asyncio.create_subprocess_exec(*unbook, str(other), FPGA)
    assert await asyncio.wait_for(done.wait(), 60) == 0
    assert booked(state) == []
