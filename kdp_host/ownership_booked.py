"""The booked claims, and what a device reaching them conflicts with (`Ledger`'s queries).

The host's bookings (`ownership_bookings.Ledger`) are indexed by what they hold: each claim
(a device number, an inode, a path where nothing was), each place an Allocate handed out
besides its device, each real path a device was handed out at. An admission asks, for each
device it is about to advertise, whether a booking of another ID (or resource) holds one of
its claims (`conflict`; for a directory, also a tree that holds what its tree holds:
`sharing`), or one a place of it reaches as the claim table's containment would: below a
tree a booking holds mounted, or, for a directory, above a booked node or file its tree's
reads found (`_places_reached`: another host's bookings are not in this host's claim table,
hostile23 F4), was handed out at its real path (`place_conflict`), holds a
directory it is below (`mount_conflict`) or a node whose number is not known that it may be
(`number_unknown`). A booking also holds its device's shared claims (`Booking.shared`,
`ownership_shared_held`): a device claiming one of them exclusively, or below a directory
it holds shared, is held while it lives (`shared_conflict`), one sharing it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .devices import Device, DeviceMount, DeviceNode, replica_ids
from .identity import DIRECTORY, Identity
from .ownership_claims import NOTHING, SYSFS, Claim, ClaimKey, Claims, Owner, ancestors, twins
from .ownership_reach import SpotsReached, Still
from .ownership_reads import NoTrees, TreesRead, claimed_as
from .ownership_shared_held import Counted, SharedHeld, below_sorted, count
from .ownership_unknown import reaching_node
from .rules import below


@dataclass
class Booking:
    """What the kubelet booked under one ID: the claims of its device then."""

    device: str
    """The device's ID in the index (the booked ID without a replica suffix)."""
    claims: tuple[Claim, ...]
    """Its exclusive claims (key, host path, real path)."""
    since: float
    """When it was last booked (index clock): a PodResources answer asked for later than
    `Timings.heard_after` after it shows the pod."""
    places: tuple[Claim, ...] = ()
    """What the Allocate answer handed out besides the device's own claims (the nodes and
    mount sources of `allocate.mounts` and of the `allocate.command`'s output): no device
    reaching one of them (the same place, below it, or a directory above it) is
    advertised while the booking lives; other allocations may share them."""
    group: tuple[str, ...] = ()
    """IDs booked from one answer of the kubelet's checkpoint: its places are theirs too."""
    number_unknown: bool = False
    """Booked from the checkpoint for a node that was gone at start, with no booking that
    knew its device number: a node found later may have that number (hostile9 H2)."""
    shared: tuple[Claim, ...] = ()
    """Its device's shared claims then (a node every device may share, `shared: true`, a
    glob group's member without `{key}`): the pod has the node, so no device claiming it
    exclusively is advertised while the booking lives, whatever its device's listing does
    since; other devices may still share it (issue 17, hostile19 F5)."""
    grown: frozenset[ClaimKey] = frozenset()
    """Those of `claims` its device reported after the Allocate (`ownership_growth`): never
    handed to the pod, each is let go of once its device no longer reports it."""

    @property
    def from_checkpoint(self) -> bool:
        """Booked from the kubelet's checkpoint alone (`kubelet_checkpoint.take_handed`: the
        paths its answer handed out, no device of this host's, no record of its own; another
        plugin's ID): the kubelet's file vouches for it, and it ends once that file no longer
        lists it (`Ledger.unvouched`)."""
        return not self.claims and bool(self.places)


