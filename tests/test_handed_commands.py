"""What kdp-host runs as root is no container's to rewrite (hostile11 K7; `config/places.py`
`run_places`, `config/handed.py`): a device that is, lies in or holds a command's executable
(as written and resolved; a bare name's PATH directories) or a `shell.workingDir`, handed
writable (a node, a mount with `readOnly: false`), is refused in the config, left out at run
time (`unsafe_mount`), warned about by `check`, and an Allocate answer mounting one writable
is refused. A read-only mount of it is fine: the pod cannot change it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.config import never_handed
from kdp_host.config.places import run_places
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

RUNS_IT = "which no container may be handed writable (kdp-host runs, loads or follows it as root)"


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    made = made_dirs(short_dir, "opt", "opt/bin", "work", "tools")
    reset = made / "opt" / "bin" / "reset"
    reset.write_text("#!/bin/sh\nexit 0\n")
    reset.chmod(0o755)
    return made


def _release(dirs: Path, argv0: str | Path) -> str:
    """The resource FPGA with a release command."""
    return fpga_glob(dirs) + f"    release: {{command: ['{argv0}', '{{hostPaths}}']}}\n"


def _both(dirs: Path) -> str:
    """The resource FPGA with a release command in `opt/bin` and a preStart in `tools`."""
    (dirs / "tools" / "prog").write_text("#!/bin/sh\n")
    (dirs / "tools" / "prog").chmod(0o755)
    pre_start = f"    preStart: {{command: ['{dirs}/tools/prog']}}\n"
    return _release(dirs, dirs / "opt" / "bin" / "reset") + pre_start


def _mounting(dirs: Path, source: Path, read_only: bool) -> str:
    """A second glob resource whose one group member mounts `source`."""
    ro = "true" if read_only else "false"
    return (
        "  - name: vendor.example/fw\n"
        f"    glob: {{group: [{{path: '{source}', mount: true, readOnly: {ro}}}]}}\n"
    )


def test_a_writable_mount_of_a_commands_directory_is_a_config_error(dirs: Path) -> None:
    """The hostile pass's config: a tools directory handed writable that holds the release
    command. Read-only it is fine."""
    release = _release(dirs, dirs / "opt" / "bin" / "reset")
    (problem,) = resource_problems(dirs, release + _mounting(dirs, dirs / "opt", read_only=False))
    assert "resources[1].glob.group[0].path" in problem, problem
    assert f"holds {FPGA}'s release.command executable, {RUNS_IT}" in problem
    load_resources(dirs, release + _mounting(dirs, dirs / "opt", read_only=True))


def test_the_executable_is_seen_through_links_and_found_on_path(dirs: Path) -> None:
    """argv[0] a link into `tools`: the link's directory and the real file's are both
    protected; a bare name: each PATH directory up to the one it is found in."""
    (dirs / "work" / "go").symlink_to(dirs / "tools" / "real")
    (dirs / "tools" / "real").write_text("#!/bin/sh\n")
    (dirs / "tools" / "real").chmod(0o755)
    rule = never_handed(load_resources(dirs, _release(dirs, dirs / "work" / "go")), None)
    link = f"the link {dirs}/work/go on the way to {FPGA}'s release.command executable"
    assert rule.problem(f"{dirs}/work") == f"holds {link}, {RUNS_IT}"
    assert rule.problem(f"{dirs}/tools") == (
        f"holds {FPGA}'s release.command executable, {RUNS_IT}"
    )
    assert rule.problem(f"{dirs}/tools", writable=False) is None
    assert rule.problem(f"{dirs}/opt") is None
    shell = (
        f"  - name: {PROBE}\n    shell: {{command: [reset], workingDir: {dirs}/work, "
        f"env: {{PATH: '{dirs}/tools:{dirs}/opt/bin:/nonexistent'}}}}\n"
    )
    rule = never_handed(load_resources(dirs, shell), None)
    looked = f"is a PATH directory {PROBE}'s shell.command 'reset' is looked for in, {RUNS_IT}"
    assert rule.problem(f"{dirs}/tools") == looked
    assert rule.problem(f"{dirs}/opt/bin/reset") == f"lies in {looked[3:]}"
    assert rule.problem("/nonexistent") == (  # (after the one it is found in: still the
        f"is {PROBE}'s shell.command's env PATH entry, {RUNS_IT}"  # PATH of what it runs)
    )
    assert rule.problem(f"{dirs}/work/sub") == f"lies in {PROBE}'s shell.workingDir, {RUNS_IT}"


def test_a_hard_link_of_the_executable_handed_writable_is_refused(dirs: Path) -> None:
    os.link(dirs / "opt" / "bin" / "reset", dirs / "dev" / "fpga1")
    rule = never_handed(load_resources(dirs, _release(dirs, dirs / "opt" / "bin" / "reset")), None)
    assert rule.path_problem(f"{dirs}/dev/fpga1") == (
        f"is {FPGA}'s release.command executable (a hard link of it), {RUNS_IT}"
    )
    assert rule.path_problem(f"{dirs}/dev/fpga1", writable=False) is None
    assert rule.path_problem(f"{dirs}/dev/fpga0") is None


def _listed(dirs: Path) -> list[dict[str, Any]]:
    return [
        {"id": "rw", "mounts": [{"hostPath": f"{dirs}/opt", "containerPath": "/o",
                                 "readOnly": False}]},
        {"id": "ro", "mounts": [{"hostPath": f"{dirs}/tools", "containerPath": "/t"}]},
        {"id": "node", "paths": [f"{dirs}/opt/bin/reset:/r"]},
        {"id": "good", "paths": [f"{dirs}/dev/probe0"]},
    ]  # fmt: skip


def test_kdp_host_check_names_a_device_that_would_hand_a_command_out(
    dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dirs / "dev" / "probe0").touch()
    (dirs / "p.json").write_text(json.dumps(_listed(dirs)))
    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + probe(dirs) + _both(dirs))
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"{PROBE}: device rw would not be advertised (unsafe_mount)" in err
    assert f"{PROBE}: device node would not be advertised (unsafe_mount)" in err
    assert "device ro would not" not in err and "device good would not" not in err
    assert f"holds {FPGA}'s release.command executable, {RUNS_IT}" in err


async def test_a_device_handing_a_command_out_writable_is_left_out(
    dirs: Path, start_host: Any
) -> None:
    """A probe mounting the release command's directory writable, or passing the command
    itself as a node: held (`unsafe_mount`, counted); a read-only mount of the preStart
    command's directory is fine."""
    (dirs / "dev" / "probe0").touch()
    (dirs / "p.json").write_text(json.dumps(_listed(dirs)))
    config = head(dirs) + probe(dirs) + _both(dirs)
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(config)
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 2)
        await left_out(running, 2, "the two writable ones left out")
        assert sorted(sim.resource(PROBE).healthy_ids) == ["good", "ro"]


