"""Containment: which claims lie below which claimed directories (a mount of a directory
puts everything below it into the container), by every place a claim is shown at.

A claim is at its real path, and also wherever the mount table shows that path again (a
bind mount of it, or of a directory above it: `mount_table.MountMap.places`), and where it
was found since it was claimed (`move`: a node or directory renamed into a mounted
directory is the same identity at a new real path). Kept from the first directory claim on:
a host whose devices mount no directory pays nothing for it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Protocol

from .identity import DIRECTORY
from .mount_table import MountMap
from .ownership_claims import Claim, ClaimKey, ancestors
from .ownership_reads import indexed
from .rules import below


class BookedTrees(Protocol):
    """What the bookings hold mounted (`ownership_booked.BookedClaims`)."""

    def found_elsewhere(self, key: ClaimKey, real: str) -> bool: ...

    def holds_mounted(self, real: str) -> bool: ...


class Containment:
    """The places of every claim (`at`), the claimed directories by place (`dirs`) and how
    many claims are below each directory (`count_below`)."""

    def __init__(self, made: Callable[[], Iterator[Claim]]) -> None:
        self._made = made
        """Every claim of the table (each of its places is counted on first use)."""
        self.dirs: dict[str, ClaimKey] = {}
        """Place -> key of every claimed directory (a mount contains what is below)."""
        self._at: dict[ClaimKey, tuple[str, ...]] | None = None
        """Key -> places of every claim, kept from the first directory claim on."""
        self._below: dict[str, int] = {}
        """Directory -> how many claims of `_at` have a place below it."""
        self.mounts = MountMap()
        """Where the mount table shows a path again (`remount`)."""
        self.spread: set[ClaimKey] = set()
        """The keys of `_at` counted at more than one place (a hard link found in a followed
        tree, a bind mount): read again where one was, they are counted anew (`gone_from`)."""
        self.found: dict[ClaimKey, tuple[str, ...]] = {}
        """Key -> the real paths it was found at since it was claimed (`move`), last last."""
        self._found_at: tuple[list[str], dict[str, list[ClaimKey]]] | None = None
        """Those paths sorted (those below a directory are one run), and the keys at each:
        made when first needed after `found` changed (`gone_from`)."""
        self.inside: Callable[[ClaimKey], tuple[str, ...]] = _nowhere
        """Device number (a file's inode: `ownership_reads.indexed`) -> where the followed
        trees' reads found a node of it (a file of more than one link), there before a
        device claimed it (`ownership_reads.NodesFound`; hostile18 F13; a file: hostile21
        F4's test)."""

    def places(self, key: ClaimKey, real: str) -> tuple[str, ...]:
        """Every place a claim made at `real` is shown at now: there, where it was found
        since (a rename or a hard link: the old place is kept, on the safe side, while the
        claim is, until a read of that place finds it gone: `gone_from`), and wherever the
        mount table shows one of those again."""
        found = self.found.get(key)
        if (kept := indexed(key)) is not None and (inside := self.inside(kept)):
            found = (*(found or ()), *(p for p in inside if p != real))
        if not found:
            return self.mounts.places(real)
        places = dict.fromkeys(p for at in (real, *found) for p in self.mounts.places(at))
        return tuple(places)

    def at(self) -> dict[ClaimKey, tuple[str, ...]]:
        """The places of every claim, counted from the claims on first use."""
        if self._at is None:
            self._at = {}
            for key, _, real in self._made():
                self.count(key, real)
        return self._at

    def count_below(self, directory: str) -> int:
        return self._below.get(directory, 0)

    def count(self, key: ClaimKey, real: str) -> None:
        """A claim is made: a directory is one a claim may be below (containment is kept
        from the first directory on), and it is below the ancestors of its places."""
        places = None
        if key[0] == DIRECTORY:
            places = self.places(key, real)
            for place in places:
                self.dirs[place] = key
            self.at()
        at = self._at
        if at is None or key in at:
            return
        at[key] = places = places or self.places(key, real)
        if len(places) > 1:
            self.spread.add(key)
        counts = self._below
        for directory in _above(places):
            counts[directory] = counts.get(directory, 0) + 1

    def uncount(self, key: ClaimKey) -> None:
        """A claim is gone."""
        if self._at is not None:  # (else nothing was counted, nor found: `move`)
            if self.found.pop(key, None) is not None:
                self._found_at = None
            self._forget(key)

    def _forget(self, key: ClaimKey) -> None:
        self.spread.discard(key)
        places = None if self._at is None else self._at.pop(key, None)
        if places is None:
            return
        for place in places:
            if self.dirs.get(place) == key:
                del self.dirs[place]
        counts = self._below
        for directory in _above(places):
            left = counts[directory] - 1
            if left:
                counts[directory] = left
            else:
                del counts[directory]

    def move(self, key: ClaimKey, real: str, made_at: str) -> None:
        """A claim made at `made_at` was found at `real` (renamed or hard-linked there): it
        is counted there too from now on."""
        self.at()
        self._forget(key)
        self.found[key] = (*(p for p in self.found.get(key, ()) if p != real), real)
        self._found_at = None
        self.count(key, made_at)

    def found_at(
        self,
        found: Iterable[tuple[ClaimKey, str]],
        booked: Callable[[ClaimKey], bool],
        bookings: BookedTrees,
    ) -> set[str]:
        """Claims found at another real path than their places (renamed or linked into a
        claimed directory: `ownership_arrivals`) are counted there from now on (a lingering
        one is there while it is there); returns the host paths of the directory claims
        above where they are now (the devices that mount them are checked again) and, when
        one of those is `booked`, or a directory a booking holds mounted besides its device
        is above it (a pod has the mount: it reaches the claim now), the host paths of the
        claim itself: its device is checked again too, and held while the booking lives
        (hostile8 N1: holding the mount alone does nothing, the pod has it). What a booking
        holds, found where it was not booked (`BookedTrees.found_elsewhere`: a directory
        above it renamed), checks the devices whose directories hold it now (hostile18 F4),
        and, a booked directory, those with a claim below it now (hostile19 F6). A claim
        found below a directory a booking holds mounted is checked again wherever it was
        known to be: its places may have counted it there before a pod had the mount (the
        tree of another host's booking, read once taken in: hostile23 F4)."""
        at = self.at()
        moved = [(key, real) for key, real in found if key in at and real not in at[key]]
        elsewhere = [(key, real) for key, real in found if bookings.found_elsewhere(key, real)]
        reached = {key for key, real in found if key in at and bookings.holds_mounted(real)}
        if not moved and not elsewhere and not reached:
            return set()  # (no claim, or where it is known to be: the common case)
        made: dict[ClaimKey, list[tuple[str, str]]] = {}
        for key, path, real in self._made():  # (once: what arrived may be many claims)
            made.setdefault(key, []).append((path, real))
        outer: set[ClaimKey] = set(reached)
        for key, real in moved:
            self.move(key, real, made[key][0][1] if key in made else real)
            above = list(self.outer(self.mounts.places(real)))
            outer.update(above)
            if any(map(booked, above)) or bookings.holds_mounted(real):
                outer.add(key)
        for key, real in elsewhere:
            outer.update(self.outer(self.mounts.places(real)))
            if key[0] == DIRECTORY:  # (a booked tree renamed: what is in it now is held)
                outer.update(self.inner(real))
        return {path for key in outer for path, _ in made.get(key, ())}

    def gone_from(self, read: Iterable[str], found: Iterable[tuple[ClaimKey, str]]) -> set[str]:
        """`read`: paths read in full, `found` below them. A claim found at one of them or
        below since (`move`) that is not found there now has left (renamed out of a mounted
        tree, unlinked): no longer counted there. Returns the host paths of those claims and
        of the directory claims above where they were (their devices are checked again)."""
        ordered, keys_at = self._found_index()
        seen = set(found)
        went: dict[ClaimKey, set[str]] = {}
        for path in set(read):
            prefix = path.rstrip("/") + "/"
            at = bisect_left(ordered, prefix)
            run = [path] if path in keys_at else []
            while at < len(ordered) and ordered[at].startswith(prefix):
                run.append(ordered[at])
                at += 1
            for place in run:
                for key in keys_at[place]:
                    if (key, place) not in seen:
                        went.setdefault(key, set()).add(place)
        left = {key: tuple(places) for key, places in went.items()}
        spread = self._spread_below(read, left)
        if not left and not spread:
            return set()
        made: dict[ClaimKey, list[tuple[str, str]]] = {}
        for key, path, real in self._made():
            made.setdefault(key, []).append((path, real))
        outer: set[ClaimKey] = set(left)
        for key in spread:  # (a hard link a tree's read found there gone: `inside`)
            counted, claim = self.at()[key], made.get(key)
            if claim is None or (places := self.places(key, claim[0][1])) == counted:
                continue
            outer.add(key)
            outer.update(self.outer(tuple(p for p in counted if p not in places)))
            self._forget(key)
            self.count(key, claim[0][1])
        for key, gone in left.items():
            outer.update(self.outer(tuple(p for at in gone for p in self.mounts.places(at))))
            self._forget(key)
            kept = tuple(p for p in self.found[key] if p not in gone)
            self._found_at = None
            if kept:
                self.found[key] = kept
            else:
                del self.found[key]
            self.count(key, made[key][0][1] if key in made else gone[0])
        return {path for key in outer for path, _ in made.get(key, ())}

    def _spread_below(self, read: Iterable[str], skip: Container[ClaimKey]) -> list[ClaimKey]:
        """The keys of `spread` (but `skip`) counted at or below a path of `read`."""
        at, reads = self._at, set(read)
        if not self.spread or at is None:
            return []
        return [
            key
            for key in self.spread
            if key not in skip and any(p == r or below(p, r) for p in at[key] for r in reads)
        ]

    def _found_index(self) -> tuple[list[str], dict[str, list[ClaimKey]]]:
        index = self._found_at
        if index is None:
            keys_at: dict[str, list[ClaimKey]] = {}
            for key, places in self.found.items():
                for place in places:
                    keys_at.setdefault(place, []).append(key)
            index = self._found_at = (sorted(keys_at), keys_at)
        return index

    def reached_at(self, key: ClaimKey, real: str) -> None:
        """A claim made already is made again at `real` (another device took it over, through
        a hard link): counted there too from now on, as if found there (`move`)."""
        known = self.at().get(key) if self.dirs else None
        if known is not None and real not in known:
            self.move(key, real, next((r for k, _, r in self._made() if k == key), real))

    def remount(self, mounts: MountMap) -> None:
        """The mount table changed: every claim is counted again at its places now."""
        if mounts == self.mounts:
            return
        self.mounts = mounts
        had = self._at is not None
        self.dirs, self._at, self._below = {}, None, {}
        if had:
            self.at()

    def outer(self, places: tuple[str, ...]) -> Iterator[ClaimKey]:
        """The claimed directories that hold one of `places` (a mount of them holds it)."""
        dirs = self.dirs
        for place in places:
            for directory in ancestors(place):
                key = dirs.get(directory)
                if key is not None:
                    yield key

    def inner(self, directory: str) -> Iterator[ClaimKey]:
        """The claims with a place below `directory`: none without a look at every claim
        when none is counted below it (an Allocate mounting /usr/lib beside a resource of
        12,000 devices looked at each of their claims: issue 19, the renaming probe)."""
        at = self.at()
        if not self._below.get(directory):
            return
        for key, places in list(at.items()):
            if any(below(place, directory) for place in places):
                yield key

    def holds(self, directory: str, key: ClaimKey) -> bool:
        """Whether a claim has a place below `directory`."""
        places = self.at().get(key)
        return places is not None and any(below(place, directory) for place in places)


def _nowhere(_key: ClaimKey) -> tuple[str, ...]:
    return ()


def _above(places: tuple[str, ...]) -> Iterator[str]:
    """The directories above any of `places`, once each."""
    if len(places) == 1:
        yield from ancestors(places[0])
        return
    seen: set[str] = set()
    for place in places:
        for directory in ancestors(place):
            if directory not in seen:
                seen.add(directory)
                yield directory
