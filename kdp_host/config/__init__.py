"""The YAML config file, read into frozen dataclasses.

Every error names the field path and the line it stands on, and all errors of a file are
reported together, so an operator fixes a ConfigMap in one round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..metrics import DEFAULT_HISTOGRAM_MODE, HISTOGRAM_MODES, HistogramMode
from ..rules import (
    absolute_path_problem,
    annotation_key_problem,
    cdi_kind_problem,
    env_name_problem,
    extended_resource_name_problem,
    text_problem,
)
from .source import (
    ConfigSource,
    SourceError,
    parse_config_text,
    read_config_source,
)

DEFAULT_SOCKET_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_METRICS_LISTEN = "0.0.0.0:9410"
MAX_REPLICAS = 10_000

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
ALLOCATE_TEMPLATE_FIELDS = frozenset({"ids", "paths", "count", "resource"})
PERMISSION_CHARS = frozenset("rwm")


class ConfigError(Exception):
    """A config that does not validate; `problems` holds one line per error."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} error(s)\n{lines}")


@dataclass(frozen=True)
class GlobDriverConfig:
    paths: tuple[str, ...]
    container_path: str | None = None
    """Template for the path inside the container: `{path}` (matched path), `{name}` (basename)."""
    grace_period: float = 60.0
    """How long a vanished path stays listed as Unhealthy before it is dropped."""
    rescan_interval: float = 30.0
    numa_node: int | None = None
    numa_node_file: str | None = None
    """Template (`{name}`, `{path}`) of a file holding the NUMA node, e.g. a sysfs numa_node."""

    kind: Literal["glob"] = field(default="glob", init=False)


@dataclass(frozen=True)
class ShellDriverConfig:
    command: tuple[str, ...]
    interval: float = 10.0
    timeout: float = 5.0
    format: Literal["lines", "json"] = "lines"
    failure_threshold: int = 3
    mode: Literal["poll", "stream"] = "poll"
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None

    kind: Literal["shell"] = field(default="shell", init=False)


@dataclass(frozen=True)
class UsbMatchConfig:
    """One `sysfs.usb` entry: every given field must match (hex IDs, or globs)."""

    vendor: str | None = None
    product: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    product_name: str | None = None
    interface_class: str | None = None
    """Matches when any interface of the device has this class (`02` CDC, `0e` video...)."""


@dataclass(frozen=True)
class PciMatchConfig:
    """One `sysfs.pci` entry: every given field must match."""

    vendor: str | None = None
    device: str | None = None
    subsystem_vendor: str | None = None
    subsystem_device: str | None = None
    pci_class: str | None = None
    """A prefix (`03`, `0302`), the full `030200`, `value/mask`, or a glob."""
    driver: str | None = None


@dataclass(frozen=True)
class SysfsMatchConfig:
    """One `sysfs.devices` entry: devices of any bus or class, by attribute values."""

    bus: str | None = None
    device_class: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Attribute file (relative to the device directory) -> exact value or glob."""
    driver: str | None = None


@dataclass(frozen=True)
class NodeSelectConfig:
    """Which of a matched device's nodes go to the container (all when empty)."""

    subsystems: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    """Globs on the node's name relative to /dev (`ttyUSB*`, `dri/renderD*`)."""


@dataclass(frozen=True)
class SysfsDriverConfig:
    usb: tuple[UsbMatchConfig, ...] = ()
    pci: tuple[PciMatchConfig, ...] = ()
    devices: tuple[SysfsMatchConfig, ...] = ()
    nodes: NodeSelectConfig | None = None
    sysfs_root: str = "/sys"
    dev_root: str = "/dev"
    """Where kdp-host sees the host's /dev (DeviceSpecs always name the host's /dev)."""
    grace_period: float = 60.0
    rescan_interval: float = 30.0
    scan_timeout: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)
    """Per-device environment templates (`{serial}`, `{address}`, ...)."""
    annotations: Mapping[str, str] = field(default_factory=dict)

    kind: Literal["sysfs"] = field(default="sysfs", init=False)


DriverConfig = GlobDriverConfig | ShellDriverConfig | SysfsDriverConfig


@dataclass(frozen=True)
class HealthCheckConfig:
    command: tuple[str, ...]
    interval: float = 30.0
    timeout: float = 5.0


@dataclass(frozen=True)
class MountConfig:
    host_path: str
    container_path: str
    read_only: bool = True


