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
from array import array
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
    """The last list written: its snapshot version, its entries, its bytes, and the length
    of each entry's bytes in them (4 bytes an entry kept, not an object per entry)."""

    version: int
    advertised: Sequence[Advertised]
    data: bytes
    sizes: array[int]


class ListAndWatchEncoder:
    """Builds the ListAndWatchResponse bytes of a snapshot, once per snapshot version.

    Entries are written directly (see `encode_device_entry`), and only those that changed:
    the table hands on the same entry objects while a device is unchanged (frozen, so the
    same object writes the same bytes), and the rest of the list is copied from the last
    list's bytes. A hot-plug among a thousand devices writes one entry.
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
            data, sizes = b"".join(parts), array("I", map(len, parts))
        else:
            data, sizes = await self._rewritten(last, new)
        self._last = _Encoded(snapshot.version, new, data, sizes)
        return data

    async def _rewritten(
        self, last: _Encoded, new: Sequence[Advertised]
    ) -> tuple[bytes, array[int]]:
        """The bytes of `new` and their sizes, copied from `last` where the entry is the
        same object.

        Same length (health changes): each position compared. Otherwise (devices added or
        removed): the unchanged head and tail are kept and the span between is written.
        The comparisons and sums run in C (`map(is_not, ...)`, `sum`), not an interpreted
        loop per entry.
        """
        old, sizes = last.advertised, last.sizes
        if len(old) == len(new):
            changed = list(compress(range(len(new)), map(is_not, old, new)))
            written = await self._written([new[i] for i in changed])
            view = memoryview(last.data)
            segments: list[bytes | memoryview] = []
            new_sizes = array("I", sizes)
            copied_to = entry = 0  # (the byte and the entry up to which `view` is copied)
            for i, entry_bytes in zip(changed, written, strict=True):
                start = copied_to + sum(sizes[entry:i])
                segments += (view[copied_to:start], entry_bytes)
                copied_to, entry = start + sizes[i], i + 1
                new_sizes[i] = len(entry_bytes)
            segments.append(view[copied_to:])
            return b"".join(segments), new_sizes
        shortest = min(len(old), len(new))
        head = next(compress(count(), map(is_not, old, new)), shortest)
        tail = next(compress(count(), map(is_not, reversed(old), reversed(new))), shortest)
        tail = min(tail, shortest - head)
        middle = await self._written(new[head : len(new) - tail])
        view = memoryview(last.data)
        start, end = sum(sizes[:head]), len(view) - sum(sizes[len(old) - tail :])
        data = b"".join([view[:start], *middle, view[end:]])
        return data, sizes[:head] + array("I", map(len, middle)) + sizes[len(old) - tail :]

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
