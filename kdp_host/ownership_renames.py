"""Renames: a list whose devices an old ID of the same resource owns, admitted in one pass.

A probe that gives its devices new IDs on every run (12,000 at once: Issue 17, Hostile #11)
sends every list to the full admission (`Admission._admit_all`), which lets go of each old
ID's claims and takes them again under the new one, checking each device against the whole
table. When a device's claims are the very object an old ID of the same resource owns (it
was renamed on its paths), no booking holds any of them, and nothing in the table could
clash with them but that old ID (no claimed directories, no claims by text, nothing shared,
no held or lingering claims), the full admission's outcome is known: the device is
advertised under its own ID and owns what the old ID owned. `_renamed` moves such devices,
one by one, each checked in the same turn of the loop as its move (a booking that comes
between two turns is seen), and hands over to the full admission at the first device that
is not such a one: it starts from what this did, as it does after `_admit_changes`.

`config.handed` is applied as the full admission applies it, with one saving: claims a
device of this resource owns, checked against the rule and mount table in force (the
resource's last full admission checked every device against them, and whatever it claimed
since was checked as it was claimed), are not checked again, as an unchanged list's are not.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Mapping

from .devices import Device
from .identity import DIRECTORY
from .ownership_claims import NOTHING, PLACE, SYSFS, Claims, Owner
from .ownership_letgo import LetGo
from .ownership_paths import read_only_paths
from .ownership_table import Holding, ResourceState
from .turns import Pace

UNPLAIN_KINDS = frozenset({DIRECTORY, NOTHING, SYSFS, PLACE})
"""Claim kinds the move does not take (containment, claims by text, sysfs devices: the full
admission weighs them)."""


class RenameAdmission(LetGo):
    """The one-pass admission of renamed devices (see the module docstring)."""

    @abc.abstractmethod
    def _booking_conflict(
        self, state: ResourceState, device_id: str, claims: Claims
    ) -> Holding | None:
        """Held because a booking holds a claim, or its place, under another ID."""

    def _renamed(
        self,
        state: ResourceState,
        devices: Mapping[str, Device],
        claims: Mapping[str, Claims],
        pace: Pace,
    ) -> Generator[None, None, bool]:
        """Move each device of `devices` that is a rename (see the module docstring) to its
        own ID, in ID order, yielding when `pace` says; True if every device was one (the
        admission is done: each is advertised under its own ID), False at the first that is
        not (the full admission goes on from there)."""
        if (
            state.held
            or state.lingering
            or state.stale
            or state.unresolved
            or not state.plain
            or self._within.dirs
            or self._aliases.texts
            or len(devices) != len(state.owned)
        ):
            return False
        rule, moved = self._rule(), 0
        owned, exclusive, shared = state.owned, self._exclusive, self._shared
        for device_id in sorted(devices):
            if pace.due():
                yield
            claim = claims[device_id]
            if claim.shared or not claim.exclusive:
                return False
            owner = exclusive.get(claim.exclusive[0][0])
            if (
                owner is None
                or owner.resource != state.name
                or owned.get(owner.device) is not claim
            ):
                return False
            renamed = owner.device != device_id
            if renamed and owner.device in devices:
                return False  # (IDs swapped between devices: the full way)
            booked = self._ledger.booked
            for key, _, _ in claim.exclusive:
                if key[0] in UNPLAIN_KINDS or key in booked or key in shared:
                    return False
                if exclusive.get(key) != owner:
                    return False
            checked = self._owner_checked(state, claim)
            read_only = read_only_paths(devices[device_id])
            if not checked and self._unsafe(claim, read_only=read_only) is not None:
                return False
            if self._booking_conflict(state, device_id, claim) is not None:
                return False
            if renamed:
                self._move(state, owner, device_id, claim)
                moved += 1
        if not moved:
            return False  # nothing was renamed: the full admission says what changed
        self._checked_all(state, rule)
        return True

    def _rename_of(
        self, state: ResourceState, devices: Mapping[str, Device], claims: Claims | None
    ) -> bool:
        """Whether a new device of `devices` with `claims` is a rename: what an old ID of
        this resource that `devices` no longer lists owns, checked (`_owner_checked`). The
        first device `_admit_changes` examines would break off at it (a node of a device of
        ours that went); it breaks off before examining the list."""
        if claims is None or not self._owner_checked(state, claims):
            return False
        owner = self._exclusive[claims.exclusive[0][0]]
        return owner.device not in devices

    def _move(self, state: ResourceState, owner: Owner, device_id: str, claims: Claims) -> None:
        """`device_id` takes the claims its old ID `owner` owns (what `_unadvertise` then
        `_claim` do, without the claims lingering in between)."""
        del state.owned[owner.device]
        state.renamed.discard(owner.device)
        self._claim(state, device_id, claims)
