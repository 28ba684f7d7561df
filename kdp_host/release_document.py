"""The shape of `<stateDir>/release-state.json` (`release_state`): its document read and
checked (every entry, each host's part `writers`, each host's tracked resources `tracked`)
and a device's entry as a tracker writes it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .devices import Device, DeviceNode, physical_id
from .state_document import text

Resources = dict[str, dict[str, dict[str, Any]]]
"""Resource -> device -> {used: [IDs], owed: bool, allocatedAt?: float, holders?: [[...]],
handed?: {...}}."""
Names = tuple[str, str, str]
"""A holder's namespace, pod and container."""
OWED_KEYS = ("owedFor", "owedCovers", "holders")
"""The keys of an entry that say which use its release is for (`checked_entry`): two
entries merged keep the owed one's, not the later Allocate's."""


def parse_resources(document: Mapping[str, Any]) -> Resources:
    return {text(name): _by_device(devices) for name, devices in document["resources"].items()}


def _by_device(devices: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each device's entry. An entry kept under a replica ID (an older version read
    `<id>::<k>` with its own `replicas: 1` as a device of that name: hostile20 F6) is its
    device's (`physical_id`), merged into that device's entry (`merged_entry`)."""
    found: dict[str, dict[str, Any]] = {}
    for device, entry in devices.items():
        checked, key = checked_entry(entry), physical_id(text(device))
        found[key] = checked if key not in found else merged_entry(found[key], checked)
    return found


def merged_entry(one: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Two entries of one device as one (two hosts' entries in the file's union, or an entry
    kept under a replica ID): every ID used, owed if either is, the later Allocate's time
    and booking host, what it was handed unknown if either's is, and the `handed` of an
    older version from either (the later's first)."""
    first, last = sorted((one, other), key=lambda e: float(e.get("allocatedAt", -math.inf)))
    merged = {**first, **last, "used": sorted({*one["used"], *other["used"]})}
    merged["owed"] = bool(one["owed"] or other["owed"])
    owing = next((e for e in (last, first) if e["owed"]), last)  # (the use owed: its own)
    for key in OWED_KEYS:
        merged.pop(key, None)
        if key in owing:
            merged[key] = owing[key]
    merged.pop("bookedBy", None)
    if "bookedBy" in last:
        merged["bookedBy"] = last["bookedBy"]
    if first.get("handedUnknown"):
        merged["handedUnknown"] = True
    return merged


def read_document(
    document: Mapping[str, Any],
) -> tuple[Resources, dict[str, Resources], dict[str, list[str]]]:
    return parse_resources(document), writers_of(document), tracked_of(document)


def tracked_of(document: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each host's tracked resources (`ReleaseStateStore.begin`; none in an older file)."""
    tracked = {}
    for writer, names in document.get("tracked", {}).items():
        if not isinstance(names, list):
            raise TypeError(f"tracked.{writer} is not a list of resources: {names!r}")
        tracked[text(writer)] = [text(name) for name in names]
    return tracked


def writers_of(document: Mapping[str, Any]) -> dict[str, Resources]:
    """Each host's own entries (none in a file of an older version, which wrote none)."""
    return {
        text(writer): parse_resources({"resources": resources})
        for writer, resources in document.get("writers", {}).items()
    }


def checked_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One device's entry of the state file, checked: {"used": [IDs], "owed": bool}, and
    optionally `allocatedAt` (Unix time of its last Allocate), `handedUnknown` (true: what
    it was handed out as is not known, `DeviceUse.handed_unknown`), which use its release
    is for, so that whichever host runs it knows it as the host that owed it (hostile23 F5):
    `owedFor` and `owedCovers` (`DeviceUse.owed_for`, `owed_covers`: the use's identity, and
    what its release covers, `release_lock`) and `holders` (who held it, as PodResources
    showed that host: `[[namespace, pod, container], ...]`), and `handed` (the device
    as that Allocate handed it out: {"nodes": [[host path, container path], ...], "env":
    {}}), which files of older versions lack."""
    used, owed = entry["used"], entry["owed"]
    if not isinstance(used, list) or not isinstance(owed, bool):
        raise TypeError(f"a device entry is not {{used: [...], owed: true|false}}: {entry!r}")
    checked: dict[str, Any] = {"used": [text(i) for i in used], "owed": owed}
    for key in ("allocatedAt", "owedFor", "owedCovers"):
        if (at := entry.get(key)) is not None:
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
                raise TypeError(f"{key} is not a finite number: {at!r}")
            checked[key] = float(at)
    if entry.get("handedUnknown") is True:
        checked["handedUnknown"] = True
    if isinstance(booked_by := entry.get("bookedBy"), str):
        checked["bookedBy"] = booked_by
    if holders := entry.get("holders"):
        checked["holders"] = [list(names_of(h)) for h in holders]
    handed = entry.get("handed")
    if handed is not None:
        nodes, env = handed["nodes"], handed["env"]
        if not isinstance(nodes, list) or not isinstance(env, dict):
            raise TypeError(f"handed is not {{nodes: [...], env: {{}}}}: {handed!r}")
        checked["handed"] = {
            "nodes": [[text(host), text(container)] for host, container in nodes],
            "env": {text(k): text(v) for k, v in env.items()},
        }
    return checked


def device_entry(
    used: Iterable[str],
    owed: bool,
    allocated_wall: float | None,
    handed_unknown: bool = False,
    booked_by: str | None = None,
    *,
    owed_use: tuple[float | None, float | None] = (None, None),
    holders: Iterable[Names] = (),
) -> dict[str, Any]:
    """A device's entry as the tracker writes it (read back by `checked_entry`). `bookedBy`:
    the host whose booking the use was taken from (`DeviceUse.booked_by`); `owed_use`: the
    owed use's `owedFor` and `owedCovers`; `holders`: who held the use its release is for
    (`DeviceUse.kept_holders`)."""
    entry: dict[str, Any] = {"used": sorted(used), "owed": owed}
    if allocated_wall is not None:
        entry["allocatedAt"] = allocated_wall
    if handed_unknown:  # (keys an older version ignores)
        entry["handedUnknown"] = True
    if booked_by is not None:
        entry["bookedBy"] = booked_by
    for key, at in zip(("owedFor", "owedCovers"), owed_use, strict=True):
        if owed and at is not None:
            entry[key] = at
    if names := [list(h) for h in holders]:
        entry["holders"] = names
    return entry


def names_of(value: object) -> Names:
    """A holder of an entry's `holders` (`[namespace, pod, container]`), checked."""
    if not isinstance(value, list) or len(value) != 3:
        raise TypeError(f"a holder is not [namespace, pod, container]: {value!r}")
    namespace, pod, container = (text(v) for v in value)
    return namespace, pod, container


def handed_device(device_id: str, entry: Mapping[str, Any]) -> Device | None:
    """The device an older version's entry keeps as `handed` (None: it keeps none)."""
    handed = entry.get("handed")
    if handed is None:
        return None
    nodes = tuple(DeviceNode(host, container) for host, container in handed["nodes"])
    return Device(device_id, nodes=nodes, env=handed["env"])
