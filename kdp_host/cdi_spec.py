"""What goes into a resource's CDI spec, and which device names a spec on disk resolves.

Each device: its device nodes and mounts; the spec: the resource's mounts. That is what is
true for a device whatever else the container got. Runtimes apply CDI edits after the
kubelet's env (CDI replaces a variable that is already set), so values that depend on the
whole allocation (`{ids}`, `{paths}`, `{count}`, per-device env that other devices set
differently, the resource-level env keys) stay in the Allocate response only: a per-device
copy would override the combined value. Plain functions of the config and a snapshot;
`cdi.CdiSpecWriter` runs them through the offload and keeps the file current.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .allocation import ALLOCATION_DEPENDENT_FIELDS, cdi_device_name, has_cdi_edits
from .config import CdiConfig, ResourceConfig, render_template, template_fields
from .devices import Device, Snapshot
from .identity import Identity
from .ownership_canonical import strays_now


def minimum_cdi_version(kind: str, additional_gids: bool = False) -> str:
    """The lowest cdiVersion that has every feature the spec uses.

    Older runtimes reject versions they do not know, so the spec declares the minimum,
    as CDI's own producer does: 0.5.0 for `hostPath` on device nodes (and device names
    starting with a digit), 0.6.0 when the class holds a `.`, 0.7.0 for `additionalGids`
    (`allocate.cdi.additionalGids`). A device node's `gid` and `fileMode` are older than 0.5.0.
    """
    if additional_gids:
        return "0.7.0"
    _, _, klass = kind.partition("/")
    return "0.6.0" if "." in klass else "0.5.0"


NO_PINS: Mapping[str, Device] = MappingProxyType({})


def build_spec(
    resource: ResourceConfig,
    snapshot: Snapshot,
    held: Mapping[str, Device] = NO_PINS,
    withheld: Collection[str] = (),
    legacy: Mapping[str, Device] = NO_PINS,
) -> dict[str, Any] | None:
    """The spec: an entry per kubelet device ID (`allocation.cdi_device_name`), or None
    when it would hold none.

    Each advertised ID's entry is its device as listed. A booked ID in `held` (by kubelet
    ID: the device as ITS Allocate handed it out, while a pod holds it) keeps that entry
    whatever the device lists now, also while the snapshot no longer lists it: a container
    that restarts resolves its CDI name again and must get what it was allocated, not what
    another pod sharing the device (`replicas`) was handed since (hostile14 N6). An ID in
    `withheld` (booked, and what it was handed is not known: the record was lost) has no
    entry: its name fails closed. `legacy` (by physical device ID): the uses an older
    version answered with the device's own name, one per device; where such a name is
    another entry's too, with other edits, neither is written (fails closed). CDI rejects a
    spec without devices and a device without edits, so entries with neither a device node
    nor a mount are left out (Allocate gives them no CDI name either).
    """
    cdi = resource.allocate.cdi
    if cdi is None:
        return None
    allocate = resource.allocate
    shared_env = _consistent_device_env(snapshot.devices, allocate.env.keys())
    named: dict[str, Device] = {entry.id: entry.device for entry in snapshot.advertised}
    named.update(held)
    clashing = set(withheld)
    for key, device in legacy.items():
        if (known := named.setdefault(key, device)) is not device and not same_edits(known, device):
            clashing.add(key)
    devices: list[dict[str, Any]] = []
    for key in sorted(named.keys() - clashing):
        if has_cdi_edits(shown := named[key]):
            devices.append(
                {
                    "name": cdi_device_name(resource.name, key),  # unique to (resource, ID)
                    "containerEdits": _device_edits(shown, allocate.permissions, shared_env, cdi),
                }
            )
    if not devices:
        return None
    spec: dict[str, Any] = {
        "cdiVersion": minimum_cdi_version(cdi.kind, bool(cdi.additional_gids)),
        "kind": cdi.kind,
        "devices": devices,
    }
    values = {"resource": resource.name}
    env = [
        f"{key}={render_template(text, values)}"
        for key, text in allocate.env.items()
        if not template_fields(text) & ALLOCATION_DEPENDENT_FIELDS
    ]
    mounts: dict[str, dict[str, Any]] = {}
    for mount in allocate.mounts:
        mounts.setdefault(
            mount.container_path, _mount(mount.host_path, mount.container_path, mount.read_only)
        )
    edits: dict[str, Any] = {}
    if env:
        edits["env"] = env
    if cdi.additional_gids:
        edits["additionalGids"] = list(cdi.additional_gids)
    if mounts:
        edits["mounts"] = list(mounts.values())
    if edits:
        spec["containerEdits"] = edits
    return spec


def same_edits(one: Device, other: Device) -> bool:
    """Whether two devices' entries would say the same (nodes, mounts and env)."""
    return (one.nodes, one.mounts, dict(one.env)) == (other.nodes, other.mounts, dict(other.env))


def encode_spec(spec: Mapping[str, Any]) -> bytes:
    return (json.dumps(spec, indent=2) + "\n").encode()


