"""What a resource's CDI spec file on disk defines, for an Allocate answer to wait on.

A container's runtime resolves the CDI names of its Allocate answer through the spec file
when it creates the container, which may be at once. The writer (`cdi.CdiSpecWriter`) wakes on
the record of what the Allocate handed out (`handed_out`), but writes a moment later: an ID
handed out otherwise than its entry said (the ID was held by a pod gone since: its entry
kept what that pod was handed, hostile14 N6) would resolve to the gone pod's node in between.
So the answer goes out once the file on disk defines each name it carries with the host paths
it hands out (`SpecOnDisk.until_holding`), at once in the common case (the entry says so
already); `protocol.service` refuses it (UNAVAILABLE) when the file does not within the limit.

The runtime resolves a name through the file of its highest-priority dir that defines it (a
later dir of its list: `/var/run/cdi` over `/etc/cdi`). In a rolling update that moves
`specDir`, the other live host's file may be that one (hostile20 F2): it defines the name
from its own list until it takes this host's hand-out up (`handed_peers`), tens of ms later.
So the answer waits for the winning file (`SpecOnDisk.above`, kept from a watch of the dirs
above the spec dir, `cdi_resolution`; nothing is read per Allocate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .allocation import cdi_device_name, has_cdi_edits, named_by
from .cdi_files import spec_entries
from .devices import Device, Snapshot


def entry_paths(device: Device) -> frozenset[str]:
    """The host paths a device's spec entry hands out (`cdi_spec._device_edits`)."""
    return frozenset((*(n.host_path for n in device.nodes), *(m.host_path for m in device.mounts)))


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
    """The entries of the spec file on disk, as its writer last read or wrote it (`seen`), and
    those of the files that win over it in the runtime's dirs (`seen_above`)."""

    entries: dict[str, frozenset[str]] = field(default_factory=dict)
    above: dict[str, frozenset[str] | None] = field(default_factory=dict)
    """What the files of the runtime's dirs that win over this one define, by name (None:
    two files of one dir define it, so it resolves nowhere; `cdi_resolution`)."""
    pending: bool = False
    """Those files changed since `above` was read (told by the dir watch)."""
    kind: str = ""
    """The resource's kind, as last `seen`."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, content: bytes | None, kind: str) -> None:
        self.entries, self.kind = spec_entries(content, kind), kind
        self._wake()

    def differing(self, content: bytes | None) -> frozenset[str]:
        """The names `content` (what the writer would write) defines that the file on disk
        does not, or with other host paths: where another instance owns the file (a rolling
        update), the names an Allocate of this one would answer and the runtime would not
        resolve as answered (hostile20 F1: another `allocate.cdi.kind`; F3: its owner killed
        after its list changed, its entries kept until its lease runs out)."""
        entries = self.entries
        mine = spec_entries(content, self.kind)
        return frozenset(name for name, paths in mine.items() if entries.get(name) != paths)

    def seen_above(self, above: dict[str, frozenset[str] | None], pending: bool) -> None:
        self.above, self.pending = above, pending
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def holds(self, named: Mapping[str, Device]) -> bool:
        """Whether each name resolves to the host paths of its device: as the winning file
        defines it (a file of a later runtime dir that defines it, else this one)."""
        if self.pending:
            return False
        if not (above := self.above):  # (the common case: no file wins over this one)
            return all(self.entries.get(name) == entry_paths(d) for name, d in named.items())
        return all(
            (above[name] if name in above else self.entries.get(name)) == entry_paths(d)
            for name, d in named.items()
        )

    async def until_holding(self, named: Mapping[str, Device], limit: float) -> bool:
        """Until the files hold `named` (`holds`): False when they do not within `limit` s."""
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