@dataclass(frozen=True)
class CdiConfig:
    kind: str
    also_device_specs: bool = False
    spec_dir: str | None = None


@dataclass(frozen=True)
class AllocateConfig:
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[MountConfig, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    permissions: str = "rw"
    cdi: CdiConfig | None = None


PreferredPolicy = Literal["packed", "spread", "numa", "none"]


@dataclass(frozen=True)
class ResourceConfig:
    name: str
    driver: DriverConfig
    allocate: AllocateConfig = field(default_factory=AllocateConfig)
    health: HealthCheckConfig | None = None
    replicas: int = 1
    preferred: PreferredPolicy = "packed"


@dataclass(frozen=True)
class KubeletConfig:
    socket_dir: str = DEFAULT_SOCKET_DIR


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "0.0.0.0"
    port: int = 9410
    histograms: HistogramMode = DEFAULT_HISTOGRAM_MODE

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    kubelet: KubeletConfig
    metrics: MetricsConfig
    resources: tuple[ResourceConfig, ...]
    sha256: str = ""
    """Hash of the file's bytes: shows in metrics which config is in force."""


def parse_duration(text: str) -> float:
    """`500ms`, `10s`, `1m30s`, `1h` -> seconds. Raises ValueError."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 10s, 1m30s, 1h)")
    return total


Path_ = tuple[str | int, ...]
T = TypeVar("T")


def _path_text(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<top>"


class _Reader:
    """Walks the loaded YAML, converting and collecting every problem with its line."""

    def __init__(self, lines: dict[Path_, int]) -> None:
        self.lines = lines
        self.problems: list[str] = []

    def problem(self, path: Path_, message: str) -> None:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        where = f"line {line}: " if line else ""
        self.problems.append(f"{where}{_path_text(path)}: {message}")

    def mapping(
        self, value: Any, path: Path_, known: set[str], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, got {_kind(value)}")
            return None
        for key in value:
            if key not in known:
                hint = _closest(str(key), known)
                self.problem(
                    (*path, str(key)),
                    "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""),
                )
        for key in required:
            if key not in value:
                self.problem(path, f"missing required key {key!r}")
        return value

    def typed(self, value: Any, path: Path_, kind: type[T], what: str) -> T | None:
        if kind is int and isinstance(value, bool):
            value = None
        if not isinstance(value, kind):
            self.problem(path, f"must be {what}, got {_kind(value)}")
            return None
        return value

    def string(self, value: Any, path: Path_, *, non_empty: bool = True) -> str | None:
        """A string without NUL or control characters: every string of the config ends up
        in an argument, an environment, a path, an annotation or a name."""
        text = self.typed(value, path, str, "a string")
        if text is not None and non_empty and not text:
            self.problem(path, "must not be empty")
            return None
        if text is not None and (why := text_problem(text)):
            self.problem(path, why)
            return None
        return text

    def path(self, value: Any, path: Path_) -> str | None:
        text = self.string(value, path)
        if text is not None and (why := absolute_path_problem(text)):
            self.problem(path, why)
            return None
        return text

    def duration(self, value: Any, path: Path_, default: float, minimum: float) -> float:
        if value is None:
            return default
        text = self.string(value, path)
        if text is None:
            return default
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            self.problem(path, str(exc))
            return default
        if seconds < minimum:
            self.problem(path, f"must be at least {minimum:g}s")
        return seconds

    def integer(self, value: Any, path: Path_, default: int, lo: int, hi: int) -> int:
        if value is None:
            return default
        number = self.typed(value, path, int, "an integer")
        if number is None:
            return default
        if not lo <= number <= hi:
            self.problem(path, f"must be between {lo} and {hi}")
        return number

    def boolean(self, value: Any, path: Path_, default: bool) -> bool:
        if value is None:
            return default
        flag = self.typed(value, path, bool, "true or false")
        return default if flag is None else flag

    def choice(self, value: Any, path: Path_, default: str, options: tuple[str, ...]) -> str:
        if value is None:
            return default
        text = self.string(value, path)
        if text is not None and text not in options:
            self.problem(path, f"must be one of {', '.join(options)}; got {text!r}")
            return default
        return text if text is not None else default

    def argv(self, value: Any, path: Path_) -> tuple[str, ...]:
        if isinstance(value, str):
            self.problem(path, 'must be a list of arguments, e.g. ["sh", "-c", "..."]')
            return ()
        items = self.typed(value, path, list, "a list of strings")
        if items is None:
            return ()
        if not items:
            self.problem(path, "must not be empty")
        return tuple(self.string(v, (*path, i)) or "" for i, v in enumerate(items))

    def string_map(
        self, value: Any, path: Path_, key_check: Callable[[str], str | None] | None = None
    ) -> dict[str, str]:
        if value is None:
            return {}
        items = self.mapping(value, path, set(value) if isinstance(value, dict) else set())
        if items is None:
            return {}
        out: dict[str, str] = {}
        for key, item in items.items():
            item_path = (*path, str(key))
            if not isinstance(key, str) or not key:
                self.problem(item_path, "keys must be non-empty strings")
                continue
            if why := text_problem(key):
                self.problem(item_path, f"key {why}")
                continue
            if key_check and (why := key_check(key)):
                self.problem(item_path, why)
            if isinstance(item, bool | int | float):
                item = str(item).lower() if isinstance(item, bool) else str(item)
            text = self.string(item, item_path, non_empty=False)
            if text is not None:
                out[key] = text
        return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return found[0] if found else None


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute `{field}` for each field in `values`, in one pass; other braces stay as is.

    Used for every template of the config (allocate env and annotations, glob containerPath
    and numaNodeFile, health command arguments): nothing else is interpreted, so a stray
    brace can never raise.
    """
    return _TEMPLATE_FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _template_problem(text: str, allowed: frozenset[str]) -> str | None:
    for name in _TEMPLATE_FIELD.findall(text):
        if name not in allowed:
            return f"unknown template field {{{name}}}; use {', '.join(sorted(allowed))}"
    return None


GLOB_TEMPLATE_FIELDS = frozenset({"path", "name"})


def _container_path_template_problem(template: str) -> str | None:
    """A glob containerPath must give each device its own absolute path."""
    if why := _template_problem(template, GLOB_TEMPLATE_FIELDS):
        return why
    if not any(f"{{{name}}}" in template for name in GLOB_TEMPLATE_FIELDS):
        return (
            "must contain {name} or {path}: a fixed path would give every device the same "
            "container path, and the runtime would keep only one of them"
        )
    if why := absolute_path_problem(render_template(template, {"path": "/dev/x", "name": "x"})):
        return why
    return None


def _read_glob(r: _Reader, raw: Any, path: Path_) -> GlobDriverConfig | None:
    known = {"paths", "containerPath", "gracePeriod", "rescanInterval", "numaNode", "numaNodeFile"}
    spec = r.mapping(raw, path, known, ("paths",))
    if spec is None:
        return None
    paths: list[str] = []
    raw_paths = spec.get("paths")
    if isinstance(raw_paths, str):
        r.problem((*path, "paths"), "must be a list of glob patterns")
    elif "paths" in spec:
        items = r.typed(raw_paths, (*path, "paths"), list, "a list of glob patterns") or []
        if "paths" in spec and isinstance(raw_paths, list) and not raw_paths:
            r.problem((*path, "paths"), "must not be empty")
        for i, item in enumerate(items):
            pattern = r.path(item, (*path, "paths", i))
            if pattern is not None:
                paths.append(pattern)
    container_path = spec.get("containerPath")
    if container_path is not None:
        container_path = r.string(container_path, (*path, "containerPath"))
        if container_path and (why := _container_path_template_problem(container_path)):
            r.problem((*path, "containerPath"), why)
    numa_node = spec.get("numaNode")
    if numa_node is not None:
        numa_node = r.integer(numa_node, (*path, "numaNode"), 0, 0, 1023)
    numa_file = spec.get("numaNodeFile")
    if numa_file is not None:
        numa_file = r.string(numa_file, (*path, "numaNodeFile"))
        if numa_file and (why := _template_problem(numa_file, GLOB_TEMPLATE_FIELDS)):
            r.problem((*path, "numaNodeFile"), why)
    if numa_node is not None and numa_file is not None:
        r.problem(path, "numaNode and numaNodeFile are exclusive")
    return GlobDriverConfig(
        paths=tuple(paths),
        container_path=container_path,
        grace_period=r.duration(spec.get("gracePeriod"), (*path, "gracePeriod"), 60.0, 0.0),
        rescan_interval=r.duration(
            spec.get("rescanInterval"), (*path, "rescanInterval"), 30.0, 0.1
        ),
        numa_node=numa_node,
        numa_node_file=numa_file,
    )


def _read_shell(r: _Reader, raw: Any, path: Path_) -> ShellDriverConfig | None:
    known = {
        "command",
        "interval",
        "timeout",
        "format",
        "failureThreshold",
        "mode",
        "env",
        "workingDir",
    }
    spec = r.mapping(raw, path, known, ("command",))
    if spec is None:
        return None
    working_dir = spec.get("workingDir")
    if working_dir is not None:
        working_dir = r.path(working_dir, (*path, "workingDir"))
    fmt = r.choice(spec.get("format"), (*path, "format"), "lines", ("lines", "json"))
    mode = r.choice(spec.get("mode"), (*path, "mode"), "poll", ("poll", "stream"))
    return ShellDriverConfig(
        command=r.argv(spec.get("command"), (*path, "command")) if "command" in spec else (),
        interval=r.duration(spec.get("interval"), (*path, "interval"), 10.0, 0.05),
        timeout=r.duration(spec.get("timeout"), (*path, "timeout"), 5.0, 0.05),
        format="json" if fmt == "json" else "lines",
        failure_threshold=r.integer(
            spec.get("failureThreshold"), (*path, "failureThreshold"), 3, 1, 1000
        ),
        mode="stream" if mode == "stream" else "poll",
        env=r.string_map(spec.get("env"), (*path, "env"), env_name_problem),
        working_dir=working_dir,
    )


def _read_hex(r: _Reader, spec: dict[str, Any], key: str, path: Path_, digits: int) -> str | None:
    from ..sysfs.match import class_pattern_problem, hex_pattern_problem

    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, int) and not isinstance(value, bool):
        r.problem(
            (*path, key),
            f'write hex IDs as quoted strings ({key}: "0403"): YAML reads unquoted digits as a '
            "decimal or octal number",
        )
        return None
    text = r.string(value, (*path, key))
    if text is None:
        return None
    why = class_pattern_problem(text) if key == "class" else hex_pattern_problem(text, digits)
    if why:
        r.problem((*path, key), why)
        return None
    return text


