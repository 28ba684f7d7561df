"""The document of `<stateDir>/handed-out.json` (`handed_out.HandedRecord`): what one entry
keeps of a device as an Allocate handed it out, written and read back (checked: a value not
of its shape raises as a `state_file.Parser` does).

Each entry is rendered once per `Handed` (`Handed.rendered`, with its JSON text), so an
Allocate's write costs what changed, not every device handed out: the document is written as
those texts put together (`rendered_json.encoded`), the file read
back as this host last wrote it is that document again (`state_file.StateFile`), and a
rendered entry reads back as its `Handed` without being checked again (`parse_entries`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from .allocation import AllocationError
from .devices import Device, DeviceMount, DeviceNode
from .identity import Identity
from .rendered_json import Rendered
from .state_document import text


@dataclass(frozen=True)
class Handed:
    """One device as an Allocate handed it out, and the advertised IDs it went under."""

    device: Device
    ids: frozenset[str]
    at: float
    """Unix time of the Allocate (the later one wins when hosts' entries are merged)."""
    reached: Mapping[str, Identity] = field(default_factory=dict)
    """Host path (of a node or mount) -> the identity it reached when handed out
    (`identity.identity_of`, as the Allocate's claim check found it; issue 17, hostile8 N2/N3):
    a release, a preStart and a held CDI entry act on the path only while it reaches that.
    Empty in an entry written before it was kept (an upgrade): the place check of today."""

    @cached_property
    def rendered(self) -> Rendered[Handed]:
        """Its entry of the file, made once."""
        return Rendered(entry(self), self)


Entries = dict[str, dict[str, Handed]]
"""Resource -> device ID -> what was handed out."""


def entries_document(entries: Entries) -> dict[str, Any]:
    return {
        name: {device_id: handed.rendered for device_id, handed in sorted(devices.items())}
        for name, devices in sorted(entries.items())
    }


def entry(handed: Handed) -> dict[str, Any]:
    device = handed.device
    fields: dict[str, Any] = {
        "nodes": [[n.host_path, n.container_path, n.permissions] for n in device.nodes],
        "mounts": [[m.host_path, m.container_path, m.read_only] for m in device.mounts],
        "env": dict(device.env),
        "ids": sorted(handed.ids),
        "at": handed.at,
    }
    if handed.reached:  # (a key an older version ignores: it reads the rest as before)
        fields["reached"] = {path: list(key) for path, key in sorted(handed.reached.items())}
    return fields


def parse_entries(document: Mapping[str, Any]) -> Entries:
    """The entries of a document, each checked (a `Rendered` one is its `Handed`)."""
    return {
        text(name): {
            text(device_id): e.value if isinstance(e, Rendered) else handed(device_id, e)
            for device_id, e in devices.items()
        }
        for name, devices in document["resources"].items()
    }


def read_document(document: Mapping[str, Any]) -> tuple[Entries, dict[str, Entries]]:
    writers = {
        text(writer): parse_entries({"resources": resources})
        for writer, resources in document.get("writers", {}).items()
    }
    return parse_entries(document), writers


def handed(device_id: str, entry: Mapping[str, Any]) -> Handed:
    """One entry, checked: raises TypeError/ValueError/KeyError when it is not of its shape."""
    nodes, mounts, env, ids, at = (entry[k] for k in ("nodes", "mounts", "env", "ids", "at"))
    if not all(isinstance(v, list) for v in (nodes, mounts, ids)) or not isinstance(env, dict):
        raise TypeError(f"a handed-out entry is not of its shape: {entry!r}")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise TypeError(f"at is not a finite number: {at!r}")
    device = Device(
        text(device_id),
        nodes=tuple(
            DeviceNode(text(h), text(c), None if p is None else text(p)) for h, c, p in nodes
        ),
        mounts=tuple(DeviceMount(text(h), text(c), flag(ro)) for h, c, ro in mounts),
        env={text(k): text(v) for k, v in env.items()},
    )
    reached = entry.get("reached", {})  # (none in an entry of an older version)
    if not isinstance(reached, dict):
        raise TypeError(f"reached is not an object: {reached!r}")
    return Handed(
        device,
        frozenset(text(i) for i in ids),
        float(at),
        {text(path): identity(key) for path, key in reached.items()},
    )


def identity(value: object) -> Identity:
    """A recorded identity (`[kind, number]`), checked."""
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"an identity is not [kind, number]: {value!r}")
    kind, number = value
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"an identity's number is not an integer: {number!r}")
    return text(kind), number


def paths_reached(device: Device, reached: Mapping[str, Identity]) -> dict[str, Identity]:
    """What each host path of `device` (nodes, mounts) reached, of `reached`."""
    paths = [*(n.host_path for n in device.nodes), *(m.host_path for m in device.mounts)]
    return {path: reached[path] for path in paths if path in reached}


def reached_of(
    entry_of: Callable[[str], Handed | None], devices: Iterable[Device]
) -> dict[str, Identity]:
    """What the host paths of `devices` reached when handed out (`Handed.reached`), for
    those that are the record's (a device as listed instead has none)."""
    found: dict[str, Identity] = {}
    for device in devices:
        handed = entry_of(device.id)
        if handed is not None and same_device(handed.device, device):
            found.update(handed.reached)
    return found


UNKNOWN_CONSEQUENCE = (
    "preStart refuses them and their CDI entries are left out until they are handed out "
    "again or no longer held"
)


class RecordFull(AllocationError):
    """An Allocate would make the record keep more than `handed_out.MAX_DEVICES` devices."""


class Bookings(Protocol):
    """What the kubelet has booked (the host's `ownership.OwnershipIndex`)."""

    def is_booked(self, resource: str, advertised_id: str) -> bool: ...

    def drops(self) -> int: ...


class Answer(Protocol):
    """A PodResources answer (`holdings.Holdings`): the IDs of a resource pods hold."""

    def of(self, resource: str) -> Mapping[str, object]: ...


@dataclass
class Lost:
    """The record lost at start (`HandedRecord.booked_at_start`): per resource of `served`,
    the IDs the last PodResources answer showed held with no entry (handed out before: what
    they were handed is not known). They are withheld, and not let go while shown (not
    booked yet is not ended: the answer may have named a device not listed yet)."""

    served: Collection[str]
    shown: dict[str, set[str]] = field(default_factory=dict)

    def heard(self, answer: Answer, data: Entries) -> bool:
        """Take in `answer`; whether what it shows changed."""
        found: dict[str, set[str]] = {}
        for resource in self.served:
            known = {i for handed in data.get(resource, {}).values() for i in handed.ids}
            if ids := {i for i in answer.of(resource) if i not in known}:
                found[resource] = ids
        changed, self.shown = found != self.shown, found
        return changed


def union_of(writers: Mapping[str, Entries]) -> Entries:
    """The entries of every writer, the later Allocate winning per device."""
    union: Entries = {}
    for entries in writers.values():
        for name, devices in entries.items():
            for device_id, handed in devices.items():
                found = union.setdefault(name, {}).get(device_id)
                if found is None or handed.at > found.at:
                    union[name][device_id] = handed
    return union


def same_device(one: Device, other: Device) -> bool:
    """Whether two records of a device hand out the same (nodes, mounts and env)."""
    if one is other:
        return True
    return entry(Handed(one, frozenset(), 0.0)) == entry(Handed(other, frozenset(), 0.0))


def flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value
