"""A booked node's number not known: which devices may reach it.

When the bookings were lost with the state directory, the kubelet's checkpoint books what a
pod was handed by path (`kubelet_checkpoint`); a node gone at start leaves its device number
unknown (`Booking.number_unknown`), and the kernel may give that number to any node plugged
since, under any served resource's name: the pod's container reaches that device by it. So
while such a booking lives (PodResources shows its pod), every device that reaches a device
node no booking holds as its device's own (`BookedClaims.own`: a path of the checkpoint,
resolved at start, names what is there now, not what the pod was handed: hostile19 F2) is
held (`NUMBER_UNKNOWN`, `Ledger.number_unknown`), also one that reached a node whose last
booking ends meanwhile (examined again: `AdmissionGate._examine_unheld`): a node itself, a
directory whose tree holds a node (a mount of it puts the node into the container: hostile10
F7), and a directory whose tree is not known to hold none (not read yet, too big to follow,
not followed at all): fail closed. What a tree holds is the mounted trees' follower's
(`ownership_arrivals.Arrivals.reaches_nodes`), which admits the devices of a tree again
when its answer changes.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from .identity import DIRECTORY, NODES
from .ownership_claims import ClaimKey, Claims

NUMBER_UNKNOWN = "booked_number_unknown"
"""Why a device is held that reaches a device node no booking holds (its own, or one below a
directory it mounts) while a booking of its resource (or of any served one) was made for a
node gone at start, whose device number is not known (`Ledger.number_unknown`)."""

TreeNodes = Callable[[str], bool]
"""Real path of a claimed directory -> whether a device node may be below it (True where
that is not known)."""


def reaching_node(claims: Claims, booked: Container[ClaimKey], tree_nodes: TreeNodes) -> str | None:
    """The host path of the first claim through which a device reaches a device node no
    booking holds as its device's own (`booked`): a node, or a directory that may hold one
    (`tree_nodes`)."""
    for key, path, real in claims.all():
        if key in booked:
            continue
        if key[0] in NODES or (key[0] == DIRECTORY and tree_nodes(real)):
            return path
    return None
