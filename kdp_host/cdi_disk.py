"""What a resource's CDI spec file on disk defines, for an Allocate answer to wait on.

A container's runtime resolves the CDI names of its Allocate answer through the spec file
when it creates the container, which may be at once. The writer (`cdi.CdiSpecWriter`) wakes on
the record of what the Allocate handed out (`handed_out`), but writes a moment later: an ID
handed out otherwise than its entry said (the ID was held by a pod gone since: its entry
kept what that pod was handed, hostile14 N6) would resolve to the gone pod's node in between.
So the answer goes out once the file on disk defines each name it carries with the host paths
it hands out (`SpecOnDisk.until_holding`), at once in the common case (the entry says so
already); `protocol.service` refuses it (UNAVAILABLE) when the file does not within the limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .allocation import cdi_device_name, has_cdi_edits, named_by
from .devices import Device, Snapshot


def entry_paths(device: Device) -> frozenset[str]:
    """The host paths a device's spec entry hands out (`cdi_spec._device_edits`)."""
    return frozenset((*(n.host_path for n in device.nodes), *(m.host_path for m in device.mounts)))


def spec_entries(content: bytes | None, kind: str) -> dict[str, frozenset[str]]:
    """Device name -> the host paths its entry hands out, of a spec file's content (none when
    it is missing, unreadable, or of another kind)."""
    if content is None:
        return {}
    try:
        spec = json.loads(content)
        if spec.get("kind") != kind:
            return {}
        found: dict[str, frozenset[str]] = {}
        for device in spec["devices"]:
            edits = device.get("containerEdits", {})
            nodes = (n.get("hostPath", n["path"]) for n in edits.get("deviceNodes", []))
            mounts = (m["hostPath"] for m in edits.get("mounts", []))
            found[str(device["name"])] = frozenset(str(p) for p in (*nodes, *mounts))
        return found
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def answered(
    resource: str, snapshot: Snapshot, requests: Iterable[Sequence[str]]
) -> dict[str, Device]:
    """The CDI device names an Allocate's answer carries for its devices (one per device of
    each container, `allocation.named_by`), with the device each hands out."""
    named: dict[str, Device] = {}
    for ids in requests:
        entries = [e for i in ids if (e := snapshot.by_advertised_id.get(i)) is not None]
        by = named_by(entries)
        for entry in entries:
            if has_cdi_edits(entry.device):
                named[cdi_device_name(resource, by[entry.device.id])] = entry.device
    return named


@dataclass
class SpecOnDisk:
    """The entries of the spec file on disk, as its writer last read or wrote it (`seen`)."""

    entries: dict[str, frozenset[str]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, content: bytes | None, kind: str) -> None:
        self.entries = spec_entries(content, kind)
        self._changed.set()
        self._changed = asyncio.Event()

    def holds(self, named: Mapping[str, Device]) -> bool:
        """Whether the file defines each name with the host paths of its device."""
        return all(self.entries.get(name) == entry_paths(d) for name, d in named.items())

    async def until_holding(self, named: Mapping[str, Device], limit: float) -> bool:
        """Until the file holds `named` (`holds`): False when it does not within `limit` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not self.holds(named):
            if (left := deadline - loop.time()) <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return self.holds(named)
        return True
