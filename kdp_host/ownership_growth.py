"""A booking holds its device as its driver reports it now (issue 17, hostile27 F8).

An Allocate books its devices' claims then (`BookingAllocations.book`). A node found later
below a booked device (a partition made under a held disk: a node of its sysfs directory;
a late tty of a held stick; a member made under a held glob group's key) is part of the
device the pod holds: its driver reports it with the device. Such a claim joins the
booking (`Ledger.resize`, written to `ownership.json`) the moment the device's list is
admitted, and wins over a device of another resource that listed the node first and no
booking holds it through (that one is let go of and held `owned`: `ClaimTable._conflict`),
so the node goes to "the one a pod holds it through", as `check` warns.

The device grown is the one booked: it still reports a claim of each booking of it (one
that lost a booked node is still the device by what remains of it: its group key's other
members, its sysfs directory: hostile28 G6); a device of another ID that merely shares a
node with a booking is not it. A claim another booking holds is never taken into this
one, nor a claim by text (a path where nothing is: `identity.NOTHING`). Only this host's
bookings grow (another host's grow by that host).

A grown claim was never handed to the pod: it is the booking's only while its device
reports it. The device's first list without it lets it go (`Ledger.resize`), and a device
held for it is listed again (hostile29 H2: a link matching a held group's pattern for half
a second held another resource's device until the pod ended). Claims the Allocate booked
stay for the booking's life. Across a restart a grown claim is read back as booked.
"""

from __future__ import annotations

from .devices import advertises
from .identity import NOTHING
from .ownership_bookings import Ledger
from .ownership_claims import Claim, ClaimKey, Claims, Owner


def grow_bookings(
    ledger: Ledger, resource: str, device_id: str, claims: Claims
) -> tuple[list[ClaimKey], frozenset[ClaimKey]]:
    """Add to this host's bookings of device `device_id` of `resource` (itself or its
    replicas) the exclusive `claims` it reports now that they lack and no other booking
    holds, and drop the grown claims it no longer reports; the keys added, and those
    dropped."""
    if not ledger.bookings:
        return [], frozenset()
    exclusive, booked, bookings = claims.exclusive, ledger.booked, ledger.bookings
    mine: set[Owner] = set()
    for key, _, _ in exclusive:
        for owner in booked.get(key, ()):
            if owner.resource == resource and advertises(owner.device, device_id):
                mine.add(owner)
    keys = claims.exclusive_keys()
    grown: list[ClaimKey] = []
    shrunk: frozenset[ClaimKey] = frozenset()
    for owner in sorted(mine, key=lambda o: o.device):
        booking = bookings.get(owner)
        if booking is None or not booking.claims:
            continue  # (another host's, or one from the kubelet's checkpoint alone)
        gone = booking.grown - keys
        own = {claim[0] for claim in booking.claims} - gone
        extra: tuple[Claim, ...] = tuple(
            claim
            for claim in exclusive
            if claim[0] not in own
            and claim[0][0] != NOTHING
            and all(o in mine for o in booked.get(claim[0], ()))
        )
        if extra or gone:
            ledger.resize(owner, extra, gone)
            grown.extend(claim[0] for claim in extra)
            shrunk |= gone
    return grown, shrunk
