"""What each Allocate handed out: per resource, each device as the last Allocate handed it
to a container (its host paths, mounts and env as they were then), kept while one of its
IDs is booked (`HostServices.handed`, one record per resource for the host's life).

A container that restarts gets the kubelet's cached answer again, so what acts on it must
take the device as handed out, not where a reload moved it since: preStart
(`hooks.PreStartHook`, through `handed_devices`) and the CDI entry of a held device
(`cdi.CdiSpecWriter.pinned`) read this record; a release keeps the same device in its state
file (`release_state`, also across restarts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from .allocation import AllocationBuilder
from .devices import Device, Snapshot, physical_id, replica_ids


def hand_out(
    handed: MutableMapping[str, Device], snapshot: Snapshot, advertised_ids: Iterable[str]
) -> bool:
    """An Allocate handed these IDs out as `snapshot` lists them: each device is kept so in
    `handed` (device ID -> device). True when one changed."""
    changed = False
    entries = snapshot.by_advertised_id
    for advertised in advertised_ids:
        entry = entries.get(advertised)
        if entry is not None and handed.get(entry.device.id) is not entry.device:
            handed[entry.device.id] = entry.device
            changed = True
    return changed


def let_go(
    handed: MutableMapping[str, Device], booked: Callable[[str], bool], replicas: int
) -> None:
    """The devices of `handed` none of whose IDs is booked now go (no pod may hold them)."""
    for device_id in list(handed):
        if not any(booked(advertised) for advertised in replica_ids(device_id, replicas)):
            del handed[device_id]


@dataclass
class Handing:
    """The record of one resource's Allocate answers (`handed`), kept as `hand_out` and
    `let_go` keep it, without a walk of every device handed out (each of its IDs) at every
    answer: `let_go` can find something only after a booking went (`drops`, the ownership
    index's count of bookings gone) or after an answer handed out an ID left unbooked."""

    handed: MutableMapping[str, Device]
    replicas: int
    _drops: int | None = None
    """`drops` at the last `let_go` (None: none yet)."""
    _unbooked: bool = False
    """Whether an answer since handed out an ID that was not booked."""

    def answered(
        self,
        snapshot: Snapshot,
        advertised_ids: Sequence[str],
        booked: Callable[[str], bool] | None = None,
        drops: int = 0,
    ) -> None:
        """An Allocate handed these IDs out as `snapshot` lists them (and booked them, when
        `booked` says what is booked now: the devices none of whose IDs is are let go)."""
        if booked is not None and (self._unbooked or drops != self._drops):
            let_go(self.handed, booked, self.replicas)
            self._drops = drops
        hand_out(self.handed, snapshot, advertised_ids)
        self._unbooked = booked is not None and not all(map(booked, advertised_ids))


def handed_devices(
    builder: AllocationBuilder,
    snapshot: Snapshot,
    handed: Mapping[str, Device],
    requested_ids: Sequence[str],
) -> list[Device]:
    """The physical devices behind `requested_ids` as an Allocate handed them out
    (`handed`: what the container has, wherever a reload moved them since), else as
    `snapshot` lists them (handed out before kdp-host started); raises AllocationError for
    an ID neither knows."""
    replicas = builder.resource.replicas
    found: dict[str, Device] = {}
    listed: list[str] = []
    for advertised in dict.fromkeys(requested_ids):
        device = handed.get(physical_id(advertised, replicas))
        if device is None:
            listed.append(advertised)
        else:
            found[device.id] = device
    if listed or not found:
        for device in builder.physical_devices(snapshot, listed, healthy_only=False):
            found.setdefault(device.id, device)
    return sorted(found.values(), key=lambda device: device.id)
