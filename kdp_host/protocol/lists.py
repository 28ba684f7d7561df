"""The bytes of ListAndWatch's device lists.

Each ListAndWatch message is the complete device list. Encoding it with betterproto2 costs
~20 us per device, so the service sends bytes built here: the three fields of a Device
written directly (`wire.encode_device_entry`, ~0.5 us per entry, byte-identical to
betterproto2 and to the official protobuf encoding: tests/test_wire.py), once per snapshot,
only for the entries that changed since the last list, yielding to the event loop between
chunks of a long run of entries.

One message holds at most `rules.LIST_AND_WATCH_MAX_BYTES` (the kubelet's receive limit, less
a margin): a longer list is cut to its longest prefix that fits, in the table's order (by ID),
beside the IDs pods hold (kept wherever they are), so the same list always sends the same
entries, and the encoder reports it (`Overflow`, once per change) to whoever must say so (the
resource: an error line, a gauge, /readyz).
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, count
from operator import is_not

from ..devices import Advertised, Snapshot
from ..rules import LIST_AND_WATCH_MAX_BYTES
from ..turns import TURN_BUDGET, Pace
from .wire import encode_device_entry, topology_field

ENCODE_CHUNK = 256
"""Entries encoded between two yields to the event loop at most (`turns.Pace`: a later turn
also ends at its time budget)."""
ENCODE_STEP = 16
"""Entries encoded in one step of a turn."""


class _TopologyFields(dict[int | None, bytes]):
    """NUMA node -> encoded Device.topology field, filled on first use (None -> no field)."""

    def __missing__(self, numa: int | None) -> bytes:
        field = b"" if numa is None else topology_field(numa)
        self[numa] = field
        return field


def _entry_bytes(entries: Iterable[Advertised], topology: _TopologyFields) -> list[bytes]:
    return [encode_device_entry(e.id, e.healthy, topology[e.device.numa]) for e in entries]


@dataclass(frozen=True, slots=True)
class Overflow:
    """A device list longer than one ListAndWatch message may be: the message holds the
    list's longest prefix that fits (`prefix` entries) beside the entries pods hold, and
    those held entries past the prefix (`kept`, positions in the list)."""

    advertised: int
    """Entries the message holds."""
    entries: int
    """Entries of the whole list (replicas counted)."""
    size: int = field(compare=False)
    """Bytes of the whole list (not part of what changes: the entries advertised are)."""
    prefix: int = field(default=0, compare=False)
    kept: tuple[int, ...] = field(default=(), compare=False)

    @property
    def left_out(self) -> int:
        return self.entries - self.advertised


def list_overflow(
    sizes: Sequence[int], total: int | None = None, held: Sequence[int] = ()
) -> Overflow | None:
    """How a list whose entries take `sizes` bytes (`total` in all, if known) fits one
    ListAndWatch message: None when whole; else the entries at positions `held` (IDs pods
    hold, in list order: they stay advertised wherever they are) and the longest prefix of
    the others that fits beside them (the one rule). Held entries too many to fit together
    are not preferred (the plain prefix)."""
    total = sum(sizes) if total is None else total
    if total <= LIST_AND_WATCH_MAX_BYTES:
        return None
    budget = LIST_AND_WATCH_MAX_BYTES - sum(sizes[i] for i in held)
    if budget < 0:
        held, budget = (), LIST_AND_WATCH_MAX_BYTES
    others = array("I", sizes)
    for i in held:
        others[i] = 0
    prefix = bisect.bisect_right(list(accumulate(others)), budget)
    kept = tuple(i for i in held if i >= prefix)
    return Overflow(prefix + len(kept), len(sizes), total, prefix, kept)


def _sent(data: bytes, sizes: Sequence[int], overflow: Overflow) -> bytes:
    """The bytes of the entries `overflow` advertises, in list order."""
    if not overflow.kept:
        return data[: sum(sizes[: overflow.prefix])]
    offsets = list(accumulate(sizes, initial=0))
    view = memoryview(data)
    kept = (view[offsets[i] : offsets[i + 1]] for i in overflow.kept)
    return b"".join([view[: offsets[overflow.prefix]], *kept])


def entries_overflow(entries: Sequence[Advertised]) -> Overflow | None:
    """`list_overflow` of an advertised list, its entries written as ListAndWatch writes them
    (for `kdp-host check`, which sends nothing)."""
    return list_overflow(array("I", map(len, _entry_bytes(entries, _TopologyFields()))))


@dataclass(frozen=True, slots=True)
class _Encoded:
    """The last list written: its snapshot version, its entries, its bytes, the length of
    each entry's bytes in them (4 bytes an entry kept, not an object per entry), and what is
    sent of them (`data`, or its prefix that fits one message)."""

    version: int
    advertised: Sequence[Advertised]
    data: bytes
    sizes: array[int]
    sent: bytes


class ListAndWatchEncoder:
    """Builds the ListAndWatchResponse bytes of a snapshot, once per snapshot version.

    Entries are written directly (see `encode_device_entry`), and only those that changed:
    the table hands on the same entry objects while a device is unchanged (frozen, so the
    same object writes the same bytes), and the rest of the list is copied from the last
    list's bytes. A hot-plug among a thousand devices writes one entry.
    """

    def __init__(
        self,
        on_overflow: Callable[[Overflow | None], None] | None = None,
        held: Callable[[str], bool] | None = None,
    ) -> None:
        """`on_overflow` is told each change of whether and how the list is cut to fit;
        `held` says which IDs pods hold (kept in a list cut to fit: `list_overflow`)."""
        self._topologies = _TopologyFields()
        self._last: _Encoded | None = None
        self._on_overflow = on_overflow
        self._held = held
        self._overflow: Overflow | None = None

    async def encode(self, snapshot: Snapshot) -> bytes:
        last = self._last
        if last is not None and last.version == snapshot.version:
            return last.sent
        new = snapshot.advertised
        if last is None:
            parts = await self._written(new)
            data, sizes = b"".join(parts), array("I", map(len, parts))
        else:
            data, sizes = await self._rewritten(last, new)
        held = self._held
        if held is not None and len(data) > LIST_AND_WATCH_MAX_BYTES:
            overflow = list_overflow(sizes, len(data), [i for i, e in enumerate(new) if held(e.id)])
        else:
            overflow = list_overflow(sizes, len(data))
        sent = data if overflow is None else _sent(data, sizes, overflow)
        self._last = _Encoded(snapshot.version, new, data, sizes, sent)
        if overflow != self._overflow:
            self._overflow = overflow
            if self._on_overflow is not None:
                self._on_overflow(overflow)
        return sent

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
            starts = array("Q", accumulate(sizes, initial=0)) if changed else array("Q")
            copied_to = 0  # (the byte up to which `view` is copied)
            pace = _pace()
            for at in range(0, len(changed), ENCODE_STEP):
                if at and pace.due():
                    await asyncio.sleep(0)  # (every entry changed: as many segments)
                chunk = slice(at, at + ENCODE_STEP)
                for i, entry_bytes in zip(changed[chunk], written[chunk], strict=True):
                    segments += (view[copied_to : starts[i]], entry_bytes)
                    copied_to = starts[i + 1]
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
        pace = _pace()
        for start in range(0, len(entries), ENCODE_STEP):
            if start and pace.due():
                await asyncio.sleep(0)
            parts += _entry_bytes(entries[start : start + ENCODE_STEP], topology)
        return parts


def _pace() -> Pace:
    """`ENCODE_CHUNK` entries a turn, a later turn `TURN_BUDGET` at most."""
    return Pace(ENCODE_CHUNK // ENCODE_STEP, TURN_BUDGET)


@dataclass
class Wakes:
    """The events of a service's open ListAndWatch streams: set by a new table version (the
    table's listener), by `resend` and by the end of the streams."""

    events: set[asyncio.Event] = field(default_factory=set)
    resends: int = 0
    """Counts `resend` calls: a stream that sees more sends its list again."""
    closed: bool = False

    def quiet(self, resends: int) -> bool:
        """Whether a stream that sent its list at `resends` has nothing to send again."""
        return resends == self.resends and not self.closed

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        for event in self.events:
            event.set()

    def resend(self) -> bool:
        """The current list again on every stream: the kubelet writes its checkpoint after
        every ListAndWatch message (docs/kubelet-contract.md §10), which `unlisted` asks for;
        False when no stream lists (a first list held: `DevicePluginService.device_lists`)."""
        self.resends += 1
        self.wake()
        return bool(self.events)
