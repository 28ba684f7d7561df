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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable, Mapping

from .ownership_aliases import by_text
from .ownership_claims import SYSFS, ClaimKey, Claims, Owner

Counted = Mapping[Owner, int]
"""The bookings that hold a spot, each with how many times."""
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

    def changed_at(
        self, paths: Iterable[str], booked: Container[str], look: Callable[[str], ClaimKey | None]
    ) -> None:
        """The watcher reported `paths` changed: each that is a booked spot is looked at
        (`look`: what it reaches now, as the index resolves a path), so a second name made
        there is known though no device claims through it (a group's link is no member)."""
        for path in paths:
            if path in booked:
                self.found(path, look(path))

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
        whose identity a spot of `spots` still reaches (`still`, looked at now); a spot no
        longer booked, or that no longer reaches it, is forgotten."""
        found: list[tuple[str, Iterable[Owner]]] = []
        if not self.spots:
            return found
        for key, path, _ in claims.all():
            for spot in list(self.spots.get(key, ())):
                if spot not in spots or not still(key, spot):
                    self.forget(spot)
                else:
                    found.append((path, spots[spot]))
        return found


def by_directory(paths: Iterable[str]) -> dict[str, list[str]]:
    """`paths` by their directory (a report of anything changed in one: an overflow, the
    mount table changed)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        found.setdefault(os.path.dirname(path), []).append(path)
    return found
