"""A mount of the kernel's own file systems is never handed out, wherever it is mounted
(hostile18 F6; `config/handed.py`, `KERNEL_FILE_SYSTEMS`).

Only kdp-host's own `/proc` (and bind mounts of it) was refused: a second procfs mount (the
host's /proc mounted at /host/proc, node-exporter style: the chart's `hostMounts.extra`) was
handed out writable by a probe's `mounts`, `allocate.mounts` and a glob match below it. What a
path is decides: its file system's type in the mount table (procfs, debugfs, tracefs
whatever the mode; sysfs, cgroupfs and the other kernel interfaces where handed writable).
The tests feed a mount table (`parse_mounts`), so they run as any user; one mounts a real
procfs where it may (root)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdp_host import mount_table
from kdp_host.cli import main
from kdp_host.config import NeverHanded, places
from kdp_host.config.kernel_fs import KERNEL_WHY
from kdp_host.devices import Device, DeviceMount
from kdp_host.mount_table import MountMap, parse_mounts
from kdp_host.testing import ManualWatcher

from .handed_setup import FPGA, PROBE, fpga_glob, head, made_dirs, probe, resource_problems
from .test_ownership_moves import Host

PROCFS = "the proc mount at {} (the host's processes and kernel settings)"


def kernel_table(at: str | Path, *more: str) -> MountMap:
    """The root file system, the host's /proc and /sys at `at`/proc and `at`/sys (the chart's
    `hostMounts.extra`), and the lines of `more`."""
    return parse_mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        f"3 1 0:40 / {at}/proc rw,relatime - proc proc rw\n"
        f"4 1 0:22 / {at}/sys ro,nosuid - sysfs sysfs rw\n"
        f"5 4 0:30 / {at}/sys/kernel/debug rw - debugfs debugfs rw\n"
        f"6 4 0:31 / {at}/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n" + "".join(more)
    )


@pytest.mark.parametrize(
    ("path", "writable", "said"),
    [
        ("/host/proc/sys/kernel", True, "lies in " + PROCFS.format("/host/proc")),
        ("/host/proc/sys/kernel/core_pattern", False, "lies in " + PROCFS.format("/host/proc")),
        ("/host/proc", False, "is " + PROCFS.format("/host/proc")),
        ("/host", False, "holds the "),
        ("/host/sys/class/net", True, "lies in the sysfs mount at /host/sys"),
        ("/host/sys/kernel/debug/x", False, "lies in the debugfs mount at /host/sys/kernel/debug"),
        ("/host/sys/fs/cgroup/kubepods", True, "lies in the cgroup2 mount at /host/sys/fs/cgroup"),
        ("/host/sys/fs", True, "holds the cgroup2 mount at /host/sys/fs/cgroup"),
        ("/proc/1/environ", False, "lies in /proc (the host's processes and kernel settings)"),
    ],
)
def test_a_path_on_a_kernel_file_system_is_refused_wherever_it_is_mounted(
    path: str, writable: bool, said: str
) -> None:
    """Before, only `/proc` was refused (by its place): each of the others was None."""
    rule = NeverHanded(places=(("/proc (the host's processes and kernel settings)", "/proc"),))
    why = rule.problem(path, None, kernel_table("/host"), writable=writable)
    assert why is not None and why.startswith(said), why
    assert ", which no container may be handed" in why
    assert why.endswith(KERNEL_WHY) == ("sysfs" in said or "cgroup2" in said)


@pytest.mark.parametrize(
    "path", ["/host/sys/class/net", "/host/sys/fs/cgroup/kubepods", "/host/sys/fs", "/host/dev/x"]
)
def test_sysfs_and_cgroupfs_may_be_handed_read_only(path: str) -> None:
    """Every container is given a read-only /sys (and its cgroup tree): a device's sysfs
    directory mounted read-only (a glob group member) is fine; so is any other path."""
    assert NeverHanded().problem(path, None, kernel_table("/host"), writable=False) is None


def test_what_the_table_does_not_show_as_a_kernel_file_system_is_fine() -> None:
    """A sibling that starts with the same letters, a procfs hidden by a later mount on its
    point, and a table without kernel mounts (every path only its own place)."""
    hidden = "7 1 8:1 /srv /host/proc rw - ext4 /dev/sda1 rw\n"
    rule = NeverHanded()
    assert rule.problem("/host/process", None, kernel_table("/host")) is None
    assert rule.problem("/host/proc/x", None, kernel_table("/host", hidden)) is None
    assert rule.problem("/host/proc/x", None, MountMap()) is None
    bound = "7 1 0:40 /sys /srv/sysctl rw - proc proc rw\n"  # (a bind mount of part of one)
    why = rule.problem("/srv/sysctl/kernel", None, kernel_table("/host", bound), writable=False)
    assert why is not None and why.startswith("lies in the proc mount at /srv/sysctl"), why


# --------------------------------------------------------------------------- the config, check


def second_procfs(dirs: Path, *more: str) -> MountMap:
    """`dirs`/hp a second procfs, `dirs`/hs a second sysfs (both made here), and `more`."""
    for made in ("hp/sys/kernel", "hs/class"):
        (dirs / made).mkdir(parents=True, exist_ok=True)
    return parse_mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"2 1 0:40 / {dirs}/hp rw - proc proc rw\n"
        f"3 1 0:22 / {dirs}/hs rw - sysfs sysfs rw\n" + "".join(more)
    )


@pytest.fixture
def dirs(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config's directories, where the mount table kdp-host reads shows `second_procfs`."""
    table = second_procfs(made_dirs(short_dir))
    monkeypatch.setattr(places, "read_mounts", lambda: table)
    monkeypatch.setattr(mount_table, "read_mounts", lambda: table)
    return short_dir


