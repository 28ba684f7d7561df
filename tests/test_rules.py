"""Every user of a text rule agrees with the rule, and the rule agrees with its upstream.

For each rule of kdp_host/rules.py there is a list of its users: functions that take a string
and say whether they accept it. The rule itself is one, a reference written here from the
upstream pattern (apimachinery, the kubelet, CDI) is another, and every part of kdp-host that
applies the rule (the config loader, probe-output parsers, drivers, the simulator) is another.
Hypothesis feeds the same strings to all of them; any disagreement is a drifted copy.

To add a user: write `def my_user(value: str) -> bool` (True = accepted) and append
`pytest.param(my_user, id="...")` to the rule's USERS list below.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kdp_host import cdi_rules, k8s_names, rules
from kdp_host.command_output import ProbeOutputError, parse_json
from kdp_host.config import ConfigError, load_config_text
from kdp_host.config.model import FILE_MODE_PATTERN, LISTEN_PATTERN, PERMISSIONS_PATTERN
from kdp_host.config.syntax import DURATION_PATTERN, parse_duration
from kdp_host.devices import advertises, physical_id, replica_ids
from kdp_host.drivers import glob_paths

Accepts = Callable[[str], bool]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loader_accepts(resource: dict[str, Any]) -> bool:
    """Whether the config loader accepts a file of one resource (given as data, dumped by
    pyyaml so any string survives the trip into YAML text)."""
    text = yaml.safe_dump({"resources": [resource]})
    try:
        load_config_text(text)
    except ConfigError:
        return False
    return True


def mount_source_accepts(path: str) -> bool:
    """Whether the config loader takes `path` as an `allocate.mounts` source, as a path: a
    path refused only as one no container may be handed (`/`, a parent of the default
    stateDir: `config/handed.py`, tests/test_handed.py) is a well-formed path."""
    resource = glob_resource(allocate={"mounts": [{"hostPath": path, "containerPath": "/m"}]})
    try:
        load_config_text(yaml.safe_dump({"resources": [resource]}))
    except ConfigError as exc:
        return all(
            "which no container may be handed" in p or "host's root" in p for p in exc.problems
        )
    return True


def probe_accepts(device: dict[str, Any]) -> bool:
    """Whether the shell driver's JSON output parser accepts one device (dumped by json, so
    any string survives the trip)."""
    try:
        parse_json(json.dumps([device]))
    except ProbeOutputError:
        return False
    return True


def shell_resource(**shell: Any) -> dict[str, Any]:
    return {"name": "vendor.example/x", "shell": shell}


def glob_resource(**extra: Any) -> dict[str, Any]:
    return {"name": "vendor.example/x", "glob": {"paths": ["/dev/x*"]}, **extra}


# --------------------------------------------------------------------------- references
# Written from the upstream definitions, independently of kdp_host/rules.py.

_GO_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_GO_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_GO_ENV_VAR_NAME = r"[-._a-zA-Z][-._a-zA-Z0-9]*"


def go_regexp_matches(pattern: str, value: str) -> bool:
    """Go's `regexp.MustCompile("^" + fmt + "$").MatchString`: `$` is the end of the text."""
    return re.search(f"^(?:{pattern})\\Z", value) is not None


