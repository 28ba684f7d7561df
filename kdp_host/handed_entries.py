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
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

from .allocation import AllocationError
from .devices import Device, DeviceMount, DeviceNode, Snapshot
from .identity import Identity
from .rendered_json import Rendered
from .state_document import text
from .state_lock import other_writers


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
    owed: bool = False
    """Its use is seen gone and its release not done yet (`HandedRecord.owe`): the release
    acts on it (`releasing`), whatever the device was handed out as since (hostile14 N6)."""
    earlier: tuple[Handed, ...] = ()
    """The device's earlier uses, handed out otherwise (other nodes, mounts, env or
    identities) and not released yet (`handed_anew`): a use keeps what ITS Allocate handed
    out, for its container's preStart (`use_of`) and its release, until a release acting on
    it succeeds (`after_release`) or none of the device's IDs is booked."""
    id_names: bool = True
    """Its Allocate answered a CDI name per kubelet ID (`allocation.cdi_device_name`); False:
    an entry of an older version, whose answer named the device (`cdi_held`: that name is
    kept meaning this use while one of its IDs is booked)."""

    @cached_property
    def rendered(self) -> Rendered[Handed]:
        """Its entry of the file, made once."""
        return Rendered(entry(self), self)


Uses = tuple[Handed, ...]
"""Uses of a device as their Allocates handed them out (what a release acts on: `releasing`)."""
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
    seen = {n.host_path: n.seen_path for n in device.nodes if n.seen_path is not None}
    if seen:  # (keys an older version ignores: it reads the rest as before)
        fields["seen"] = dict(sorted(seen.items()))
    if handed.reached:
        fields["reached"] = {path: list(key) for path, key in sorted(handed.reached.items())}
    if handed.owed:  # (these two too: an older version reads the newest use as before)
        fields["owed"] = True
    if handed.earlier:
        fields["earlier"] = [entry(use) for use in handed.earlier]
    if handed.id_names:  # (absent: an older version's, which named the device)
        fields["idNames"] = True
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
    seen = entry.get("seen", {})  # (none in an entry of an older version, or of /dev nodes)
    if not isinstance(seen, dict):
        raise TypeError(f"seen is not of its shape: {entry!r}")
    device = Device(
        text(device_id),
        nodes=tuple(
            DeviceNode(
                text(h),
                text(c),
                None if p is None else text(p),
                seen_path=None if (at_seen := seen.get(h)) is None else text(at_seen),
            )
            for h, c, p in nodes
        ),
        mounts=tuple(DeviceMount(text(h), text(c), flag(ro)) for h, c, ro in mounts),
        env={text(k): text(v) for k, v in env.items()},
    )
    reached = entry.get("reached", {})  # (none in an entry of an older version)
    earlier = entry.get("earlier", [])  # (nor these two)
    if not isinstance(reached, dict) or not isinstance(earlier, list):
        raise TypeError(f"reached or earlier is not of its shape: {entry!r}")
    return Handed(
        device,
        frozenset(text(i) for i in ids),
        float(at),
        {text(path): identity(key) for path, key in reached.items()},
        flag(entry.get("owed", False)),
        tuple(handed(device_id, use) for use in earlier),
        flag(entry.get("idNames", False)),
    )


def identity(value: object) -> Identity:
    """A recorded identity (`[kind, number]`), checked."""
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"an identity is not [kind, number]: {value!r}")
    kind, number = value
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"an identity's number is not an integer: {number!r}")
    return text(kind), number


def uses(handed: Handed) -> tuple[Handed, ...]:
    """Every use of a device the record keeps: the earlier ones, then the newest."""
    return (*handed.earlier, replace(handed, earlier=())) if handed.earlier else (handed,)


def all_ids(handed: Handed) -> set[str]:
    """The IDs of every use the record keeps of a device."""
    return {i for use in uses(handed) for i in use.ids}


def handed_anew(old: Handed | None, new: Handed, replaced: bool) -> Handed:
    """The device's entry once `new` is handed out after `old` (`replaced`: otherwise than
    `old`): `old`'s use stays an earlier one, less the IDs `new` takes (another ID of a
    shared device still holds it as handed out, or its release is owed or not run yet), one
    per way of handing it out (the earlier uses so merged: bounded); not when released
    (no IDs left, not owed: `after_release`), so every earlier use is one not released."""
    if old is None:
        return new
    kept_old = replaced and bool(old.ids or old.owed)
    earlier = [*old.earlier, replace(old, earlier=())] if kept_old else list(old.earlier)
    kept: list[Handed] = []
    for use in earlier:
        use = replace(use, ids=use.ids - new.ids)
        twin = next((k for k in kept if same_use(k, use)), None)
        if twin is None:
            kept.append(use)
        else:
            ids, owed, at = twin.ids | use.ids, twin.owed or use.owed, max(twin.at, use.at)
            named = twin.id_names and use.id_names
            kept[kept.index(twin)] = replace(twin, ids=ids, owed=owed, at=at, id_names=named)
    return replace(new, owed=not replaced and old.owed, earlier=tuple(kept))


def use_of(handed: Handed, advertised: str) -> Handed:
    """The use of the device handed out under `advertised` (a container restart's preStart
    acts on what ITS Allocate handed out), else the newest."""
    every = uses(handed)
    return next((use for use in reversed(every) if advertised in use.ids), every[-1])


