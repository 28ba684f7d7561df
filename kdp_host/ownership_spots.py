"""Booked spots followed through the host's watcher: what each reaches now is the pod's.

A booked spot is a path the runtime opens again when a container of the pod starts anew from
the answer the kubelet kept (`BookedClaims.spots`, `ownership_reach`). A device claiming
through one tells the index what it reaches; a place handed out through a link
(`ownership_reach.linked_spot`: another plugin's answer in the kubelet's checkpoint,
`serial/by-id/usb-X`, a CDI name's `hostPath`) has no device claiming through it, so
its directory and every directory on the way to it are followed through the host's watcher
(`_follow_link`), and a change there has it looked at (`_recheck`'s `SpotsReached.changed_at`;
a directory on the way: `_above_changed`), and so is every link its resolution passes
(`_follow_way`: a chain of links, one further along re-pointed; hostile29 H4): the device
that claims what it reaches now is held `place_booked` while the booking lives, beside what
it reached when booked (its claim: the node in the pod's device cgroup). O(changed): a spot
is looked at when a change is reported at it or on its way, and once when it comes to be
booked (issue 17, hostile27 F9).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Collection
from typing import TYPE_CHECKING

from .identity import links_on_the_way
from .ownership_allocate import BookingAllocations
from .ownership_claims import ClaimKey

if TYPE_CHECKING:
    from .watch import Watcher


class SpotsFollowed(BookingAllocations):
    """The index's layer that follows the booked spots no device claims through."""

    _watcher: Watcher | None

    @abc.abstractmethod
    def _users(self, directory: str) -> dict[str, None] | None:
        """The resources that claimed through `directory`, the watcher following it from
        now on (None: no watcher)."""

    @abc.abstractmethod
    def _path_changed(self, directory: str, name: str | None) -> None:
        """A change at `name` in `directory` (None: anything there), rechecked soon."""

    @abc.abstractmethod
    def local(self, directories: Collection[str]) -> bool:
        """Whether a lookup in each of these directories waits on nothing but this machine."""

    def _follow_links(self) -> None:
        """Follow the linked spots booked before the watcher came (at start: the kubelet's
        checkpoint, `ownership.json`)."""
        self._ledger.reach.follow = self._follow_link
        for spot in list(self._ledger.reach.linked):
            self._follow_link(spot)

    def _follow_link(self, spot: str) -> None:
        """A booked place reached through a link: its directory and each above it are
        followed from now on, and it is looked at now (it may have changed since it was
        resolved)."""
        watcher, directory = self._watcher, os.path.dirname(spot)
        if watcher is None or self._users(directory) is None:
            return
        self._follow_above(watcher, directory)
        self._path_changed(directory, os.path.basename(spot))

    def _follow_way(self, spot: str) -> None:
        """Every link met resolving the linked spot `spot` now (`links_on_the_way`, at most
        the kernel's 40) is followed from now on: its directory and each directory above it,
        as the spot's own (hostile29 H4: `by-id/usb-X -> ../by-path/pci-1 -> ttyUSB0`, the
        middle link re-pointed by udev)."""
        watcher = self._watcher
        links = links_on_the_way(spot)
        for link in self._ledger.reach.took(spot, links):
            directory = os.path.dirname(link)
            if watcher is not None and self._users(directory) is not None:
                self._follow_above(watcher, directory)

    def _above_changed(self, directory: str, name: str | None) -> None:
        """`KeptAnswers._above_changed`; the linked spots below `directory` are looked at
        again (a link on their way re-pointed, a directory renamed), and the directories
        followed below it watched at what their paths reach now (a watch stays on the
        directory it was added to)."""
        super()._above_changed(directory, name)
        spots = list(self._ledger.reach.linked_below(directory))
        if spots and self._watcher is not None:
            self._watcher.rewatch([directory])
        for spot in spots:
            self._path_changed(os.path.dirname(spot), os.path.basename(spot))

    def _spot_reaches(self, spot: str) -> ClaimKey | None:
        """What a booked spot the watcher reported changed reaches now (one lookup of a
        device's path, on the loop: only in a directory `local` says waits on nothing but
        this machine; elsewhere a device claiming through it tells). A linked spot's way is
        taken again first: each link its resolution passes is followed as the spot is (its
        directory and each above it), so a link further along re-pointed is seen too."""
        if spot in self._ledger.reach.linked:
            self._follow_way(spot)
        found = self._paths.inline([spot])[spot]
        return None if found is None or isinstance(found, str) else found[0]