async def test_allocate_command_output_mounting_a_command_writable_is_refused(
    dirs: Path, start_host: Any
) -> None:
    """An `allocate.command` printing a writable mount of the release command's directory:
    the Allocate is refused; the same mount read-only is handed out."""
    mount = {"hostPath": f"{dirs}/opt", "containerPath": "/o", "readOnly": False}
    hook = answering_hook(dirs, {"mounts": [mount]})
    release = f"    release: {{command: ['{dirs}/opt/bin/reset']}}\n"
    resources = fpga_glob(dirs) + f"    allocate: {{command: [{hook}]}}\n" + release
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(head(dirs) + resources)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
        with pytest.raises(SimulatorAllocationError, match=r"release\.command executable"):
            await sim.allocate(FPGA, 1)
        assert running.sample("kdp_allocations_total", resource=FPGA, result="invalid") == 1
        answering_hook(dirs, {"mounts": [{**mount, "readOnly": True}]})
        response = await sim.allocate(FPGA, 1)
        assert response is not None
        assert [m.host_path for m in response.mounts] == [f"{dirs}/opt"]


def test_a_hooks_env_path_and_a_scripts_interpreter_are_protected(dirs: Path) -> None:
    """hostile12 L4: `release.env`'s PATH decides where a bare name is found (the runner
    passes it), so its directories are protected as a probe's `shell.env` PATH is; L5: the
    interpreter a script's `#!` line names runs as root too (`#!/usr/bin/env X`: X on PATH)."""
    release = fpga_glob(dirs) + (
        f"    release: {{command: [reset], env: {{PATH: '{dirs}/work:{dirs}/opt/bin'}}}}\n"
    )
    rule = never_handed(load_resources(dirs, release), None)
    assert rule.problem(f"{dirs}/work") == (
        f"is a PATH directory {FPGA}'s release.command 'reset' is looked for in, {RUNS_IT}"
    )
    (dirs / "tools" / "sh").write_text("")
    (dirs / "tools" / "sh").chmod(0o755)
    (dirs / "opt" / "bin" / "reset").write_text(f"#!{dirs}/tools/sh -e\nexit 0\n")
    rule = never_handed(load_resources(dirs, _release(dirs, dirs / "opt" / "bin" / "reset")), None)
    assert rule.problem(f"{dirs}/tools") == (
        f"holds {FPGA}'s release.command's interpreter executable, {RUNS_IT}"
    )
    (dirs / "opt" / "bin" / "reset").write_text("#!/usr/bin/env python3\n")
    rule = never_handed(load_resources(dirs, _release(dirs, dirs / "opt" / "bin" / "reset")), None)
    assert rule.problem(f"{dirs}/tools") is None


