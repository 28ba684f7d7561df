"""A bad config file never stops or stalls a running host (issue 10, items 6-13).

Each test here failed on the loader before it was hardened.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import Config, ConfigError, load_config, load_config_text
from kdp_host.config.source import MAX_ALIAS_NODES, MAX_CONFIG_BYTES, MAX_DEPTH
from kdp_host.rules import AF_UNIX_PATH_MAX

from .conftest import glob_config
from .test_ops import value

FPGA = "vendor.example/fpga"
VALID = "resources: [{name: a.io/b, glob: {paths: [/dev/b*]}}]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "t.yaml")
    return err.value.problems


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level is a list of `width` aliases of the level below."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels + 1):
        items = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{items}]")
    return "\n".join(lines) + "\n" + VALID


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kdp_host", *args], capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------------------- 6, 7: aliases


def test_alias_bomb_is_refused_with_a_reason() -> None:
    found = problems(alias_bomb())
    assert len(found) == 1, found
    assert "alias bombs" in found[0] and str(MAX_ALIAS_NODES) in found[0], found


def test_moderate_aliases_still_work() -> None:
    text = """\
common: &common {env: {A: "{ids}"}, permissions: rw}
resources:
  - {name: a.io/b, glob: {paths: [/dev/b*]}, allocate: *common}
  - {name: a.io/c, glob: {paths: [/dev/c*]}, allocate: *common}
"""
    with pytest.raises(ConfigError) as err:  # `common` is not a config key
        load_config_text(text)
    assert err.value.problems == ["line 1: common: unknown key"]


def test_merge_keys_work_and_merged_fields_have_lines() -> None:
    text = """\
resources:
  - &first
    name: a.io/b
    glob: {paths: [/dev/b*]}
    replicas: 2
  - <<: *first
    name: a.io/c
    preferred: nope
"""
    found = problems(text)
    assert found == [
        "line 8: resources[1].preferred: must be one of packed, spread, numa, none; got 'nope'"
    ]
    fixed = load_config_text(text.replace("nope", "spread"))
    assert [r.replicas for r in fixed.resources] == [2, 2]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: &a [*a]\n" + VALID, "recursive alias *a"),
        ("a: &a {b: *a}\n" + VALID, "recursive alias *a"),
        ("x: " + "[" * 10_000 + "]" * 10_000 + "\n" + VALID, "nest"),
        ("x: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n" + VALID, "nest"),
        ("x: " + "[" * 100 + "]" * 100 + "\n" + VALID, f"nested deeper than {MAX_DEPTH}"),
    ],
    ids=["recursive-list", "recursive-map", "deep-lists", "deep-maps", "deeper-than-limit"],
)
def test_recursion_and_depth_are_config_errors(text: str, fragment: str) -> None:
    found = problems(text)
    assert any(fragment in p for p in found), found


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_exits_2_on_recursive_aliases_and_bombs(tmp_path: Path, command: str) -> None:
    for name, text in (("recursive", "a: &a [*a]\n" + VALID), ("bomb", alias_bomb())):
        config = tmp_path / f"{name}.yaml"
        config.write_text(text)
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "invalid config" in result.stderr


# --------------------------------------------------------------------------- 10: duplicates


def test_duplicate_keys_name_both_lines() -> None:
    text = """\
resources:
  - name: a.io/b
    glob: {paths: [/dev/b*]}
kubelet: {socketDir: /x}
resources:
  - name: a.io/c
    glob: {paths: [/dev/c*], paths: [/dev/d*]}
