"""Parsing what a probe prints into devices: the `lines` and `json` formats.

- `lines`: one device per non-empty line not starting with `#`:
  `<id> [Healthy|Unhealthy] [path=<host>[:<container>]]... [numa=<N>]`.
  The container path of `path=` starts at the first `:/` (host paths such as
  `/dev/serial/by-path/pci-0000:00:14.0-usb-0:1` keep their colons).
- `json`: a list, or `{"devices": [...]}`, of objects
  `{id, health?, paths?, numa?, env?, mounts?, annotations?}`.
- `allocate.command` output: one object `{env?, annotations?, mounts?, paths?, cdiDevices?}`,
  its entries checked exactly like a device's.

Every error names the line (or the JSON entry) and quotes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import rules
from ..devices import Device, DeviceMount, DeviceNode
from ..files import Offload
from .base import DriverError

_OFFLOAD_PARSE_BYTES = 16 * 1024
"""Outputs larger than this are parsed in a worker thread, off the event loop."""
_QUOTE_LIMIT = 200
_DIGITS = re.compile(r"[0-9]{1,6}")
_HEALTH_WORDS = {"healthy": True, "unhealthy": False}
_LINE_KEYS = ("path", "numa")
_DEVICE_KEYS = frozenset({"id", "health", "paths", "numa", "env", "mounts", "annotations"})
_PATH_KEYS = frozenset({"hostPath", "containerPath"})
_MOUNT_KEYS = frozenset({"hostPath", "containerPath", "readOnly"})
_SHARED = "shared"
"""A probe's path or mount every device passes on purpose (`/dev/vfio/vfio`): claimed shared
in the host's ownership index (`DeviceNode.shared`), not a device of its own."""
_EXTRAS_KEYS = frozenset({"env", "annotations", "mounts", "paths", "cdiDevices"})

Format = Literal["lines", "json"]


class ProbeOutputError(ValueError):
    """Probe output that does not parse; names the line (1-based) and quotes it."""

    def __init__(self, message: str, line: int | None = None, text: str | None = None) -> None:
        self.problem = message
        self.line = line
        self.text = text
        where = f"line {line}: " if line is not None else ""
        quoted = f": {_quote(text)}" if text is not None else ""
        super().__init__(f"{where}{message}{quoted}")


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "..."
    return repr(text)


class _Invalid(Exception):
    """A problem inside one entry; the caller adds the line or the JSON location."""


def _check_text(value: str, what: str) -> str:
    """Strings end up in protobuf messages, container runtimes and logs (rules.text_problem)."""
    if why := rules.text_problem(value):
        raise _Invalid(f"{what} {why}")
    return value


def _check_path(value: str, what: str) -> str:
    if why := rules.absolute_path_problem(value):
        raise _Invalid(f"{what} {why}, got {_quote(value)}")
    return value


def _check_node_path(value: str, what: str) -> str:
    """A device node's path, which `{paths}` and `{hostPaths}` list: rules.device_path_problem."""
    if why := rules.device_path_problem(value):
        raise _Invalid(f"{what} {why}, got {_quote(value)}")
    return value


def _health(word: str) -> bool:
    healthy = _HEALTH_WORDS.get(word.lower())
    if healthy is None:
        raise _Invalid(f"health must be Healthy or Unhealthy, got {_quote(word)}")
    return healthy


def _node_from_spec(spec: str) -> DeviceNode:
    """`/dev/x` (same path inside) or `/dev/x:/dev/y` (the container part starts at `:/`)."""
    split = spec.find(":/", 1)
    host, container = (spec[:split], spec[split + 1 :]) if split > 0 else (spec, spec)
    return DeviceNode(
        _check_node_path(host, "host path"), _check_node_path(container, "container path")
    )


def _add_node(nodes: list[DeviceNode], node: DeviceNode) -> None:
    if any(n.container_path == node.container_path for n in nodes):
        raise _Invalid(f"container path {node.container_path!r} given twice")
    nodes.append(node)


