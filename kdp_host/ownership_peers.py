"""Which of `ownership.json`'s entries of another host to believe, and this host's mark on
its own writes.

Hosts that share the state directory write their entries into one file (`ownership_sync`).
A host's end is told by its lock (`state_lock.running`), never by its entries: the file may
be replaced behind the hosts' backs (a backup restored, a config tool writing a valid
document) by one that lacks a running host's bookings, or holds older ones. So each host
marks every write with a stamp of its own (`writes`: instance ID -> a number that only
grows, `Stamp`; the other hosts' stamps are kept by every merge as their entries are), and a
host that follows the file (`Peers`) believes another host's entries only when they come
with a stamp of that host at least as new as any it has seen: a file without it, or with an
older one, does not hold that host's latest write, and its bookings as last read stay in
force (joined with whatever the file holds of it) until it writes anew or its lock is free;
then they are taken over as a host that ended has its entries taken over (they end with
their pods). The host whose entries went writes them back when it reads the file
(`ownership_sync`): each host rewrites only its own part, so two hosts never answer each
other's writes with writes of their own.

An older version writes no stamps: its entries found in the file are believed as before;
while it runs with none in the file, its bookings as last read stay in force (a booking it
dropped then is held until it stops: the safe side).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .ownership_document import Saved, SavedBooking, as_written, read_saved

WRITES = "writes"
"""The key of `ownership.json` that holds each host's stamp of its last write."""
UNSTAMPED = -1
"""The stamp of an older version's entries (it writes none)."""


def stamps_of(document: Mapping[str, Any]) -> dict[str, int]:
    """The file's stamps (`writes`); one not of its shape (hand-made) counts as none: the
    entries it would vouch for are then not believed over what was last read."""
    found = document.get(WRITES)
    if not isinstance(found, Mapping):
        return {}
    return {
        w: s
        for w, s in found.items()
        if isinstance(w, str) and isinstance(s, int) and not isinstance(s, bool) and s >= 0
    }


@dataclass
class Stamp:
    """This host's stamp (`writes`): a new one for each write, never smaller than the last
    (nanoseconds of the wall clock: a host that starts again under the same instance ID goes
    on above what it wrote before)."""

    clock: Callable[[], int] = time.time_ns
    last: int = 0

    def next(self) -> int:
        self.last = max(self.clock(), self.last + 1)
        return self.last


def own_lost(
    read: Mapping[str, int] | None, found: Saved, wrote: Mapping[str, Any] | None, writer: str
) -> str | None:
    """Why a file read with stamps `read` (None: it has no `writes`) and bookings `found`
    lost this host's part (None: it did not), when `wrote` is its last write that landed,
    taken before the read (so the file read is that write or a later one, unless replaced
    behind the hosts' backs). A file without stamps at all is an older version's write
    (it keeps the other hosts' entries, not their stamps): this host's entries as written
    tell then."""
    mine = None if wrote is None else stamps_of(wrote).get(writer)
    if wrote is None or mine is None:
        return None
    if read is None:
        own = [b for b in read_saved(wrote, as_written) if b.writer == writer]
        if [b for b in found if b.writer == writer] == own:
            return None
        return "it lacks this host's entries as written (replaced by another document)"
    if (stamp := read.get(writer)) is not None and stamp >= mine:
        return None
    if stamp is None:
        return "it lacks this host's entries (deleted, or replaced by another document)"
    return "it holds an older copy of this host's entries (replaced)"


@dataclass(frozen=True)
class Believed:
    """The file as a following host takes it (`Peers.believe`)."""

    saved: Saved
    """Its bookings, another host's as last read where the file lacks its latest write."""
    running: frozenset[str]
    """The other hosts named (in the file or as last read) that run."""
    ended: frozenset[str]
    """The other hosts last read that no longer run: their bookings are taken over."""
    kept: frozenset[str]
    """The running hosts whose bookings as last read stay in force."""


@dataclass
class Peers:
    """The other hosts' entries as last read with their stamp (`believe`)."""

    writer: str
    known: dict[str, tuple[int, Saved]] = field(default_factory=dict)

    def believe(
        self, saved: Saved, stamps: Mapping[str, int], running: Callable[[str], bool]
    ) -> Believed:
        """`saved` (this host's entries left out or not) read with `stamps`; `running(host)`
        asks its lock (blocking: call it off the loop)."""
        by_writer: dict[str | None, Saved] = {}
        for booked in saved:
            by_writer.setdefault(booked.writer, []).append(booked)
        named = {w for w in (*by_writer, *self.known) if w is not None and w != self.writer}
        alive = frozenset(w for w in named if running(w))
        out: Saved = [*by_writer.pop(self.writer, []), *by_writer.pop(None, [])]
        kept: set[str] = set()
        for other in sorted(named):
            entries = by_writer.get(other, [])
            stamp = stamps.get(other, UNSTAMPED if entries else None)
            known = self.known.get(other)
            if known is not None and not _vouched(stamp, entries, known):
                entries = _joined(known[1], entries)  # (not its latest write: last read holds)
                kept.add(other)
            elif stamp is not None:
                self.known[other] = (stamp, entries)
            if other not in alive:
                self.known.pop(other, None)
            out += entries
        return Believed(out, alive, frozenset(named - alive), frozenset(kept & alive))


def _vouched(stamp: int | None, entries: Saved, known: tuple[int, Saved]) -> bool:
    """Whether a host's `entries` in the file, with its `stamp`, are its latest write: a
    newer stamp, or the one last read with the entries read then (a content read once is
    the same objects: compared by identity first). The same stamp with other entries is an
    edit behind the hosts' backs."""
    if stamp is None or stamp != known[0]:
        return stamp is not None and stamp > known[0]
    return entries == known[1]


def _joined(known: Saved, found: Saved) -> Saved:
    """The bookings last read, and those of the file not among them."""
    owners = {booked.owner for booked in known}
    extra: list[SavedBooking] = [b for b in found if b.owner not in owners]
    return [*known, *extra]