def _read_optional_string(r: _Reader, spec: dict[str, Any], key: str, path: Path_) -> str | None:
    return r.string(spec[key], (*path, key)) if key in spec else None


def _match_entries(r: _Reader, raw: Any, path: Path_) -> list[tuple[Any, Path_]]:
    """A list of match entries, or one entry written as a mapping."""
    if isinstance(raw, dict):
        return [(raw, path)]
    items = r.typed(raw, path, list, "a list of match entries") or []
    if isinstance(raw, list) and not raw:
        r.problem(path, "must not be empty")
    return [(item, (*path, i)) for i, item in enumerate(items)]


def _read_sysfs(r: _Reader, raw: Any, path: Path_) -> SysfsDriverConfig | None:
    from ..sysfs.match import ATTRIBUTE_NAME
    from ..sysfs.model import TEMPLATE_FIELDS

    known = {
        "usb",
        "pci",
        "devices",
        "nodes",
        "sysfsRoot",
        "devRoot",
        "gracePeriod",
        "rescanInterval",
        "scanTimeout",
        "env",
        "annotations",
    }
    spec = r.mapping(raw, path, known)
    if spec is None:
        return None
    if not any(key in spec for key in ("usb", "pci", "devices")):
        r.problem(path, "needs at least one of usb, pci or devices")
    usb: list[UsbMatchConfig] = []
    for item, item_path in _match_entries(r, spec["usb"], (*path, "usb")) if "usb" in spec else []:
        keys = {"vendor", "product", "serial", "manufacturer", "productName", "interfaceClass"}
        m = r.mapping(item, item_path, keys)
        if m is None:
            continue
        if not m:
            r.problem(item_path, "must name at least one of " + ", ".join(sorted(keys)))
        usb.append(
            UsbMatchConfig(
                vendor=_read_hex(r, m, "vendor", item_path, 4),
                product=_read_hex(r, m, "product", item_path, 4),
                serial=_read_optional_string(r, m, "serial", item_path),
                manufacturer=_read_optional_string(r, m, "manufacturer", item_path),
                product_name=_read_optional_string(r, m, "productName", item_path),
                interface_class=_read_hex(r, m, "interfaceClass", item_path, 2),
            )
        )
    pci: list[PciMatchConfig] = []
    for item, item_path in _match_entries(r, spec["pci"], (*path, "pci")) if "pci" in spec else []:
        keys = {"vendor", "device", "subsystemVendor", "subsystemDevice", "class", "driver"}
        m = r.mapping(item, item_path, keys)
        if m is None:
            continue
        if not m:
            r.problem(item_path, "must name at least one of " + ", ".join(sorted(keys)))
        pci.append(
            PciMatchConfig(
                vendor=_read_hex(r, m, "vendor", item_path, 4),
                device=_read_hex(r, m, "device", item_path, 4),
                subsystem_vendor=_read_hex(r, m, "subsystemVendor", item_path, 4),
                subsystem_device=_read_hex(r, m, "subsystemDevice", item_path, 4),
                pci_class=_read_hex(r, m, "class", item_path, 6),
                driver=_read_optional_string(r, m, "driver", item_path),
            )
        )
    generic: list[SysfsMatchConfig] = []
    entries = _match_entries(r, spec["devices"], (*path, "devices")) if "devices" in spec else []
    for item, item_path in entries:
        m = r.mapping(item, item_path, {"bus", "class", "attributes", "driver"})
        if m is None:
            continue
        bus = _read_optional_string(r, m, "bus", item_path)
        device_class = _read_optional_string(r, m, "class", item_path)
        if (bus is None) == (device_class is None):
            r.problem(item_path, "needs exactly one of bus or class")
        for key, name in (("bus", bus), ("class", device_class)):
            if name is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
                r.problem((*item_path, key), "must be a name under /sys/bus or /sys/class")
        attributes = r.string_map(
            m.get("attributes"),
            (*item_path, "attributes"),
            lambda key: (
                None
                if ATTRIBUTE_NAME.fullmatch(key) and ".." not in key.split("/")
                else "must be an attribute file below the device (e.g. name, device/vendor)"
            ),
        )
        generic.append(
            SysfsMatchConfig(
                bus=bus,
                device_class=device_class,
                attributes=attributes,
                driver=_read_optional_string(r, m, "driver", item_path),
            )
        )
    nodes = None
    if "nodes" in spec:
        n = r.mapping(spec["nodes"], (*path, "nodes"), {"subsystems", "names"})
        if n is not None:
            lists: dict[str, tuple[str, ...]] = {}
            for key in ("subsystems", "names"):
                raw_list = n.get(key)
                if raw_list is None:
                    lists[key] = ()
                    continue
                values = r.typed(raw_list, (*path, "nodes", key), list, "a list of strings") or []
                lists[key] = tuple(
                    text.removeprefix("/dev/")
                    for i, item in enumerate(values)
                    if (text := r.string(item, (*path, "nodes", key, i))) is not None
                )
            nodes = NodeSelectConfig(subsystems=lists["subsystems"], names=lists["names"])
    roots: dict[str, str] = {}
    for key, default in (("sysfsRoot", "/sys"), ("devRoot", "/dev")):
        roots[key] = default
        if key in spec:
            text = r.string(spec[key], (*path, key))
            if text is not None:
                if not text.startswith("/"):
                    r.problem((*path, key), "must be an absolute path")
                roots[key] = text
    templates: dict[str, dict[str, str]] = {}
    for key, check in (("env", env_name_problem), ("annotations", annotation_key_problem)):
        templates[key] = r.string_map(spec.get(key), (*path, key), check)
        for name, text in templates[key].items():
            if why := _template_problem(text, TEMPLATE_FIELDS):
                r.problem((*path, key, name), why)
    return SysfsDriverConfig(
        usb=tuple(usb),
        pci=tuple(pci),
        devices=tuple(generic),
        nodes=nodes,
        sysfs_root=roots["sysfsRoot"],
        dev_root=roots["devRoot"],
        grace_period=r.duration(spec.get("gracePeriod"), (*path, "gracePeriod"), 60.0, 0.0),
        rescan_interval=r.duration(
            spec.get("rescanInterval"), (*path, "rescanInterval"), 30.0, 0.1
        ),
        scan_timeout=r.duration(spec.get("scanTimeout"), (*path, "scanTimeout"), 10.0, 0.1),
        env=templates["env"],
        annotations=templates["annotations"],
    )


