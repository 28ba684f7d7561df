"""Host paths no container may be handed (issue 17, hostile6 M4; `config/handed.py`): `/`,
the kubelet's directories, kdp-host's stateDir, config file and CDI spec directories. Refused
in the config (`allocate.mounts`, glob paths and group members), left out of a driver's list
at run time (`unsafe_mount`), and an Allocate whose `allocate.command` prints one is refused;
symlinks resolved first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.config import never_handed
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .handed_setup import (
    FPGA,
    PROBE,
    answering_hook,
    fpga_glob,
    head,
    left_out,
    load_resources,
    made_dirs,
    probe,
    resource_problems,
)


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    return made_dirs(short_dir, "cdi", "opt")


def _mounts(dirs: Path, *sources: str | Path) -> str:
    mounts = ", ".join(f"{{hostPath: {s}, containerPath: /m{i}}}" for i, s in enumerate(sources))
    return fpga_glob(dirs) + f"    allocate: {{mounts: [{mounts}]}}\n"


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("dp", "is kubelet.socketDir"),
        ("state", "is stateDir"),
        ("state/ownership.json", "lies in stateDir"),
        ("pr", "is the directory of kubelet.podResourcesSocket"),
        ("kdp.yaml", "is the config file"),
        ("", "holds kubelet.socketDir"),
    ],
)
def test_allocate_mounts_of_the_hosts_own_paths_are_config_errors(
    dirs: Path, source: str, said: str
) -> None:
    (problem,) = resource_problems(dirs, _mounts(dirs, dirs / source))
    assert problem.startswith("line 6: resources[0].allocate.mounts[0].hostPath: "), problem
    assert said in problem


def test_a_link_to_root_is_seen_through_and_dev_is_fine(dirs: Path) -> None:
    (dirs / "opt" / "root").symlink_to("/")
    (problem,) = resource_problems(dirs, _mounts(dirs, "/dev/null", dirs / "opt" / "root", "/opt"))
    assert "allocate.mounts[1].hostPath" in problem
    assert "(resolved: /) is / (the host's root)" in problem
    load_resources(dirs, _mounts(dirs, "/dev/null", dirs / "opt"))  # a path inside / is fine


def test_the_cdi_spec_dir_may_not_be_mounted(dirs: Path) -> None:
    text = _mounts(dirs, dirs / "cdi").replace(
        "allocate: {", f"allocate: {{cdi: {{kind: {FPGA}, specDir: {dirs}/cdi}}, "
    )
    (problem,) = resource_problems(dirs, text)
    assert f"is the directory of the CDI spec file of {FPGA}" in problem


def test_glob_paths_and_group_members_that_are_no_pattern_are_checked(dirs: Path) -> None:
    problems = resource_problems(
        dirs,
        f"  - name: {FPGA}\n    glob: {{paths: ['{dirs}/dp']}}\n"
        f"  - name: vendor.example/grp\n    glob:\n      group:\n"
        f"        - {{path: '{dirs}/dev/fpga{{key}}'}}\n"
        f"        - {{path: '{dirs}/state', mount: true, readOnly: false}}\n",
    )
    assert [p.split(": ")[1] for p in problems] == [
        "resources[0].glob.paths[0]",
        "resources[1].glob.group[1].path",
    ]


def test_the_rule_names_what_it_protects(dirs: Path) -> None:
    rule = never_handed(load_resources(dirs, _mounts(dirs, "/dev/null")), str(dirs / "kdp.yaml"))
    assert rule.problem("/") == "is / (the host's root)"
    assert rule.problem("/dev/fpga0") is None
    assert rule.problem(f"{dirs}/dp/kubelet.sock") == (
        "lies in kubelet.socketDir, which no container may be handed"
    )
    assert rule.problem(f"{dirs}/stateX") is None  # (a sibling whose name starts the same)


def test_a_link_into_proc_is_refused(dirs: Path) -> None:
    """hostile10 L2: a glob link to /proc/self/environ resolved to kdp-host's own
    environment (/proc/<pid>/environ) and was handed out; /proc/sys too."""
    (dirs / "opt" / "env").symlink_to("/proc/self/environ")
    (dirs / "opt" / "sysctl").symlink_to("/proc/sys/kernel")
    problems = resource_problems(dirs, _mounts(dirs, dirs / "opt" / "env", dirs / "opt" / "sysctl"))
    assert len(problems) == 2
    assert all("lies in /proc (the host's processes and kernel settings)" in p for p in problems)
    rule = never_handed(load_resources(dirs, _mounts(dirs, "/dev/null")), str(dirs / "kdp.yaml"))
    assert rule.problem("/proc") is not None and rule.problem("/process") is None
    assert rule.path_problem(str(dirs / "opt" / "env")) is not None


def test_kdp_host_check_names_a_probe_device_a_run_would_leave_out(
    dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = [{"id": "s0", "mounts": [{"hostPath": f"{dirs}/dp", "containerPath": "/k"}]}]
    (dirs / "p.json").write_text(json.dumps(listed))
    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + probe(dirs))
    assert main(["check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"warning: {PROBE}: device s0 would not be advertised (unsafe_mount)" in err
    assert "is kubelet.socketDir" in err
    [row] = [line for line in out.splitlines() if line.startswith(PROBE)]
    assert " s0 held(unsafe_mount) " in row, "hostile19 F8: the table said Healthy"


# --------------------------------------------------------------------------- run time


async def test_a_probe_handing_out_the_hosts_own_paths_is_left_out(
    dirs: Path, start_host: Any
) -> None:
    """A probe's devices mounting the kubelet's socket dir, a link to `/` or a file of
    stateDir are not advertised (`unsafe_mount`, counted once); the good one is."""
    (dirs / "opt" / "root").symlink_to("/")
    listed = [
        {"id": "s0", "mounts": [{"hostPath": f"{dirs}/dp", "containerPath": "/k"}]},
        {"id": "s1", "mounts": [{"hostPath": f"{dirs}/opt/root", "containerPath": "/h"}]},
        {"id": "s2", "paths": [f"{dirs}/state/ownership.json:/o"]},
        {"id": "good", "paths": [f"{dirs}/dev/fpga0"]},
    ]
    (dirs / "state" / "ownership.json").write_text("{}")
    (dirs / "p.json").write_text(json.dumps(listed))
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(head(dirs) + probe(dirs))
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1)
        await left_out(running, 3, "three devices left out")
        response = await sim.allocate(PROBE, 1)
        assert response is not None
        assert [d.host_path for d in response.devices] == [f"{dirs}/dev/fpga0"]


async def test_allocate_command_output_mounting_the_state_dir_is_refused(
    dirs: Path, start_host: Any
) -> None:
    """An `allocate.command` printing a mount of stateDir: the Allocate is refused."""
    output = {"mounts": [{"hostPath": f"{dirs}/state", "containerPath": "/s", "readOnly": False}]}
    hook = answering_hook(dirs, output)
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(
            head(dirs) + fpga_glob(dirs) + f"    allocate: {{command: [{hook}]}}\n"
        )
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
        with pytest.raises(SimulatorAllocationError, match="is stateDir, which no container"):
            await sim.allocate(FPGA, 1)
        assert running.sample("kdp_allocations_total", resource=FPGA, result="invalid") == 1