def cdi_held(
    entries: Mapping[str, Handed], booked: Callable[[str], bool]
) -> tuple[dict[str, Handed], dict[str, Handed]]:
    """What the CDI names pods hold stand for (`cdi.CdiSpecWriter`): by kubelet ID, the use
    each booked ID was handed out in (its name keeps meaning that, whatever the device was
    handed out as since: hostile14 N6); by device ID, the newest use an older version
    answered with the device's name (`Handed.id_names` False) one of whose IDs is booked
    (an upgrade: a running pod's restarted container resolves that name again)."""
    by_id: dict[str, Handed] = {}
    legacy: dict[str, Handed] = {}
    for device_id, handed in entries.items():
        for use in uses(handed):  # (the earlier ones first: a later one wins)
            mine = [i for i in use.ids if booked(i)]
            by_id.update(dict.fromkeys(mine, use))
            if mine and not use.id_names:
                legacy[device_id] = use
    return by_id, legacy


def releasing(handed: Handed) -> tuple[Handed, ...]:
    """The uses a release of the device acts on: those owed (`Handed.owed`), else (an entry
    of an older version, or no use seen gone yet) the newest."""
    every = uses(handed)
    return tuple(use for use in every if use.owed) or every[-1:]


def after_release(handed: Handed, acted: Collection[Handed]) -> Handed:
    """The device's entry once a release that acted on `acted` (`releasing`) succeeded:
    those earlier uses go, the newest is owed no more, and, when its own use was the owed
    one, keeps no IDs (released: no use holds it, and a later Allocate handing the device
    out otherwise does not keep it as an earlier use, `handed_anew`)."""

    def done(use: Handed) -> bool:  # (its IDs may have gone to a later use since)
        return any(one.at == use.at and same_use(one, use) for one in acted)

    earlier = tuple(use for use in handed.earlier if not done(use))
    released = handed.owed and done(handed)
    ids = frozenset[str]() if released else handed.ids
    return replace(handed, ids=ids, owed=handed.owed and not released, earlier=earlier)


def owed_all(handed: Handed) -> Handed:
    """The device's entry once every use of it so far is seen gone (its release owed)."""
    earlier = tuple(replace(use, owed=True) for use in handed.earlier)
    return replace(handed, owed=True, earlier=earlier)


def owed_but(handed: Handed, kept: Collection[str]) -> Handed:
    """`owed_all`, but the newest use's IDs of `kept` (containers that joined the device once
    every other use was gone, `release_join`) go on as the newest use, not owed."""
    owed, mine = owed_all(handed), handed.ids.intersection(kept)
    if not mine:
        return owed
    gone = (replace(owed, ids=handed.ids - mine, earlier=()),) if handed.ids - mine else ()
    return replace(handed, ids=mine, owed=False, earlier=(*owed.earlier, *gone))


def same_use(one: Handed, other: Handed) -> bool:
    """Whether two uses were handed out alike (nodes, mounts, env, what paths reached)."""
    return same_device(one.device, other.device) and one.reached == other.reached


def places_of(use: Handed) -> set[object]:
    """What a use was handed: its host paths, and what they reached (`Handed.reached`)."""
    paths = [*(n.host_path for n in use.device.nodes), *(m.host_path for m in use.device.mounts)]
    return {*paths, *use.reached.values()}


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
        for use in uses(handed) if handed is not None else ():
            if same_device(use.device, device):
                found.update(use.reached)
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
            known = {i for handed in data.get(resource, {}).values() for i in all_ids(handed)}
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


def check_room(
    data: Entries, resource: str, snapshot: Snapshot, ids: Iterable[str], limit: tuple[str, int]
) -> None:
    """Raises RecordFull when handing `ids` out would keep more devices than `limit` says
    (the file's name, `handed_out.MAX_DEVICES`)."""
    entries, listed = data.get(resource, {}), snapshot.by_advertised_id
    new = {e.device.id for i in ids if (e := listed.get(i)) and e.device.id not in entries}
    total = sum(len(devices) for devices in data.values()) + len(new)
    if total > limit[1]:
        raise RecordFull(
            f"{resource}: {limit[0]} would keep {total} devices handed out, more than "
            f"its limit of {limit[1]}: refused (devices go from it when no pod holds them)"
        )


def merged(
    mine: Mapping[str, Any],
    current: Mapping[str, Any] | None,
    writer: str,
    taken: Collection[str],
    directory: str,
) -> dict[str, Any]:
    """`HandedRecord._merge`: this host's entries (`mine`) with every other running host's of
    `current` (`state_lock.other_writers`), and their union, which a start reads."""
    kept = {} if current is None else read_document(current)[1]
    writers = other_writers(kept, writer, taken, directory)
    writers[writer] = parse_entries(mine)
    return {
        "resources": entries_document(union_of(writers)),
        "writers": {w: entries_document(entries) for w, entries in writers.items()},
    }


def same_device(one: Device, other: Device) -> bool:
    """Whether two records of a device hand out the same (nodes, mounts and env)."""
    if one is other:
        return True
    return entry(Handed(one, frozenset(), 0.0)) == entry(Handed(other, frozenset(), 0.0))


def flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value