def _read_health(r: _Reader, raw: Any, path: Path_) -> HealthCheckConfig | None:
    spec = r.mapping(raw, path, {"command", "interval", "timeout"}, ("command",))
    if spec is None or "command" not in spec:
        return None
    command = r.argv(spec["command"], (*path, "command"))
    for i, arg in enumerate(command):
        if why := _template_problem(arg, frozenset({"id", "path"})):
            r.problem((*path, "command", i), why)
    return HealthCheckConfig(
        command=command,
        interval=r.duration(spec.get("interval"), (*path, "interval"), 30.0, 0.05),
        timeout=r.duration(spec.get("timeout"), (*path, "timeout"), 5.0, 0.05),
    )


def _read_allocate(r: _Reader, raw: Any, path: Path_) -> AllocateConfig:
    known = {"env", "mounts", "annotations", "permissions", "cdi"}
    spec = r.mapping(raw, path, known)
    if spec is None:
        return AllocateConfig()
    env = r.string_map(spec.get("env"), (*path, "env"), env_name_problem)
    annotations = r.string_map(
        spec.get("annotations"), (*path, "annotations"), annotation_key_problem
    )
    for section, values in (("env", env), ("annotations", annotations)):
        for key, text in values.items():
            if why := _template_problem(text, ALLOCATE_TEMPLATE_FIELDS):
                r.problem((*path, section, key), why)
    mounts: list[MountConfig] = []
    raw_mounts = spec.get("mounts")
    if raw_mounts is not None:
        for i, item in enumerate(
            r.typed(raw_mounts, (*path, "mounts"), list, "a list of mounts") or []
        ):
            mount_path = (*path, "mounts", i)
            m = r.mapping(
                item,
                mount_path,
                {"hostPath", "containerPath", "readOnly"},
                ("hostPath", "containerPath"),
            )
            if m is None:
                continue
            host = r.path(m.get("hostPath"), (*mount_path, "hostPath")) if "hostPath" in m else None
            cont = (
                r.path(m.get("containerPath"), (*mount_path, "containerPath"))
                if "containerPath" in m
                else None
            )
            if host and cont:
                mounts.append(
                    MountConfig(
                        host, cont, r.boolean(m.get("readOnly"), (*mount_path, "readOnly"), True)
                    )
                )
    permissions = "rw"
    if "permissions" in spec:
        permissions = r.string(spec["permissions"], (*path, "permissions")) or "rw"
        if not set(permissions) <= PERMISSION_CHARS or len(set(permissions)) != len(permissions):
            r.problem((*path, "permissions"), "must be made of r, w and m, each at most once")
    cdi = None
    if "cdi" in spec:
        c = r.mapping(
            spec["cdi"], (*path, "cdi"), {"kind", "alsoDeviceSpecs", "specDir"}, ("kind",)
        )
        if c is not None and "kind" in c:
            kind = r.string(c["kind"], (*path, "cdi", "kind")) or ""
            if kind and (why := cdi_kind_problem(kind)):
                r.problem((*path, "cdi", "kind"), why)
            spec_dir = c.get("specDir")
            if spec_dir is not None:
                spec_dir = r.path(spec_dir, (*path, "cdi", "specDir"))
            cdi = CdiConfig(
                kind=kind,
                also_device_specs=r.boolean(
                    c.get("alsoDeviceSpecs"), (*path, "cdi", "alsoDeviceSpecs"), False
                ),
                spec_dir=spec_dir,
            )
    return AllocateConfig(
        env=env, mounts=tuple(mounts), annotations=annotations, permissions=permissions, cdi=cdi
    )


