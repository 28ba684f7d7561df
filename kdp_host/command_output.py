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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import k8s_names, rules
from .cdi_rules import cdi_qualified_name_problem
from .devices import Device, DeviceMount, DeviceNode
from .files import Offload
from .json_document import (
    NotAList,
    compact,
    decode_entry,
    decode_text,
    json_flag,
    json_kind,
    json_list,
    json_object,
    json_string,
    json_string_map,
    list_entries,
    load_json,
)
from .output_checks import (
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
from .recall import Recall
from .turns import TURN_BUDGET, Pace, Steps, in_turns, to_the_end

__all__ = [
    "ContainerExtras",
    "Format",
    "ProbeOutputError",
    "Recall",
    "parse_allocate_output",
    "parse_in_turns",
    "parse_json",
    "parse_lines",
    "parse_output",
]

ENTRIES_PER_TURN: Final = 100
"""Lines or list entries a probe's output is parsed in per turn of the event loop."""
_WHOLE_OFF_LOOP_BYTES = 16 * 1024
"""A JSON output with an error larger than this, or any output with an entry (a line, a
list entry) larger than this, is parsed in a worker thread."""
_LINE_KEYS = ("path", "numa")
_DEVICE_KEYS = frozenset({"id", "health", "paths", "numa", "env", "mounts", "annotations"})
_EXTRA_KEYS = frozenset({"mounts", "env", "annotations"})
_PATH_KEYS = frozenset({"hostPath", "containerPath"})
_MOUNT_KEYS = frozenset({"hostPath", "containerPath", "readOnly"})
_SHARED = "shared"
"""A probe's path or mount every device passes on purpose (`/dev/vfio/vfio`): claimed shared
in the host's ownership index (`DeviceNode.shared`), not a device of its own."""
_EXTRAS_KEYS = frozenset({"env", "annotations", "mounts", "paths", "cdiDevices"})

Format = Literal["lines", "json"]


def parse_lines(data: bytes | str, recall: Recall | None = None) -> list[Device]:
    """Parse `lines` output. Raises ProbeOutputError naming the first bad line."""
    devices = to_the_end(_lines(data, Pace(ENTRIES_PER_TURN), recall or Recall(), None))
    assert devices is not None  # (no line is too long without a limit)
    return devices


def _lines(
    data: bytes | str, pace: Pace, recall: Recall, limit: int | None
) -> Steps[list[Device] | None]:
    """None once a line is longer than `limit` (too large for a turn of the loop)."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # (named by the first line that does not decode)
            text = "\n".join(decode_line(raw, n) for n, raw in enumerate(data.split(b"\n"), 1))
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if pace.due():
            yield
        if limit is not None and len(line) > limit:
            return None
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            found = recall.device(stripped) or _device_from_tokens(stripped.split())
            device = recall.keep(stripped, found)
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
    recall.parsed()
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
    nodes: dict[str, DeviceNode] = {}
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
    return Device(id=device_id, healthy=healthy, nodes=tuple(nodes.values()), numa=numa)


def parse_json(data: bytes | str, recall: Recall | None = None) -> list[Device]:
    """Parse `json` output. Raises ProbeOutputError naming the offending line or entry."""
    devices = to_the_end(_json(data, Pace(ENTRIES_PER_TURN), recall or Recall()))
    return _read_whole(data) if devices is None else devices


def _json(data: bytes | str, pace: Pace, recall: Recall) -> Steps[list[Device] | None]:
    """A device list, an entry at a time (`json_document.list_entries`); None for anything
    else, for a list with an error (`_read_whole` names it as it always did: syntax first,
    then the first bad entry) and for one with an entry too large for a turn of the loop."""
    text = decode_text(data)
    devices: list[Device] = []
    seen: set[str] = set()
    recall.start()
    try:
        for entry in list_entries(text):
            if pace.due():
                yield
            if len(entry) > _WHOLE_OFF_LOOP_BYTES:  # (one turn checks a small entry at most)
                return None
            found = recall.device(entry) or _device_from_json(decode_entry(entry), recall)
            device = recall.keep(entry, found)
            if device.id in seen:
                return None
            seen.add(device.id)
            devices.append(device)
    except (NotAList, Invalid):
        return None
    recall.parsed()
    return devices


def _read_whole(data: bytes | str) -> list[Device]:
    return _devices_from_document(load_json(data))


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
            f"{where or 'output'}: expected a list of devices, got {json_kind(items)}"
        )
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        location = f"{where}[{index}]"
        try:
            device = _device_from_json(item)
        except Invalid as exc:
            raise ProbeOutputError(f"{location}: {exc}", text=compact(item)) from None
        if device.id in seen:
            raise ProbeOutputError(
                f"{location}: device ID {device.id!r} already given at {where}[{seen[device.id]}]",
                text=compact(item),
            )
        seen[device.id] = index
        devices.append(device)
    return devices


def _nodes_from_json(value: Any, *, shared_ok: bool = False) -> list[DeviceNode]:
    """`paths`: strings (`/dev/x` or `/dev/x:/dev/y`) or {hostPath, containerPath?} objects
    (and `shared?` with `shared_ok`: a probe's device)."""
    nodes: dict[str, DeviceNode] = {}
    keys = _PATH_KEYS | {_SHARED} if shared_ok else _PATH_KEYS
    for index, entry in enumerate(json_list(value, "paths")):
        what = f"paths[{index}]"
        if isinstance(entry, str):
            node = node_from_spec(check_text(entry, what))
        else:
            obj = json_object(entry, what, keys)
            if "hostPath" not in obj:
                raise Invalid(f"{what}: missing required key 'hostPath'")
            host = check_node_path(json_string(obj["hostPath"], f"{what}.hostPath"), "host path")
            container = host
            if "containerPath" in obj:
                container = check_container_path(
                    json_string(obj["containerPath"], f"{what}.containerPath"),
                    "container path",
                    device_node=True,
                )
            node = DeviceNode(host, container, shared=json_flag(obj, _SHARED, what, False))
        add_node(nodes, node)
    return list(nodes.values())


def _mounts_from_json(value: Any, *, shared_ok: bool = False) -> list[DeviceMount]:
    mounts: list[DeviceMount] = []
    keys = _MOUNT_KEYS | {_SHARED} if shared_ok else _MOUNT_KEYS
    for index, entry in enumerate(json_list(value, "mounts")):
        what = f"mounts[{index}]"
        obj = json_object(entry, what, keys)
        for key in ("hostPath", "containerPath"):
            if key not in obj:
                raise Invalid(f"{what}: missing required key {key!r}")
        read_only = json_flag(obj, "readOnly", what, True)
        mounts.append(
            DeviceMount(
                check_path(json_string(obj["hostPath"], f"{what}.hostPath"), "host path"),
                check_container_path(
                    json_string(obj["containerPath"], f"{what}.containerPath"),
                    "container path",
                    device_node=False,
                ),
                read_only,
                json_flag(obj, _SHARED, what, False),
            )
        )
    return mounts


def _device_from_json(item: Any, recall: Recall | None = None) -> Device:
    spec = json_object(item, "device", _DEVICE_KEYS)
    if "id" not in spec:
        raise Invalid("missing required key 'id'")
    device_id = json_string(spec["id"], "id")
    if why := rules.device_id_problem(device_id):
        raise Invalid(why)
    healthy = True
    if spec.get("health") is not None:
        healthy = health_word(json_string(spec["health"], "health"))
    paths = spec.get("paths", [])
    if recall is not None and isinstance(paths, list) and all(isinstance(p, str) for p in paths):
        key = tuple(paths)
        nodes = recall.keep_nodes(key, recall.nodes(key) or _probe_nodes(paths))
    else:
        nodes = _probe_nodes(paths)
    numa: int | None = None
    if spec.get("numa") is not None:
        raw_numa = spec["numa"]
        if not isinstance(raw_numa, int) or isinstance(raw_numa, bool):
            raise Invalid(f"numa must be an integer, got {json_kind(raw_numa)}")
        numa = numa_from_int(raw_numa)
    if _EXTRA_KEYS.isdisjoint(spec):  # (nothing made for what 12,000 devices do not have)
        return Device(device_id, healthy, nodes, numa)
    mounts = _mounts_from_json(spec.get("mounts", []), shared_ok=True)
    env = json_string_map(spec.get("env", {}), "env", rules.env_name_problem)
    annotations = json_string_map(
        spec.get("annotations", {}), "annotations", k8s_names.annotation_key_problem
    )
    return Device(device_id, healthy, nodes, numa, env, tuple(mounts), annotations)


def _probe_nodes(paths: Any) -> tuple[DeviceNode, ...]:
    return tuple(_nodes_from_json(paths, shared_ok=True))


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
    document = load_json(data)
    try:
        spec = json_object(document, "output", _EXTRAS_KEYS)
        names: list[str] = []
        for index, entry in enumerate(json_list(spec.get("cdiDevices", []), "cdiDevices")):
            what = f"cdiDevices[{index}]"
            name = json_string(entry, what)
            if why := cdi_qualified_name_problem(name):
                raise Invalid(f"{what} {why}, got {quote(name)}")
            if name not in names:
                names.append(name)
        return ContainerExtras(
            env=json_string_map(spec.get("env", {}), "env", rules.env_name_problem),
            annotations=json_string_map(
                spec.get("annotations", {}), "annotations", k8s_names.annotation_key_problem
            ),
            mounts=tuple(_mounts_from_json(spec.get("mounts", []))),
            nodes=tuple(_nodes_from_json(spec.get("paths", []))),
            cdi_devices=tuple(names),
        )
    except Invalid as exc:
        raise ProbeOutputError(str(exc), text=compact(document)) from None


def parse_output(data: bytes | str, fmt: Format) -> list[Device]:
    """Parse probe output in either format. Raises ProbeOutputError."""
    return parse_json(data) if fmt == "json" else parse_lines(data)


async def parse_in_turns(
    data: bytes, fmt: Format, recall: Recall, offload: Offload
) -> list[Device]:
    """Parse probe output on the event loop, `ENTRIES_PER_TURN` entries a turn (a later one
    `TURN_BUDGET` seconds at most: `turns.py`), recalling what the last output made; a JSON
    output with an error is read whole for it (as is one with a huge entry), through
    `offload` when large; an output with a line or entry too large for a turn is parsed
    through `offload`. Raises ProbeOutputError."""
    pace = Pace(ENTRIES_PER_TURN, TURN_BUDGET)
    if fmt == "lines":
        devices = await in_turns(_lines(data, pace, recall, _WHOLE_OFF_LOOP_BYTES))
        if devices is None:
            return await offload.run(lambda: parse_lines(data, recall))
        return devices
    devices = await in_turns(_json(data, pace, recall))
    if devices is None and len(data) > _WHOLE_OFF_LOOP_BYTES:
        return await offload.run(lambda: _read_whole(data))
    return _read_whole(data) if devices is None else devices