def _numa_from_text(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _Invalid(f"numa must be a node number 0-{rules.MAX_NUMA_NODE}, got {_quote(text)}")
    return _numa_from_int(int(text))


def _numa_from_int(node: int) -> int:
    if not 0 <= node <= rules.MAX_NUMA_NODE:
        raise _Invalid(f"numa must be a node number 0-{rules.MAX_NUMA_NODE}, got {node}")
    return node


def _decode_line(raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeOutputError(
            "not valid UTF-8", lineno, raw.decode("utf-8", errors="replace")
        ) from None


def parse_lines(data: bytes | str) -> list[Device]:
    """Parse `lines` output. Raises ProbeOutputError naming the first bad line."""
    if isinstance(data, bytes):
        lines = [_decode_line(raw, n) for n, raw in enumerate(data.split(b"\n"), 1)]
    else:
        lines = data.split("\n")
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            device = _device_from_tokens(stripped.split())
        except _Invalid as exc:
            raise ProbeOutputError(str(exc), lineno, stripped) from None
        if device.id in seen:
            raise ProbeOutputError(
                f"device ID {device.id!r} already given on line {seen[device.id]}",
                lineno,
                stripped,
            )
        seen[device.id] = lineno
        devices.append(device)
    return devices


def _device_from_tokens(tokens: list[str]) -> Device:
    device_id = tokens[0]
    if why := rules.device_id_problem(device_id):
        raise _Invalid(why)
    _check_text(device_id, "device ID")
    rest = tokens[1:]
    healthy = True
    if rest and "=" not in rest[0]:
        healthy = _health(rest[0])
        rest = rest[1:]
    nodes: list[DeviceNode] = []
    numa: int | None = None
    for token in rest:
        key, sep, value = token.partition("=")
        if not sep:
            raise _Invalid(f"expected key=value, got {_quote(token)}")
        if key == "path":
            _add_node(nodes, _node_from_spec(value))
        elif key == "numa":
            if numa is not None:
                raise _Invalid("numa given twice")
            numa = _numa_from_text(value)
        else:
            raise _Invalid(f"unknown key {_quote(key)} (known: {', '.join(_LINE_KEYS)})")
    return Device(id=device_id, healthy=healthy, nodes=tuple(nodes), numa=numa)


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(data: bytes | str) -> list[Device]:
    """Parse `json` output. Raises ProbeOutputError naming the offending line or entry."""
    return _devices_from_document(_load_json(data))


def _load_json(data: bytes | str) -> Any:
    """The JSON document of `data`: strict UTF-8, no key twice, bounded nesting."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            lineno = data.count(b"\n", 0, exc.start) + 1
            raise ProbeOutputError(
                "not valid UTF-8", lineno, _line_of(data.decode("utf-8", "replace"), lineno)
            ) from None
    else:
        text = data
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ProbeOutputError(
            f"invalid JSON: {exc.msg}", exc.lineno, _line_of(text, exc.lineno)
        ) from None
    except _DuplicateKey as exc:
        raise ProbeOutputError(f"invalid JSON: key {str(exc)!r} given twice") from None
    except RecursionError:
        raise ProbeOutputError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ProbeOutputError(f"invalid JSON: {exc}") from None
    return document


def _line_of(text: str, lineno: int) -> str:
    lines = text.split("\n")
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def _devices_from_document(document: Any) -> list[Device]:
    where = ""
    items = document
    if isinstance(document, dict):
        unknown = set(document) - {"devices"}
        if unknown or "devices" not in document:
            raise ProbeOutputError(
                'expected a list of devices or {"devices": [...]}, '
                f"got an object with keys {sorted(document)}"
            )
        items = document["devices"]
        where = "devices"
    if not isinstance(items, list):
        raise ProbeOutputError(
            f"{where or 'output'}: expected a list of devices, got {_json_kind(items)}"
        )
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        location = f"{where}[{index}]"
        try:
            device = _device_from_json(item)
        except _Invalid as exc:
            raise ProbeOutputError(f"{location}: {exc}", text=_compact(item)) from None
        if device.id in seen:
            raise ProbeOutputError(
                f"{location}: device ID {device.id!r} already given at {where}[{seen[device.id]}]",
                text=_compact(item),
            )
        seen[device.id] = index
        devices.append(device)
    return devices


def _compact(item: Any) -> str:
    try:
        return json.dumps(item, ensure_ascii=False)[: _QUOTE_LIMIT + 1]
    except (ValueError, RecursionError):
        return "<unprintable>"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


def _json_object(value: Any, what: str, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be an object, got {_json_kind(value)}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise _Invalid(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return value


def _json_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{what} must be a string, got {_json_kind(value)}")
    return _check_text(value, what)


def _json_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} must be a list, got {_json_kind(value)}")
    return value


def _json_string_map(
    value: Any, what: str, key_check: Callable[[str], str | None]
) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be an object of strings, got {_json_kind(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        _check_text(key, f"{what} key")
        if why := key_check(key):
            raise _Invalid(f"{what}: {_quote(key)} {why}")
        out[key] = _json_string(item, f"{what}.{key}")
    return out


def _nodes_from_json(value: Any, *, shared_ok: bool = False) -> list[DeviceNode]:
    """`paths`: strings (`/dev/x` or `/dev/x:/dev/y`) or {hostPath, containerPath?} objects
    (and `shared?` with `shared_ok`: a probe's device)."""
    nodes: list[DeviceNode] = []
    keys = _PATH_KEYS | {_SHARED} if shared_ok else _PATH_KEYS
    for index, entry in enumerate(_json_list(value, "paths")):
        what = f"paths[{index}]"
        if isinstance(entry, str):
            node = _node_from_spec(_check_text(entry, what))
        else:
            obj = _json_object(entry, what, keys)
            if "hostPath" not in obj:
                raise _Invalid(f"{what}: missing required key 'hostPath'")
            host = _check_node_path(_json_string(obj["hostPath"], f"{what}.hostPath"), "host path")
            container = host
            if "containerPath" in obj:
                container = _check_node_path(
                    _json_string(obj["containerPath"], f"{what}.containerPath"), "container path"
                )
            node = DeviceNode(host, container, shared=_json_flag(obj, _SHARED, what, False))
        _add_node(nodes, node)
    return nodes


def _json_flag(obj: dict[str, Any], key: str, what: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise _Invalid(f"{what}.{key} must be true or false, got {_json_kind(value)}")
    return value


def _mounts_from_json(value: Any, *, shared_ok: bool = False) -> list[DeviceMount]:
    mounts: list[DeviceMount] = []
    keys = _MOUNT_KEYS | {_SHARED} if shared_ok else _MOUNT_KEYS
    for index, entry in enumerate(_json_list(value, "mounts")):
        what = f"mounts[{index}]"
        obj = _json_object(entry, what, keys)
        for key in ("hostPath", "containerPath"):
            if key not in obj:
                raise _Invalid(f"{what}: missing required key {key!r}")
        read_only = _json_flag(obj, "readOnly", what, True)
        mounts.append(
            DeviceMount(
                _check_path(_json_string(obj["hostPath"], f"{what}.hostPath"), "host path"),
                _check_path(
                    _json_string(obj["containerPath"], f"{what}.containerPath"), "container path"
                ),
                read_only,
                _json_flag(obj, _SHARED, what, False),
            )
        )
    return mounts


def _device_from_json(item: Any) -> Device:
    spec = _json_object(item, "device", _DEVICE_KEYS)
    if "id" not in spec:
        raise _Invalid("missing required key 'id'")
    device_id = _json_string(spec["id"], "id")
    if why := rules.device_id_problem(device_id):
        raise _Invalid(why)
    healthy = True
    if spec.get("health") is not None:
        healthy = _health(_json_string(spec["health"], "health"))
    nodes = _nodes_from_json(spec.get("paths", []), shared_ok=True)
    numa: int | None = None
    if spec.get("numa") is not None:
        raw_numa = spec["numa"]
        if not isinstance(raw_numa, int) or isinstance(raw_numa, bool):
            raise _Invalid(f"numa must be an integer, got {_json_kind(raw_numa)}")
        numa = _numa_from_int(raw_numa)
    mounts = _mounts_from_json(spec.get("mounts", []), shared_ok=True)
    env = _json_string_map(spec.get("env", {}), "env", rules.env_name_problem)
    annotations = _json_string_map(
        spec.get("annotations", {}), "annotations", rules.annotation_key_problem
    )
    return Device(
        id=device_id,
        healthy=healthy,
        nodes=tuple(nodes),
        numa=numa,
        env=env,
        mounts=tuple(mounts),
        annotations=annotations,
    )


@dataclass(frozen=True)
class ContainerExtras:
    """What an `allocate.command` adds to a container's Allocate response."""

    env: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[DeviceMount, ...] = ()
    nodes: tuple[DeviceNode, ...] = ()
    cdi_devices: tuple[str, ...] = ()


def parse_allocate_output(data: bytes | str) -> ContainerExtras:
    """Parse what an `allocate.command` prints: one JSON object with the optional keys
    `env`, `annotations`, `mounts`, `paths` (device nodes) and `cdiDevices` (qualified CDI
    names), checked by the same rules as a probe's device entries. Raises ProbeOutputError."""
    document = _load_json(data)
    try:
        spec = _json_object(document, "output", _EXTRAS_KEYS)
        names: list[str] = []
        for index, entry in enumerate(_json_list(spec.get("cdiDevices", []), "cdiDevices")):
            what = f"cdiDevices[{index}]"
            name = _json_string(entry, what)
            if why := rules.cdi_qualified_name_problem(name):
                raise _Invalid(f"{what} {why}, got {_quote(name)}")
            if name not in names:
                names.append(name)
        return ContainerExtras(
            env=_json_string_map(spec.get("env", {}), "env", rules.env_name_problem),
            annotations=_json_string_map(
                spec.get("annotations", {}), "annotations", rules.annotation_key_problem
            ),
            mounts=tuple(_mounts_from_json(spec.get("mounts", []))),
            nodes=tuple(_nodes_from_json(spec.get("paths", []))),
            cdi_devices=tuple(names),
        )
    except _Invalid as exc:
        raise ProbeOutputError(str(exc), text=_compact(document)) from None


def parse_output(data: bytes | str, fmt: Format) -> list[Device]:
    """Parse probe output in either format. Raises ProbeOutputError."""
    return parse_json(data) if fmt == "json" else parse_lines(data)


async def parse_off_loop(data: bytes, fmt: Format, offload: Offload) -> list[Device]:
    """Parse probe output; a large document through `offload`, off the loop."""
    if len(data) > _OFFLOAD_PARSE_BYTES:
        return await offload.run(lambda: parse_output(data, fmt))
    return parse_output(data, fmt)


def parse_error(exc: ProbeOutputError) -> DriverError:
    return DriverError("parse", f"output does not parse: {exc}")
