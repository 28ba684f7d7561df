"""Config validation: every error names the field path and the line; the schema agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from kdp_host.config import (
    ConfigError,
    ShellDriverConfig,
    load_config,
    load_config_text,
    parse_duration,
)
from kdp_host.k8s_names import extended_resource_name_problem

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "config" / "schema.json").read_text())


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "t.yaml")
    return err.value.problems


def schema_accepts(text: str) -> bool:
    try:
        jsonschema.validate(yaml.safe_load(text), SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize("path", ["config/example.yaml", "config/demo.yaml"])
def test_shipped_configs_are_valid(path: str) -> None:
    config = load_config(ROOT / path)
    assert config.resources
    assert schema_accepts((ROOT / path).read_text())


def test_defaults() -> None:
    config = load_config_text("resources: [{name: a.io/b, glob: {paths: [/dev/b*]}}]")
    assert config.kubelet.socket_dir == "/var/lib/kubelet/device-plugins"
    assert config.metrics.listen == "0.0.0.0:9410"
    resource = config.resources[0]
    assert resource.replicas == 1 and resource.preferred == "packed"
    assert resource.allocate.permissions == "rw"
    assert resource.driver.kind == "glob" and resource.driver.grace_period == 60.0
    shell = load_config_text("resources: [{name: a.io/b, shell: {command: [x]}}]").resources[0]
    assert isinstance(shell.driver, ShellDriverConfig)
    assert (shell.driver.interval, shell.driver.timeout, shell.driver.format) == (
        10.0,
        5.0,
        "lines",
    )
    assert shell.driver.failure_threshold == 3 and shell.driver.mode == "poll"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("1m", 60),
        ("1m30s", 90),
        ("1h", 3600),
        ("1.5s", 1.5),
        ("720h", 720 * 3600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    # Non-ASCII digits (Arabic-Indic one) and durations past the 30-day limit too.
    ["", "10", "s", "10 s", "1x", "-1s", "1m1", "\u0661s", "999999999999h", "721h"],
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "name",
    ["vendor.example/fpga", "a.b/c", "example.com/gpu-1.x", "x/" + "a" * 63],
)
def test_extended_resource_names_accepted(name: str) -> None:
    assert extended_resource_name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "foo",
        "kubernetes.io/foo",
        "sub.kubernetes.io/foo",
        "requests.foo/bar",
        "Vendor.example/fpga",
        "vendor.example/",
        "vendor.example/-x",
        "vendor.example/a/b",
        "x/" + "a" * 64,
        "vendor_example/x",
    ],
)
def test_extended_resource_names_refused(name: str) -> None:
    assert extended_resource_name_problem(name) is not None


def test_every_error_has_path_and_line() -> None:
    text = """\
kubelet:
  socketDir: relative/dir
metrics: {listen: nowhere}
resources:
  - name: vendor.example/fpga
    glob:
      paths: ["/dev/fpga*"]
      pathz: 1
  - name: foo
    shell: {command: [a], interval: 3x}
  - name: vendor.example/fpga
    glob: {paths: ["/dev/x"]}
    shell: {command: x}
    replicas: 0
  - name: vendor.example/none
  - name: vendor.example/tpl
    glob: {paths: ["/dev/t"]}
    allocate: {env: {"1BAD": "{idz}"}, permissions: rwx}
    preferred: best
