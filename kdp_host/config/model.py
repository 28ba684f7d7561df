"""The config file, declared once: every key's type, default, constraints and doc.

Each section of the file is a frozen dataclass below; each field that is a YAML key is
declared with `key(yaml_name, kind, doc, default=...)` (see declare.py; kinds.py). From these
declarations follow the loader (`read_section`: field path and line in every error, all
errors of a file together), config/schema.json and the chart's values.schema.json, and the
README's reference tables (`make schema` writes them; tests fail when they are stale), and
the check that config/example.yaml shows every key.

To add a key: add one field to its section here, with its kind, its default in YAML form and
its doc; run `make schema`; show it in config/example.yaml; test what it does. Nothing else
lists keys or defaults.

To add a driver: write its section dataclass here (its keys declared with `key`, plus a
`kind: Literal["name"] = field(default="name", init=False)` tag), add it to `DRIVERS`
(the `one_of` of a resource), add it to `DriverConfig`, and give it a README table in
`README_TABLES` (with a `<!-- config-table: name -->` marker pair in README.md). Other
sections (preStart hooks, allocate.command) are a dataclass and a `key(..., Section(...))`.

Python wants a section's required keys (no default) before its optional ones; a section where
that order reads badly is declared `kw_only=True` (like Config).

Rules that span keys live in a section's `check` method, yielding (relative path, problem).
Text rules (names, paths, env names, annotation keys) come from kdp_host/rules.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..cdi_rules import (
    CDI_KIND_PATTERN,
    cdi_annotation_names,
    cdi_kind_problem,
    cdi_name_parts,
    is_cdi_annotation_key,
)
from ..endpoint import SOCKET_NAME_MIN_LENGTH, socket_slug
from ..k8s_names import (
    EXTENDED_RESOURCE_NAME_NOT_PATTERN,
    EXTENDED_RESOURCE_NAME_PATTERN,
    annotation_key_problem,
    extended_resource_name_problem,
    label_key_problem,
    label_value_problem,
    node_feature_label_problem,
)
from ..metric_labels import DEFAULT_HISTOGRAM_MODE, HISTOGRAM_MODES, HistogramMode
from ..rules import (
    ENV_NAME_PATTERN,
    GLOB_MAGIC,
    MAX_ALLOCATE_TIMEOUT,
    MAX_NUMA_NODE,
    MAX_PRE_START_TIMEOUT,
    PATTERN_SPELLING,
    absolute_path_problem,
    container_path_problem,
    env_name_problem,
    normal_form_problem,
    path_inside,
    socket_path_problem,
    sysfs_name_problem,
)
from ..sysfs.entry import DEFAULT_SCAN_TIMEOUT
from ..sysfs.entry import TEMPLATE_FIELDS as SYSFS_TEMPLATE_FIELDS
from ..sysfs.match import ATTRIBUTE_NAME, class_pattern_problem, hex_pattern_problem
from .declare import Key, Section, declarations, key, one_of
from .kinds import (
    INVALID,
    AbsolutePath,
    Argv,
    Boolean,
    Choice,
    Duration,
    Integer,
    Kind,
    ListOf,
    Reader,
    StringMap,
    Text,
)
from .source import FieldPath
from .syntax import render_template, template_fields

MAX_REPLICAS = 10_000
ALLOCATE_TEMPLATE_FIELDS = frozenset({"ids", "paths", "count", "resource"})
HOOK_TEMPLATE_FIELDS = ALLOCATE_TEMPLATE_FIELDS | {"hostPaths"}
"""Templates of the preStart and allocate commands: the allocate ones, plus the host paths
(the commands run on the host)."""
MAX_PRE_START_PARALLELISM = 64
MIN_POD_RESOURCES_INTERVAL = 1.0
"""The shortest PodResources poll interval (the kubelet's limit is shared by all clients)."""
NODE_LABEL_SETTLE = 2.0
"""Seconds a node-label change settles before it is applied: the changes that follow the
first within this window are applied with it, once (the labels as they are when it closes),
so a label flapping on/off/on reloads the entries it selects once, not three times."""
MAX_GID = 2**32 - 2
"""Highest group ID (2^32 - 1 is the kernel's "no group")."""
GLOB_TEMPLATE_FIELDS = frozenset({"path", "name"})
GROUP_KEY = "{key}"
"""The placeholder of a glob group member's path: the part of a matched path that names its
group (matches like `*`, within one path component)."""
GROUP_TEMPLATE_FIELDS = GLOB_TEMPLATE_FIELDS | {"key", "target"}
HEALTH_TEMPLATE_FIELDS = frozenset({"id", "path"})
PERMISSION_CHARS = frozenset("rwm")
PERMISSIONS_PATTERN = "^[rwm]{1,3}$"
"""The permissions rule as far as JSON Schema can say it without back-references (Helm reads
the chart's schema with Go's RE2): `_permissions_problem` also refuses a letter twice."""
_PORT = re.compile(r"[0-9]{1,5}")
LISTEN_PATTERN = f"^.*:{_PORT.pattern}$"
"""The listen rule (`_listen_problem`) as the schema's pattern, less the port's upper bound."""
_FILE_MODE = re.compile(r"0?[0-7]{3}")
FILE_MODE_PATTERN = f"^{_FILE_MODE.pattern}$"
"""The file mode rule (`_file_mode_problem`), as the schema's pattern."""
ENV_PATTERN = f"^{ENV_NAME_PATTERN}$"
"""The env name rule as far as JSON Schema can say it (rules.env_name_problem is exact)."""

Problems = Iterator[tuple[FieldPath, str]]


def _container_path_template_problem(template: str) -> str | None:
    """A glob containerPath must give each device its own absolute path."""
    if not template_fields(template) & GLOB_TEMPLATE_FIELDS:
        return (
            "must contain {name} or {path}: a fixed path would give every device the same "
            "container path, and the runtime would keep only one of them"
        )
    return _rendered_device_path_problem(template)


def _render_example(template: str) -> str:
    return render_template(
        template, {"path": "/dev/x", "name": "x", "key": "x", "target": "/dev/x"}
    )


def _rendered_path_problem(template: str) -> str | None:
    return absolute_path_problem(_render_example(template))


def _rendered_device_path_problem(template: str) -> str | None:
    """A device node's container path, also listed in `{paths}`: rules.container_path_problem."""
    return container_path_problem(_render_example(template), device_node=True)


def _mount_container_path_problem(path: str) -> str | None:
    return container_path_problem(path, device_node=False)


def _pattern_problem(path: str) -> str | None:
    return normal_form_problem(path, PATTERN_SPELLING)


def _member_path_problem(path: str) -> str | None:
    if why := _pattern_problem(path):
        return why
    placeholders = re.findall(r"\{[^{}/]*\}", path)
    if any(p != GROUP_KEY for p in placeholders):
        return f"the only placeholder of a member path is {GROUP_KEY}"
    if len(placeholders) > 1:
        return f"{GROUP_KEY} may appear at most once"
    if GROUP_KEY in path and path.rindex(GROUP_KEY) < path.rfind("/", 0, 1):
        return f"{GROUP_KEY} must not be in the root directory"
    return None


def _permissions_problem(text: str) -> str | None:
    if not set(text) <= PERMISSION_CHARS or len(set(text)) != len(text):
        return "must be made of r, w and m, each at most once"
    return None


def _file_mode_problem(text: str) -> str | None:
    if not _FILE_MODE.fullmatch(text):
        return 'must be an octal mode such as "0660" (quoted: YAML reads 0660 as a number)'
    return None


def _listen_problem(text: str) -> str | None:
    _, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
        return f"must be host:port, e.g. 0.0.0.0:9410; got {text!r}"
    return None


@dataclass(frozen=True)
class GlobGroupMemberConfig:
    """One member of a glob group: the paths it matches for one group key are part of that
    group's device."""

    path: str = key(
        "path",
        AbsolutePath(rule=_member_path_problem),
        "An absolute glob pattern with `{key}` where the group key is (`/dev/xdma{key}_user`). "
        "Members without `{key}` belong to every group.",
    )
    container_path: str | None = key(
        "containerPath",
        Text(rule=_rendered_device_path_problem, templates=GROUP_TEMPLATE_FIELDS),
        "Path inside the container; a template with `{path}`, `{name}`, `{key}` and `{target}` "
        "(the real path: `/dev/dri/by-path/pci-{key}-card` with `{target}` is `/dev/dri/card1`).",
        default=None,
        default_doc="the matched path",
    )
    optional: bool = key(
        "optional",
        Boolean(),
        "The group is complete without this member; a missing optional path is not passed.",
        default=False,
    )
    mount: bool = key(
        "mount",
        Boolean(),
        "Bind-mount the matched path instead of passing it as a device node. A directory is "
        "always mounted.",
        default=False,
    )
    read_only: bool = key("readOnly", Boolean(), "Mounts: read-only.", default=True)
    permissions: str | None = key(
        "permissions",
        Text(rule=_permissions_problem, extra_schema={"pattern": PERMISSIONS_PATTERN}),
        "Device nodes: cgroup permissions of this member's nodes.",
        default=None,
        default_doc="`allocate.permissions`",
    )

    @property
    def keyed(self) -> bool:
        return GROUP_KEY in self.path

    @property
    def several_per_group(self) -> bool:
        """Whether the member may match several paths of one group (a glob besides `{key}`)."""
        return bool(GLOB_MAGIC.search(self.path.replace(GROUP_KEY, "")))


def _group_problems(members: tuple[GlobGroupMemberConfig, ...]) -> Problems:
    """Member container paths that would collide in every allocation: known from the file."""
    fixed: dict[str, int] = {}
    for index, member in enumerate(members):
        template = member.container_path
        if template is None:
            continue
        where = ("group", index, "containerPath")
        per_path = any(f"{{{name}}}" in template for name in ("name", "path", "target"))
        if member.several_per_group and not per_path:
            yield (
                where,
                "must contain {name}, {path} or {target}: this member may match several paths "
                "of one group, and they would share one container path",
            )
        elif member.keyed and not per_path and GROUP_KEY not in template:
            yield (
                where,
                "must contain {key}, {name}, {path} or {target}: every group would get this "
                "member at the same container path, and a container with two devices would "
                "keep only one",
            )
        if not per_path:
            first = fixed.setdefault(template, index)
            if first != index:
                yield (where, f"is also the containerPath of group[{first}]")


@dataclass(frozen=True)
class GlobDriverConfig:
    """`glob`: each path matching the patterns is one device."""

    paths: tuple[str, ...] = key(
        "paths",
        ListOf(AbsolutePath(rule=_pattern_problem), hint="a list of glob patterns"),
        "Absolute glob patterns (`/dev/fpga[0-9]*`, `/dev/serial/by-id/usb-FTDI_*`, "
        "`/dev/bus/usb/*/*`), in normal form (no `.`, `..`, `//` or trailing `/`).",
        default=[],
        default_doc="required (or `group`)",
    )
    group: tuple[GlobGroupMemberConfig, ...] = key(
        "group",
        ListOf(Section(GlobGroupMemberConfig), hint="a list of members"),
        "Instead of `paths`: each device is a group of paths, those of every member that "
        "share one `{key}` (below).",
        default=[],
    )
    container_path: str | None = key(
        "containerPath",
        Text(rule=_container_path_template_problem, templates=GLOB_TEMPLATE_FIELDS),
        "Path inside the container; a template with `{path}` (matched path) and `{name}` "
        "(its file name). It must contain one of them: a fixed path would map every device "
        "to the same container path. `{name}` of paths in several directories may still "
        "give two devices one container path (see `preferred`).",
        default=None,
        default_doc="the matched path",
    )
    grace_period: float = key(
        "gracePeriod",
        Duration(minimum=0.0),
        "A vanished path is reported Unhealthy at once (allocatable drops) and removed from "
        "the list after this; if it comes back first it is Healthy again. `0s` removes it at "
        "once.",
        default="1m",
    )
    rescan_interval: float = key(
        "rescanInterval",
        Duration(minimum=0.1),
        "A full rescan as a safety net. Changes are seen through inotify on the patterns' "
        "directories within milliseconds; without inotify, directories are polled every "
        "second (inode and change time).",
        default="30s",
    )
    numa_node: int | None = key(
        "numaNode",
        Integer(0, MAX_NUMA_NODE),
        "A fixed NUMA node for every device.",
        default=None,
    )
    numa_node_file: str | None = key(
        "numaNodeFile",
        Text(rule=_rendered_path_problem, templates=GLOB_TEMPLATE_FIELDS),
        "A file holding the NUMA node, a template with `{name}` and `{path}` (e.g. "
        "`/sys/class/fpga/{name}/device/numa_node`); `-1` or a missing file means no "
        "topology.",
        default=None,
    )

    kind: Literal["glob"] = field(default="glob", init=False)

    def check(self) -> Problems:
        if self.numa_node is not None and self.numa_node_file is not None:
            yield (), "numaNode and numaNodeFile are exclusive"
        if bool(self.paths) == bool(self.group):
            yield (), "needs exactly one of paths or group"
        if self.group:
            if self.container_path is not None:
                yield ("containerPath",), "with group, containerPath is set per member"
            yield from _group_problems(self.group)


@dataclass(frozen=True)
class ShellDriverConfig:
    """`shell`: a command prints the devices, run every `interval`."""

    command: tuple[str, ...] = key("command", Argv(), "The argv list.")
    interval: float = key(
        "interval",
        Duration(0.05),
        "Poll mode: run every interval (not before the host has taken the last list).",
        default="10s",
    )
    timeout: float = key("timeout", Duration(0.05), "Kill the run after this.", default="5s")
    format: Literal["lines", "json"] = key(
        "format", Choice(("lines", "json")), "`lines` or `json` (below).", default="lines"
    )
    failure_threshold: int = key(
        "failureThreshold",
        Integer(1, 1000),
        "A failed run (non-zero exit, timeout, unparsable output) keeps the last good list; "
        "after this many failures in a row every device is reported Unhealthy until a run "
        "succeeds again.",
        default=3,
    )
    mode: Literal["poll", "stream"] = key(
        "mode",
        Choice(("poll", "stream")),
        "`stream`: the command runs for ever and prints a complete list whenever it changes "
        "(one JSON document per line, or for `lines` a block ended by a blank line); each "
        "list is applied at once. If it exits it is restarted with backoff.",
        default="poll",
    )
    env: Mapping[str, str] = key(
        "env",
        StringMap(env_name_problem, key_pattern=ENV_PATTERN),
        "Extra environment variables for the command (every absolute path in a value, and "
        "the places `PATH`, `LD_*` and the other variables that decide what a process runs "
        "or loads name, may not be handed writable, nor anything in them: see Paths no "
        "container is handed).",
        default={},
    )
    working_dir: str | None = key(
        "workingDir", AbsolutePath(), "The working directory (absolute).", default=None
    )

    kind: Literal["shell"] = field(default="shell", init=False)


@dataclass(frozen=True)
class HexId(Kind):
    """A hex ID (`10c4`, `0x10C4`) or a glob of one, of at most `digits` digits; PCI `class`
    also takes a prefix or `value/mask`. Unquoted digits are refused: YAML reads `0403` as
    a number."""

    digits: int
    pci_class: bool = False

    def read(self, r: Reader, value: Any, path: FieldPath) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            name = path[-1]
            r.problem(
                path,
                f'write hex IDs as quoted strings ({name}: "0403"): YAML reads unquoted digits '
                "as a decimal or octal number",
            )
            return INVALID
        text = Text().read(r, value, path)
        if text is INVALID:
            return INVALID
        why = (
            class_pattern_problem(text)
            if self.pci_class
            else hex_pattern_problem(text, self.digits)
        )
        if why:
            r.problem(path, why)
            return INVALID
        return text

    def schema(self) -> dict[str, Any]:
        if self.pci_class:
            pattern, text = r"^[0-9a-fA-FxX*?\[\]!/-]+$", "a prefix, the full class, value/mask"
        else:
            pattern, text = r"^(0[xX])?[0-9a-fA-F*?\[\]!-]+$", "hex, with or without 0x"
        return {"type": "string", "pattern": pattern, "description": f"{text} or a glob; quote it"}


def _at_least_one(section: object) -> Problems:
    declared = list(declarations(type(section)))
    if all(getattr(section, f.name) in (None, (), {}) for f, _ in declared):
        names = sorted(d.name for _, d in declared if isinstance(d, Key))
        yield (), f"must name at least one of {', '.join(names)}"


@dataclass(frozen=True)
class UsbMatchConfig:
    """One `sysfs.usb` entry: every given field must match (hex IDs, or globs)."""

    vendor: str | None = key(
        "vendor", HexId(4), 'USB vendor ID (`idVendor`), quoted: `"0403"`.', default=None
    )
    product: str | None = key("product", HexId(4), "USB product ID (`idProduct`).", default=None)
    serial: str | None = key("serial", Text(), "Serial number (a glob).", default=None)
    manufacturer: str | None = key(
        "manufacturer", Text(), "Manufacturer string (a glob).", default=None
    )
    product_name: str | None = key("productName", Text(), "Product string (a glob).", default=None)
    interface_class: str | None = key(
        "interfaceClass",
        HexId(2),
        "Matches when any interface of the device has this class (`01` audio, `02` CDC-ACM, "
        "`0e` video, `ff` vendor specific).",
        default=None,
    )

    def check(self) -> Problems:
        return _at_least_one(self)


@dataclass(frozen=True)
class PciMatchConfig:
    """One `sysfs.pci` entry: every given field must match."""

    vendor: str | None = key("vendor", HexId(4), "PCI vendor ID.", default=None)
    device: str | None = key("device", HexId(4), "PCI device ID.", default=None)
    subsystem_vendor: str | None = key(
        "subsystemVendor", HexId(4), "PCI subsystem vendor ID.", default=None
    )
    subsystem_device: str | None = key(
        "subsystemDevice", HexId(4), "PCI subsystem device ID.", default=None
    )
    pci_class: str | None = key(
        "class",
        HexId(6, pci_class=True),
        "A prefix (`03`, `0302`), the full `030200`, `value/mask`, or a glob.",
        default=None,
    )
    driver: str | None = key(
        "driver",
        Text(),
        "The bound kernel driver (a glob); `vfio-pci` also passes `/dev/vfio/<group>` and "
        "`/dev/vfio/vfio`.",
        default=None,
    )

    def check(self) -> Problems:
        return _at_least_one(self)


def _attribute_problem(name: str) -> str | None:
    if ATTRIBUTE_NAME.fullmatch(name) and ".." not in name.split("/"):
        return None
    return "must be an attribute file below the device (e.g. name, device/vendor)"


@dataclass(frozen=True)
class SysfsMatchConfig:
    """One `sysfs.devices` entry: devices of any bus or class, by attribute values."""

    bus: str | None = key(
        "bus", Text(rule=sysfs_name_problem), "A bus under /sys/bus.", default=None
    )
    device_class: str | None = key(
        "class", Text(rule=sysfs_name_problem), "A class under /sys/class.", default=None
    )
    attributes: Mapping[str, str] = key(
        "attributes",
        StringMap(_attribute_problem),
        "Attribute file (relative to the device directory) -> exact value or glob.",
        default={},
    )
    driver: str | None = key("driver", Text(), "The bound kernel driver (a glob).", default=None)
    name: str | None = key(
        "name",
        Text(),
        "The device's kernel name (`vda`, `video0`, `virtio3`; a glob). Some kernel names "
        "follow probe order and may name another device after a reboot.",
        default=None,
    )

    def check(self) -> Problems:
        if (self.bus is None) == (self.device_class is None):
            yield (), "needs exactly one of bus or class"


@dataclass(frozen=True)
class NodeSelectConfig:
    """Which of a matched device's nodes go to the container (all when empty)."""

    subsystems: tuple[str, ...] = key(
        "subsystems",
        ListOf(Text(), hint="a list of strings", empty=None),
        "Subsystems of the nodes to pass (tty, usb, drm, block, nvme, misc, vfio, "
        "video4linux, sound...). A device with no node passing the filter is Unhealthy.",
        default=[],
    )
    names: tuple[str, ...] = key(
        "names",
        ListOf(
            Text(convert=lambda name: name.removeprefix("/dev/")),
            hint="a list of strings",
            empty=None,
        ),
        "Globs on the node's name relative to /dev (`ttyUSB*`, `dri/renderD*`).",
        default=[],
    )


@dataclass(frozen=True)
class SysfsDriverConfig:
    """`sysfs`: the USB and PCI devices of sysfs that match, with their nodes."""

    usb: tuple[UsbMatchConfig, ...] = key(
        "usb",
        ListOf(Section(UsbMatchConfig), hint="a list of match entries", single=True),
        "USB devices: a list of matches (any entry matches; every field given must match).",
        default=[],
    )
    pci: tuple[PciMatchConfig, ...] = key(
        "pci",
        ListOf(Section(PciMatchConfig), hint="a list of match entries", single=True),
        "PCI devices: a list of matches.",
        default=[],
    )
    devices: tuple[SysfsMatchConfig, ...] = key(
        "devices",
        ListOf(Section(SysfsMatchConfig), hint="a list of match entries", single=True),
        "Devices of any bus or class, by attribute files below the device.",
        default=[],
    )
    usb_id_from: Literal["serial", "port"] = key(
        "usbIdFrom",
        Choice(("serial", "port")),
        "A USB device's ID: `serial` (its serial, else its port path, so a stick keeps its "
        "ID in any port; of two present sticks with one serial only one is advertised) or "
        "`port` (always its port path: for sticks whose serials are not unique).",
        default="serial",
    )
    nodes: NodeSelectConfig | None = key(
        "nodes",
        Section(NodeSelectConfig),
        "Which device nodes a container gets (default: every node the kernel made for the device).",
        default=None,
    )
    sysfs_root: str = key(
        "sysfsRoot", AbsolutePath(), "Where kdp-host sees the host's /sys.", default="/sys"
    )
    dev_root: str = key(
        "devRoot",
        AbsolutePath(),
        "Where kdp-host sees the host's /dev: a node is claimed and checked as found there, "
        "and DeviceSpecs always name the host's /dev.",
        default="/dev",
    )
    grace_period: float = key(
        "gracePeriod",
        Duration(0.0),
        "A vanished device or lost node is Unhealthy at once and dropped after this.",
        default="1m",
    )
    rescan_interval: float = key(
        "rescanInterval",
        Duration(0.1),
        "A full rescan as a safety net; skipped while no watched /dev directory changed, "
        "at most 10 times in a row.",
        default="30s",
    )
    scan_timeout: float = key(
        "scanTimeout",
        Duration(0.1),
        "A sysfs read that takes longer (a hung attribute) is abandoned and counted "
        "(`reason=timeout`); the last list stays, and no second read starts while it lasts.",
        default=f"{DEFAULT_SCAN_TIMEOUT:g}s",
    )
    env: Mapping[str, str] = key(
        "env",
        StringMap(env_name_problem, templates=SYSFS_TEMPLATE_FIELDS, key_pattern=ENV_PATTERN),
        "Per-device environment templates (several devices: distinct values joined with `,`): "
        + " ".join(f"`{{{name}}}`" for name in sorted(SYSFS_TEMPLATE_FIELDS))
        + ".",
        default={},
    )
    annotations: Mapping[str, str] = key(
        "annotations",
        StringMap(annotation_key_problem, templates=SYSFS_TEMPLATE_FIELDS),
        "Per-device annotation templates; same fields.",
        default={},
    )

    kind: Literal["sysfs"] = field(default="sysfs", init=False)

    def check(self) -> Problems:
        if not (self.usb or self.pci or self.devices):
            yield (), "needs at least one of usb, pci or devices"


DriverConfig = GlobDriverConfig | ShellDriverConfig | SysfsDriverConfig
DRIVERS: Mapping[str, type[DriverConfig]] = {
    "glob": GlobDriverConfig,
    "shell": ShellDriverConfig,
    "sysfs": SysfsDriverConfig,
}
"""The driver sections a resource can have, by YAML key: exactly one per resource."""


@dataclass(frozen=True)
class HealthCheckConfig:
    """`healthCheck`: a command that says whether each device is healthy."""

    command: tuple[str, ...] = key(
        "command",
        Argv(templates=HEALTH_TEMPLATE_FIELDS),
        "argv run per device; `{id}` and `{path}` are substituted inside the arguments "
        "(never through a shell). Exit 0 = Healthy; anything else or a timeout = Unhealthy, "
        "until a check passes again.",
    )
    interval: float = key(
        "interval", Duration(0.05), "How often each device is checked.", default="30s"
    )
    timeout: float = key("timeout", Duration(0.05), "Same containment as probes.", default="5s")


@dataclass(frozen=True)
class MountConfig:
    """One entry of `allocate.mounts`: a host path mounted into the container."""

    host_path: str = key(
        "hostPath",
        AbsolutePath(),
        "Absolute path on the host. Not `/`, nor in or holding `/proc` or a mount of the "
        "kernel's file systems (procfs anywhere; sysfs, cgroupfs and the like when "
        "`readOnly: false`), the kubelet's directories, `stateDir`, the config file or a "
        "directory kdp-host writes a file in (CDI spec, node features), by identity: a hard "
        "link or bind mount of one is one too (see "
        "[Paths no container is handed](#paths-no-container-is-handed)). It must exist where "
        "kdp-host sees it when an Allocate hands it out (in the chart: mounted into "
        "kdp-host's container, `hostMounts.extra`): while it is missing (or refused) the "
        "resource's devices are advertised Unhealthy and its Allocates refused, and `/readyz` "
        "names it; back once it is there (see [What an answer needs](#what-an-answer-needs); "
        "`check` warns).",
    )
    container_path: str = key(
        "containerPath",
        AbsolutePath(rule=_mount_container_path_problem),
        "Absolute path in the container, in normal form (no `.`, `..` or `//`).",
    )
    read_only: bool = key("readOnly", Boolean(), "Mount read-only.", default=True)


@dataclass(frozen=True)
class CdiConfig:
    """`allocate.cdi`: CDI devices named in the Allocate answer, their spec written."""

    kind: str = key(
        "kind",
        Text(
            rule=cdi_kind_problem,
            extra_schema={"pattern": CDI_KIND_PATTERN},
        ),
        "Return CDI device names `<kind>=<resource>:<id>` (the resource with its `/` as `_`: "
        "`vendor.example/fpga=vendor.example_fpga:fpga0`; one per ID the kubelet sees, a "
        "replica's escaped) instead of raw device nodes, and keep a CDI spec file current.",
    )
    also_device_specs: bool = key(
        "alsoDeviceSpecs", Boolean(), "Return the raw device nodes too.", default=False
    )
    spec_dir: str | None = key(
        "specDir",
        AbsolutePath(),
        "Where the CDI spec file is written (atomically; removed when the resource goes away, "
        "its held entries kept while pods hold them). "
        "Not inside the kubelet's directories or `stateDir`, nor another file kdp-host writes "
        "(see [Paths kdp-host writes](#paths-kdp-host-writes)).",
        default=None,
        default_doc="`/var/run/cdi`",
    )
    device_gid: int | None = key(
        "deviceGid",
        Integer(0, MAX_GID),
        "Group of the device nodes inside the container (CDI `gid`); with `deviceFileMode` "
        "a non-root container in that group can open them. See "
        "[docs/non-root-containers.md](docs/non-root-containers.md).",
        default=None,
    )
    device_file_mode: str | None = key(
        "deviceFileMode",
        Text(rule=_file_mode_problem, extra_schema={"pattern": FILE_MODE_PATTERN}),
        "Mode of the device nodes inside the container (CDI `fileMode`), an octal string: "
        '`"0660"`.',
        default=None,
    )
    additional_gids: tuple[int, ...] = key(
        "additionalGids",
        ListOf(Integer(0, MAX_GID), hint="a list of group IDs", empty=None),
        "Supplementary groups of the container's processes (CDI `additionalGids`). The spec "
        "then declares cdiVersion 0.7.0: the runtime's CDI library must know that version "
        "(container-device-interface v0.7 or newer), or it refuses the whole spec.",
        default=[],
    )


@dataclass(frozen=True)
class AllocateConfig:
    """`allocate`: what a container is given with its devices."""

    env: Mapping[str, str] = key(
        "env",
        StringMap(env_name_problem, templates=ALLOCATE_TEMPLATE_FIELDS, key_pattern=ENV_PATTERN),
        "Environment variables (names as the kubelet accepts them: letters, digits, `_`, "
        "`-`, `.`, not starting with a digit); values are templates: `{ids}` (the allocated "
        "IDs, comma-separated), `{paths}` (their container paths), `{count}`, `{resource}`.",
        default={},
    )
    mounts: tuple[MountConfig, ...] = key(
        "mounts", ListOf(Section(MountConfig), hint="a list of mounts"), "", default=[]
    )
    annotations: Mapping[str, str] = key(
        "annotations",
        StringMap(annotation_key_problem, templates=ALLOCATE_TEMPLATE_FIELDS),
        "Container annotations (keys checked as the API server checks them: "
        "`[prefix/]name`); same templates. A `cdi.k8s.io/...` key may not name a CDI kind "
        "of the config (`allocate.cdi.kind`): kdp-host hands those devices out itself.",
        default={},
    )
    permissions: str = key(
        "permissions",
        Text(rule=_permissions_problem, extra_schema={"pattern": PERMISSIONS_PATTERN}),
        "cgroup device permissions of the DeviceSpecs: `r`, `w`, `m`.",
        default="rw",
    )
    cdi: CdiConfig | None = key("cdi", Section(CdiConfig), "", default=None)
    command: tuple[str, ...] | None = key(
        "command",
        Argv(templates=HOOK_TEMPLATE_FIELDS),
        "An argv run at every Allocate with the chosen devices (same templates, plus "
        "`{hostPaths}`; same containment as probes; the devices' own env under "
        "`KDP_DEVICE_ENV_` only, as for `preStart`). It prints one JSON object whose keys "
        "`env`, `annotations`, `mounts`, `paths` (device nodes) and `cdiDevices` are added "
        "to the container's response (keys set above win), checked like probe output. Its "
        "`mounts` and `paths` are the answer's own, as a device's node is: one a live pod "
        "holds through an earlier answer is refused, so a path every pod gets belongs in "
        "`allocate.mounts`. A "
        "failure or timeout fails the Allocate, so the pod is not admitted; while its "
        "program cannot be started the resource's devices are advertised Unhealthy (see "
        "[What an answer needs](#what-an-answer-needs)). The kubelet "
        "waits for Allocate while admitting the pod: this adds the command's run time "
        "(a few ms at best) to every admission.",
        default=None,
    )
    timeout: float = key(
        "timeout",
        Duration(
            0.05,
            maximum=MAX_ALLOCATE_TIMEOUT,
            why="the kubelet admits one pod at a time and gives Allocate no deadline, so "
            "every second a command runs stalls every pod admission on the node",
        ),
        f"Kill `command` after this, and fail the Allocate. At most "
        f"{MAX_ALLOCATE_TIMEOUT:g}s: the kubelet admits one pod at a time and waits for "
        "Allocate without a deadline, so this bounds how long one command can hold up the "
        "admission of every pod on the node.",
        default="2s",
    )

    def check(self) -> Problems:
        seen: dict[str, int] = {}
        for index, mount in enumerate(self.mounts):
            first = seen.setdefault(mount.container_path, index)
            if first != index:
                yield (
                    ("mounts", index, "containerPath"),
                    f"{mount.container_path} is already the containerPath of mounts[{first}]: "
                    "the runtime would keep only one of them",
                )


PreStartFailure = Literal["ignore", "unhealthy"]


@dataclass(frozen=True)
class PreStartConfig:
    """`preStart`: a command run at PreStartContainer."""

    command: tuple[str, ...] = key(
        "command",
        Argv(templates=HOOK_TEMPLATE_FIELDS),
        "argv run before each container that got devices of the resource starts (and at "
        "each restart of it): `{ids}` (the container's devices), `{paths}` (container "
        "paths), `{hostPaths}`, `{count}`, `{resource}`. Same containment as probes (own "
        "process group, stdin closed, output capped, never a shell). Exit 0: the container "
        "starts; otherwise the kubelet fails the start with the exit status and the end of "
        "stderr, and retries with backoff. While its program cannot be started the "
        "resource's devices are advertised Unhealthy (see "
        "[What an answer needs](#what-an-answer-needs)).",
    )
    timeout: float = key(
        "timeout",
        Duration(
            0.05,
            maximum=MAX_PRE_START_TIMEOUT,
            why="the kubelet gives PreStartContainer 30s, and the kill grace and the answer "
            "must fit in it",
        ),
        f"TERM then KILL the command's process group after this. At most "
        f"{MAX_PRE_START_TIMEOUT:g}s: the kubelet gives PreStartContainer 30s, and the "
        "answer must reach it before that. The command starts only while this still fits "
        "in what the container's owed releases and a slot left of that deadline; else it is "
        "not run (result `deadline`) and the start fails with kdp-host's error, before the "
        "deadline (the kubelet tries again with backoff).",
        default="10s",
    )
    env: Mapping[str, str] = key(
        "env",
        StringMap(env_name_problem, templates=HOOK_TEMPLATE_FIELDS, key_pattern=ENV_PATTERN),
        "Extra environment variables (values take the same templates), on top of "
        "kdp-host's own. The devices' own env entries (sysfs attributes, a probe's `env`) "
        "are passed under `KDP_DEVICE_ENV_` only (`FPGA_SLOT` as `KDP_DEVICE_ENV_FPGA_SLOT`), "
        "joined with `,` across devices: no device sets a variable the host's programs read "
        "(the container gets the bare names); these win. A variable here that decides what "
        "a process runs or loads (`PATH`, `LD_*`, `BASH_ENV`, ...: see Paths no container is "
        "handed) may not hold a template; every absolute path in a value here may not be "
        "handed writable, nor anything in it.",
        default={},
    )
    on_failure: PreStartFailure = key(
        "onFailure",
        Choice(("ignore", "unhealthy")),
        "`ignore`: a failure only fails that container's start. `unhealthy`: the devices "
        "are also reported Unhealthy until a later preStart on them or their `health` "
        "command passes (use it with a `health` command, or they stay out until they leave "
        "the list). `ignore` is the default: a failure may be the pod's (a bad argument) "
        "or a passing overload, and taking hardware out of allocatable for every pod needs "
        "a way back in.",
        default="ignore",
    )
    parallelism: int = key(
        "parallelism",
        Integer(1, MAX_PRE_START_PARALLELISM),
        "At most this many commands of the resource run at once; further containers wait "
        "for a slot (counted in `kdp_pre_start_waits_total`) while their `timeout` still fits "
        "in the kubelet's 30s (else not run: result `deadline`).",
        default=4,
    )


ReleaseFailure = Literal["ignore", "unhealthy"]
RELEASE_TEMPLATE_FIELDS = HOOK_TEMPLATE_FIELDS | {"pod", "namespace", "container"}
"""Templates of `release.command`: the hook ones, plus who held the device last."""


@dataclass(frozen=True)
class ReleaseConfig:
    """`release`: a command run on a device once no pod holds it."""

    command: tuple[str, ...] = key(
        "command",
        Argv(templates=RELEASE_TEMPLATE_FIELDS),
        "argv run for each device once no container holds it any more (an FPGA reset, a GPU "
        "scrub, a USB power-cycle): `{ids}` (the device), `{paths}`, `{hostPaths}`, "
        "`{count}`, `{resource}`, and who held the use released last as seen through the "
        "kubelet's PodResources API, `{namespace}`, `{pod}`, `{container}` (empty when not "
        "seen; never the pod handed the device since). "
        "Same containment as probes. Until it has succeeded no other container starts with "
        "the device: the resource asks for PreStartContainer, which waits for (or runs) the "
        "pending release of its devices until the kubelet's deadline, and fails the start "
        "with kdp-host's error naming the releases not done yet, before that deadline (the "
        "release goes on; the kubelet tries the start again with backoff).",
    )
    timeout: float = key(
        "timeout",
        Duration(
            0.05,
            maximum=MAX_PRE_START_TIMEOUT,
            why="a container start waits for a pending release inside the kubelet's 30s "
            "PreStartContainer deadline",
        ),
        f"TERM then KILL the command's process group after this, a failure. At most "
        f"{MAX_PRE_START_TIMEOUT:g}s: one release fits in the kubelet's 30s "
        "PreStartContainer deadline. A start that waits for more (several devices' releases "
        "queued behind `parallelism`, or a release then `preStart`) may not get them done in "
        "it: it then fails with kdp-host's error, before the deadline, and the kubelet tries "
        "again with backoff. `kdp-host check` warns when `timeout` and `preStart.timeout` "
        f"together are over {MAX_PRE_START_TIMEOUT:g}s.",
        default="10s",
    )
    env: Mapping[str, str] = key(
        "env",
        StringMap(env_name_problem, templates=RELEASE_TEMPLATE_FIELDS, key_pattern=ENV_PATTERN),
        "Extra environment variables (values take the same templates), on top of "
        "kdp-host's own; the device's own env entries are passed under `KDP_DEVICE_ENV_` "
        "only, as for `preStart`; these win. A variable here that decides what a process "
        "runs or loads (`PATH`, `LD_*`, ...: see Paths no container is handed) may not hold "
        "a template; every absolute path in a value here may not be handed writable, nor "
        "anything in it.",
        default={},
    )
    on_failure: ReleaseFailure = key(
        "onFailure",
        Choice(("ignore", "unhealthy")),
        "`unhealthy`: a device whose release failed is reported Unhealthy until a later "
        "release succeeds (retried with backoff, and at the next container start on it) or "
        "its `health` command passes, also when it is unplugged and plugged in again "
        "meanwhile. `ignore`: it stays Healthy. Either way the release "
        "stays pending: the next container start on the device runs it again and fails "
        "with its error if it fails again.",
        default="unhealthy",
    )
    parallelism: int = key(
        "parallelism",
        Integer(1, MAX_PRE_START_PARALLELISM),
        "At most this many release commands of the resource run at once; those a container "
        "start waits for go first.",
        default=4,
    )


@dataclass(frozen=True)
class NodeSelectorConfig:
    """Which nodes serve a resource entry: every condition given must hold."""

    names: tuple[str, ...] = key(
        "names",
        ListOf(Text(), hint="a list of globs", empty=None),
        "Globs on the node's name (`gpu-*`, `edge-[0-9]*`); any may match. The name is the "
        "pod's `NODE_NAME` (the chart sets it from the downward API), else the host name; "
        "`kdp-host run --node-name` overrides both.",
        default=[],
    )
    labels: Mapping[str, str] = key(
        "labels",
        StringMap(label_key_problem, value_rule=label_value_problem),
        "Node labels that must all be set to these values (like a pod's `nodeSelector`). "
        "kdp-host reads its own node from the Kubernetes API (get and watch, with the pod's "
        "service account; the chart grants it when a resource uses labels) and applies a "
        f"label change like a config edit, once it has settled for {NODE_LABEL_SETTLE:g}s "
        "(the changes within that time are applied together: a flapping label reloads once).",
        default={},
    )

    def check(self) -> Problems:
        if not self.names and not self.labels:
            yield (), "needs names or labels (or leave nodeSelector out: every node)"


PreferredPolicy = Literal["packed", "spread", "numa", "none"]


@dataclass(frozen=True)
class ResourceConfig:
    """One entry of `resources`: an extended resource and its driver."""

    name: str = key(
        "name",
        Text(
            rule=extended_resource_name_problem,
            prefix="{value!r} is not a valid extended resource name: ",
            extra_schema={
                "pattern": EXTENDED_RESOURCE_NAME_PATTERN,
                "not": {"pattern": EXTENDED_RESOURCE_NAME_NOT_PATTERN},
            },
        ),
        "An extended resource name, checked exactly as the kubelet does: `domain/name`, not "
        "in `kubernetes.io/`, not starting with `requests.`. Unique.",
    )
    driver: DriverConfig = one_of("driver", DRIVERS, "The driver. Exactly one per resource.")
    allocate: AllocateConfig = key(
        "allocate",
        Section(AllocateConfig),
        "What a container gets (below).",
        factory=AllocateConfig,
    )
    pre_start: PreStartConfig | None = key(
        "preStart",
        Section(PreStartConfig),
        "A command run before each container with devices of the resource starts "
        "(PreStartContainer, below). Only a resource with `preStart` asks the kubelet for "
        "that call.",
        default=None,
    )
    health: HealthCheckConfig | None = key(
        "health",
        Section(HealthCheckConfig),
        "A per-device health command, for any driver (below).",
        default=None,
    )
    release: ReleaseConfig | None = key(
        "release",
        Section(ReleaseConfig),
        "A command run when a device is no longer held by any container, before any other "
        "container may start with it (below).",
        default=None,
    )
    replicas: int = key(
        "replicas",
        Integer(1, MAX_REPLICAS),
        "Advertise each device N times (`<id>::<k>`) so N containers share it. See "
        "[docs/allocation.md](docs/allocation.md) for what sharing does not isolate.",
        default=1,
    )
    preferred: PreferredPolicy = key(
        "preferred",
        Choice(("packed", "spread", "numa", "none")),
        "GetPreferredAllocation policy: `packed`, `spread`, `numa`, or `none` (no policy). "
        "Advertised only where the config can make it matter (else the kubelet makes one RPC "
        "per container, not two), from the first registration, since the kubelet reads it only "
        "then and registering again refuses the resource's admissions until it is in: where a "
        "policy can choose better than the kubelet, with `replicas` > 1 or devices that may "
        "have a NUMA node (sysfs, probes, glob `numaNode`/`numaNodeFile`); and, whatever the "
        "policy, where two devices may place different things at one container path "
        "(`/dev/bus/usb/*/*` at `/dev/usb/{name}`, glob groups, probes): while the list holds "
        "such a pair the answers steer the kubelet clear of it, which Allocate must refuse. "
        "With nothing to choose by in the list, and for a container that cannot be given such "
        "a pair (one device more than it has, or the colliding devices offered fit side by "
        "side), the answer is no preference, made without reading the offer's every ID (the "
        "request names every free device: a large one is read off the event loop).",
        default="packed",
    )
    node_selector: NodeSelectorConfig | None = key(
        "nodeSelector",
        Section(NodeSelectorConfig),
        "Serve this entry only on the nodes it selects (below). Entries may share a `name` "
        "when each has a nodeSelector: a mixed fleet gets one resource name from different "
        "drivers, and a node that two of them select is a config error on that node.",
        default=None,
        default_doc="every node",
    )

    def check(self) -> Problems:
        """An `allocate.mounts` entry at or above the directory every node of a glob pattern
        is placed below: each device's node would be made inside the mount's host directory
        (`container_paths.nests`, the rule a listing and an Allocate refuse by)."""
        if not isinstance(self.driver, GlobDriverConfig):
            return
        for index, mount in enumerate(self.allocate.mounts):
            for pattern in self.driver.paths:
                fixed = _node_directory(pattern, self.driver.container_path)
                if path_inside(fixed, mount.container_path):
                    yield (
                        ("allocate", "mounts", index, "containerPath"),
                        f"is at or above {fixed}, below which every device of {pattern} is placed "
                        f"(containerPath {self.driver.container_path or 'the matched path'}): "
                        "the runtime mounts first, then makes each device node inside the "
                        "mount's host directory (a writable one keeps a real node on the host, "
                        "a read-only one fails every start); no container could be given one",
                    )
                    break


def _node_directory(pattern: str, template: str | None) -> str:
    """The container directory every node of a glob pattern is placed strictly below: the
    fixed part of its `containerPath` template (else of the pattern), up to its last `/`."""
    text = pattern if template is None else template
    magic = GLOB_MAGIC.search(text) if template is None else re.search(r"\{", text)
    fixed = text[: magic.start()] if magic else text
    return fixed[: fixed.rfind("/")] or "/"


def _socket_dir_problem(socket_dir: str) -> str | None:
    """A socket dir is usable when the shortest plugin socket name the host makes (as long as
    `kubelet.sock`) fits in it: every dir the kubelet itself can serve from."""
    shortest = socket_dir.rstrip("/") + "/" + "x" * SOCKET_NAME_MIN_LENGTH
    if why := socket_path_problem(shortest):
        return f"too long to serve from: a plugin socket path in it {why}"
    return None


RegistrationMode = Literal["deviceSocket", "pluginsRegistry"]


@dataclass(frozen=True)
class KubeletConfig:
    """`kubelet`: where the kubelet is and how kdp-host talks to it."""

    socket_dir: str = key(
        "socketDir",
        AbsolutePath(rule=_socket_dir_problem),
        "The kubelet's device-plugin directory (where `kubelet.sock` is). kdp-host waits for "
        "it if it does not exist yet.",
        default="/var/lib/kubelet/device-plugins",
        restart=True,
    )
    registration: RegistrationMode = key(
        "registration",
        Choice(("deviceSocket", "pluginsRegistry")),
        "How resources register: `deviceSocket` (serve in `socketDir`, call Register on "
        "`kubelet.sock`, register again after a kubelet restart) or `pluginsRegistry` (serve "
        "in `pluginsRegistryDir`, where the kubelet's plugin watcher finds and registers them, "
        "also after its restarts). See [Registration modes](#registration-modes).",
        default="deviceSocket",
        restart=True,
    )
    plugins_registry_dir: str = key(
        "pluginsRegistryDir",
        AbsolutePath(rule=_socket_dir_problem),
        "The kubelet's plugin-watcher directory, used with `registration: pluginsRegistry`. "
        "kdp-host waits for it if it does not exist yet.",
        default="/var/lib/kubelet/plugins_registry",
        restart=True,
    )
    pod_resources_socket: str = key(
        "podResourcesSocket",
        AbsolutePath(rule=socket_path_problem),
        "The kubelet's PodResources socket: who holds each device (`kdp-host status`, "
        "`/devices`, `release`). Missing or refusing: logged and counted, everything else "
        "works.",
        default="/var/lib/kubelet/pod-resources/kubelet.sock",
        restart=True,
    )
    pod_resources_interval: float = key(
        "podResourcesInterval",
        Duration(0.0),
        "How often PodResources is asked (one List call). The kubelet allows 100 calls/s "
        "(burst 10) for all its clients together; kdp-host backs off when refused. `0s` "
        "turns polling off (what an Allocate booked then lives until the ID is allocated "
        "again or `kdp-host unbook`; a node another plugin's pod was handed is held until "
        "the kubelet's checkpoint no longer lists that pod: see Reliability, booked claims); "
        f"otherwise at least {MIN_POD_RESOURCES_INTERVAL:g}s.",
        default="5s",
        restart=True,
    )

    @property
    def serve_dir(self) -> str:
        """Where the resources' sockets are: the directory the chosen registration uses."""
        if self.registration == "pluginsRegistry":
            return self.plugins_registry_dir
        return self.socket_dir

    def check(self) -> Problems:
        if self.registration == "pluginsRegistry" and path_inside(
            self.socket_dir, self.plugins_registry_dir
        ):
            yield (
                ("pluginsRegistryDir",),
                "must not be socketDir or contain it: the kubelet would take kubelet.sock "
                "for a plugin",
            )
        if 0 < self.pod_resources_interval < MIN_POD_RESOURCES_INTERVAL:
            yield (
                ("podResourcesInterval",),
                f"must be 0s (off) or at least {MIN_POD_RESOURCES_INTERVAL:g}s: the kubelet's "
                "PodResources rate limit is shared with every other client on the node",
            )


@dataclass(frozen=True)
class MetricsConfig:
    """`metrics`: the HTTP listener of /metrics, /healthz, /readyz."""

    listen: str = key(
        "listen",
        Text(rule=_listen_problem, extra_schema={"pattern": LISTEN_PATTERN}),
        "`host:port` of `/metrics`, `/healthz`, `/readyz`, `/devices`.",
        default="0.0.0.0:9410",
        restart=True,
    )
    histograms: HistogramMode = key(
        "histograms",
        Choice(HISTOGRAM_MODES),
        "The three latency histograms: `perResource` (15 series each per resource from its "
        "first observation, up to 45 per resource), `host` (one set for the whole host, no "
        "`resource` label: at most 45 series whatever the number of resources), or `off`.",
        default=DEFAULT_HISTOGRAM_MODE,
        restart=True,
    )
    holders: bool = key(
        "holders",
        Boolean(),
        "Also export `kdp_device_holder_info{resource, device, namespace, pod, container}` "
        "(value 1) for every device a container holds, to join device metrics with pods in "
        "PromQL. Off by default: it is one series per (device, container), and every new pod "
        "makes new ones, so the series count follows pod churn, not the hardware.",
        default=False,
        restart=True,
    )
    devices: bool = key(
        "devices",
        Boolean(),
        "Serve `/devices` (device IDs and the pods holding them, for `kdp-host status`).",
        default=True,
        restart=True,
    )

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class NodeFeaturesConfig:
    """`nodeFeatures`: the NFD feature file kdp-host writes."""

    file: str = key(
        "file",
        AbsolutePath(),
        "The feature file, written atomically (a dot file renamed into place) whenever a "
        "count changes, and removed when kdp-host stops. NFD's worker reads "
        "`/etc/kubernetes/node-feature-discovery/features.d/` (the chart mounts it). Refused "
        "when it is (or resolves to) a directory, the config file or another file kdp-host "
        "writes, or lies in the kubelet's directories or `stateDir` (see [Paths kdp-host "
        "writes](#paths-kdp-host-writes)).",
        default="/etc/kubernetes/node-feature-discovery/features.d/kdp-host",
    )
    expiry: float = key(
        "expiry",
        Duration(1.0),
        "How long NFD keeps the labels of a kdp-host that stopped refreshing the file "
        "(killed, its node lost): the file carries NFD's `# +expiry-time=` this far ahead, "
        "rewritten every third of it. NFD v0.14 or newer honours it (older versions keep the "
        "labels); NFD drops expired labels at its next rescan, so make it a few of NFD's "
        "rescan intervals (`sleepInterval`, 60s by default).",
        default="10m",
    )


@dataclass(frozen=True)
class DeletePodsConfig:
    """`heldMissing.deletePods`: which pods holding a missing device are deleted."""

    selector: Mapping[str, str] = key(
        "selector",
        StringMap(label_key_problem, value_rule=label_value_problem),
        "Pod labels that must all be set to these values (like a Deployment's `matchLabels`): "
        "only such a pod is deleted, never another. Choose pods a controller recreates "
        "(Deployment, StatefulSet, Job): a bare pod is gone for good. At least one label.",
    )
    after: float = key(
        "after",
        Duration(1.0),
        "How long a device a matching pod holds must have been missing (without a break) "
        "before kdp-host deletes the pod: long enough for a stick pulled and pushed back in "
        "to count as the same device again.",
        default="5m",
    )

    def check(self) -> Problems:
        if not self.selector:
            yield ("selector",), "needs a label: kdp-host deletes no pod it cannot select"


@dataclass(frozen=True)
class HeldMissingConfig:
    """`heldMissing`: what kdp-host does when a device a pod holds goes missing."""

    events: bool = key(
        "events",
        Boolean(),
        "Record a Warning Event, reason `DeviceMissing`, on each pod holding a device that "
        "goes missing (`gone`, `unhealthy` or `replaced`, as the `held_device_missing` log "
        "line), once per pod, device and state: `kubectl describe pod` shows it. Needs "
        "PodResources polling and the Kubernetes API (the chart then grants get pods and "
        "create events).",
        default=False,
    )
    delete_pods: DeletePodsConfig | None = key(
        "deletePods",
        Section(DeletePodsConfig),
        "Delete each pod matching `selector` that holds a device missing for `after`, so its "
        "controller recreates it where the device is (the chart then grants delete pods too).",
        default=None,
        default_doc="off",
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole config file."""

    kubelet: KubeletConfig = key("kubelet", Section(KubeletConfig), "", factory=KubeletConfig)
    metrics: MetricsConfig = key("metrics", Section(MetricsConfig), "", factory=MetricsConfig)
    state_dir: str = key(
        "stateDir",
        AbsolutePath(),
        "Where kdp-host keeps what must outlive it: which devices of resources with `release` "
        "were used and not released yet (`release-state.json`), the device IDs the kubelet "
        "booked with the nodes they reach (`ownership.json`), and each booked device as its "
        "Allocate handed it out, which preStart, the CDI entries of held devices and a release "
        "act on (`handed-out.json`), and the CDI spec dirs it has written in "
        "(`cdi-spec-dirs.json`). Small files. kdp-host writes "
        "nothing else there, and nothing else of kdp-host may be there: not the config file, "
        "not another path of the config (see [Paths kdp-host writes](#paths-kdp-host-writes)).",
        default="/var/lib/kdp-host",
        restart=True,
    )
    cdi_runtime_dirs: tuple[str, ...] = key(
        "cdiRuntimeDirs",
        ListOf(AbsolutePath(), hint="a list of directories", empty=None),
        "The container runtime's CDI spec dirs (containerd's and CRI-O's `cdi_spec_dirs`, "
        "here their defaults), in its order: a name a later dir's file defines wins (a name "
        "two files of one dir define is dropped, whatever another dir defines), and an "
        "Allocate answer waits until that file names what it hands out. A spec file is a "
        "`.json` or `.yaml` file of a dir, as the runtime reads them (a `.yml` file is not "
        "one; each read as YAML whatever its suffix, so a `.json` file with a `# comment` "
        "line or YAML syntax is one), that the runtime's CDI library takes: one it refuses "
        "(a field it does not know, as a newer tool's; a `cdiVersion` it does not know, or "
        "older than the file's "
        "fields need; an invalid kind or device name; a key twice; no devices) defines "
        "nothing, here too "
        "(said once: `cdi_spec_file_skipped`, with why), and one a newer library may take (a "
        "`cdiVersion` newer than kdp-host knows, 1.1.0; field names in another case, which "
        "the library matches in any case and kdp-host reads for what they say; an edit "
        "that library versions which check refuse the file for: a node type or permissions "
        "outside CDI's, a hook name it does not know, an env entry without `=`, a mount "
        "without both paths) adds its "
        "definition to the one it would replace: both held (fails safe; an own name it "
        "defines is a clash, and an "
        "answer that needs the name waits as for a dropped one). One "
        "rule for every reader here (`cdi_files`, `cdi_acceptance`): the own spec file's "
        "clash checks, the files that win over it, and other plugins' names. "
        "kdp-host writes nothing there (unless a `specDir` is one); "
        "while a resource has `allocate.cdi` it removes there, as in every spec dir a host "
        "on its `stateDir` has written in, a kdp-host spec file of the resource's kind that "
        "no live instance owns (see [CDI spec files](#cdi-spec-files)). The CDI names of "
        "the answers the kubelet's checkpoint keeps (another plugin's) are resolved through "
        "their spec files, followed, to hold the nodes they stand for (see Reliability).",
        default=["/etc/cdi", "/var/run/cdi"],
        default_doc="`[/etc/cdi, /var/run/cdi]`",
        restart=True,
    )
    resources: tuple[ResourceConfig, ...] = key(
        "resources",
        ListOf(
            Section(ResourceConfig),
            hint="a list of resources",
            empty="must declare at least one resource",
            unique=("name", "name"),
            may_share=(
                "node_selector",
                "entries may share a name only when each has a nodeSelector",
            ),
        ),
        "",
    )
    node_features: NodeFeaturesConfig | None = key(
        "nodeFeatures",
        Section(NodeFeaturesConfig),
        "Write a Node Feature Discovery feature file (its `local` source): per resource "
        "`<resource>.present` (`true` or `false`) and `<resource>.count` (its healthy "
        "devices, replicas not counted), which NFD turns into node labels for scheduling. "
        "No API access needed.",
        default=None,
        default_doc="off",
        restart=True,
    )
    held_missing: HeldMissingConfig = key(
        "heldMissing",
        Section(HeldMissingConfig),
        "What kdp-host does itself when a device a pod holds goes missing (unplugged under a "
        "running pod). Off by default: the metric and log line alone.",
        factory=HeldMissingConfig,
        restart=True,
    )
    sha256: str = ""
    """Hash of the file's bytes: shows in metrics which config is in force."""

    def check(self) -> Problems:
        """One resource per CDI kind: CDI names are unique per kind only when one resource
        names all of them (two resources of one kind could both publish `kind=fpga0`).
        Entries of one resource for different nodes (nodeSelector) may share its kind.
        One socket name per resource (`endpoint.socket_slug`)."""
        first: dict[str, int] = {}
        for index, resource in enumerate(self.resources):
            cdi = resource.allocate.cdi
            if cdi is None:
                continue
            other = self.resources[first.setdefault(cdi.kind, index)].name
            if other != resource.name:
                yield (
                    ("resources", index, "allocate", "cdi", "kind"),
                    f"CDI kind {cdi.kind!r} is already used by resource {other!r}: each "
                    "resource needs a kind of its own (its device names are unique only "
                    "within it), e.g. another class: vendor.example/fpga-b",
                )
        yield from self._cdi_annotation_problems()
        slugs: dict[str, str] = {}
        for index, resource in enumerate(self.resources):
            other = slugs.setdefault(socket_slug(resource.name), resource.name)
            if other != resource.name:
                yield (
                    ("resources", index, "name"),
                    f"resource {resource.name!r} would be served on the socket of resource "
                    f"{other!r} (their names give one socket name, kdp-"
                    f"{socket_slug(resource.name)}-...): change the first 20 characters of one",
                )
        held = self.held_missing
        if (held.events or held.delete_pods) and self.kubelet.pod_resources_interval <= 0:
            off = "needs kubelet.podResourcesInterval above 0s (PodResources says who holds what)"
            yield ("heldMissing",), off
        if self.node_features is not None:
            for index, resource in enumerate(self.resources):
                if why := node_feature_label_problem(resource.name):
                    yield ("resources", index, "name"), f"with nodeFeatures, {why}"

    def _cdi_annotation_problems(self) -> Problems:
        """A `cdi.k8s.io/...` annotation in `allocate.annotations` naming a kind kdp-host
        writes: it would hand every pod of the resource those devices, whichever it was
        allocated (the kind's own resource hands out its devices' CDI names itself)."""
        kinds = {r.allocate.cdi.kind: r.name for r in self.resources if r.allocate.cdi}
        for index, resource in enumerate(self.resources):
            for annotation, value in resource.allocate.annotations.items():
                if not is_cdi_annotation_key(annotation):
                    continue
                for name in cdi_annotation_names(value):
                    kind = cdi_name_parts(name)[0]
                    if kind in kinds:
                        yield (
                            ("resources", index, "allocate", "annotations", annotation),
                            f"names the CDI device {name!r} of kind {kind!r}, whose spec file "
                            f"kdp-host writes for resource {kinds[kind]!r}: an annotation "
                            "would hand it to every pod of this resource, whichever devices "
                            "it was allocated, while another pod may hold it. A resource's "
                            "own devices go out as CDI names with allocate.cdi",
                        )


README_TABLES: Mapping[str, tuple[type[object], str]] = {
    "config": (Config, ""),
    "glob": (GlobDriverConfig, "glob."),
    "shell": (ShellDriverConfig, "shell."),
    "sysfs": (SysfsDriverConfig, "sysfs."),
    "health": (HealthCheckConfig, "health."),
    "allocate": (AllocateConfig, "allocate."),
    "pre-start": (PreStartConfig, "preStart."),
    "release": (ReleaseConfig, "release."),
    "node-selector": (NodeSelectorConfig, "nodeSelector."),
    "node-features": (NodeFeaturesConfig, "nodeFeatures."),
    "held-missing": (HeldMissingConfig, "heldMissing."),
    "delete-pods": (DeletePodsConfig, "heldMissing.deletePods."),
}
"""README.md reference tables: the marker name, the section, and its key prefix. A section
with a table of its own is one row in its parent's table."""
