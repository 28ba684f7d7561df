"""Bookings from the kubelet's checkpoint alone, and when that file no longer vouches for them
(issue 17, hostile23 F6).

A booking made from an entry of the kubelet's checkpoint (`kubelet_checkpoint.take_handed`:
another plugin's pod, served by kdp-host under another name, or this host's own pod when its
bookings were lost) holds the paths that entry's answer handed out (`Booking.from_checkpoint`).
The kubelet writes an entry before the admission that made it returns and drops it only once
its pod is not active: freed at the kubelet's next write after the pod ended (its next
admission or device-list update), never while its pod sources are not all ready (after its
restart), and kept across a kubelet restart, which reads the file back
(docs/kubelet-contract.md §9, §10). So a read of the file, begun after such a booking was
made, that no longer lists its (resource, ID) shows its pod gone, with or without PodResources:
the booking ends (`unvouched`, what the follower ends: `checkpoint_follow`). No other booking
ends so: one an Allocate made is booked before the kubelet writes its entry (a read in between
lacks it), and another host's on the state directory (`Ledger.foreign`) is its writer's.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from .ownership_booked import BookedClaims, Booking
from .ownership_claims import Owner, owner_order


class LearntBookings(BookedClaims):
    """The bookings' layer that knows which came from the kubelet's checkpoint alone."""

    releasing: Callable[[str, str], bool]
    """(resource, device) -> whether its release is still due (`Ledger.releasing`)."""

    def __init__(self) -> None:
        super().__init__()
        self.learnt: dict[str, set[str]] = {}
        """Resource -> the IDs of this host's bookings from the kubelet's checkpoint alone."""

    def _learn(self, owner: Owner, booking: Booking, step: int) -> None:
        """`owner`'s `booking` is this host's (`step` 1) or no longer (-1)."""
        if not booking.from_checkpoint:
            return
        ids = self.learnt.setdefault(owner.resource, set())
        if step > 0:
            ids.add(owner.device)
        else:
            ids.discard(owner.device)
            if not ids:
                del self.learnt[owner.resource]

    def unvouched(
        self,
        listed: Container[tuple[str, str]],
        covered: Callable[[str], bool],
        before: float | None = None,
    ) -> list[Owner]:
        """The bookings from the checkpoint alone of a name `covered` by a read of it that
        does not list their (resource, ID) in `listed` (the module's rule). `before` (index
        clock, when the read began): only those booked earlier (one booked since may be of a
        later write) and whose device's release is not due (`releasing`, as
        `Ledger.expire`); None: every candidate (a cheap look asks whether a read is worth
        it)."""
        gone = []
        for resource, ids in self.learnt.items():
            if not covered(resource):
                continue
            for device_id in ids:
                if (resource, device_id) in listed:
                    continue
                owner = Owner(resource, device_id)
                booking = self.bookings[owner]
                if before is not None and (
                    booking.since >= before or self.releasing(resource, booking.device)
                ):
                    continue
                gone.append(owner)
        return sorted(gone, key=owner_order)