"""
    found = problems(text)
    expected = [
        "line 2: kubelet.socketDir: must be an absolute path",
        "line 3: metrics.listen: must be host:port",
        "line 8: resources[0].glob.pathz: unknown key (did you mean 'paths'?)",
        "line 9: resources[1].name: 'foo' is not a valid extended resource name",
        "line 10: resources[1].shell.interval: invalid duration '3x'",
        "line 11: resources[2]: needs exactly one driver (glob, shell or sysfs), got glob, shell",
        "line 13: resources[2].shell.command: must be a list of arguments",
        "line 14: resources[2].replicas: must be between 1 and 10000",
        "line 11: resources[2].name: duplicate name 'vendor.example/fpga' (also resources[0])",
        "line 15: resources[3]: needs exactly one driver (glob, shell or sysfs), got none",
        "line 18: resources[4].allocate.env.1BAD: must be letters, digits",
        "line 18: resources[4].allocate.env.1BAD: unknown template field {idz}",
        "line 18: resources[4].allocate.permissions: must be made of r, w and m",
        "line 19: resources[4].preferred: must be one of packed, spread, numa, none",
    ]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in found), (fragment, found)
    assert len(found) == len(expected), found
    assert not schema_accepts(text)


@pytest.mark.parametrize(
    ("text", "fragment", "schema_rejects"),
    [
        ("resources: [", ", column 1: invalid YAML", False),
        ("- just a list", "<top>: must be a mapping", True),
        ("resources: []", "resources: must declare at least one resource", True),
        ("kubelet: {}", "missing required key 'resources'", True),
        ("resources: [{name: a.io/b, glob: {paths: []}}]", "glob.paths: must not be empty", True),
        (
            "resources: [{name: a.io/b, glob: {paths: [dev/x]}}]",
            "must be an absolute path",
            True,
        ),
        (
            "resources: [{name: a.io/b, glob: {paths: [/x], numaNode: 1, numaNodeFile: /f}}]",
            "numaNode and numaNodeFile are exclusive",
            False,
        ),
        (
            "resources: [{name: a.io/b, shell: {command: []}}]",
            "shell.command: must not be empty",
            True,
        ),
        (
            "resources: [{name: a.io/b, shell: {command: [x], format: xml}}]",
            "must be one of lines, json",
            True,
        ),
        (
            "resources: [{name: a.io/b, shell: {command: [x], mode: push}}]",
            "must be one of poll, stream",
            True,
        ),
        (
            "resources: [{name: a.io/b, glob: {paths: [/x]}, health: {command: [c, '{pth}']}}]",
            "unknown template field {pth}",
            False,
        ),
        (
            "resources: [{name: a.io/b, glob: {paths: [/x]}, allocate: {cdi: {kind: nokind}}}]",
            "cdi.kind: must be vendor/class",
            True,
        ),
        (
            "resources: [{name: a.io/b, glob: {paths: [/x]}, allocate: {cdi: {kind: v.io/kk}}},"
            " {name: a.io/c, glob: {paths: [/y]}, allocate: {cdi: {kind: v.io/kk}}}]",
            "resources[1].allocate.cdi.kind: CDI kind 'v.io/kk' is already used by "
            "resource 'a.io/b'",
            False,
        ),
        (
            "resources: [{name: h3.example/collisions-5469, glob: {paths: [/x]}},"
            " {name: h3.example/collisions-792a, glob: {paths: [/y]}}]",
            "resources[1].name: resource 'h3.example/collisions-792a' would be served on the "
            "socket of resource 'h3.example/collisions-5469'",
            False,
        ),
        (
            "resources: [{name: a.io/b, glob: {paths: [/x]}, replicas: true}]",
            "must be an integer",
            True,
        ),
        ("resources: [{name: a.io/b, glob: {paths: [/x]}}]\nextra: 1", "extra: unknown key", True),
    ],
)
def test_single_errors(text: str, fragment: str, schema_rejects: bool) -> None:
    """kdp-host names the problem; the JSON Schema rejects it too where it can express it."""
    found = problems(text)
    assert any(fragment in p for p in found), found
    if schema_rejects:
        assert not schema_accepts(text)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kdp_host", *args], capture_output=True, text=True, timeout=60
    )


def test_check_lists_devices_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "fpga0").touch()
    (tmp_path / "fpga1").touch()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"resources:\n  - name: vendor.example/fpga\n    glob: {{paths: ['{tmp_path}/fpga*']}}\n"
        f"  - name: vendor.example/dongle\n    shell: {{command: [echo, d0 Healthy]}}\n"
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "valid, 2 resource(s)" in result.stdout
    assert "fpga0 Healthy" in result.stdout and "fpga1 Healthy" in result.stdout
    assert "d0 Healthy" in result.stdout


def test_check_exits_1_when_a_driver_fails_unless_told_not_to(tmp_path: Path) -> None:
    """Issue 20 item 6: a driver that fails its scan fails `check`; a flag keeps exit 0."""
    (tmp_path / "fpga0").touch()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"resources:\n  - name: vendor.example/fpga\n    glob: {{paths: ['{tmp_path}/fpga*']}}\n"
        f"  - name: vendor.example/dongle\n    shell: {{command: ['{tmp_path}/missing']}}\n"
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert "fpga0 Healthy" in result.stdout and "driver error: " in result.stdout
    assert "the driver of 1 resource(s) failed: vendor.example/dongle" in result.stderr
    allowed = run_cli("check", "--allow-driver-errors", "--config", str(config))
    assert (allowed.returncode, allowed.stdout) == (0, result.stdout)


def test_problems_are_listed_in_the_order_of_the_file() -> None:
    """Issue 20 item 6: every problem in line order, whichever rule found it first (the
    duplicate key is found while parsing, the name rule after the whole file is read)."""
    found = problems(
        "resources:\n"
        "  - name: bad name\n"
        "    glob: {paths: [/dev/x]}\n"
        "  - name: a.example/x\n"
        "    replicas: 0\n"
        "    replicas: 1\n"
        "    glob: {paths: [/dev/y], gracePeriod: 1q}\n"
        "kubelet: {socketDir: relative}\n"
    )
    lines = [int(p.split(":")[0].removeprefix("line ")) for p in found]
    assert lines == sorted(lines) and len(found) == 4, found
    assert "duplicate key" in found[1] and "gracePeriod" in found[2]


@pytest.mark.parametrize(
    ("driver", "problem"),
    [
        ("glob: {paths: [relative/*]}", "glob.paths[0]: must be an absolute path"),
        ("glob: {paths: [/dev/x], numaNode: -1}", "glob.numaNode: must be between"),
        ("sysfs: {usb: [{vendor: 403}]}", "sysfs.usb[0].vendor: write hex IDs as quoted"),
    ],
)
def test_a_bad_key_is_one_error_not_two(driver: str, problem: str) -> None:
    """Issue 20 item 6: a section's rules across keys do not judge a key that failed (it
    stands at its default): a relative path is not also "needs exactly one of paths or
    group"."""
    found = problems(f"resources:\n  - name: a.example/x\n    {driver}\n")
    assert len(found) == 1 and problem in found[0], found


