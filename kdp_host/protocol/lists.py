"""The bytes of ListAndWatch's device lists.

Each ListAndWatch message is the complete device list. Encoding it with betterproto2 costs
~20 us per device, so the service sends bytes built here: the three fields of a Device
written directly (`wire.encode_device_entry`, ~0.5 us per entry, byte-identical to
betterproto2 and to the official protobuf encoding: tests/test_wire.py), once per snapshot,
only for the entries that changed since the last list, yielding to the event loop between
chunks of a long run of entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, count
from operator import is_not

from ..devices import Advertised, Snapshot
from .wire import encode_device_entry, topology_field

ENCODE_CHUNK = 256
"""Entries encoded between two yields to the event loop."""


class _TopologyFields(dict[int | None, bytes]):
    """NUMA node -> encoded Device.topology field, filled on first use (None -> no field)."""

    def __missing__(self, numa: int | None) -> bytes:
        field = b"" if numa is None else topology_field(numa)
        self[numa] = field
        return field


@dataclass(frozen=True, slots=True)
class _Encoded:
    """The last list written: its snapshot version, entries, their bytes one by one, all
    of it joined."""

    version: int
    advertised: Sequence[Advertised]
    parts: list[bytes]
    data: bytes


class ListAndWatchEncoder:
    """Builds the ListAndWatchResponse bytes of a snapshot, once per snapshot version.

    Entries are written directly (see `encode_device_entry`), and only those that changed:
    the table hands on the same entry objects while a device is unchanged (frozen, so the
    same object writes the same bytes), and the bytes of every entry of the last list are
    kept. A hot-plug among a thousand devices writes one entry and joins the rest.
    """

    def __init__(self) -> None:
        self._topologies = _TopologyFields()
        self._last: _Encoded | None = None

    async def encode(self, snapshot: Snapshot) -> bytes:
        last = self._last
        if last is not None and last.version == snapshot.version:
            return last.data
        new = snapshot.advertised
        if last is None:
            parts = await self._written(new)
        else:
            parts = await self._rewritten(last, new)
        data = b"".join(parts)
        self._last = _Encoded(snapshot.version, new, parts, data)
        return data

    async def _rewritten(self, last: _Encoded, new: Sequence[Advertised]) -> list[bytes]:
        """The entries' bytes of `new`, taken from `last` where the entry is the same object.

        Same length (health changes): each position compared. Otherwise (devices added or
        removed): the unchanged head and tail are kept and the span between is written.
        The comparisons run in C (`map(is_not, ...)`), not an interpreted loop per entry.
        """
        old, old_parts = last.advertised, last.parts
        if len(old) == len(new):
            changed = list(compress(range(len(new)), map(is_not, old, new)))
            parts = list(old_parts)
            written = await self._written([new[i] for i in changed])
            for i, entry_bytes in zip(changed, written, strict=True):
                parts[i] = entry_bytes
            return parts
        shortest = min(len(old), len(new))
        head = next(compress(count(), map(is_not, old, new)), shortest)
        tail = next(compress(count(), map(is_not, reversed(old), reversed(new))), shortest)
        tail = min(tail, shortest - head)
        middle = await self._written(new[head : len(new) - tail])
        return old_parts[:head] + middle + old_parts[len(old) - tail :]

    async def _written(self, entries: Sequence[Advertised]) -> list[bytes]:
        """Each entry's bytes, yielding to the event loop between chunks of a long list."""
        parts: list[bytes] = []
        topology = self._topologies
        entry_bytes = encode_device_entry
        for start in range(0, len(entries), ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            parts += [
                entry_bytes(entry.id, entry.healthy, topology[entry.device.numa])
                for entry in entries[start : start + ENCODE_CHUNK]
            ]
        return parts