class BookedClaims(SharedHeld):
    """The bookings by booked ID and by claim, and the conflicts of a device with them."""

    def __init__(self) -> None:
        super().__init__()
        self.bookings: dict[Owner, Booking] = {}
        """(resource, ID the kubelet booked) -> what it booked: this host's entries of the
        file."""
        self.booked: dict[ClaimKey, Counted] = {}
        """Claim (of a device or a place) -> the bookings that hold it."""
        self.places: dict[str, Counted] = {}
        """Real path of a booked place -> the bookings that handed it out."""
        self._sorted_places: list[str] | None = None
        self._sorted_mounted: list[str] | None = None
        """`places` sorted (those below a directory are one run), made when first needed; and
        `mounted` (`count_mounted`)."""
        self.unknown: dict[str, Counted] = {}
        self.served: frozenset[str] = frozenset()
        """Resource -> its bookings whose device number is not known (`number_unknown`), and
        the config's resources (not another plugin's): one's unknown number may be any's."""
        self.spots: dict[str, Counted] = {}
        """Real path of a booked device's own claim (its node or mount source as the
        Allocate handed it out) -> the bookings that hold it: the place a pod's answer
        names stays that pod's, whatever is found there later (`place_conflict`)."""
        self.reach = SpotsReached()  # (what each spot reaches now: `reached_conflict`)
        self.trees: TreesRead = NoTrees()
        """What the reads of the followed trees found: a directory's tree holds what a
        booking holds (`_places_reached`); a node may be below it (`number_unknown`)."""
        self.own: dict[ClaimKey, int] = {}
        """Claim of a booked device's own (`Booking.claims`: what it reached when the
        Allocate was answered) -> how many bookings hold it: the nodes a booking holds for
        `number_unknown`. Not a place: a path of the kubelet's checkpoint is resolved when
        read, and nodes may have moved while kdp-host was down (hostile19 F2)."""
        self.unheld: list[ClaimKey] = []
        """Claims of `own` whose last booking ended while a number was not known: a device
        reaching one passed `number_unknown` for it, and is examined again
        (`AdmissionGate._examine_unheld` takes them)."""
        self.mounted: dict[str, Counted] = {}
        """Real path of a directory a booking holds mounted (its device's, or a place) ->
        those bookings: a tree a pod has, followed as a claimed directory's is
        (`follow_mounted`)."""
        self.dirs: dict[ClaimKey, Counted] = {}
        """Booked directory (its identity) -> its bookings: each is looked for where it is
        now while no descriptor follows it (`ownership_lost`)."""
        self.follow_mounted: Callable[[Owner, str], None] = _ignore
        """Told each directory a booking comes to hold mounted (the index follows its tree)."""
        self.let_go_mounted: Callable[[str], None] = _ignore_path
        """Told each directory no booking holds mounted any more."""
        self.moved: dict[ClaimKey, tuple[str, ...]] = {}
        """Booked key -> the real paths it was found at since (renamed, a directory above it
        renamed, linked: `found_elsewhere`), while it is booked. A booked directory is
        booked by its inode: where it was found since, it is mounted and a place of each of
        its bookings too (`relocate`): its tree, renamed anywhere, is held there (hostile19
        F6)."""
        self.sharing: Callable[[str], Iterable[str]] = _nowhere
        """A directory's real path -> the paths outside it of what its tree holds (a node's
        number, a file of more than one link: `ownership_shared.elsewhere`): a booking that
        holds a tree above one of them reaches what a pod given the directory would."""
        self.places_of: Callable[[ClaimKey, str], tuple[str, ...]] = _only_there
        """Every place a claim made at a real path is shown at now (`Containment.places`:
        where it was found since, where a bind mount shows it)."""

    def conflict(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of one of the device's claims that is not one of the IDs it is about to
        be advertised under (another resource, another device, another replica count), with
        the host path of that claim; for a directory, also a booking that holds a tree
        mounted that holds what its tree holds (`sharing`)."""
        if not self.booked:
            return self.shared_conflict(resource, device_id, replicas, claims)
        found = self._first_other(
            resource,
            device_id,
            replicas,
            ((path, self._holders_sharing(key, real)) for key, path, real in claims.exclusive),
        )
        return found or self.shared_conflict(resource, device_id, replicas, claims)

    def shared_conflict(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of another ID (or resource) that holds shared what one of the device's
        exclusive claims reaches (the same key, a directory it holds shared above one of the
        claim's places, or for a directory, a shared claim below one of its places), with
        that claim's host path: the pod has the node, so the device may share it, never have
        it alone (hostile19 F5). A look-up per exclusive claim (and its places' directories
        above, its run of shared claims below), none while no booking holds a shared claim."""
        if not self.shared_booked:
            return None
        return self._first_other(
            resource,
            device_id,
            replicas,
            ((path, self.sharers(key, real)) for key, path, real in claims.exclusive),
        )

    def _holders_sharing(self, key: ClaimKey, real: str) -> Iterable[Owner]:
        holders = self.holders(key, real)
        if key[0] == DIRECTORY and (mounted := self.mounted):  # (two trees that share)
            there = (d for p in self.sharing(real) for d in ancestors(p))
            holders = [*holders, *(o for d in there for o in mounted.get(d, ()))]
        return holders

    def holders(self, key: ClaimKey, real: str) -> Iterable[Owner]:
        """The bookings that hold a claim (`key` at `real`): its own, or what one of its
        places reaches (`_places_reached`)."""
        booked = self.booked
        holders: Iterable[Owner] = booked.get(key, ())
        for twin in twins(key) if booked else ():  # (a directory and a sysfs device's own)
            holders = [*holders, *booked.get(twin, ())]
        if self.places or self.mounted or (booked and key[0] == DIRECTORY):
            at = self.places_of(key, real)
            holders = [*holders, *(o for place in at for o in self._places_reached(key, place))]
        return holders

    def found_elsewhere(self, key: ClaimKey, real: str) -> bool:
        """A read of a followed tree found `key` at `real`: whether it is booked (alone or
        shared) and was not known there (it is from now on, while booked: `_places_reached`,
        `sharers`)."""
        alone, shared = self.booked.get(key, {}), self.shared_booked.get(key, {})
        known = self.moved.get(key, ())
        if not (alone or shared) or real in known:
            return False
        there = {*self.places.get(real, ()), *self.spots.get(real, ())}
        if not there.isdisjoint(alone) or not shared.keys().isdisjoint(
            self.shared_spots.get(real, ())
        ):
            return False  # (where it was booked)
        self.moved[key] = (*known, real)
        if key[0] == DIRECTORY:
            for owner, times in list(alone.items()):
                self.relocate(owner, real, times)
        for owner, times in list(shared.items()):
            self.relocate_shared(owner, key, real, times)
        return True

    def relocate(self, owner: Owner, real: str, step: int) -> None:
        """A directory `owner`'s booking holds (`step` times; negative: no more) is at `real`
        too: mounted there, and a place of it (what is below it, or above, is held)."""
        self.count_mounted(real, owner, step)
        count(self.places, real, owner, step)
        self._sorted_places = None
        if step > 0:
            self.follow_mounted(owner, real)
        elif not self.tree_held(real):
            self.let_go_mounted(real)

    def count_mounted(self, real: str, owner: Owner, step: int) -> None:
        """`owner`'s booking holds the directory `real` mounted `step` times more (fewer)."""
        count(self.mounted, real, owner, step)
        self._sorted_mounted = None

    def place_conflict(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of another ID (or resource) whose device was handed out at the real
        path of one of the device's claims, with that claim's host path: a device moved
        there, or made anew there with another identity (an inode number reused), would
        be handed out at the path a pod's answer names (issue 17, hostile7 F3). Its own
        IDs pass: the device of a booked ID made anew is still that ID's."""
        spots = self.spots
        if not spots:
            return None
        return self._first_other(
            resource,
            device_id,
            replicas,
            ((path, spots.get(real, ())) for key, path, real in claims.all() if key[0] != SYSFS),
        )

    def reached_conflict(
        self, resource: str, device_id: str, replicas: int, claims: Claims, still: Still
    ) -> tuple[Owner, str] | None:
        """As `place_conflict`, for a spot that reaches a claim under a second name."""
        found = self.reach.held(claims, self.spots, still)
        return self._first_other(resource, device_id, replicas, found) if found else None

    def number_unknown(
        self, resource: str, device_id: str, replicas: int, claims: Claims
    ) -> tuple[Owner, str] | None:
        """A booking of another ID of `resource`, or of any `served` resource, whose node was
        gone at start, its device number not known (`Booking.number_unknown`), while the
        device reaches a device node no booking holds as its device's own (`own`; that path:
        `reaching_node`, a node or a directory whose tree may hold one, `trees`): the
        kernel may have given the
        gone node's number to it, under any resource's name, and the pod's container reaches
        the device by that number (hostile9 H2, hostile10 F3, F7)."""
        if not self.unknown:
            return None
        served = self.served
        unknown = [o for name, owned in self.unknown.items() if name == resource or name in served
                   for o in owned]  # fmt: skip
        path = reaching_node(claims, self.own, self.trees.reaches_nodes) if unknown else None
        if path is None:
            return None
        return self._first_other(resource, device_id, replicas, [(path, unknown)])

    def mount_conflict(
        self, resource: str, device_id: str, replicas: int, outer: Iterable[tuple[str, ClaimKey]]
    ) -> tuple[Owner, str] | None:
        """A booking of another ID (or resource) of a directory one of the device's claims is
        below (`outer`: host path of the claim, key of a claimed directory above one of its
        places), with that claim's host path: the pod's mount reaches the node, so the
        device is held while the booking lives (issue 17, hostile8 N1: a booked mount wins
        over advertising what was linked or renamed into it)."""
        booked = self.booked
        if not booked:
            return None
        return self._first_other(
            resource, device_id, replicas, ((path, booked.get(key, ())) for path, key in outer)
        )

    def _first_other(
        self,
        resource: str,
        device_id: str,
        replicas: int,
        held: Iterable[tuple[str, Iterable[Owner]]],
    ) -> tuple[Owner, str] | None:
        """The first owner of `held` (host path, its owners) that is none of the IDs the
        device is advertised under (its replicas, or one booked in one answer with them)."""
        mine: set[str] | None = None
        for path, holders in held:
            for owner in holders:
                if owner.resource == resource:
                    if mine is None:
                        mine = set(replica_ids(device_id, replicas))
                    if owner.device in mine or self._together(owner, mine):
                        continue
                return owner, path
        return None

    def _together(self, owner: Owner, ids: set[str]) -> bool:
        """Whether `owner` was booked in one answer with one of `ids` (its places too)."""
        booking = self.bookings.get(owner)
        return booking is not None and not ids.isdisjoint(booking.group)

    def _places_reached(self, key: ClaimKey, real: str) -> list[Owner]:
        """The bookings a claim reaches at a place of it (`real`), as the claim table's
        containment has a device reach another's claims (`ownership_contain`): a place of
        theirs there or above it, a directory they hold mounted above it (their device's:
        the pod reaches what is below it), and, for a directory, what they hold below it: a
        place, a directory they hold mounted, a booked claim found there since (`moved`) or
        that the reads of its tree found there (`trees`: a node of a booked number, a link
        of a booked file; issue 17, hostile23 F4: another host's booking, which its claim
        table does not hold)."""
        places, mounted = self.places, self.mounted
        found = [*places.get(real, ())]
        for directory in ancestors(real):
            found += places.get(directory, ())
            found += mounted.get(directory, ())
        if key[0] == DIRECTORY:
            booked = self.booked
            for kept in self.trees.tree_nodes(real).values():
                found += booked.get(claimed_as(kept), ())
            for moved, reals in self.moved.items():  # (a booked thing found below it since)
                if any(below(p, real) or p == real for p in reals):
                    found += self.booked.get(moved, ())
            ordered = self._sorted_places
            if ordered is None:
                ordered = self._sorted_places = sorted(places)
            found += (o for place in below_sorted(ordered, real) for o in places[place])
            trees = self._sorted_mounted
            if trees is None:
                trees = self._sorted_mounted = sorted(mounted)
            found += (o for tree in below_sorted(trees, real) for o in mounted[tree])
        return found


def _ignore(_owner: Owner, _real: str) -> None:
    """(No index follows the trees.)"""


def _nowhere(_real: str) -> tuple[str, ...]:
    return ()


def _ignore_path(_real: str) -> None:
    """(No index follows the trees.)"""


def _only_there(_key: ClaimKey, real: str) -> tuple[str, ...]:
    return (real,)


def checkpoint_device(device_id: str, booking: Booking) -> tuple[Device, dict[str, Identity]]:
    """What a booking made from the kubelet's checkpoint (no claims of a device of its own,
    the places of the pod's answer: `kubelet_checkpoint.take_handed`) says the ID was handed,
    as a device (a directory is a mount source; anything else, or a path gone, a node: the
    booking keeps no more of the answer's DeviceSpecs)
    and what each path reached when booked: what its release acts on, as on a record of
    `handed_out` (hostile11 K5: another plugin's ID is never listed)."""
    nodes: list[DeviceNode] = []
    mounts: list[DeviceMount] = []
    reached: dict[str, Identity] = {}
    for key, path, _ in booking.places:
        if key[0] == DIRECTORY:
            mounts.append(DeviceMount(path, path))
        else:
            nodes.append(DeviceNode(path, path))
        if key[0] != NOTHING:
            reached[path] = key
    first = nodes[0].host_path if nodes else None
    device = Device(device_id, nodes=tuple(nodes), mounts=tuple(mounts), path=first)
    return device, reached
