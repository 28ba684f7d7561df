"""Booking an answered Allocate: the IDs the kubelet booked, with their devices' claims and
what the answer hands out besides its devices.

An Allocate answer may hand a container more than its devices' own nodes and mounts: the
resource's `allocate.mounts` and what its `allocate.command` printed (nodes, mounts). Those
*places* are checked when the answer is made (`PlaceOwned`: one that reaches what another
device of the host owns, advertised or held by a pod, the same node, inside a directory it
mounts or a directory holding it, refuses the answer) and booked with each ID
(`Booking.places`): while the booking lives, no device reaching one of them is advertised
(`Ledger.conflict`, containment both ways). Places are not exclusive among allocations:
every pod of a resource gets its `allocate.mounts`.

An answer may also name devices by CDI name (its CDI devices, the values of `cdi.k8s.io/...`
annotations), which the runtime resolves through spec files. A name of a kind kdp-host
writes (`_cdi_kinds`: any resource's of this host, kept after) that is not one of the
container's own devices' names refuses the answer (`PlaceOwned`, naming the device that
owns it): through it the container would reach another device's nodes, unbooked. Names of
other kinds (a vendor's own spec files) are outside kdp-host's reach and pass.

The answers the kubelet kept (its checkpoint, `kubelet_checkpoint`) are booked too, at start
before any resource publishes and before a reload starts one (`take_handed`,
`checkpoint_bookings`): what bookings were lost with the state directory, or a stale file
lacks, is booked from what the pods were really handed, of every resource. The real
paths an answer hands out, checked, are `ownership_hand_out`'s (`HandingOut`, the layer below
this one).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Mapping
from contextlib import AbstractAsyncContextManager

from .allocation import cdi_device_name
from .cdi_rules import cdi_name_parts
from .devices import DeviceNode, physical_id, replica_ids
from .identity import DIRECTORY, NONE, Identity, Reach
from .kubelet_checkpoint import Gained, HandedClaims, take_handed
from .ownership_adopt import DeviceClaims
from .ownership_canonical import strays
from .ownership_claims import Claim, Owner, Reached, claim_of, places, twins
from .ownership_fence import AllocateFence
from .ownership_hand_out import HandingOut
from .ownership_shared import AnswerOwners, PlaceOwned
from .ownership_table import ResourceState


class BookingAllocations(HandingOut):
    """Records what the kubelet booked (the ownership index's layer for Allocate)."""

    _cdi_kinds: dict[str, str]
    """CDI kind -> the resource whose runtime writes its spec file (`attach`)."""
    _cdi_handed: dict[str, set[str]]
    """Resource -> the IDs the checkpoint's answers with CDI names named (at start)."""
    fence: AllocateFence | None = None
    """Kept from another running host's answers (`ownership_sync.shared_bookings`)."""

    def fenced(
        self, resource: str, ids: Collection[str], reached: Mapping[str, Identity],
        real: Mapping[str, str],
    ) -> AbstractAsyncContextManager[None]:  # fmt: skip
        """Around booking and keeping an answer, until it goes out or is refused: no
        PodResources answer ends its bookings meanwhile (`ownership_answering`), and with
        another host running on stateDir under its lock (`ownership_fence.AllocateFence.held`)."""
        fence, ledger = self.fence, self._ledger
        held = None
        if fence is not None and fence.needed:  # (alone on stateDir: nothing to pay)
            held = fence.held(resource, ids, reached, real)
        return ledger.in_flight.answering(resource, ids, ledger.bookings, self._clock, held)

    async def book(
        self,
        resource: str,
        ids: Iterable[str],
        places: Mapping[str, Collection[str]] | None = None,
        cdi_names: Mapping[str, Collection[str]] | None = None,
        *,
        wait: bool = True,
        handed_as: Mapping[str, Collection[Identity]] | None = None,
    ) -> None:
        """The kubelet booked `ids` of `resource` (an Allocate is answered): record each with
        the claims of its device and the host paths its answer hands out besides (`places`,
        by ID: `allocate.mounts`, an `allocate.command`'s output), and return once
        `<stateDir>/ownership.json` holds them (`bookings_written`; `wait` False: once they
        are recorded, the caller waits for the write with others at once). Raises
        PlaceOwned, booking nothing, when such a path reaches what another device of the
        host owns (advertised, or held by a pod), when a CDI name the answer carries
        besides its devices' own (`cdi_names`, by ID) is of a kind kdp-host writes, or when
        the index no longer advertises an ID's device (an admission that let go of it, or
        held it back, ran while the answer was made: its node may be advertised under another
        ID now, or a booking of another ID, resource or host holds it: taken in meanwhile,
        the fence of hosts sharing stateDir leaves it to this, hostile22 F7), or its
        device claims no more what the answer handed out as it (`handed_as`, by ID: the
        identities its own paths reached; an admission of a list that moved the ID to
        another node ran meanwhile, the answer's node may be another ID's: hostile16 F5)."""
        ids = list(ids)
        if cdi_names:
            self._check_cdi_names(resource, cdi_names)
        claimed = await self._claim_places(resource, places) if places else {}
        ledger = self._ledger
        if self._book(resource, ids, claimed, handed_as or {}) and ledger.sink is not None:
            ledger.changed()
            if wait:
                await ledger.sink.written()

    async def places_owned(self, resource: str, places: Mapping[str, Collection[str]]) -> None:
        """Raise PlaceOwned, booking nothing, where `book` would for these `places`."""
        await self._claim_places(resource, places)

    async def bookings_written(self) -> None:
        """Until `<stateDir>/ownership.json` holds every booking, or `state_file.WRITE_LIMIT`
        passed (an error line says so: the bookings hold in memory all the same; nothing is
        written when they are the ones recorded already)."""
        if self._ledger.sink is not None:
            await self._ledger.sink.written()

    def take_handed(self, handed: Iterable[HandedClaims]) -> Gained:
        """What the kubelet kept of its pods' answers, read at start before any resource
        publishes, or before a reload starts one (`checkpoint_bookings`; `lost`:
        `ownership.json` was missing or set aside): booked (`take_handed`) and written, the
        resources that publish admitted again against them. A resource no runtime serves is
        retired, its bookings held as by `keep_bookings_in`."""
        handed = list(handed)
        for entry in handed:  # (PodResources books them: `ownership_adopt`)
            if entry.handed.cdi_names:
                ids = entry.handed.ids
                self._cdi_handed.setdefault(entry.handed.resource, set()).update(ids)
        gained = take_handed(self._ledger, handed, self._clock(), self.pod_resources)
        for owner, _ in gained:
            if (state := self._state(owner.resource)).publish is None:
                state.retired = True  # until a runtime of it attaches
        if gained:
            self._ledger.changed()
            self._admit_all_again()
        return gained

    def unvouched(
        self, listed: Container[tuple[str, str]], covered: Callable[[str], bool]
    ) -> list[tuple[Owner, float]]:
        """The bookings from the kubelet's checkpoint alone of a `covered` name that a file
        listing `listed` no longer vouches for (`LearntBookings.unvouched`), whenever booked,
        each with when (index clock: one booked again is another)."""
        bookings = self._ledger.bookings
        return [(o, bookings[o].since) for o in self._ledger.unvouched(listed, covered)]

    def vouch_began(self) -> float:
        """The index clock as a read of the kubelet's checkpoint begins (`end_unvouched`)."""
        return self._clock()

    def end_unvouched(
        self, listed: Container[tuple[str, str]], covered: Callable[[str], bool], began: float
    ) -> list[Owner]:
        """End the bookings from the kubelet's checkpoint alone of a `covered` name that a
        read of the file begun at `began` (`vouch_began`) no longer lists (`listed`): their
        pods are gone (`ownership_learnt`); written, and the resources admitted again (what
        they held is advertised). The owners of those that ended."""
        ledger = self._ledger
        gone = ledger.end_unvouched(listed, covered, began)
        if gone:
            self._bookings_ended(gone)
            ledger.changed()
            self._wake_waiting("")
            self._drain()
        return gone

    def serve(self, resources: Iterable[str]) -> None:
        """The config's resources at start (this host's own, not another plugin's): while a
        booking of one has a node's number unknown, every one's nodes that no booking holds
        wait (`Ledger.number_unknown`: the kernel may have given that number to any)."""
        self._ledger.served = frozenset(resources)

    def handed_out(self) -> dict[str, set[str]]:
        """Resource -> the IDs this host has booked: what the kubelet was handed, by an
        Allocate, `ownership.json` or its checkpoint (with the other hosts': `booked_ids`)."""
        out: dict[str, set[str]] = {}
        for owner in self._ledger.bookings:
            out.setdefault(owner.resource, set()).add(owner.device)
        return out

    def booked_ids(self, resource: str) -> dict[str, str | None]:
        """The IDs of `resource` a host on the state directory has booked now, each with
        the running host whose booking it is (None: this host's, `handed_out`): what a
        release tracker whose tracking begins counts as used (`ReleaseStateStore.begin`)."""
        out: dict[str, str | None] = {
            o.device: w for w, o in self._ledger.foreign if o.resource == resource
        }
        out.update((o.device, None) for o in self._ledger.bookings if o.resource == resource)
        return out

    def handed_at_start(self, served: Collection[str]) -> dict[str, set[str]]:
        """Resource of `served` -> the IDs known at start to be handed out: booked
        (`handed_out`), or named by a checkpoint answer with CDI names (`take_handed`)."""
        out = {name: ids for name, ids in self.handed_out().items() if name in served}
        for name, ids in self._cdi_handed.items():
            if name in served:
                out.setdefault(name, set()).update(ids)
        return out

    async def owners_of(self, paths: Collection[str]) -> dict[str, list[Owner]]:
        """Every device that owns what each host path reaches (`_owners`), resolved off the
        loop."""
        reached = await self._reach_all(paths)
        return {path: [] if r is None else self._owners(r) for path, r in reached.items()}

    async def changed_places(
        self, resource: str, ids: Collection[str], paths: Collection[str], handed: Reach = NONE
    ) -> dict[str, str]:
        """The host paths of a device handed out under `ids` (a release's or preStart's
        `{hostPaths}`) that reach something else now than was handed out, with what, in
        words (issue 17, hostile7 F3: another device renamed or made anew there). A path
        passes where it does not stray (`strays`: nothing there, what it reached when handed
        out, `handed`; hostile8 N2), a claim only those IDs own (made anew) or, without
        `handed`, one booked under `ids` (not with it: after a restart a booking holds what
        the kubelet's checkpoint path reaches now). Off the loop; no answer fails."""
        reached = await self._reach_all(paths)
        mine = AnswerOwners.of(resource, ids)
        booked = self._ledger.booked
        found: dict[str, str] = {}
        for path in sorted(paths):
            at, want = reached.get(path), handed.get(path)
            if not strays(at, want):
                continue
            if at is None:
                found[path] = "it did not answer in time"
                continue
            key, real = at
            owners = self._owners(at)
            if (owners and all(owner in mine for owner in owners)) or (
                want is None and any(owner in mine for owner in booked.get(key, ()))
            ):
                continue
            other = next((owner for owner in owners if owner not in mine), None)
            found[path] = (
                f"{real} is not what was handed out"
                if other is None
                else f"{real} is device {other.device} of {other.resource}"
            )
        return found

    def listed_at(self, resource: str, handed: Reach) -> dict[str, tuple[str, DeviceNode]]:
        """Where the driver of `resource` lists now the nodes a use was handed (`handed`:
        host path -> what it reached then): handed path -> the device whose node claims
        that identity through another path now, and that node (issue 17, hostile20 F5: a
        reload swapped two cards' numbers; a release resets the node that use was handed,
        there). From the claims the last admission resolved: what acts on the path checks
        it again (`changed_places`). A walk of the resource's list: asked only for a path
        handed out that strays."""
        state = self._resources.get(resource)
        wanted = {key: path for path, key in handed.items() if key[0] != DIRECTORY}
        found: dict[str, tuple[str, DeviceNode]] = {}
        if state is None or not wanted:
            return found
        for device in state.reported.values():
            if (claims := state.claims.get(places(device))) is None:
                continue
            for key, path, _ in claims.exclusive:
                was = wanted.get(key)
                at = next((n for n in device.nodes if n.seen == path), None)
                if was is not None and at is not None and at.host_path != was:
                    found.setdefault(was, (device.id, at))
        return found

    def _owners(self, reached: Reached, sharing: Container[Owner] = ()) -> list[Owner]:
        """Every device that owns what a path reaches exclusively: its claim, a directory
        it mounts above it, or, for a directory, any claim below it (a mount of the
        directory reaches them all); and every booking that holds it (`holders`: also one
        no listed device claims, another plugin's pod's booked from the kubelet's
        checkpoint: hostile15 F11, F12), but those of `sharing` (`mounts_shared_by`)."""
        key, real = reached
        exclusive = self._exclusive
        found = [o for k in (key, *twins(key)) if (o := exclusive.get(k)) is not None]
        holders = self._ledger.holders(key, real)
        found += [owner for owner in holders if owner not in sharing and owner not in found]
        places = self._within.places(key, real)
        for outer in self._within.outer(places):
            if (owner := exclusive.get(outer)) is not None:
                found.append(owner)
        if key[0] == DIRECTORY:
            inner = {k: None for place in places for k in self._within.inner(place)}
            found += [owner for k in inner if (owner := exclusive.get(k)) is not None]
        return found

    def _check_cdi_names(self, resource: str, names: Mapping[str, Collection[str]]) -> None:
        """Refuse a CDI name of a kind kdp-host writes among those an answer carries besides
        its own devices' names: it names another device (of this resource or another)."""
        kinds = self._cdi_kinds
        for kubelet_id, carried in names.items():
            for name in carried:
                kind, device = cdi_name_parts(name)
                owner = kinds.get(kind)
                if owner is not None:
                    raise PlaceOwned(
                        f"{resource}: the answer for {kubelet_id} hands out CDI device "
                        f"{name!r}, which {self._cdi_owner(owner, device)}; only the "
                        "container's own devices may be named by a kind kdp-host writes"
                    )

    def _cdi_owner(self, resource: str, name: str) -> str:
        """Who owns CDI device `name` of `resource`'s kind, in words."""
        state = self._resources.get(resource)
        listed = () if state is None else (*state.admitted.values(), *state.reported.values())
        n = 1 if state is None else state.replicas or 1
        for device in listed:
            if any(cdi_device_name(resource, i) == name for i in replica_ids(device.id, n)):
                return f"device {device.id} of {resource} owns"
        return f"names no device of this container (the kind is {resource}'s)"

    async def _claim_places(
        self, resource: str, places: Mapping[str, Collection[str]]
    ) -> dict[str, tuple[Claim, ...]]:
        """The claims of each ID's places, checked: none may reach another device's claim
        (the same node, inside a directory it mounts, or a directory holding it)."""
        reached = await self._reach_kept({path for paths in places.values() for path in paths})
        shared = self.mounts_shared_by(resource, reached)  # (every pod of it gets them)
        sources = self._mounts_configured.get(resource, frozenset())
        claimed: dict[str, tuple[Claim, ...]] = {}
        for kubelet_id, paths in places.items():
            # the devices of the container (all the IDs handed the same paths)
            mine = {d for i, p in places.items() if p == paths for d in (i, physical_id(i))}
            for path in paths:
                found, mounted = reached[path], shared if path in sources else ()
                for owner in () if found is None else self._owners(found, mounted):
                    if owner.resource != resource or owner.device not in mine:
                        raise PlaceOwned(
                            f"{resource}: the answer for {kubelet_id} hands out {path}, "
                            f"which device {owner.device} of {owner.resource} owns",
                            owner,
                        )
            claimed[kubelet_id] = tuple(claim_of(path, reached.get) for path in sorted(paths))
        return claimed

    def _book(
        self,
        resource: str,
        ids: Iterable[str],
        places: Mapping[str, tuple[Claim, ...]],
        handed_as: Mapping[str, Collection[Identity]],
    ) -> bool:
        state = self._resources.get(resource)
        if state is None:
            return False
        ids = list(ids)
        for kubelet_id in ids:
            device = physical_id(kubelet_id)
            owned = state.owned.get(device)
            if owned is None:
                raise PlaceOwned(
                    f"{resource}: {kubelet_id} is no longer advertised (an admission let go "
                    "of it while the Allocate was answered: its node may be another ID's now)"
                )
            if device not in state.admitted:  # (held: it keeps its claims, `owned`)
                raise PlaceOwned(_held_now(state, kubelet_id))
            if not set(handed_as.get(kubelet_id, ())) <= {claim[0] for claim in owned.all()}:
                raise PlaceOwned(
                    f"{resource}: {kubelet_id} is advertised with other nodes than the answer "
                    "handed out (a list that moved it was admitted while the Allocate was "
                    "answered: its node may be another ID's now)"
                )
        now = self._clock()
        changed = False
        devices = DeviceClaims(state, self._exclusive)
        for kubelet_id in ids:
            device = physical_id(kubelet_id)
            booked, shared = devices.of(device), devices.shared_of(device)
            own = {claim[0] for claim in booked}
            extra = tuple(c for c in places.get(kubelet_id, ()) if c[0] not in own)
            owner = Owner(resource, kubelet_id)
            changed |= self._ledger.record(owner, device, booked, now, extra, shared=shared)
        if changed and self._running is not None and self._admitting == resource:
            # the running admission may have chosen its IDs before: admitted again after it
            state.settled = False
            self._pending[resource] = None
        return changed


def _held_now(state: ResourceState, kubelet_id: str) -> str:
    """Why an ID the answer was made for is refused while its device keeps its claims: the
    last admission held it back (a booking of another ID, resource or host holds its node,
    taken in while the Allocate was answered: hostile22 F7)."""
    why = ""
    if (holding := state.held.get(physical_id(kubelet_id))) is not None:
        why = f" ({holding.reason}: {holding.owner.resource} {holding.owner.device})"
    return (
        f"{state.name}: {kubelet_id} is held{why}: an admission held it back while the "
        "Allocate was answered (its node may be another ID's, resource's or host's now)"
    )
