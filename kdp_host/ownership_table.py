"""The claim table: which device owns which claim, held devices, lingering claims.

One table for the host (the ownership index is one). A claim is owned by one advertised
device (exclusive) or shared by many (`shared`), never both; a directory claim also covers
what is below it. A claim whose device stops being advertised lingers with its owner until
its path is gone or the owner's resource takes it back, never while a pod may reach it
(`ownership_lingering`)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Generator, Iterator, Mapping

from .identity import DIRECTORY
from .ownership_aliases import ALIASED, PathAliases
from .ownership_bookings import Ledger, StateSink
from .ownership_claims import (
    Claim,
    ClaimKey,
    Claims,
    Owner,
    owner_order,
    twins,
)
from .ownership_contain import Containment
from .ownership_document import Saved
from .ownership_growth import grow_bookings
from .ownership_lingering import Lingering
from .ownership_state import Holding as Holding
from .ownership_state import ResourceState as ResourceState
from .turns import Pace


class ClaimTable(Lingering):
    """Who owns what, for every resource of the host (`ResourceState.owned`,
    `ResourceState.lingering`), with containment of directory claims."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        """The PodResources poller's clock (`Holdings.asked_at`)."""
        self._exclusive: dict[ClaimKey, Owner] = {}
        self._shared: dict[ClaimKey, set[Owner]] = {}
        """Key -> the advertised devices that claim it shared."""
        self._within = Containment(self._made)
        """Which claims lie below which claimed directories, by every place of each."""
        self._aliases = PathAliases()
        """The key each path was last claimed under, and the claims by text (`_aliased`)."""
        self._resources: dict[str, ResourceState] = {}
        self._ledger = Ledger()
        """The IDs the kubelet booked, with their claims (`<stateDir>/ownership.json`)."""
        self._shared_at: dict[ClaimKey, str] = {}
        self._ungrown: dict[Owner, frozenset[ClaimKey]] = {}
        """Grown claims a booking let go of, until their device's new claims are taken."""

    def _state(self, resource: str) -> ResourceState:
        state = self._resources.get(resource)
        if state is None:
            state = self._resources[resource] = ResourceState(resource)
        return state

    @abc.abstractmethod
    def _follow(self, resource: str, claims: Claims) -> None:
        """`resource` claimed `claims`: follow their paths for changes."""

    def keep_bookings_in(
        self, sink: StateSink, saved: Saved | None, running: Collection[str] = (), writer: str = ""
    ) -> None:
        """Keep the bookings in `sink` from now on, as host `writer`, after taking back those
        `saved` (before any resource publishes): each claim lingers with its device, and its
        booking holds it; those of other hosts `running` stay theirs (`Ledger.take_in`)."""
        now, self._ledger.writer = self._clock(), writer or None
        self._ledger.take_in(saved or [], running, now)
        for owner, device, claims, *_ in saved or ():
            state = self._state(owner.resource)
            if state.publish is None:
                state.retired = True  # until a runtime of it attaches
            for claim in claims:
                key = claim[0]
                if key not in self._exclusive:
                    self._within.count(key, claim[2])
                    self._aliases.enter(claim)
                    self._exclusive[key] = Owner(owner.resource, device)
                    state.lingering[key] = (now, claim)
        self._ledger.sink = sink

    def is_booked(self, resource: str, advertised_id: str) -> bool:
        """Whether the kubelet has `advertised_id` of `resource` booked now."""
        return self._ledger.has(Owner(resource, advertised_id))

    def drops(self) -> int:
        """How many bookings went so far (`Ledger.drops`): one more may free a device."""
        return self._ledger.drops

    def _incumbent(self, state: ResourceState, advertised_id: str, claims: Claims) -> bool:
        """Whether the device advertised as `advertised_id` owns its claims already."""
        if state.owned.get(advertised_id) is claims:
            return bool(claims.exclusive)
        me = Owner(state.name, advertised_id)
        return bool(claims.exclusive) and all(
            self._exclusive.get(key) == me for key, _, _ in claims.exclusive
        )

    def _conflict(self, resource: str, device_id: str, claims: Claims) -> Holding | None:
        """Why the device cannot own its claims: another owns one of them (or a directory
        one is below, or one below a directory it mounts), or shares it (or a booking of
        another ID does: `Ledger.shared_conflict`) while the device wants it alone. None:
        it can (as when it owns these very claims already)."""
        state = self._resources[resource]
        if state.owned.get(device_id) is claims:
            return None
        me = Owner(resource, device_id)
        grown, shrunk = grow_bookings(self._ledger, resource, device_id, claims)
        for key in grown:
            self._give_to_booking(me, key)
        if shrunk:
            self._let_go_grown(state, me, shrunk)
        for mine, shared in ((claims.exclusive, False), (claims.shared, True)):
            for claim in mine:
                why = self._clash(me, claim[0], claim[1], shared)
                if why is None and (self._aliases.texts or claim[0][0] in ALIASED):
                    why = self._aliased(me, claim, shared)
                if why is not None:
                    return why
        if held := self._ledger.shared_conflict(resource, device_id, state.replicas or 1, claims):
            return Holding("booked", *held)
        if self._within.dirs or any(claim[0][0] == DIRECTORY for claim in claims.all()):
            return self._contained(me, claims)
        return None

    def _give_to_booking(self, me: Owner, key: ClaimKey) -> None:
        """A booking of `me` holds `key` now (`ownership_growth`): a device of another
        resource that owns it and no booking holds it through is let go of (its claims
        linger), that claim released, and its resource admitted again in full (the device
        is held `owned` by `me`)."""
        prior = self._exclusive.get(key)
        if prior is None or prior.resource == me.resource or self._booked_under(prior, key):
            return
        other = self._resources[prior.resource]
        self._unadvertise(other, prior.device)
        if key in other.lingering:
            self._release_lingering(other, key)
        self._readmit(other)

    def _let_go_grown(self, state: ResourceState, me: Owner, keys: frozenset[ClaimKey]) -> None:
        """A booking of `me` let go of the grown claims `keys` (`ownership_growth`): no pod
        was handed them, so they are released, not left to linger (`_drop_keys`, now or
        when the device's new claims are taken), and a device held for them is free."""
        mine = self._exclusive
        lingering = {key for key in keys if key in state.lingering and mine.get(key) == me}
        for key in lingering:
            self._release_lingering(state, key)  # (lingering already: `_release_stale`)
        if later := keys - lingering:
            self._ungrown[me] = later  # (`_drop_keys` releases them as it takes the claims)
        self._wake_waiting(state.name)

    @abc.abstractmethod
    def _readmit(self, state: ResourceState) -> None:
        """`state`'s resource lost a claim to a booking: admit it again in full."""

    @abc.abstractmethod
    def _wake_waiting(self, releaser: str) -> None:
        """Claims of `releaser`'s went: every other resource holding a device is admitted again."""

    def _aliased(self, me: Owner, claim: Claim, shared: bool) -> Holding | None:
        """A claim and the other claim its path names (`PathAliases.of`) clash as one."""
        alias = self._aliases.of(claim, self._exclusive, self._shared, self._made)
        return None if alias is None else self._clash(me, alias, claim[1], shared)

    def _clash(self, me: Owner, claimed: ClaimKey, path: str, shared: bool) -> Holding | None:
        """Whether `claimed` by `me` (shared or not) clashes with another's claim (or a twin)."""
        for key in (claimed, *twins(claimed)):
            owner = self._exclusive.get(key)
            if (
                owner is not None
                and owner != me
                and not self._taken_over(me, owner, key)
                and not self._released_if_gone(key)
            ):
                return Holding("owned", owner, path, key)
            sharers = None if shared else self._shared.get(key)
            if sharers and (len(sharers) > 1 or me not in sharers):
                return Holding("shared", min(sharers - {me}, key=owner_order), path)
        return None

    def _contained(self, me: Owner, claims: Claims) -> Holding | None:
        """Containment: a claim below a directory another device mounts (unless a booking of
        it does: `Admission._booking_conflict`), or a directory mount with another's claim
        below it, clashes as the same claim (two shared excepted), at each of its places."""
        within, booked = self._within, self._ledger.mount_conflict
        at, n = within.at(), self._resources[me.resource].replicas or 1
        mine = claims.all()
        for key, path, real in mine:
            shared = claims.shared != () and key in claims.shared_keys()
            places = within.places(key, real)
            if (known := at.get(key)) is not None and known != places:
                places = (*known, *(p for p in places if p not in known))  # (a hard link)
            for outer in within.outer(places):
                why = self._clash(me, outer, path, shared)
                if why is not None and booked(me.resource, me.device, n, [(path, outer)]) is None:
                    return why
            if key[0] != DIRECTORY:
                continue
            for place in places:
                if not within.count_below(place):
                    continue
                own = sum(
                    1
                    for other_key, _, _ in mine
                    if within.holds(place, other_key) and self._holds(me, other_key)
                )
                if within.count_below(place) <= own:
                    continue
                for inner in within.inner(place):
                    why = self._clash(me, inner, path, shared)
                    if why is not None:
                        return why
        return None

    def _holds(self, me: Owner, key: ClaimKey) -> bool:
        return self._exclusive.get(key) == me or me in self._shared.get(key, ())

    def _made(self) -> Iterator[Claim]:
        """Every claim of the table: of advertised devices, and lingering ones."""
        for state in self._resources.values():
            for claims in state.owned.values():
                yield from claims.all()
            for _, claim in state.lingering.values():
                yield claim

    def _uncount(self, key: ClaimKey) -> None:
        """A claim is gone (from both maps)."""
        if key in self._exclusive or key in self._shared:
            return
        self._aliases.leave(key)
        self._within.uncount(key)

    def _claim(self, state: ResourceState, device_id: str, claims: Claims) -> None:
        if state.owned.get(device_id) is claims:
            return  # it owns them already (a device renamed on its paths keeps a booked ID)
        me = Owner(state.name, device_id)
        lingering, exclusive = state.lingering, self._exclusive
        added = False
        for claim in claims.exclusive:
            key = claim[0]
            if key not in exclusive:
                self._within.count(key, claim[2])
            else:
                self._within.reached_at(key, claim[2])
            added = added or exclusive.get(key) != me
            self._aliases.enter(claim)
            exclusive[key] = me
            if lingering and lingering.pop(key, None) is not None:
                self._shared_at.pop(key, None)
        for key, path, real in claims.shared:
            sharers = self._shared.get(key)
            if sharers is None:
                self._within.count(key, real)
                sharers = self._shared[key] = set()
            self._aliases.enter((key, path, real))
            sharers.add(me)
        state.owned[device_id] = claims
        if claims.renamed or state.renamed:
            (state.renamed.add if claims.renamed else state.renamed.discard)(device_id)
        self._follow(state.name, claims)
        if added:
            self._claims_changed(claims.exclusive)

    def _release_stale(
        self, state: ResourceState, wanted: Mapping[str, Claims], pace: Pace
    ) -> Generator[None, None, bool]:
        """Claims of advertised IDs that are gone, or that a device no longer has, linger."""
        released = False
        for advertised_id in list(state.owned):
            if pace.due():
                yield
            new = wanted.get(advertised_id)
            if new is None:
                released |= self._unadvertise(state, advertised_id)
            else:
                released |= self._drop_keys(state, advertised_id, new)
        return released

    def _drop_keys(self, state: ResourceState, advertised_id: str, new: Claims) -> bool:
        """An advertised device's claims it no longer makes: exclusive ones linger, shared
        ones go (True if one did)."""
        old = state.owned.get(advertised_id)
        if old is None or old is new:
            return False
        me = Owner(state.name, advertised_id)
        ungrown = self._ungrown.pop(me, frozenset())
        kept = new.exclusive_keys()
        for claim in old.exclusive:
            key = claim[0]
            if key not in kept and self._exclusive.get(key) == me:
                state.lingering.setdefault(key, (self._clock(), claim))
                if key in ungrown:  # (never handed out: nothing to linger for)
                    self._release_lingering(state, key)
        kept = new.shared_keys()
        return any([self._unshare(claim[0], me) for claim in old.shared if claim[0] not in kept])

    def _unadvertise(self, state: ResourceState, advertised_id: str) -> bool:
        """The device is no longer advertised: its exclusive claims linger, its shared ones
        go. True if something was released."""
        old = state.owned.pop(advertised_id, None)
        if old is None:
            return False
        state.renamed.discard(advertised_id)
        me, now = Owner(state.name, advertised_id), self._clock()
        for claim in old.exclusive:
            if self._exclusive.get(claim[0]) == me:
                state.lingering.setdefault(claim[0], (now, claim))
        return any([self._unshare(claim[0], me) for claim in old.shared])

    def _unshare(self, key: ClaimKey, owner: Owner) -> bool:
        sharers = self._shared.get(key)
        if sharers is None or owner not in sharers:
            return False
        sharers.discard(owner)
        if not sharers:
            del self._shared[key]
            self._uncount(key)
        return True