def render_spec_file(
    resource: ResourceConfig,
    snapshot: Snapshot,
    held: Mapping[str, Device] = NO_PINS,
    withheld: Collection[str] = (),
    legacy: Mapping[str, Device] = NO_PINS,
) -> bytes | None:
    spec = build_spec(resource, snapshot, held, withheld, legacy)
    return None if spec is None else encode_spec(spec)


@dataclass(frozen=True)
class Held:
    """What the held entries of a spec are (`cdi.CdiSpecWriter._pins`): by kubelet ID, the
    use as its Allocate handed it out (`held`) and what each host path of it reached then
    (`reached`); the IDs whose entry is left out (`withheld`); the uses an older version
    named by their device (`legacy`, by device ID, with `legacy_reached`)."""

    held: Mapping[str, Device] = field(default_factory=dict)
    reached: Mapping[str, Mapping[str, Identity]] = field(default_factory=dict)
    withheld: frozenset[str] = frozenset()
    legacy: Mapping[str, Device] = field(default_factory=dict)
    legacy_reached: Mapping[str, Mapping[str, Identity]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.held or self.withheld or self.legacy)


def render_held(
    resource: ResourceConfig, snapshot: Snapshot, held: Held
) -> tuple[bytes | None, frozenset[str]]:
    """`render_spec_file`, a held entry left out, like a withheld one, while a host path of
    it reaches another identity than it was handed out with (`Held.reached`: `handed_out.
    Handed.reached`; issue 17, hostile8 N3: made anew at that path, another pod's node): the
    held name fails closed, never resolving to another node. Not pinned by number instead:
    a mount has none, and the number handed out may name another device by now. Blocking
    (`strays_now` per recorded path, where kdp-host sees it: `Device.checked_at`); also the
    keys left out so."""

    def astray(
        devices: Mapping[str, Device], reached: Mapping[str, Mapping[str, Identity]]
    ) -> frozenset[str]:
        return frozenset(
            k for k, paths in reached.items() if k in devices and _strays(devices[k], paths)
        )

    gone, old = astray(held.held, held.reached), astray(held.legacy, held.legacy_reached)
    kept = {k: device for k, device in held.held.items() if k not in gone}
    legacy = {k: device for k, device in held.legacy.items() if k not in old}
    content = render_spec_file(resource, snapshot, kept, {*held.withheld, *gone, *old}, legacy)
    return content, gone | old


def _strays(device: Device, reached: Mapping[str, Identity]) -> bool:
    return any(strays_now(path, key) for path, key in _checked(device, reached))


def _checked(device: Device, reached: Mapping[str, Identity]) -> list[tuple[str, Identity]]:
    """Where each recorded host path of a held device is looked at (`Device.checked_at`),
    with what it reached when handed out."""
    where = device.checked_at()
    return [(where.get(path, path), key) for path, key in reached.items()]


def checked_paths(held: Held) -> frozenset[str]:
    """The paths `render_held` looks at for the held entries: where what one reaches changes,
    its entry may go astray (or come back), so its writer follows them (`cdi_pins`)."""
    found: set[str] = set()
    for devices, reached in ((held.held, held.reached), (held.legacy, held.legacy_reached)):
        for key, paths in reached.items():
            if (device := devices.get(key)) is not None:
                found.update(path for path, _ in _checked(device, paths))
    return frozenset(found)


def _consistent_device_env(devices: Iterable[Device], configured: Iterable[str]) -> frozenset[str]:
    """Per-device env keys that can go into the spec: not configured at resource level,
    and set to one value by every device that sets them."""
    values: dict[str, set[str]] = {}
    for device in devices:
        for key, value in device.env.items():
            values.setdefault(key, set()).add(value)
    blocked = set(configured)
    return frozenset(key for key, seen in values.items() if len(seen) == 1 and key not in blocked)


def _device_edits(
    device: Device, permissions: str, shared_env: frozenset[str], cdi: CdiConfig
) -> dict[str, Any]:
    edits: dict[str, Any] = {}
    nodes: dict[str, dict[str, Any]] = {}
    ownership: dict[str, Any] = {}
    if cdi.device_gid is not None:
        ownership["gid"] = cdi.device_gid
    if cdi.device_file_mode is not None:
        ownership["fileMode"] = int(cdi.device_file_mode, 8)
    for node in device.nodes:
        nodes.setdefault(
            node.container_path,
            {
                "path": node.container_path,
                "hostPath": node.host_path,
                "permissions": node.permissions or permissions,
                **ownership,
            },
        )
    if nodes:
        edits["deviceNodes"] = list(nodes.values())
    env = [f"{key}={value}" for key, value in sorted(device.env.items()) if key in shared_env]
    if env:
        edits["env"] = env
    mounts: dict[str, dict[str, Any]] = {}
    for mount in device.mounts:
        mounts.setdefault(
            mount.container_path, _mount(mount.host_path, mount.container_path, mount.read_only)
        )
    if mounts:
        edits["mounts"] = list(mounts.values())
    return edits


def _mount(host_path: str, container_path: str, read_only: bool) -> dict[str, Any]:
    return {
        "hostPath": host_path,
        "containerPath": container_path,
        "options": ["ro" if read_only else "rw", "bind"],
    }