def reference_qualified_name(value: str) -> bool:
    """apimachinery validation.IsQualifiedName."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if len(prefix) == 0:
            return False
        if len(prefix) > 253 or not go_regexp_matches(_GO_DNS1123_SUBDOMAIN, prefix):
            return False
    else:
        return False
    return 0 < len(name) <= 63 and go_regexp_matches(_GO_QUALIFIED_NAME, name)


def reference_extended_resource_name(name: str) -> bool:
    """core/v1 helper IsExtendedResourceName (IsNativeResource, the requests. prefix)."""
    native = "/" not in name or "kubernetes.io/" in name
    if native or name.startswith("requests."):
        return False
    return reference_qualified_name("requests." + name)


def reference_annotation_key(key: str) -> bool:
    """API server ValidateAnnotations: IsQualifiedName(strings.ToLower(key))."""
    return reference_qualified_name(key.lower())


def reference_env_name(name: str) -> bool:
    """apimachinery IsEnvVarName: the pattern plus hasChDirPrefix."""
    if not go_regexp_matches(_GO_ENV_VAR_NAME, name):
        return False
    return name not in (".", "..") and not name.startswith("..")


def _ascii_letter(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _ascii_alnum(c: str) -> bool:
    return _ascii_letter(c) or "0" <= c <= "9"


def _cdi_vendor_or_class(name: str) -> bool:
    """CDI ValidateVendorName / ValidateClassName, written as CDI's loops are."""
    if len(name) < 2 or not _ascii_letter(name[0]) or not _ascii_alnum(name[-1]):
        return False
    return all(_ascii_alnum(c) or c in "_-." for c in name[1:-1])


def reference_cdi_kind(kind: str) -> bool:
    vendor, sep, klass = kind.partition("/")
    return bool(sep) and _cdi_vendor_or_class(vendor) and _cdi_vendor_or_class(klass)


def reference_cdi_device_name(name: str) -> bool:
    """CDI ValidateDeviceName."""
    if not name or not _ascii_alnum(name[0]) or not _ascii_alnum(name[-1]):
        return False
    return all(_ascii_alnum(c) or c in "_-.:" for c in name[1:-1])


def reference_device_id(device_id: str) -> bool:
    """kdp-host's own documented ID rule (the README's shell section, rules.py): no `,`,
    which separates the IDs of `{ids}`; no `::`, which names a replica (hostile16 F4)."""
    return (
        0 < len(device_id) <= 128
        and not device_id.startswith("-")
        and "," not in device_id
        and "::" not in device_id
        and all(c.isprintable() and not c.isspace() for c in device_id)
    )


def _is_control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cs")


def reference_absolute_path(path: str) -> bool:
    return (
        path.startswith("/")
        and not any(_is_control(c) for c in path)
        and len(path.encode()) < 4096
        and all(len(name.encode()) <= 255 for name in path.split("/"))
    )


def reference_device_path(path: str) -> bool:
    """A device node's path: absolute, and no `,` (it separates the paths of `{paths}`)."""
    return reference_absolute_path(path) and "," not in path


def reference_normal_form(path: str) -> bool:
    """One spelling per path: no empty, `.` or `..` component (`/` alone is fine)."""
    return path == "/" or all(part not in ("", ".", "..") for part in path[1:].split("/"))


def reference_container_device_path(path: str) -> bool:
    return reference_device_path(path) and reference_normal_form(path)


def reference_container_mount_path(path: str) -> bool:
    return reference_absolute_path(path) and reference_normal_form(path)


def reference_text(text: str) -> bool:
    return not any(_is_control(c) and c not in "\t\n" for c in text)


def reference_socket_path(path: str) -> bool:
    return len(path.encode()) <= 107


def accepted_by(problem: Callable[[str], str | None]) -> Accepts:
    return lambda value: problem(value) is None


def schema_pattern_matches(pattern: str, value: str) -> bool:
    """A JSON Schema `pattern` as editors read it (ECMA-262: `$` is the end, never before a
    trailing newline as Python's `$` is)."""
    return re.search(re.sub(r"\$$", r"\\Z", pattern), value) is not None


# --------------------------------------------------------------------------- users per rule

RESOURCE_NAME_USERS = [
    pytest.param(accepted_by(k8s_names.extended_resource_name_problem), id="rules"),
    pytest.param(k8s_names.is_extended_resource_name, id="rules-predicate"),
    pytest.param(reference_extended_resource_name, id="kubelet-reference"),
    pytest.param(
        lambda name: loader_accepts({"name": name, "glob": {"paths": ["/dev/x*"]}}),
        id="config-loader",
    ),
]

