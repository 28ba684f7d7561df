"""Uses `handed-out.json` did not hold taken up: another host's (`HandedRecord.peers_wrote`),
an older version's kept elsewhere (`adopted`).

Two hosts share the state directory in a rolling update. Each reads the other's entries at
its start; a use the other hands out after that was not known here, so what acts on the use
on this host (a release, a preStart, a held CDI entry) took the device as this host lists it,
another node when the two versions number their slots otherwise (hostile15 F7, F10). So when
the other host writes the file (`state_presence.KeptPresent`), its entries of a use handed out
later than this host's of the device are taken up: what acts on a use takes it as ITS
Allocate handed it out, whichever host answered that Allocate.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from .devices import Device
from .handed_entries import Entries, Handed, handed_anew, read_document, same_use, union_of
from .logs import EventLogger
from .state_document import SHAPE_ERRORS


def taken_up(mine: Handed | None, theirs: Handed) -> Handed:
    """The device's entry once another host's, of a use handed out after `mine`, is taken
    up: theirs, this host's use (not released) an earlier one (`handed_anew`), their
    earlier uses too, their use owed if they said so."""
    if mine is None:
        return theirs
    new = handed_anew(mine, replace(theirs, earlier=()), not same_use(mine, theirs))
    earlier = [*new.earlier]
    earlier += [u for u in theirs.earlier if not any(same_use(u, k) for k in earlier)]
    return replace(new, owed=new.owed or theirs.owed, earlier=tuple(earlier))


def take_up(
    data: Entries, document: Mapping[str, Any], writer: str | None, log: EventLogger
) -> list[str]:
    """Take the entries of the other writers of `document` that are of a later Allocate
    than `data`'s (this host's, changed in place; each logged); returns the resources."""
    try:
        writers = read_document(document)[1]
    except SHAPE_ERRORS:
        return []
    writers.pop(writer or "", None)
    changed: list[str] = []
    for resource, devices in union_of(writers).items():
        entries = data.setdefault(resource, {})
        for device_id, theirs in devices.items():
            mine = entries.get(device_id)
            if mine is None or theirs.at > mine.at:
                entries[device_id] = taken_up(mine, theirs)
                log.info("handed_out_taken_up", resource=resource, device=device_id)
                if not changed or changed[-1] != resource:
                    changed.append(resource)
        if not entries:
            del data[resource]
    return changed


def adopted(data: Entries, resource: str, device: Device, ids: Collection[str], at: float) -> bool:
    """Take up (into `data`) a device an older version kept elsewhere (`release-state.json`'s
    `handed`), unless the record has it; whether it was taken."""
    entries = data.setdefault(resource, {})
    if device.id in entries or not ids:
        if not entries:
            del data[resource]
        return False
    entries[device.id] = Handed(device, frozenset(ids), at, id_names=False)
    return True
