"""What decides what kdp-host runs as root beyond a command's executable (hostile13 M1, M2,
M4, M5, M6): the loader and interpreter variables of a config's env (`run_env.py`),
`#!` chains, and every symlink on the way to
a place kdp-host reads, writes or runs by name (`config/places.py` `link_places`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import load_config, never_handed
from kdp_host.run_env import decides_run, named_paths
from kdp_host.simulator import KubeletSimulator

from .conftest import script
from .handed_setup import (
    FPGA,
    PROBE,
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
    return made_dirs(short_dir, "share", "opt", "opt2", "fw", "etc", "real", "lnk")


def _mount(dirs: Path, source: Path) -> str:
    return (
        f"    allocate: {{mounts: [{{hostPath: '{source}', containerPath: /s, "
        "readOnly: false}]}\n"
    )


def test_the_variables_that_decide_what_runs() -> None:
    for name in ("PATH", "LD_PRELOAD", "LD_AUDIT", "LD_ANYTHING", "BASH_ENV", "PYTHONPATH"):
        assert decides_run(name), name
    assert not decides_run("FPGA_SLOT") and not decides_run("LANG")
    assert named_paths("LD_PRELOAD", "/a/x.so libc.so.6 /b/y.so", None) == ["/a/x.so", "/b/y.so"]
    assert named_paths("LD_LIBRARY_PATH", "/l:", "/w") == ["/l", "/w"]
    assert named_paths("LD_BIND_NOW", "1", None) == []
    assert named_paths("BASH_ENV", "rc", "/w") == ["/w/rc"]
    assert named_paths("SLOT", "3", None) == [] and named_paths("SLOT", "a/b", "/w") == []


@pytest.mark.parametrize(
    ("name", "value", "paths"),
    [
        ("SLOT", "/x", ["/x"]),
        ("NODE_OPTIONS", "--require /a/x.js --max-old-space-size=9", ["/a/x.js"]),
        ("TOOL_ARGS", "--conf=/a/c,/b/d:/e f /g/../h", ["/a/c", "/b/d", "/e", "/h"]),
        ("HOME", "/srv/tool", ["/srv/tool"]),
        ("PATH", "/l:/l", ["/l"]),
    ],
)
def test_every_absolute_path_in_any_value_is_named(name: str, value: str, paths: list[str]) -> None:
    """M17: a list of known variables keeps missing some (`HOME`, `NODE_OPTIONS`): every
    absolute path in a value is named, whatever the variable."""
    assert named_paths(name, value, "/w") == paths


@pytest.mark.parametrize(
    ("variable", "value", "handed"),
    [
        ("LD_PRELOAD", "{share}/evil.so", "share"),
        ("LD_LIBRARY_PATH", "{share}:/usr/lib", "share"),
        ("LD_AUDIT", "{share}/a.so", "share"),
        ("BASH_ENV", "{share}/rc", "share"),
        ("PYTHONPATH", "{share}/py", "share"),
    ],
)
def test_a_loader_variable_of_a_hook_env_is_a_run_place(
    dirs: Path, variable: str, value: str, handed: str
) -> None:
    """M1: `release.env: {LD_PRELOAD: <handed dir>/evil.so}` with that directory handed
    writable ran the pod's library as root: now a config error."""
    env = f"env: {{{variable}: '{value.format(share=dirs / 'share')}'}}"
    release = f"    release: {{command: [/usr/bin/true], {env}}}\n"
    problems = resource_problems(dirs, fpga_glob(dirs) + _mount(dirs, dirs / handed) + release)
    assert any(
        f"{FPGA}'s release.command's env {variable} entry, {RUNS_IT}" in p for p in problems
    ), problems
    read_only = _mount(dirs, dirs / handed).replace("false", "true")
    load_resources(dirs, fpga_glob(dirs) + read_only + release)  # (it cannot change them)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HOME", "{share}"),
        ("PYTHONUSERBASE", "{share}"),
        ("NODE_OPTIONS", "--require {share}/x.js"),
        ("XDG_CONFIG_HOME", "{share}/cfg"),
        ("TMPDIR", "{share}"),
        ("VENDOR_PLUGIN_DIRS", "/usr/lib/v,{share}/plugins"),
    ],
)
def test_any_variable_naming_a_handed_place_is_a_run_place(
    dirs: Path, variable: str, value: str
) -> None:
    """M17: `release.env: {HOME: <handed dir>}` (or PYTHONUSERBASE) made a Python release
    command run the pod's `.pth` as root: any path a hook's env names is a run place."""
    env = f"env: {{{variable}: '{value.format(share=dirs / 'share')}'}}"
    release = f"    release: {{command: [/usr/bin/true], {env}}}\n"
    problems = resource_problems(dirs, fpga_glob(dirs) + _mount(dirs, dirs / "share") + release)
    assert any(
        f"{FPGA}'s release.command's env {variable} entry, {RUNS_IT}" in p for p in problems
    ), problems
    read_only = _mount(dirs, dirs / "share").replace("false", "true")
    load_resources(dirs, fpga_glob(dirs) + read_only + release)  # (it cannot change them)


def test_a_place_inside_a_named_directory_is_refused_too(dirs: Path) -> None:
    """`HOME: /srv/tool` with `/srv/tool/.local` handed writable: the pod writes the user
    site Python reads from the named directory."""
    (dirs / "share" / ".local").mkdir()
    release = f"    release: {{command: [/usr/bin/true], env: {{HOME: '{dirs}/share'}}}}\n"
    mount = _mount(dirs, dirs / "share" / ".local")
    problems = resource_problems(dirs, fpga_glob(dirs) + mount + release)
    assert any(
        f"lies in {FPGA}'s release.command's env HOME entry, {RUNS_IT}" in p for p in problems
    ), problems