_RESOURCE_KEYS = {"name", "glob", "shell", "sysfs", "health", "allocate", "replicas", "preferred"}
_DRIVER_KEYS = ("glob", "shell", "sysfs")


def _read_resource(r: _Reader, raw: Any, path: Path_) -> ResourceConfig | None:
    spec = r.mapping(raw, path, _RESOURCE_KEYS, ("name",))
    if spec is None:
        return None
    name = r.string(spec.get("name"), (*path, "name")) if "name" in spec else None
    if name is not None and (why := extended_resource_name_problem(name)):
        r.problem((*path, "name"), f"{name!r} is not a valid extended resource name: {why}")
    drivers = [key for key in _DRIVER_KEYS if key in spec]
    if len(drivers) != 1:
        r.problem(
            path,
            f"needs exactly one driver ({', '.join(_DRIVER_KEYS[:-1])} or {_DRIVER_KEYS[-1]}), got "
            + (", ".join(drivers) if drivers else "none"),
        )
    driver: DriverConfig | None = None
    if "glob" in spec:
        driver = _read_glob(r, spec["glob"], (*path, "glob"))
    if "shell" in spec:
        driver = _read_shell(r, spec["shell"], (*path, "shell"))
    if "sysfs" in spec:
        driver = _read_sysfs(r, spec["sysfs"], (*path, "sysfs"))
    health = _read_health(r, spec["health"], (*path, "health")) if "health" in spec else None
    allocate = _read_allocate(r, spec.get("allocate"), (*path, "allocate"))
    replicas = r.integer(spec.get("replicas"), (*path, "replicas"), 1, 1, MAX_REPLICAS)
    preferred = r.choice(
        spec.get("preferred"), (*path, "preferred"), "packed", ("packed", "spread", "numa", "none")
    )
    if name is None or driver is None:
        return None
    return ResourceConfig(
        name=name,
        driver=driver,
        allocate=allocate,
        health=health,
        replicas=replicas,
        preferred=preferred,  # type: ignore[arg-type]
    )


