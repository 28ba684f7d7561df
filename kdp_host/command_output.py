"""Parsing what a command prints: a probe's devices (the shell driver) and an
`allocate.command`'s additions (hooks.py): the `lines` and `json` formats.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import rules
from .cdi_rules import cdi_qualified_name_problem
from .devices import Device, DeviceMount, DeviceNode
from .files import Offload
from .output_checks import (
    QUOTE_LIMIT,
    Invalid,
    ProbeOutputError,
    add_node,
    check_container_path,
    check_node_path,
    check_path,
    check_text,
    decode_line,
    health_word,
    node_from_spec,
    numa_from_int,
    numa_from_text,
    quote,
)

__all__ = [
    "ContainerExtras",
    "Format",
    "ProbeOutputError",
    "parse_allocate_output",
    "parse_json",
    "parse_lines",
    "parse_off_loop",
    "parse_output",
]

_OFFLOAD_PARSE_BYTES = 16 * 1024
"""Outputs larger than this are parsed in a worker thread, off the event loop."""
_LINE_KEYS = ("path", "numa")
_DEVICE_KEYS = frozenset({"id", "health", "paths", "numa", "env", "mounts", "annotations"})
_PATH_KEYS = frozenset({"hostPath", "containerPath"})
_MOUNT_KEYS = frozenset({"hostPath", "containerPath", "readOnly"})
_SHARED = "shared"
"""A probe's path or mount every device passes on purpose (`/dev/vfio/vfio`): claimed shared
in the host's ownership index (`DeviceNode.shared`), not a device of its own."""
_EXTRAS_KEYS = frozenset({"env", "annotations", "mounts", "paths", "cdiDevices"})

Format = Literal["lines", "json"]


def parse_lines(data: bytes | str) -> list[Device]:
    """Parse `lines` output. Raises ProbeOutputError naming the first bad line."""
    if isinstance(data, bytes):
        lines = [decode_line(raw, n) for n, raw in enumerate(data.split(b"\n"), 1)]
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
        except Invalid as exc:
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
        raise Invalid(why)
    check_text(device_id, "device ID")
    rest = tokens[1:]
    healthy = True
    if rest and "=" not in rest[0]:
        healthy = health_word(rest[0])
        rest = rest[1:]
    nodes: list[DeviceNode] = []
    numa: int | None = None
    for token in rest:
        key, sep, value = token.partition("=")
        if not sep:
            raise Invalid(f"expected key=value, got {quote(token)}")
        if key == "path":
            add_node(nodes, node_from_spec(value))
        elif key == "numa":
            if numa is not None:
                raise Invalid("numa given twice")
            numa = numa_from_text(value)
        else:
            raise Invalid(f"unknown key {quote(key)} (known: {', '.join(_LINE_KEYS)})")
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
        except Invalid as exc:
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
        return json.dumps(item, ensure_ascii=False)[: QUOTE_LIMIT + 1]
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
        raise Invalid(f"{what} must be an object, got {_json_kind(value)}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise Invalid(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return value


def _json_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{what} must be a string, got {_json_kind(value)}")
    return check_text(value, what)


def _json_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(f"{what} must be a list, got {_json_kind(value)}")
    return value


def _json_string_map(
    value: Any, what: str, key_check: Callable[[str], str | None]
) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} must be an object of strings, got {_json_kind(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        check_text(key, f"{what} key")
        if why := key_check(key):
            raise Invalid(f"{what}: {quote(key)} {why}")
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
            node = node_from_spec(check_text(entry, what))
        else:
            obj = _json_object(entry, what, keys)
            if "hostPath" not in obj:
                raise Invalid(f"{what}: missing required key 'hostPath'")
            host = check_node_path(_json_string(obj["hostPath"], f"{what}.hostPath"), "host path")
            container = host
            if "containerPath" in obj:
                container = check_container_path(
                    _json_string(obj["containerPath"], f"{what}.containerPath"),
                    "container path",
                    device_node=True,
                )
            node = DeviceNode(host, container, shared=_json_flag(obj, _SHARED, what, False))
        add_node(nodes, node)
    return nodes


def _json_flag(obj: dict[str, Any], key: str, what: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise Invalid(f"{what}.{key} must be true or false, got {_json_kind(value)}")
    return value


def _mounts_from_json(value: Any, *, shared_ok: bool = False) -> list[DeviceMount]:
    mounts: list[DeviceMount] = []
    keys = _MOUNT_KEYS | {_SHARED} if shared_ok else _MOUNT_KEYS
    for index, entry in enumerate(_json_list(value, "mounts")):
        what = f"mounts[{index}]"
        obj = _json_object(entry, what, keys)
        for key in ("hostPath", "containerPath"):
            if key not in obj:
                raise Invalid(f"{what}: missing required key {key!r}")
        read_only = _json_flag(obj, "readOnly", what, True)
        mounts.append(
            DeviceMount(
                check_path(_json_string(obj["hostPath"], f"{what}.hostPath"), "host path"),
                check_container_path(
                    _json_string(obj["containerPath"], f"{what}.containerPath"),
                    "container path",
                    device_node=False,
                ),
                read_only,
                _json_flag(obj, _SHARED, what, False),
            )
        )
    return mounts


def _device_from_json(item: Any) -> Device:
    spec = _json_object(item, "device", _DEVICE_KEYS)
    if "id" not in spec:
        raise Invalid("missing required key 'id'")
    device_id = _json_string(spec["id"], "id")
    if why := rules.device_id_problem(device_id):
        raise Invalid(why)
    healthy = True
    if spec.get("health") is not None:
        healthy = health_word(_json_string(spec["health"], "health"))
    nodes = _nodes_from_json(spec.get("paths", []), shared_ok=True)
    numa: int | None = None
    if spec.get("numa") is not None:
        raw_numa = spec["numa"]
        if not isinstance(raw_numa, int) or isinstance(raw_numa, bool):
            raise Invalid(f"numa must be an integer, got {_json_kind(raw_numa)}")
        numa = numa_from_int(raw_numa)
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
            if why := cdi_qualified_name_problem(name):
                raise Invalid(f"{what} {why}, got {quote(name)}")
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
    except Invalid as exc:
        raise ProbeOutputError(str(exc), text=_compact(document)) from None


def parse_output(data: bytes | str, fmt: Format) -> list[Device]:
    """Parse probe output in either format. Raises ProbeOutputError."""
    return parse_json(data) if fmt == "json" else parse_lines(data)


async def parse_off_loop(data: bytes, fmt: Format, offload: Offload) -> list[Device]:
    """Parse probe output; a large document through `offload`, off the loop."""
    if len(data) > _OFFLOAD_PARSE_BYTES:
        return await offload.run(lambda: parse_output(data, fmt))
    return parse_output(data, fmt)
