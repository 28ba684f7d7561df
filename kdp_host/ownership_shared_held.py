"""What the bookings hold through their devices' shared claims (`Booking.shared`: a node
every device may share, `shared: true`, a glob group's member without `{key}`), and the
trees they hold mounted, shared or alone (issue 17, hostile19 F5, hostile21 F1, F5).

A tree a pod holds through a shared claim is a tree the pod has, like one it holds alone:
it is followed (`follow_mounted`: what arrives below it at any depth, its inode pinned, so
that renamed it is found where it is: `relocate_shared`), and what comes to be below it (a
node of another device's number made there, another device's node linked there, the tree
renamed into a directory another device claims) is held for that booking while it lives
(`sharers`: `BookedClaims.shared_conflict`, `reason=booked`). What differs from a tree held
alone is who may have it too: every device that shares the claim (the shared claim is no
clash with itself), so it is indexed apart from `mounted` (which holds the trees of
exclusive claims and places: a device reaching one of them is held, whoever it is).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any

from .identity import DIRECTORY
from .ownership_claims import SYSFS, Claim, ClaimKey, Owner, ancestors, twins
from .rules import below

Counted = dict[Owner, int]
"""The bookings that hold a claim, each with how many times (its own and a foreign copy)."""


class SharedHeld:
    """The bookings' shared claims by key and by place, and the trees bookings hold mounted
    (the layer of `ownership_booked.BookedClaims` that knows what a shared claim holds)."""

    booked: dict[ClaimKey, Counted]
    """Claim (of a device or a place) -> the bookings that hold it alone."""
    mounted: dict[str, Counted]
    """Real path of a directory a booking holds mounted alone (its device's, or a place)."""
    moved: dict[ClaimKey, tuple[str, ...]]
    """Booked key -> the real paths it was found at since (`found_elsewhere`)."""
    follow_mounted: Callable[[Owner, str], None]
    let_go_mounted: Callable[[str], None]
    places_of: Callable[[ClaimKey, str], tuple[str, ...]]
    sharing: Callable[[str], Iterable[str]]

    def __init__(self) -> None:
        self.shared_booked: dict[ClaimKey, Counted] = {}
        """Shared claim of a booked device (`Booking.shared`) -> the bookings that hold it."""
        self.shared_dirs: dict[str, Counted] = {}
        """Real path of a directory a booking holds shared (where it was booked, and where
        it was found since) -> those bookings: what is below it is in the pod's mount too."""
        self.shared_spots: dict[str, Counted] = {}
        """Real path of a shared claim a booking holds -> those bookings: a directory above it
        mounted would hand the node out again."""
        self._sorted_shared: list[str] | None = None
        """`shared_spots` sorted (`below_sorted`), made when first needed."""

    def index_shared(self, owner: Owner, shared: tuple[Claim, ...], step: int) -> None:
        """Count `owner`'s shared claims `step` times more (fewer): a directory's tree is
        followed from its first booking on, at every place it was found since."""
        for key, _, real in shared:
            count(self.shared_booked, key, owner, step)
            if key[0] != SYSFS:
                self._count_place(owner, key, real, step)
            for moved in self.moved.get(key, ()):  # (where it was found since)
                self.relocate_shared(owner, key, moved, step)
            if step < 0:
                self.forget_moved(key)

    def forget_moved(self, key: ClaimKey) -> None:
        """No booking holds `key` now, alone or shared: where it was found is forgotten."""
        if key not in self.booked and key not in self.shared_booked:
            self.moved.pop(key, None)

    def relocate_shared(self, owner: Owner, key: ClaimKey, real: str, step: int) -> None:
        """A claim `owner`'s booking holds shared (`step` times; negative: no more) is at
        `real` too (renamed there, or a directory above it): held there too."""
        if key[0] != SYSFS:
            self._count_place(owner, key, real, step)

    def _count_place(self, owner: Owner, key: ClaimKey, real: str, step: int) -> None:
        count(self.shared_spots, real, owner, step)
        self._sorted_shared = None
        if key[0] != DIRECTORY:
            return
        count(self.shared_dirs, real, owner, step)
        if step > 0:
            self.follow_mounted(owner, real)
        elif not self.tree_held(real):
            self.let_go_mounted(real)

    def tree_held(self, real: str) -> bool:
        """Whether a booking holds the directory `real` mounted (alone or shared)."""
        return real in self.mounted or real in self.shared_dirs

    def every_tree(self) -> list[tuple[str, Counted]]:
        """Each tree a booking holds mounted, alone or shared, with those bookings."""
        return [*self.mounted.items(), *self.shared_dirs.items()]

    def holds_mounted(self, real: str) -> bool:
        """Whether a booking holds a directory above `real` mounted, alone or shared (a pod
        reaches it)."""
        mounted, shared = self.mounted, self.shared_dirs
        return bool(mounted or shared) and any(d in mounted or d in shared for d in ancestors(real))

    def held_trees(self, mine: Container[Owner], sharing: Container[str] = ()) -> list[str]:
        """The trees a booking of none of `mine` holds mounted, alone or shared (but where it
        holds `sharing` shared: what an answer for `mine` shares itself is no clash with
        it), sorted: what the answer must not share (`ownership_shared`)."""
        trees = {t for t, owners in self.mounted.items() if any(o not in mine for o in owners)}
        trees.update(
            tree
            for tree, owners in self.shared_dirs.items()
            if tree not in sharing and any(o not in mine for o in owners)
        )
        return sorted(trees)

    def sharers(self, key: ClaimKey, real: str) -> list[Owner]:
        """The bookings that hold shared what an exclusive claim (`key` at `real`) reaches:
        the same key, a directory they hold shared above one of its places, and for a
        directory, a shared claim below one of its places or a node its tree shares with a
        tree they hold shared (`sharing`)."""
        booked, dirs = self.shared_booked, self.shared_dirs
        found = [*booked.get(key, ())]
        for twin in twins(key):  # (a directory and a sysfs device's own)
            found += booked.get(twin, ())
        if dirs and key[0] != SYSFS:
            for place in self.places_of(key, real):
                for directory in ancestors(place):
                    found += dirs.get(directory, ())
        if key[0] == DIRECTORY and (spots := self.shared_spots):
            ordered = self._sorted_shared
            if ordered is None:
                ordered = self._sorted_shared = sorted(spots)
            for place in self.places_of(key, real):
                found += (o for inner in below_sorted(ordered, place) for o in spots[inner])
            if dirs:  # (two trees that share a node's number, a file)
                there = (d for p in self.sharing(real) for d in ancestors(p))
                found += (o for d in there for o in dirs.get(d, ()))
        return found


def below_sorted(ordered: list[str], real: str) -> Iterator[str]:
    """The paths of `ordered` (sorted) below directory `real`: of the one run of those that
    start with its prefix."""
    prefix = real.rstrip("/") + "/"
    at = bisect_left(ordered, prefix)
    while at < len(ordered) and ordered[at].startswith(prefix):
        if below(ordered[at], real):
            yield ordered[at]
        at += 1


def count(index: dict[Any, Counted], key: object, owner: Owner, step: int) -> None:
    """Count `owner` `step` times more (fewer) at `key` of `index`."""
    holders = index.setdefault(key, {})
    left = holders.get(owner, 0) + step
    if left > 0:
        holders[owner] = left
    else:
        holders.pop(owner, None)
        if not holders:
            del index[key]