@pytest.mark.parametrize("line", ["-S -i LC_ALL=C {tool} -e", "-S{tool} -e", "-S -u HOME {tool}"])
def test_the_interpreter_env_runs_is_found_past_envs_options(dirs: Path, line: str) -> None:
    """`#!/usr/bin/env -S X -e` runs X: env's options and settings are not the program."""
    (dirs / "tools" / "sh").write_text("")
    (dirs / "tools" / "sh").chmod(0o755)
    script = dirs / "opt" / "bin" / "reset"
    script.write_text(f"#!/usr/bin/env {line.format(tool=dirs / 'tools' / 'sh')}\nexit 0\n")
    rule = never_handed(load_resources(dirs, _release(dirs, script)), None)
    assert rule.problem(f"{dirs}/tools") == (
        f"holds {FPGA}'s release.command's interpreter executable, {RUNS_IT}"
    )


@pytest.mark.parametrize("split", ["-S ", "-S"])
def test_the_settings_of_env_on_a_scripts_first_line_are_its_env(dirs: Path, split: str) -> None:
    """hostile13 M14: `#!/usr/bin/env -S PATH=<handed dir>:/usr/bin interp` found the
    interpreter in the pod's directory, `LD_PRELOAD=<handed dir>/x.so` preloaded the pod's
    library, both as root: the settings are the interpreter's env, found with and protected."""
    (dirs / "tools" / "interp").write_text("")
    (dirs / "tools" / "interp").chmod(0o755)
    script = dirs / "opt" / "bin" / "reset"
    script.write_text(f"#!/usr/bin/env {split}A=1 PATH={dirs}/work:{dirs}/tools interp\n")
    config = load_resources(dirs, _release(dirs, script))
    interpreter = f"{FPGA}'s release.command's interpreter executable"
    assert (interpreter, f"{dirs}/tools/interp") in {(p.what, p.real) for p in run_places(config)}
    rule = never_handed(config, None)
    for place in ("work", "tools"):
        assert rule.problem(f"{dirs}/{place}") == (
            f"is {FPGA}'s release.command's #! env PATH entry, {RUNS_IT}"
        )
    script.write_text(f"#!/usr/bin/env {split}LD_PRELOAD={dirs}/work/x.so /bin/sh\n")
    rule = never_handed(load_resources(dirs, _release(dirs, script)), None)
    assert rule.problem(f"{dirs}/work") == (
        f"holds {FPGA}'s release.command's #! env LD_PRELOAD entry, {RUNS_IT}"
    )


def test_envs_references_on_a_scripts_first_line_are_expanded(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`#!/usr/bin/env -S PATH=${TOOLS}/bin:/usr/bin interp`: env expands `${TOOLS}` from the
    command's env (here the host's), so the directory it names is protected too."""
    monkeypatch.setenv("KDP_TEST_TOOLS", str(dirs / "work"))
    script = dirs / "opt" / "bin" / "reset"
    script.write_text("#!/usr/bin/env -S PATH=${KDP_TEST_TOOLS}/bin:/usr/bin:/bin sh\n")
    rule = never_handed(load_resources(dirs, _release(dirs, script)), None)
    assert rule.problem(f"{dirs}/work") == (
        f"holds {FPGA}'s release.command's #! env PATH entry, {RUNS_IT}"
    )
