"""What each booked spot reaches now: a device reachable there under a second name is held.

A booked spot (`BookedClaims.spots`: the real path a booking's device was handed out at)
stays its pod's: a restarting container is handed the answer the kubelet cached, and the
runtime opens that path again. What the path reaches now may be another device's identity
reached under a second name while that device's own path stays: a second node of its
number made there, a hard link of its node or file, a symlink to its directory (issue 17,
hostile19 F9). The index learns it when a device claims through the spot (its host path or
its real path is one: `SpotsReached.note`, from each device an admission examines, so
O(changed)); the device that claims that identity elsewhere, of another ID or resource, is
held `place_booked` by the booking (`BookedClaims.reached_conflict`) while the spot still
reaches it (looked at again each time it is examined) and the booking lives. A spot found to
reach another identity names both identities' devices to examine again (`changed`).

A booked place handed out through a link is a spot too, at the path as handed
(`linked_spot`): the runtime resolves that text again at each container start, so what the
link reaches now is the pod's as well as what it reached when booked (another plugin's
answer in the kubelet's checkpoint, `serial/by-id/usb-X` re-pointed by udev; kdp-host's
own answers, this host's or another's, hand out each place's real path instead:
`ownership_hand_out`, so a link on the way of theirs reaches nothing of the pod's later).
Its directory and each directory on the way are followed through the host's watcher, and a
change there has it looked at (`ownership_spots`), as nothing claims through it; every
identity it was found to reach while booked holds (`was`: a container of the pod may have
started then) (issue 17, hostile27 F9).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable, Iterator, Mapping

from .ownership_aliases import by_text
from .ownership_claims import SYSFS, ClaimKey, Claims, Owner
from .ownership_shared_held import Counted, below_sorted, count

Still = Callable[[ClaimKey, str], bool]
"""Whether a path still reaches an identity (`ClaimTable._still_there`)."""


class SpotsReached:
    """The identity each booked spot was last found to reach, and the spots of each."""

    def __init__(self) -> None:
        self.at: dict[str, ClaimKey] = {}
        """Booked spot -> the identity a device last claimed through it."""
        self.spots: dict[ClaimKey, set[str]] = {}
        """Identity -> the booked spots found to reach it."""
        self.changed: list[ClaimKey] = []
        """Identities a spot was found to reach, or no longer reaches, since the index last
        took them: the devices that claim them are examined again."""
        self.linked: dict[str, Counted] = {}
        """Spot of a place handed out through a link (`linked_spot`) -> its bookings."""
        self.ways: dict[str, set[str]] = {}
        """Link met resolving a linked spot (`links_on_the_way`, after the first: the one at
        the spot or on its directories' way) -> the linked spots whose resolution passes it."""
        self._way_of: dict[str, list[str]] = {}
        """Linked spot -> the links of `ways` its resolution passed when last looked at."""
        self._sorted: list[str] | None = None
        """`linked` and `ways` sorted (`linked_below`), made when first needed."""
        self.follow: Callable[[str], None] = _ignore
        """Told each linked spot that comes to be booked (the index follows it)."""
        self.was: dict[ClaimKey, set[str]] = {}
        """Identity -> the linked spots found to reach it while booked (now or since: a
        container of the pod may have started then, so it holds until they are unbooked)."""
        self._was_of: dict[str, set[ClaimKey]] = {}
        """Linked spot -> the identities of `was` it reached."""

    def count_linked(self, spot: str, owner: Owner, step: int) -> None:
        """`owner`'s booking holds the linked spot `spot` `step` times more (fewer): a new
        one is followed, one no longer booked reaches nothing held."""
        new = spot not in self.linked
        count(self.linked, spot, owner, step)
        self._sorted = None
        if spot not in self.linked:
            self.forget(spot)
            self.took(spot, [])
            for key in self._was_of.pop(spot, ()):
                self.changed.append(key)
                spots = self.was[key]
                spots.discard(spot)
                if not spots:
                    del self.was[key]
        elif new:
            self.follow(spot)

    def took(self, spot: str, links: Iterable[str]) -> list[str]:
        """Resolving the linked spot `spot` passed `links` now (each at its place, in order):
        a change at any of them, or on a directory's way to one, has it looked at again (a
        chain `by-id/usb-X -> ../by-path/pci-1 -> ../../dev/ttyUSB0` whose middle link udev
        re-points; hostile29 H4). Returns the links not met before (to follow)."""
        new = list(dict.fromkeys(links))
        old = self._way_of.pop(spot, [])
        if new == old:
            if new:
                self._way_of[spot] = new
            return []
        for link in old:
            spots = self.ways[link]
            spots.discard(spot)
            if not spots:
                del self.ways[link]
        if new:
            self._way_of[spot] = new
        fresh = [link for link in new if link not in self.ways]
        for link in new:
            self.ways.setdefault(link, set()).add(spot)
        self._sorted = None
        return fresh

    def through(self, path: str) -> Iterator[str]:
        """The linked spot at `path` and those whose resolution passes a link at `path`."""
        if path in self.linked:
            yield path
        yield from self.ways.get(path, ())

    def linked_below(self, directory: str) -> Iterator[str]:
        """The linked spots below `directory`, or whose resolution passes a link below it (a
        directory on their way changed)."""
        if not self.linked:
            return iter(())
        if self._sorted is None:
            self._sorted = sorted({*self.linked, *self.ways})
        found = below_sorted(self._sorted, directory)
        return iter(dict.fromkeys(s for path in found for s in self.through(path)))

    def note(self, claims: Claims, booked: Container[str]) -> None:
        """A device claims `claims` now: each of its host paths and real paths that is a
        booked spot reaches that claim's identity (a claim by text reaches nothing)."""
        for key, path, real in claims.all():
            if key[0] == SYSFS:
                continue
            for spot in (real,) if path == real else (real, os.path.normpath(path)):
                if spot in booked:
                    self.found(spot, key)

    def found(self, spot: str, key: ClaimKey | None) -> None:
        """`spot` reaches `key` now (None, or a claim by text: nothing)."""
        if self.at.get(spot) == key:
            return
        self.forget(spot)
        if key is not None and not by_text(key):
            self.at[spot] = key
            self.spots.setdefault(key, set()).add(spot)
            self.changed.append(key)
            if spot in self.linked:
                self.was.setdefault(key, set()).add(spot)
                self._was_of.setdefault(spot, set()).add(key)

    def changed_at(
        self, paths: Iterable[str], booked: Container[str], look: Callable[[str], ClaimKey | None]
    ) -> None:
        """The watcher reported `paths` changed: each that is a booked spot, or a link on a
        linked spot's way (`ways`), has that spot looked at (`look`: what it reaches now, as
        the index resolves a path), so a second name made there is known though no device
        claims through it (a group's link is no member)."""
        for path in paths:
            if path in booked:
                self.found(path, look(path))
            for spot in list(self.ways.get(path, ())):
                if spot in booked and spot != path:
                    self.found(spot, look(spot))

    def forget(self, spot: str) -> None:
        """`spot` is known to reach nothing (it does not, or it is no longer booked)."""
        key = self.at.pop(spot, None)
        if key is None:
            return
        self.changed.append(key)
        spots = self.spots[key]
        spots.discard(spot)
        if not spots:
            del self.spots[key]

    def held(
        self, claims: Claims, spots: Mapping[str, Counted], still: Still
    ) -> list[tuple[str, Iterable[Owner]]]:
        """(host path of the claim, the bookings of the spot) for each claim of a device
        whose identity a spot of `spots` still reaches (`still`, looked at now), or a linked
        spot reached while booked (`was`); a spot no longer booked, or that no longer
        reaches it, is forgotten."""
        found: list[tuple[str, Iterable[Owner]]] = []
        if not self.spots and not self.was:
            return found
        for key, path, _ in claims.all():
            for spot in list(self.spots.get(key, ())):
                if spot not in spots or not still(key, spot):
                    self.forget(spot)
                else:
                    found.append((path, spots[spot]))
            found += ((path, spots[spot]) for spot in self.was.get(key, ()) if spot in spots)
        return found


def _ignore(_spot: str) -> None:
    """(No index follows the spots.)"""


def linked_spot(path: str, real: str) -> str | None:
    """The spot a booked place handed out as `path` is at when a link is on its way (its
    normalised text is not its real path `real`): None when there is none."""
    spot = os.path.normpath(path)
    return None if spot == real else spot


def by_directory(paths: Iterable[str]) -> dict[str, list[str]]:
    """`paths` by their directory (a report of anything changed in one: an overflow, the
    mount table changed)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        found.setdefault(os.path.dirname(path), []).append(path)
    return found