"""
    found = problems(text)
    assert "line 5: resources: duplicate key (first on line 1)" in found[0], found
    assert any(
        "line 7: resources[0].glob.paths: duplicate key (first on line 7)" in p for p in found
    ), found


# --------------------------------------------------------------------------- 9: one reader


def test_not_utf8_is_refused_by_start_up_and_reload_alike(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"# caf\xe9\n" + VALID.encode())
    with pytest.raises(ConfigError, match="line 1: not UTF-8"):
        load_config(config)


def test_oversized_and_non_regular_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(VALID.encode() + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)


# --------------------------------------------------------------------------- 11, 12: text


@pytest.mark.parametrize(
    ("resource_yaml", "fragment"),
    [
        ('health: {command: [check, "a\\0b"]}', "health.command[1]: must not contain NUL"),
        ('shell: {command: ["/bin/pro\\x07be"]}', "shell.command[0]: must not contain control"),
        ('allocate: {env: {A: "x\\0"}}', "allocate.env.A: must not contain NUL"),
        ('allocate: {annotations: {a.io/k: "\\x1b[31m"}}', "must not contain control"),
        (
            'allocate: {mounts: [{hostPath: "/x\\0", containerPath: /y}]}',
            "hostPath: must not contain NUL",
        ),
        ("allocate: {mounts: [{hostPath: lib, containerPath: /y}]}", "hostPath: must be an abs"),
        ("allocate: {mounts: [{hostPath: /x, containerPath: y}]}", "containerPath: must be an abs"),
        ("allocate: {annotations: {bad key: v}}", "annotations.bad key: name must be"),
        ("allocate: {annotations: {a/b/c: v}}", "at most one '/'"),
        ("allocate: {annotations: {-x: v}}", "name must be"),
        ("allocate: {env: {1X: v}}", "allocate.env.1X: must be letters"),
        ("allocate: {env: {..X: v}}", "must not be '.' or start with '..'"),
        ("shell: {command: [x], workingDir: tmp}", "workingDir: must be an absolute path"),
        (
            "allocate: {mounts: [{hostPath: /a, containerPath: /m}, {hostPath: /b, "
            "containerPath: /m}]}",
            "allocate.mounts[1].containerPath: /m is already the containerPath of mounts[0]",
        ),
    ],
)
def test_text_paths_and_keys(resource_yaml: str, fragment: str) -> None:
    driver = "" if resource_yaml.startswith("shell") else "glob: {paths: [/dev/b*]}, "
    text = f"resources: [{{name: a.io/b, {driver}{resource_yaml}}}]\n"
    found = problems(text)
    assert any(fragment in p for p in found), found


def test_kubelet_env_names_and_qualified_annotation_keys_pass() -> None:
    text = (
        "resources: [{name: a.io/b, glob: {paths: [/dev/b*]}, allocate: "
        "{env: {my.env-name: a, _X: b}, annotations: {Vendor.Example/Key_1: c, plain: d}}}]\n"
    )
    allocate = load_config_text(text).resources[0].allocate
    assert set(allocate.env) == {"my.env-name", "_X"}
    assert set(allocate.annotations) == {"Vendor.Example/Key_1", "plain"}


@pytest.mark.parametrize(
    ("container_path", "fragment"),
    [
        ("/dev/fpga", "must contain {name} or {path}"),
        ("dev/{name}", "must be an absolute path"),
        ("{name}", "must be an absolute path"),
        ("/dev/{{name}}", "must contain {name} or {path}"),  # escaped: the text {name}
        ("/dev/x,{name}", "must not contain ','"),  # `{paths}` lists container paths
        # the runtime resolves these: every device would land on /dev/fpga
        ("/dev/{name}/../fpga", "must be in normal form ('/dev/fpga'"),
        ("/dev/{name}/.", "must be in normal form"),
        ("/dev//{name}", "must be in normal form"),
        ("/dev/{name}/", "must be in normal form"),
    ],
)
def test_glob_container_path_is_per_device_and_absolute(container_path: str, fragment: str) -> None:
    glob = f"{{paths: [/dev/b*], containerPath: '{container_path}'}}"
    text = f"resources: [{{name: a.io/b, glob: {glob}}}]"
    found = problems(text)
    assert any(fragment in p for p in found), found
    for good in ("/dev/{name}", "{path}", "/container{path}"):
        load_config_text(text.replace(container_path, good))


@pytest.mark.parametrize("pattern", ["/dev//b*", "/dev/./b*", "/dev/x/../b*", "/dev/b*/"])
@pytest.mark.parametrize("where", ["paths", "group"])
def test_a_glob_pattern_is_in_normal_form(pattern: str, where: str) -> None:
    """hostile19 F10: `/dev//b*` matched `/dev//b0`: its default container path was not in
    normal form (a collision check compares the text) and one node had other IDs spelled so."""
    if where == "paths":
        glob = f"{{paths: ['{pattern}']}}"
    else:
        glob = f"{{group: [{{path: '{pattern.replace('b*', 'b{key}')}'}}]}}"
    found = problems(f"resources: [{{name: a.io/b, glob: {glob}}}]")
    assert any("must be in normal form" in p for p in found), found


def test_a_block_value_is_reported_on_its_key_line() -> None:
    text = """\
resources:
  - name: a.io/b
    glob:
      paths: [/dev/b*]
    allocate:
      cdi:
        alsoDeviceSpecs: true