def test_check_and_run_refuse_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("resources:\n  - name: foo\n    glob: {paths: [/dev/x]}\n")
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 2
        assert "line 2: resources[0].name: 'foo' is not a valid extended resource name" in (
            result.stderr
        )
        assert "host_started" not in result.stderr


RESTART_KEYS = [
    "kubelet.socketDir",
    "kubelet.registration",
    "kubelet.pluginsRegistryDir",
    "kubelet.podResourcesSocket",
    "kubelet.podResourcesInterval",
    "metrics.listen",
    "metrics.histograms",
    "metrics.holders",
    "metrics.devices",
    "stateDir",
    "cdiRuntimeDirs",
    "nodeFeatures",
    "heldMissing",
]


def _changed(value: object) -> object:
    if value is None or hasattr(value, "__dataclass_fields__"):  # a section (or one off)
        return object()
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, "/changed")
    assert isinstance(value, str), value
    return value + "-changed"


def _replace(section: object, attributes: tuple[str, ...]) -> object:
    import dataclasses

    first, *rest = attributes
    value = getattr(section, first)
    new = _replace(value, tuple(rest)) if rest else _changed(value)
    return dataclasses.replace(section, **{first: new})  # type: ignore[type-var]


def test_the_config_declares_which_keys_need_a_restart_and_reload_refuses_each() -> None:
    """reload.restart_required follows the `restart=True` declarations of config/model.py:
    a change of each such key (and only of it) is refused, and its doc says so."""
    from kdp_host.config import Config
    from kdp_host.config.declare import RESTART_NOTE, declarations, restart_keys
    from kdp_host.reload import restart_required

    declared = dict(restart_keys(Config))
    assert list(declared) == RESTART_KEYS
    old = load_config_text("resources:\n- name: vendor.example/fpga\n  glob: {paths: [/dev/x*]}\n")
    for path, attributes in declared.items():
        new = _replace(old, attributes)
        assert restart_required(old, new) == [f"{path} changed: restart kdp-host to apply"]
    renamed = load_config_text(
        "resources:\n- name: vendor.example/gpu\n  glob: {paths: [/dev/x*]}\n"
    )
    assert restart_required(old, renamed) == []
    schema = json.loads((Path(__file__).parent.parent / "config" / "schema.json").read_text())
    for path in RESTART_KEYS:
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        assert node["description"].endswith(RESTART_NOTE), path
    for section in (Config, type(old.kubelet), type(old.metrics)):
        for _, declaration in declarations(section):
            assert RESTART_NOTE not in declaration.doc, "say restart=True, not the note by hand"
