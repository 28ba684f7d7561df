"""Whether the runtime's CDI library takes a spec file's content, as far as kdp-host can tell
(issue 17, hostile28 G2): `judge`, called by the one parser (`cdi_files.parse_spec`).

The library skips a whole file it refuses, and the name then resolves through another file
(an earlier dir's): kdp-host must skip it too, or it books a node the runtime never hands
out and gives the one it does hand out to its own pod. What the library refuses, for sure:

- a field it does not know, at any level (it decodes strictly: a newer tool's extra field);
- a `cdiVersion` it does not know (a leading `v` aside), or one older than the features the
  file uses (`hostPath` on a node needs 0.5.0, spec or device annotations 0.6.0, ...:
  `required_version`; nothing is older than 0.3.0, so 0.1.0 and 0.2.0 are always refused);
- a kind that is not `vendor/class`, a device name CDI's parser refuses (an empty one), a
  name two devices of the file share, a file without devices.

What a newer library may take, kdp-host cannot know: a `cdiVersion` newer than the newest it
knows (`KNOWN_VERSIONS`), with whatever fields that version added. Such a file is `unsure`:
it may or may not win, so every reader holds both outcomes (`cdi_files.winning` books the
union of its definition and the one it would replace). So is a field spelled in another
case (the library matches field names in any case, kdp-host reads them as written) and a
device name of another type than text (the library's YAML reading turns a number into
one). Nothing else is checked (the edits' own rules: an env entry without `=`, a node
without a path): such a file counts as taken, as before. A key given twice in one object
(refused too) is found by the parser (`cdi_files.parse_spec`), before the values are known.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .cdi_rules import CDI_DEVICE_NAME

KNOWN_VERSIONS: Final = (
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
)  # fmt: skip
"""The cdiVersion values the CDI library knows, oldest first (its specs-go version list)."""
_EARLIEST: Final = "0.3.0"
"""The oldest version a file may declare whatever it uses."""
_VENDOR_OR_CLASS: Final = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
"""A vendor or class as the library reads it (one letter is enough when reading)."""

_NODE = {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}
_MOUNT = {"hostPath", "containerPath", "options", "type"}
_HOOK = {"hookName", "path", "args", "env", "timeout"}
_RDT = {"closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"}
_NET = {"hostInterfaceName", "name"}
_EDITS: Final[dict[str, set[str] | None]] = {
    "env": None,
    "deviceNodes": _NODE,
    "netDevices": _NET,
    "hooks": _HOOK,
    "mounts": _MOUNT,
    "intelRdt": _RDT,
    "additionalGids": None,
}
"""Each field of a container edits object, with the fields of its items (None: plain values)."""
_SPEC: Final = {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
_DEVICE: Final = {"name", "annotations", "containerEdits"}


@dataclass(frozen=True)
class Verdict:
    """What the library makes of a file: `refused` (why), else taken unless `unsure` (why)."""

    refused: str = ""
    unsure: str = ""


def _version(value: str) -> tuple[int, ...] | None:
    parts = value.split(".")
    return tuple(map(int, parts)) if all(p.isdigit() for p in parts) and parts[0] else None


def _unknown(value: Any, known: set[str], where: str) -> Verdict | None:
    """The first field of the object `value` (at `where`) the library does not know
    (refused); `spelled` has put the ones it knows in another case as it knows them."""
    if not isinstance(value, Mapping):
        return None if value is None else Verdict(refused=f"{where} is not an object")
    if extra := sorted(str(k) for k in value if k not in known):
        return Verdict(refused=f"unknown field {where}.{extra[0]}")
    return None


def spelled(spec: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """`spec` with every field the library knows spelled as it knows it, and where the first
    one spelled in another case was (empty: none). The library matches field names in any
    case (`ContainerEdits`, `HOSTPATH`), so such a file hands out what its fields say
    (hostile28 G10: read as spelled, its definition had no paths and booked nothing); a
    name spelled both ways keeps the exact one."""
    cased: list[str] = []
    out = _spelled(spec, _SPEC, "spec", cased)
    out["containerEdits"] = _spelled_edits(out.get("containerEdits"), "spec.containerEdits", cased)
    if isinstance(out.get("devices"), list):
        devices = []
        for i, device in enumerate(out["devices"]):
            device = _spelled(device, _DEVICE, f"devices[{i}]", cased)
            if isinstance(device, dict) and "containerEdits" in device:
                where = f"devices[{i}].containerEdits"
                device["containerEdits"] = _spelled_edits(device["containerEdits"], where, cased)
            devices.append(device)
        out["devices"] = devices
    return out, cased[0] if cased else ""


def _spelled(value: Any, known: set[str], where: str, cased: list[str]) -> Any:
    """The object `value` with its `known` fields spelled as known (`cased` told where not)."""
    if not isinstance(value, Mapping):
        return value
    spelling, out = {name.lower(): name for name in known}, {}
    for key, item in value.items():
        name = key if key in known else spelling.get(str(key).lower(), key)
        if name == key:
            out[name] = item
        else:
            cased.append(f"{where}.{key}")
            out.setdefault(name, item)
    return out


def _spelled_edits(value: Any, where: str, cased: list[str]) -> Any:
    value = _spelled(value, set(_EDITS), where, cased)
    if isinstance(value, dict):
        for field, item_fields in _EDITS.items():
            items = value.get(field)
            if item_fields is not None and isinstance(items, list):
                value[field] = [
                    _spelled(item, item_fields, f"{where}.{field}[{n}]", cased)
                    for n, item in enumerate(items)
                ]
    return value


def _edits_unknown(edits: Any, where: str) -> Verdict | None:
    if (found := _unknown(edits, set(_EDITS), where)) or not edits:
        return found
    for field, item_fields in _EDITS.items():
        items = edits.get(field)
        if item_fields is None or not items:
            continue
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            if found := _unknown(item, item_fields, f"{where}.{field}[{i}]"):
                return found
    return None


def _all_edits(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [d.get("containerEdits") for d in spec["devices"] if isinstance(d, Mapping)]
    return [e for e in (spec.get("containerEdits"), *found) if isinstance(e, Mapping)]


def _items(spec: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    return [i for e in _all_edits(spec) for i in e.get(field) or () if isinstance(i, Mapping)]


def _uses_rdt(spec: Mapping[str, Any], newer: bool) -> bool:
    """Whether an `intelRdt` is set (`newer`: with a field of 1.1.0's)."""
    for rdt in (e.get("intelRdt") for e in _all_edits(spec)):
        if isinstance(rdt, Mapping) and (
            not newer or "schemata" in rdt or rdt.get("enableMonitoring")
        ):
            return True
    return False


_NODE_TYPES: Final = frozenset({"", "b", "c", "u", "p"})
_HOOK_NAMES: Final = frozenset(
    {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
)


def _edit_rule(spec: Mapping[str, Any]) -> str:
    """The first of the edits' own rules a container edits object breaks (a node's type or
    permissions, a hook's name or path, an env entry without `=`, a mount without both
    paths), or empty. Whether the runtime's library refuses the file for it depends on its
    version (hostile28 G2b: the ones that check skip the file whole), so such a file is
    unsure: both definitions held."""
    for edits in _all_edits(spec):
        for node in edits.get("deviceNodes") or ():
            if isinstance(node, Mapping) and (
                str(node.get("type") or "") not in _NODE_TYPES
                or set(str(node.get("permissions") or "")) - set("rwm")
            ):
                return f"device node {node.get('path')!r} of type or permissions it may refuse"
        for hook in edits.get("hooks") or ():
            if isinstance(hook, Mapping) and (
                hook.get("hookName") not in _HOOK_NAMES or not hook.get("path")
            ):
                return f"hook {hook.get('hookName')!r} it may refuse"
        if any("=" not in str(entry) for entry in edits.get("env") or ()):
            return "an env entry without '=' it may refuse"
        for mount in edits.get("mounts") or ():
            if isinstance(mount, Mapping) and not (
                mount.get("hostPath") and mount.get("containerPath")
            ):
                return "a mount without both paths it may refuse"
    return ""


def required_version(spec: Mapping[str, Any]) -> str:
    """The oldest cdiVersion the library takes for what `spec` uses (the features each
    version added, newest first)."""
    devices = [d for d in spec["devices"] if isinstance(d, Mapping)]
    if _items(spec, "netDevices") or _uses_rdt(spec, newer=True):
        return "1.1.0"
    if _uses_rdt(spec, newer=False) or any(e.get("additionalGids") for e in _all_edits(spec)):
        return "0.7.0"
    annotated = spec.get("annotations") or any(d.get("annotations") for d in devices)
    if annotated or "." in str(spec["kind"]).partition("/")[2]:
        return "0.6.0"
    if any(str(d.get("name", ""))[:1].isdigit() for d in devices) or any(
        n.get("hostPath") for n in _items(spec, "deviceNodes")
    ):
        return "0.5.0"
    if any(m.get("type") for m in _items(spec, "mounts")):
        return "0.4.0"
    return _EARLIEST


def _names(spec: Mapping[str, Any]) -> tuple[str, str]:
    """Why the kind or a device name is refused (first), or why a name is unsure (second)."""
    vendor, _, klass = str(spec["kind"]).partition("/")
    if not (_VENDOR_OR_CLASS.fullmatch(vendor) and _VENDOR_OR_CLASS.fullmatch(klass)):
        return f"invalid kind {spec['kind']!r}", ""
    seen: set[str] = set()
    for device in spec["devices"]:
        name = device.get("name") if isinstance(device, Mapping) else None
        if not isinstance(name, str):
            return (
                ("", "a device name is not a text")
                if name is not None
                else ("a device has no name", "")
            )
        if not CDI_DEVICE_NAME.fullmatch(name):
            return f"invalid device name {name!r}", ""
        if name in seen:
            return f"device {name!r} defined twice", ""
        seen.add(name)
    return ("", "") if seen else ("no devices", "")


def judge(spec: Mapping[str, Any]) -> Verdict:
    """What the library makes of a parsed spec (a mapping with `kind` and a list `devices`,
    its fields in any case: `spelled`)."""
    return judge_spelled(*spelled(spec))


def judge_spelled(spec: Mapping[str, Any], cased: str) -> Verdict:
    """`judge` of a spec `spelled` already (`cased`: where a field was in another case)."""
    declared = str(spec.get("cdiVersion", "")).removeprefix("v")
    newest = KNOWN_VERSIONS[-1]
    if declared not in KNOWN_VERSIONS:
        version = _version(declared)
        if version is None or version <= (_version(newest) or ()):
            return Verdict(refused=f"unknown cdiVersion {declared!r}")
        return Verdict(unsure=f"cdiVersion {declared} is newer than kdp-host knows ({newest})")
    unknown = _unknown(spec, _SPEC, "spec") or _edits_unknown(
        spec.get("containerEdits"), "spec.containerEdits"
    )
    for i, device in enumerate(spec["devices"]):
        where = f"devices[{i}]"
        unknown = unknown or _unknown(device, _DEVICE, where)
        if isinstance(device, Mapping):
            unknown = unknown or _edits_unknown(
                device.get("containerEdits"), f"{where}.containerEdits"
            )
    if unknown:
        return unknown
    refused, unsure = _names(spec)
    if refused:
        return Verdict(refused=refused)
    needed = required_version(spec)
    if KNOWN_VERSIONS.index(declared) < KNOWN_VERSIONS.index(needed):
        return Verdict(refused=f"cdiVersion {declared} is older than its content needs ({needed})")
    unsure = unsure or (f"field {cased} in another case" if cased else "") or _edit_rule(spec)
    return Verdict(unsure=unsure)
