"""A device that cannot be advertised for a path of its own owns nothing unbooked (hostile8 L1).

A device with a node or mount whose real path no container may be handed (`config.handed`:
`/`, the kubelet's directories, stateDir, ... at every place the mount table shows them) is
held `unsafe_mount`. It keeps only the claims a booking of it holds (a pod has it: those
stand until the booking ends); its others are released at once, not left to linger as those
of a device that left its list are (`ownership_table`), and so is a lingering claim whose
real path became one no container may be handed. Else such a claim, a directory's above
all, held what is below it at every place the mount table shows that: a group directory a
bind mount of `/` made unsafe held every device of the host, of every resource. No pod got
such a claim unbooked from this host: an Allocate books before it answers, one of an ID no
longer advertised is refused (`BookingAllocations._book`), and one that hands out such a
path is refused too (`hand_out`). The unsafe devices of a list are found, and let go of,
before any other device of it is admitted, so none of the list is held by one of them. So is
a device held `not_a_node` (a node's path that reaches a directory, a FIFO or a socket:
`identity.NOT_A_NODE`), whose path is followed to admit it once a node is there.

A device held by another device's claim (`owned`, `shared`) is not of this kind: its claims
are safe ones it owned while advertised, and they linger as those of any device that stopped
being advertised (a pod kdp-host booked nothing for, admitted before bookings were kept, may
hold it); a device held by a booking (`booked`, `place_booked`) keeps its claims, to be
advertised once the booking ends.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Mapping

from .config import UNSAFE_MOUNT, NeverHanded
from .identity import NOT_A_NODE, UNSEEN, not_a_node_why, unseen
from .mount_table import MountMap
from .ownership_claims import PLACE, SYSFS, ClaimKey, Claims, ClaimSet, Owner
from .ownership_paths import read_only_paths
from .ownership_table import ClaimTable, Holding, ResourceState
from .turns import Pace

NO_PATHS: frozenset[str] = frozenset()
NOBODY = Owner("", "")
"""The owner of a holding no other device causes (`unsafe_mount`)."""


class LetGo(ClaimTable):
    """Unsafe devices, found first, and the claims they keep."""

    never_handed: NeverHanded = NeverHanded()
    """The host paths no container may be handed (`config.handed`); the host sets its
    config's (this default refuses `/` alone)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._checked_under: dict[str, tuple[NeverHanded, MountMap]] = {}
        """Resource -> the rule and mount table its last full admission checked every device
        it advertised against (`_unsafe`), unchanged from its start to its end."""

    def _rule(self) -> tuple[NeverHanded, MountMap]:
        return self.never_handed, self._within.mounts

    def _checked_all(self, state: ResourceState, rule: tuple[NeverHanded, MountMap]) -> None:
        """An admission of `state` checked every device it advertises against `rule` (kept
        if it is still the rule in force)."""
        if rule[0] is self.never_handed and rule[1] is self._within.mounts:
            self._checked_under[state.name] = rule

    def _owner_checked(self, state: ResourceState, claims: Claims) -> bool:
        """Whether `claims` (the very object) is what a device of this resource owns, and the
        resource's devices were checked against the rule and mount table in force: a device
        renamed on its paths is not checked again, as an unchanged list is not (each claims
        object is checked as it is claimed, and every device at a full admission)."""
        under = self._checked_under.get(state.name)
        if under is None or under[0] is not self.never_handed:
            return False
        if under[1] is not self._within.mounts:
            return False
        exclusive = claims.exclusive
        owner = self._exclusive.get(exclusive[0][0]) if exclusive else None
        return (
            owner is not None
            and owner.resource == state.name
            and state.owned.get(owner.device) is claims
        )

    def _unsafe(
        self, claims: Claims, healthy: bool = True, read_only: frozenset[str] = frozenset()
    ) -> Holding | None:
        """Held, whoever owns what: a node or mount of the device whose real path no container
        may be handed (`config.handed`: the kubelet's or kdp-host's own directories, `/`,
        a path where nothing is in kdp-host's view: `identity.UNSEEN`, found last). An
        Unhealthy device (a node that vanished, for its grace period) is advertised so with
        a path where nothing is: the kubelet allocates no Unhealthy device, and an Allocate
        that hands one out is refused (`hand_out`, the same rule). A path of `read_only`
        (`ownership_claims.read_only_paths`) is not refused for what kdp-host runs. Then
        (`not_a_node`, found before a path where nothing is) a device node's path that
        reaches a directory, a FIFO or a socket (`identity.NOT_A_NODE`)."""
        problem, mounts = self.never_handed.problem, self._within.mounts
        waiting: Holding | None = None
        for key, path, real in claims.all():
            if key[0] in (SYSFS, PLACE) or (not healthy and unseen(key)):
                continue
            if (why := problem(real, key, mounts, writable=path not in read_only)) is None:
                continue
            found = Holding(UNSAFE_MOUNT, NOBODY, path, detail=f"its real path {real} {why}")
            if why != UNSEEN:
                return found
            waiting = waiting or found
        if odd := claims.not_nodes:
            key, path, real = odd[0]
            why = f"its real path {real} {not_a_node_why(key[0])}"
            return Holding(NOT_A_NODE, NOBODY, path, detail=why)
        return waiting

    def _vanishing(self, state: ResourceState, device_id: str) -> bool:
        """Whether a path of the advertised device went a moment ago (`ownership_watching`):
        its driver's next list says what it is now (Unhealthy, or without an optional path),
        so a path where nothing is holds it only once that moment is over."""
        return False

    def _unsafe_first(
        self,
        state: ResourceState,
        claims: Mapping[str, Claims],
        ids: Mapping[str, str] | None,
        holding: dict[str, Holding],
        pace: Pace,
    ) -> Generator[None, None, tuple[dict[str, Holding], bool]]:
        """The devices of `claims` (device ID -> claims; advertised under `ids`, None: their
        own) whose paths no container may be handed, found before any device is admitted:
        each is held, its claims let go of first (`_let_go`), so no device of the list is
        held by one of them; except one whose advertised ID a safe one of the list has (the
        ID is that one's). A device held only for a path where nothing is (`UNSEEN`) lets go
        of nothing (its claims linger as those of a device that left its list: they are
        safe ones), and the directory of that path is followed: it is admitted again once
        the path is there; so is the directory of a node's path that is no node
        (`NOT_A_NODE`): admitted again once a node is there. Returns them, and whether a
        claim was released."""
        unsafe: dict[str, Holding] = {}
        for device_id, claim in claims.items():
            if pace.due():
                yield
            if self._owner_checked(state, claim):
                continue
            device = state.reported.get(device_id)
            healthy, read_only = True, NO_PATHS
            if device is not None:
                healthy, read_only = device.healthy, read_only_paths(device)
            healthy = healthy and not self._vanishing(state, device_id)
            if (why := self._unsafe(claim, healthy, read_only)) is not None:
                unsafe[device_id] = why
        if not unsafe:
            return unsafe, False
        waits = {d for d, why in unsafe.items() if why.detail.endswith(UNSEEN)}
        for device_id in waits:
            self._follow(
                state.name, ClaimSet(tuple(c for c in claims[device_id].all() if unseen(c[0])))
            )
        for device_id, why in unsafe.items():
            if why.reason == NOT_A_NODE:
                self._follow(state.name, ClaimSet(claims[device_id].not_nodes))
        named = (lambda d: d) if ids is None else ids.__getitem__
        safe = {named(d) for d in claims if d not in unsafe}
        first = {d: named(d) for d in unsafe if named(d) not in safe}
        for device_id, advertised_id in first.items():
            holding[device_id] = unsafe[device_id]
            self._unadvertise(state, advertised_id)
        let_go = {a for d, a in first.items() if d not in waits}
        return unsafe, (yield from self._let_go(state, let_go, pace))

    def _let_go(
        self, state: ResourceState, held: Collection[str], pace: Pace
    ) -> Generator[None, None, bool]:
        """The claims devices `held` (advertised IDs of `state`) left lingering that no
        booking of them holds are released; True if one was."""
        released = False
        for key in list(state.lingering):
            if pace.due():
                yield
            owner = self._exclusive.get(key)
            if (
                owner is not None
                and owner.resource == state.name
                and owner.device in held
                and not self._booked_under(owner, key)
            ):
                self._release_lingering(state, key)
                released = True
        return released

    def _released_if_gone(self, key: ClaimKey) -> bool:
        """Also a lingering claim no booking holds whose real path no container may be
        handed now (a bind mount of `/` made in a directory since its device went)."""
        if super()._released_if_gone(key):
            return True
        state = self._resources[self._exclusive[key].resource]
        lingering = state.lingering.get(key)
        if lingering is None or key in self._ledger.booked or key[0] == SYSFS:
            return False
        real = lingering[1][2]  # (not one of what kdp-host runs: a read-only mount may be)
        if self.never_handed.problem(real, key, self._within.mounts, writable=False) is None:
            return False
        self._release_lingering(state, key)
        return True