"""
    assert problems(text) == ["line 6: resources[0].allocate.cdi: missing required key 'kind'"]


# --------------------------------------------------------------------------- reload


async def test_hostile_reloads_are_invalid_and_the_host_keeps_reloading(
    kubelet: Any, socket_dir: Path, devices: Path, short_dir: Path, start_host: Any
) -> None:
    config = short_dir / "config.yaml"
    good = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    config.write_text(good)
    running = await start_host(good, config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    hostile = [
        ("a: &a [*a]\n" + good).encode(),
        ("x: " + "[" * 10_000 + "]" * 10_000 + "\n" + good).encode(),
        (alias_bomb() + "\n").encode().replace(VALID.encode(), good.encode()),
        b"# caf\xe9\n" + good.encode(),
        (good + good.split("\n", 1)[1]).encode(),
    ]
    for count, data in enumerate(hostile, start=1):
        config.write_bytes(data)
        assert await running.host.reload_from(config) == "invalid"
        assert value(running.metrics, "kdp_config_reloads_total", result="invalid") >= count
    assert not running.task.done()
    config.write_text(good.replace("gracePeriod: 1s", "gracePeriod: 2s"))
    # The host watches the file too, so its own reload may apply the change first.
    assert await running.host.reload_from(config) in ("ok", "unchanged")
    assert running.host.config.resources[0].driver.grace_period == 2.0
    assert value(running.metrics, "kdp_config_reloads_total", result="ok") == 1
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)


async def test_reload_parses_off_the_event_loop(
    socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    """The loader runs in a worker thread: while it waits for the loop to run a callback,
    the loop is free to run it (run on the loop, this would wait in vain)."""
    from kdp_host.host import Host
    from kdp_host.logs import get_logger
    from kdp_host.metrics import Metrics

    good = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    config = short_dir / "config.yaml"
    config.write_text(good)
    loop_ran = threading.Event()
    loop = asyncio.get_running_loop()
    loader_threads: list[int] = []

    def load_waiting_for_the_loop(path: Path) -> Config:
        loader_threads.append(threading.get_ident())
        loop.call_soon_threadsafe(loop_ran.set)
        loop_ran.wait(timeout=30)
        return load_config(path)

    host = Host(
        config=load_config_text(good),
        metrics=Metrics(),
        log=get_logger(),
        load_config=load_waiting_for_the_loop,
    )
    assert await host.reload_from(config) == "unchanged"
    assert loop_ran.is_set()
    assert loader_threads != [threading.get_ident()]


# --------------------------------------------------------------------------- 13: AF_UNIX


def test_a_socket_dir_too_long_to_serve_from_is_a_config_error(tmp_path: Path) -> None:
    """Issue 10 item 13, issue 17 item 14: a plugin socket name must fit AF_UNIX in the socket
    dir; the compact name fits every dir kubelet.sock fits in (94 bytes), no longer one."""
    fits = "/" + "d" * (AF_UNIX_PATH_MAX - len("kubelet.sock") - 2)
    assert len(fits) == 94
    resources = "resources: [{name: a.io/b, glob: {paths: [/dev/x*]}}]\n"
    assert load_config_text(f"kubelet: {{socketDir: {fits}}}\n" + resources)
    with pytest.raises(ConfigError) as error:
        load_config_text(f"kubelet: {{socketDir: {fits}d}}\n" + resources)
    assert "kubelet.socketDir" in str(error.value) and "too long to serve from" in str(error.value)
    config = tmp_path / "long.yaml"
    config.write_text(f"kubelet: {{socketDir: {fits}d}}\n" + resources)
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2 and "too long to serve from" in result.stderr


@pytest.mark.parametrize(
    "spelling", ["/dev/fpga/.", "/dev/x/../fpga", "//dev/fpga", "/dev//fpga", "/dev/fpga/"]
)
def test_container_paths_of_mounts_and_group_members_are_in_normal_form(spelling: str) -> None:
    """Two spellings of one container path would pass the collision checks, which compare
    text, and the runtime would keep one of the entries."""
    mount = (
        "resources: [{name: a.io/b, glob: {paths: [/dev/b*]}, allocate: {mounts: "
        f"[{{hostPath: /srv/a, containerPath: '{spelling}'}}]}}}}]"
    )
    assert any("must be in normal form" in p for p in problems(mount)), problems(mount)
    member = (
        "resources: [{name: a.io/b, glob: {group: "
        f"[{{path: '/dev/b{{key}}', containerPath: '/k{{key}}{spelling}'}}]}}}}]"
    )
    assert any("must be in normal form" in p for p in problems(member)), problems(member)
    load_config_text(mount.replace(spelling, "/dev/fpga"))