ANNOTATION_KEY_USERS = [
    pytest.param(accepted_by(k8s_names.annotation_key_problem), id="rules"),
    pytest.param(lambda key: probe_accepts({"id": "a", "annotations": {key: "v"}}), id="probe"),
    pytest.param(reference_annotation_key, id="apiserver-reference"),
    pytest.param(
        lambda key: loader_accepts(glob_resource(allocate={"annotations": {key: "v"}})),
        id="config-loader",
    ),
]

ENV_NAME_USERS = [
    pytest.param(accepted_by(rules.env_name_problem), id="rules"),
    pytest.param(lambda name: probe_accepts({"id": "a", "env": {name: "v"}}), id="probe"),
    pytest.param(reference_env_name, id="kubelet-reference"),
    pytest.param(
        lambda name: loader_accepts(glob_resource(allocate={"env": {name: "v"}})),
        id="config-loader-allocate",
    ),
    pytest.param(
        lambda name: loader_accepts(
            {"name": "vendor.example/x", "shell": {"command": ["x"], "env": {name: "v"}}}
        ),
        id="config-loader-shell",
    ),
]

CDI_KIND_USERS = [
    pytest.param(accepted_by(cdi_rules.cdi_kind_problem), id="rules"),
    pytest.param(
        lambda kind: schema_pattern_matches(cdi_rules.CDI_KIND_PATTERN, kind), id="schema"
    ),
    pytest.param(reference_cdi_kind, id="cdi-reference"),
    pytest.param(
        lambda kind: loader_accepts(glob_resource(allocate={"cdi": {"kind": kind}})),
        id="config-loader",
    ),
]

CDI_DEVICE_NAME_USERS = [
    pytest.param(accepted_by(cdi_rules.cdi_device_name_problem), id="rules"),
    pytest.param(reference_cdi_device_name, id="cdi-reference"),
]

DEVICE_ID_USERS = [
    pytest.param(accepted_by(rules.device_id_problem), id="rules"),
    pytest.param(lambda device_id: probe_accepts({"id": device_id}), id="probe"),
    pytest.param(reference_device_id, id="reference"),
]

DEVICE_PATH_USERS = [
    pytest.param(accepted_by(rules.device_path_problem), id="rules"),
    pytest.param(
        lambda path: probe_accepts({"id": "a", "paths": [{"hostPath": path}]}), id="probe-path"
    ),
    pytest.param(reference_device_path, id="reference"),
]

CONTAINER_DEVICE_PATH_USERS = [
    pytest.param(
        accepted_by(functools.partial(rules.container_path_problem, device_node=True)),
        id="rules",
    ),
    pytest.param(
        lambda path: probe_accepts(
            {"id": "a", "paths": [{"hostPath": "/dev/a", "containerPath": path}]}
        ),
        id="probe-container-path",
    ),
    pytest.param(lambda path: probe_accepts({"id": "a", "paths": [path]}), id="probe-path-spec"),
    pytest.param(reference_container_device_path, id="reference"),
]
"""The string form of a probe's path (`/dev/x`) is its host and its container path."""

ABSOLUTE_PATH_USERS = [
    pytest.param(accepted_by(rules.absolute_path_problem), id="rules"),
    pytest.param(accepted_by(glob_paths.name_problem), id="glob-matched-path"),
    pytest.param(reference_absolute_path, id="reference"),
    pytest.param(mount_source_accepts, id="config-loader-mount-host"),
]

CONTAINER_MOUNT_PATH_USERS = [
    pytest.param(
        accepted_by(functools.partial(rules.container_path_problem, device_node=False)),
        id="rules",
    ),
    pytest.param(
        lambda path: probe_accepts(
            {"id": "a", "mounts": [{"hostPath": "/m", "containerPath": path}]}
        ),
        id="probe-mount",
    ),
    pytest.param(
        lambda path: loader_accepts(  # (a probe's: no node path known from the config to
            {  # be at or below the mount, `ResourceConfig.check`)
                **shell_resource(command=["probe"]),
                "allocate": {"mounts": [{"hostPath": "/m", "containerPath": path}]},
            }
        ),
        id="config-loader-mount-container",
    ),
    pytest.param(reference_container_mount_path, id="reference"),
]