def _read_listen(r: _Reader, raw: Any, path: Path_) -> MetricsConfig:
    text = r.string(raw, path)
    if text is None:
        return MetricsConfig()
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        r.problem(path, f"must be host:port, e.g. 0.0.0.0:9410; got {text!r}")
        return MetricsConfig()
    return MetricsConfig(host=host or "0.0.0.0", port=int(port_text))


def config_from_data(
    data: Any, lines: dict[Path_, int], source: str, problems: Sequence[str] = ()
) -> Config:
    r = _Reader(lines)
    r.problems.extend(problems)
    top = r.mapping(data, (), {"kubelet", "metrics", "resources"}, ("resources",))
    if top is None:
        raise ConfigError(source, r.problems)
    kubelet = KubeletConfig()
    k = r.mapping(top.get("kubelet"), ("kubelet",), {"socketDir"})
    if k and "socketDir" in k:
        socket_dir = r.path(k["socketDir"], ("kubelet", "socketDir"))
        if socket_dir is not None:
            kubelet = KubeletConfig(socket_dir=socket_dir)
    metrics = MetricsConfig()
    m = r.mapping(top.get("metrics"), ("metrics",), {"listen", "histograms"})
    if m and "listen" in m:
        metrics = _read_listen(r, m["listen"], ("metrics", "listen"))
    if m and "histograms" in m:
        mode = r.choice(
            m["histograms"], ("metrics", "histograms"), DEFAULT_HISTOGRAM_MODE, HISTOGRAM_MODES
        )
        metrics = dataclasses.replace(
            metrics, histograms=next(h for h in HISTOGRAM_MODES if h == mode)
        )
    resources: list[ResourceConfig] = []
    raw_resources = top.get("resources")
    if "resources" in top:
        items = r.typed(raw_resources, ("resources",), list, "a list of resources") or []
        if isinstance(raw_resources, list) and not raw_resources:
            r.problem(("resources",), "must declare at least one resource")
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            resource = _read_resource(r, item, ("resources", i))
            if resource is None:
                continue
            if resource.name in seen:
                r.problem(
                    ("resources", i, "name"),
                    f"duplicate name {resource.name!r} (also resources[{seen[resource.name]}])",
                )
            seen.setdefault(resource.name, i)
            resources.append(resource)
    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(kubelet=kubelet, metrics=metrics, resources=tuple(resources))


def load_config_text(text: str, source: str = "<config>") -> Config:
    """Parse and validate config text. Raises ConfigError listing every problem."""
    try:
        parsed = parse_config_text(text)
    except SourceError as exc:
        raise ConfigError(source, exc.problems) from None
    parsed.sha256 = hashlib.sha256(text.encode()).hexdigest()
    return _config_from_source(parsed, source)


def load_config(path: Path) -> Config:
    """Read, decode (strict UTF-8), parse and validate a config file: the one way start-up
    and live reload read it. Raises ConfigError listing every problem; the work is bounded
    (see `source`), so a hostile file costs little and never raises anything else."""
    try:
        parsed = read_config_source(path)
    except SourceError as exc:
        raise ConfigError(str(path), exc.problems) from None
    return _config_from_source(parsed, str(path))


def _config_from_source(parsed: ConfigSource, source: str) -> Config:
    config = config_from_data(parsed.data, parsed.lines, source, parsed.problems)
    return Config(config.kubelet, config.metrics, config.resources, sha256=parsed.sha256)