def test_an_env_value_naming_the_root_is_refused(dirs: Path) -> None:
    """A run place `/` would keep every writable device out: the config says so."""
    release = "    release: {command: [/usr/bin/true], env: {HOME: /}}\n"
    problems = resource_problems(dirs, fpga_glob(dirs) + release)
    assert len(problems) == 1 and "release.env.HOME" in problems[0], problems
    assert "HOME names / (the host's root" in problems[0]


def test_a_templated_run_variable_is_refused(dirs: Path) -> None:
    """M2: a templated `release.env` PATH was silently not protected."""
    env = f"env: {{PATH: '{dirs}/share/{{count}}:/usr/bin', SLOT: '{{ids}}'}}"
    problems = resource_problems(dirs, fpga_glob(dirs) + f"    release: {{command: [x], {env}}}\n")
    assert len(problems) == 1, problems
    assert "release.env.PATH" in problems[0]
    assert (
        "PATH decides what the command runs or loads as root: it may not hold a template"
        in (problems[0])
    )


def test_an_interpreter_chain_is_followed_to_its_end(dirs: Path) -> None:
    """M4: reset -> #!opt2/wrap -> #!fw/sh -> #!opt/sh: each interpreter is protected."""
    (dirs / "opt" / "sh").write_text("")
    (dirs / "opt" / "sh").chmod(0o755)
    script(dirs / "fw", "sh", "")  # (#!/bin/sh)
    (dirs / "fw" / "sh").write_text(f"#!{dirs}/opt/sh\n")
    (dirs / "opt2" / "wrap").write_text(f"#!/usr/bin/env -S {dirs}/fw/sh -e\n")
    (dirs / "opt2" / "wrap").chmod(0o755)
    (dirs / "share" / "reset").write_text(f"#!{dirs}/opt2/wrap\n")
    (dirs / "share" / "reset").chmod(0o755)
    release = f"    release: {{command: ['{dirs}/share/reset']}}\n"
    rule = never_handed(load_resources(dirs, fpga_glob(dirs) + release), None)
    twice = f"{FPGA}'s release.command's interpreter's interpreter executable"
    assert rule.problem(f"{dirs}/fw") == f"holds {twice}, {RUNS_IT}"
    assert rule.problem(f"{dirs}/opt") == (
        f"holds {FPGA}'s release.command's interpreter's interpreter's interpreter "
        f"executable, {RUNS_IT}"
    )


def test_the_directory_of_the_config_files_link_is_protected(dirs: Path) -> None:
    """M5: `etc/kdp.yaml -> ../real/kdp.yaml` (the ConfigMap layout): a pod handed `etc`
    writable re-points the link and kdp-host reloads its config as root."""
    real = dirs / "real" / "kdp.yaml"
    (dirs / "etc" / "kdp.yaml").symlink_to("../real/kdp.yaml")
    real.write_text(head(dirs) + fpga_glob(dirs))
    config = load_config(dirs / "etc" / "kdp.yaml")
    rule = never_handed(config, dirs / "etc" / "kdp.yaml")
    link = f"the link {dirs}/etc/kdp.yaml on the way to the config file"
    assert rule.problem(f"{dirs}/etc") == f"holds {link}, {RUNS_IT}"
    assert rule.problem(f"{dirs}/etc", writable=False) is None
    real.write_text(real.read_text() + _mount(dirs, dirs / "etc"))
    with pytest.raises(Exception, match=f"holds {link}"):
        load_config(dirs / "etc" / "kdp.yaml")


@pytest.mark.parametrize("what", ["stateDir", "CDI specDir"])
def test_the_directory_of_a_written_places_link_is_protected(dirs: Path, what: str) -> None:
    """M6: `stateDir: lnk/state -> ../real`: a pod handed `lnk` re-points it, and the
    running host writes its state into the pod's directory."""
    (dirs / "lnk" / "it").symlink_to("../real")
    text, extra = head(dirs), ""
    if what == "stateDir":
        text = text.replace(f"stateDir: {dirs}/state", f"stateDir: {dirs}/lnk/it")
    else:
        extra = f"    allocate: {{cdi: {{kind: vendor.example/fpga, specDir: '{dirs}/lnk/it'}}}}\n"
    config = dirs / "kdp.yaml"
    config.write_text(text + fpga_glob(dirs) + extra)
    rule = never_handed(load_config(config), config)
    assert rule.problem(f"{dirs}/lnk").startswith(f"holds the link {dirs}/lnk/it on the way to")
    assert rule.problem(f"{dirs}/lnk", writable=False) is None


async def test_a_device_mounting_the_config_links_directory_writable_is_left_out(
    dirs: Path, start_host: Any
) -> None:
    """M5 at run time: a probe's device mounting the directory that holds the config file's
    link writable is left out (`unsafe_mount`); read-only it is advertised."""
    (dirs / "etc" / "kdp.yaml").symlink_to("../real/kdp.yaml")
    (dirs / "real" / "kdp.yaml").write_text(head(dirs) + probe(dirs))
    (dirs / "dev" / "probe0").touch()
    listed = [
        {"id": "rw", "mounts": [{"hostPath": f"{dirs}/etc", "containerPath": "/e",
                                 "readOnly": False}]},
        {"id": "ro", "mounts": [{"hostPath": f"{dirs}/etc", "containerPath": "/e"}]},
    ]  # fmt: skip
    (dirs / "p.json").write_text(json.dumps(listed))
    link = dirs / "etc" / "kdp.yaml"
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(load_config(link), config_path=link)
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1)
        await left_out(running, 1, "the writable one left out")
        assert sorted(sim.resource(PROBE).healthy_ids) == ["ro"]