TEXT_USERS = [
    pytest.param(accepted_by(rules.text_problem), id="rules"),
    pytest.param(lambda text: probe_accepts({"id": "a", "env": {"E": text}}), id="probe-env"),
    pytest.param(reference_text, id="reference"),
    pytest.param(
        lambda text: loader_accepts(shell_resource(command=["check", "x" + text])),
        id="config-loader-argv",
    ),
    pytest.param(
        lambda text: loader_accepts(
            # (`/` swapped: a value naming `/` itself is refused by the place rule,
            # `places.run_env_problems`, not by the text rule compared here)
            shell_resource(command=["check"], env={"E": text.replace("/", "_")})
        ),
        id="config-loader-env-value",
    ),
]
"""Fields without templates (shell.command, shell.env): where a field is a template, the
template rule decides about `{...}` as well."""

SOCKET_PATH_USERS = [
    pytest.param(accepted_by(rules.socket_path_problem), id="rules"),
    pytest.param(reference_socket_path, id="reference"),
]


# --------------------------------------------------------------------------- strings

TRICKY = [*"aAzZ09-_.:/ \t\n\r\x00\x7f\x85é", "kubernetes.io/", "requests.", "\u2028"]


def near(pattern: str) -> st.SearchStrategy[str]:
    """Strings that match `pattern` and the same strings one edit away (a tricky character
    added at either end or in the middle, a character dropped)."""
    base = st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True)
    tricky = st.sampled_from(TRICKY)

    def mutate(value: str, extra: str, where: int, how: int) -> str:
        where = where % (len(value) + 1)
        if how == 0:
            return value + extra
        if how == 1:
            return extra + value
        if how == 2:
            return value[:where] + extra + value[where:]
        return value[:where] + value[where + 1 :]

    mutated = st.builds(mutate, base, tricky, st.integers(0, 300), st.integers(0, 3))
    pieces = st.lists(st.sampled_from(TRICKY), max_size=8).map("".join)
    return st.one_of(base, mutated, pieces)


def rule_strings(pattern: str) -> st.SearchStrategy[str]:
    return st.one_of(near(pattern), st.text(max_size=30))


def assert_agree(users: list[Any], value: str) -> None:
    verdicts = {user.id: user.values[0](value) for user in users}
    assert len(set(verdicts.values())) == 1, (value, verdicts)


@SETTINGS
@given(
    rule_strings(
        r"([a-z0-9]([-a-z0-9]{0,3}[a-z0-9])?\.){0,3}[a-z0-9]{1,3}/"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,70}[A-Za-z0-9])?"
    )
)
@example("a.io/b\n")
@example("x/" + "a" * 63)
@example("x/" + "a" * 64)
@example("requests.a/b")
@example("a.kubernetes.io/b")
def test_extended_resource_name_users_agree(name: str) -> None:
    assert_agree(RESOURCE_NAME_USERS, name)


@SETTINGS
@given(rule_strings(r"[a-z0-9.-]{1,8}/[-A-Za-z0-9_.]{1,8}"))
@example("a.kubernetes.io/b")
@example("x/" + "a" * 63)
def test_the_schema_of_resource_names_accepts_every_name_the_rule_accepts(name: str) -> None:
    """The JSON Schema is a first check (editors, helm lint): it may let a name through that
    the loader refuses (lengths), never refuse one the kubelet takes."""
    pattern, forbidden = (
        k8s_names.EXTENDED_RESOURCE_NAME_PATTERN,
        k8s_names.EXTENDED_RESOURCE_NAME_NOT_PATTERN,
    )
    if k8s_names.is_extended_resource_name(name):
        assert schema_pattern_matches(pattern, name)
        assert not schema_pattern_matches(forbidden, name)