def test_allocate_mounts_below_a_second_procfs_are_config_errors(dirs: Path) -> None:
    """The repro's `allocate.mounts: [{hostPath: $T/hp/sys, readOnly: false}]`: valid before."""
    text = fpga_glob(dirs) + (
        f"    allocate: {{mounts: [{{hostPath: {dirs}/hp/sys, containerPath: /s, "
        f"readOnly: false}}, {{hostPath: {dirs}/hs/class, containerPath: /c}}, "
        f"{{hostPath: {dirs}/hs/class, containerPath: /w, readOnly: false}}]}}\n"
    )
    first, second = resource_problems(dirs, text)
    assert first.startswith("line 6: resources[0].allocate.mounts[0].hostPath: "), first
    assert "lies in " + PROCFS.format(f"{dirs}/hp") in first
    assert second.startswith("line 6: resources[0].allocate.mounts[2].hostPath: "), second
    assert second.endswith(KERNEL_WHY)


def test_kdp_host_check_names_a_glob_match_and_a_probe_mount_below_it(
    dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repro's probe device d1 and glob match `core_pattern`: listed without a word."""
    (dirs / "hp/sys/kernel/core_pattern").write_text("core\n")
    listed = [
        {"id": "d1", "mounts": [{"hostPath": f"{dirs}/hp/sys/kernel", "containerPath": "/k"}]}
    ]
    (dirs / "p.json").write_text(json.dumps(listed))
    config = dirs / "kdp.yaml"
    glob = f"  - name: {FPGA}\n    glob: {{paths: ['{dirs}/hp/sys/kernel/core_patter[n]']}}\n"
    config.write_text(head(dirs) + glob + probe(dirs))
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    for resource, device in ((FPGA, "core_pattern"), (PROBE, "d1")):
        assert f"warning: {resource}: device {device} would not be advertised (unsafe_mount)" in err
    assert err.count("lies in " + PROCFS.format(f"{dirs}/hp")) == 2, err


@pytest.fixture
def real_procfs(short_dir: Path) -> Iterator[Path]:
    """A real second procfs at `short_dir`/hp (root only: skipped where it cannot be made)."""
    (short_dir / "hp").mkdir()
    made = subprocess.run(
        ["mount", "-t", "proc", "proc", str(short_dir / "hp")], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a procfs here (needs root): {made.stderr.strip()}")
    try:
        yield short_dir
    finally:
        subprocess.run(["umount", "-l", str(short_dir / "hp")], check=False)


def test_a_real_second_procfs_mount(real_procfs: Path) -> None:
    """The mount table kdp-host reads (`/proc/self/mountinfo`) says it: config error."""
    made_dirs(real_procfs)
    text = fpga_glob(real_procfs) + (
        f"    allocate: {{mounts: [{{hostPath: {real_procfs}/hp/sys/kernel, "
        "containerPath: /k}]}\n"
    )
    (problem,) = resource_problems(real_procfs, text)
    assert "lies in " + PROCFS.format(f"{real_procfs}/hp") in problem


# --------------------------------------------------------------------------- run time


async def test_a_device_on_a_second_procfs_is_held_and_one_is_when_a_mount_appears(
    tmp_path: Path,
) -> None:
    """A probe's mount below a second procfs (the repro's d1; read-only too: d2) and a
    writable one below a second sysfs (s1) are held `unsafe_mount`; a read-only one of
    sysfs (s2) is advertised, and so is a directory mounted read-only (h1) until a procfs
    is mounted below it: then it is held (the mount table's change is followed)."""
    (tmp_path / "host" / "x" / "p").mkdir(parents=True)
    watcher = ManualWatcher()
    host = Host(watcher, mounts=second_procfs(tmp_path))
    devices = {
        "d1": ("hp/sys/kernel", False),
        "d2": ("hp/sys/kernel", True),
        "s1": ("hs/class", False),
        "s2": ("hs/class", True),
        "h1": ("host", True),
    }
    mounting = (
        Device(i, mounts=(DeviceMount(f"{tmp_path}/{path}", "/m", ro),))
        for i, (path, ro) in devices.items()
    )
    await host.publish(PROBE, *mounting)
    assert sorted(host.ids(PROBE)) == ["h1", "s2"]
    assert unsafe(host) == 3
    host.mounts = second_procfs(tmp_path, f"4 1 0:41 / {tmp_path}/host/x/p rw - proc proc rw\n")
    watcher.change_mounts()
    await host.settled()
    assert host.ids(PROBE) == ["s2"]
    assert unsafe(host) == 4


def unsafe(host: Host) -> float:
    labels = {"resource": PROBE, "reason": "unsafe_mount"}
    return host.metrics.registry.get_sample_value("kdp_driver_skipped_total", labels) or 0