@SETTINGS
@given(
    rule_strings(
        r"(([A-Za-z0-9]([-A-Za-z0-9]{0,3}[A-Za-z0-9])?\.){0,2}[A-Za-z0-9]{1,3}/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,70}[A-Za-z0-9])?"
    )
)
@example("Vendor.Example/Key")
@example("a/b/c")
@example("/b")
@example("key\n")
def test_annotation_key_users_agree(key: str) -> None:
    assert_agree(ANNOTATION_KEY_USERS, key)


@SETTINGS
@given(rule_strings(r"[-._a-zA-Z0-9][-._a-zA-Z0-9]{0,8}"))
@example("FPGA_DEVICES\n")
@example("..x")
@example(".x")
@example("my.env-name")
@example("1ABC")
def test_env_name_users_agree(name: str) -> None:
    assert_agree(ENV_NAME_USERS, name)


@SETTINGS
@given(rule_strings(r"[A-Za-z0-9_.-]{1,6}/[A-Za-z0-9_.-]{1,6}"))
@example("a/bc")
@example("vendor.example/fpga\n")
def test_cdi_kind_users_agree(kind: str) -> None:
    assert_agree(CDI_KIND_USERS, kind)


@SETTINGS
@given(rule_strings(r"[A-Za-z0-9_.:-]{1,8}"))
@example("a")
@example("a:")
def test_cdi_device_name_users_agree(name: str) -> None:
    assert_agree(CDI_DEVICE_NAME_USERS, name)


@SETTINGS
@given(rule_strings(r"[-A-Za-z0-9_./:,]{1,10}|[-a-z]{126,130}"))
@example("fpga0,fpga1")
@example(",")
@example("-rf")
@example("a" * 128)
@example("a" * 129)
@example("fpga0\n")
@example("a::0")
@example("0000:01:00.0")
def test_device_id_users_agree(device_id: str) -> None:
    assert_agree(DEVICE_ID_USERS, device_id)


@SETTINGS
@given(rule_strings(r"[-A-Za-z0-9_./:,]{1,10}"), st.integers(1, 4))
@example("a:", 2)
@example(":", 3)
@example("0000:01:00.0", 2)
def test_a_kubelet_id_names_one_device_whatever_the_replica_count(
    device_id: str, replicas: int
) -> None:
    """hostile20 F6: which device a kubelet ID names is one rule (`physical_id`, taking no
    replica count): every ID a valid device is advertised under, with any `replicas`, is
    that device's for every host, whatever replica count it advertises the resource with."""
    assume(rules.device_id_problem(device_id) is None)
    for advertised in replica_ids(device_id, replicas):
        assert physical_id(advertised) == device_id and advertises(advertised, device_id)
        assert replicas == 1 or not advertises(advertised, advertised)


@SETTINGS
@given(rule_strings(r"/?[a-z0-9_.-]{0,6}(/[a-z0-9_.-]{0,6}){0,3}"))
@example("relative/path")
@example("/dev/x\x00")
@example("/dev/x\n")
@example("/" + "a" * 4094)
@example("/" + "a" * 4095)
@example("/" + "a" * 255)
@example("/" + "a" * 256)
@example("/" + "/".join(["a" * 255] * 16))
def test_absolute_path_users_agree(path: str) -> None:
    assert_agree(ABSOLUTE_PATH_USERS, path)


@SETTINGS
@given(rule_strings(r"/?[a-z0-9_.,-]{0,6}(/[a-z0-9_.,-]{0,6}){0,3}"))
@example("/dev/fpga0,/dev/fpga1")
@example("/dev/x,y")
@example("relative")
@example("/dev/x\n")
def test_device_path_users_agree(path: str) -> None:
    assert_agree(DEVICE_PATH_USERS, path)


CONTAINER_PATHS = rule_strings(r"/?[a-z0-9_.,-]{0,6}(/[a-z0-9_.,-]{0,6}){0,3}").filter(
    lambda path: ":" not in path and "{" not in path and "}" not in path
)
"""`:/` splits a probe's `host:container` string and braces are template syntax: both have
tests of their own (test_shell_parsers, test_config_hardening's containerPath templates)."""


@SETTINGS
@given(CONTAINER_PATHS)
@example("/dev/x/../fpga")
@example("/dev/fpga/.")
@example("//dev/fpga")
@example("/dev/fpga/")
@example("/")
def test_container_device_path_users_agree(path: str) -> None:
    assert_agree(CONTAINER_DEVICE_PATH_USERS, path)


@SETTINGS
@given(CONTAINER_PATHS)
@example("/dev/fpga/.")
@example("/srv//x")
def test_container_mount_path_users_agree(path: str) -> None:
    assert_agree(CONTAINER_MOUNT_PATH_USERS, path)


@SETTINGS
@given(rule_strings(r"[ -~]{0,10}"))
@example("{ids}")
@example("{unknown")
@example("a\x00b")
@example("line\nline\ttab")
@example("bell\x07")
@example("\x85")
def test_text_users_agree(text: str) -> None:
    assert_agree(TEXT_USERS, text)


@SETTINGS
@given(st.text(alphabet=st.sampled_from("/aé"), min_size=90, max_size=120))
def test_socket_path_users_agree(path: str) -> None:
    assert_agree(SOCKET_PATH_USERS, path)


# ------------------------------------------------------ the config's own value rules
# The schema patterns of rules that live in the config (durations: config/syntax.py; cgroup
# permissions and file modes: config/model.py) are written once, beside the rule, and say
# what the loader says.


def _loader_takes(allocate: dict[str, Any]) -> bool:
    return loader_accepts(glob_resource(allocate=allocate))


@SETTINGS
@given(st.text(alphabet=st.sampled_from("0123456789.mshx -"), max_size=8))
@example("1m30s")
@example("1.5h")
@example("1.s")
@example(".5s")
@example("721h")
@example("1h1m1s1ms")
def test_the_duration_pattern_is_the_duration_syntax(text: str) -> None:
    try:
        parse_duration(text)
        readable = True
    except ValueError as exc:
        readable = "longer than the limit" in str(exc)  # (a length no pattern can say)
    if text == text.strip():  # (the loader strips spaces; the schema is stricter there)
        assert schema_pattern_matches(DURATION_PATTERN, text) == readable, text


@SETTINGS
@given(st.text(alphabet=st.sampled_from("01789rx "), max_size=5))
@example("0660")
@example("660")
@example("00660")
def test_the_file_mode_pattern_is_the_file_mode_rule(text: str) -> None:
    cdi = {"kind": "vendor.example/xx", "deviceFileMode": text}
    assert schema_pattern_matches(FILE_MODE_PATTERN, text) == _loader_takes({"cdi": cdi}), text


@SETTINGS
@given(st.text(alphabet=st.sampled_from("rwmx "), max_size=4))
@example("rwm")
@example("rr")
@example("")
def test_the_permissions_pattern_takes_every_permission_the_rule_takes(text: str) -> None:
    """Exact but for a repeated letter (RE2, which reads the chart's schema, has no
    back-references): the rule refuses it too."""
    schema = schema_pattern_matches(PERMISSIONS_PATTERN, text)
    assert _loader_takes({"permissions": text}) == (schema and len(set(text)) == len(text))


@SETTINGS
@given(st.text(alphabet=st.sampled_from("0159:.a٩ "), max_size=9))
@example("0.0.0.0:9410")
@example("[::]:9410")
@example("0.0.0.0:٩٤١٠")  # (Arabic-Indic digits: int() reads them, the schema does not)
@example("x:0000009410")
@example("x:99999")
def test_the_listen_pattern_is_the_listen_rule(text: str) -> None:
    """Exact but for the port's upper bound (65535), which the rule adds."""
    try:
        load_config_text(
            yaml.safe_dump({"metrics": {"listen": text}, "resources": [glob_resource()]})
        )
        taken = True
    except ConfigError as exc:
        taken = not any("metrics.listen" in problem for problem in exc.problems)
    _, _, port = text.rpartition(":")
    in_range = not port.isascii() or not port.isdigit() or int(port) <= 65535
    assert taken == (schema_pattern_matches(LISTEN_PATTERN, text) and in_range), text
