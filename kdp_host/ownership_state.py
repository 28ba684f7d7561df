"""The per-resource state of the ownership index (`ResourceState`: what a resource listed,
what it owns, its lingering claims, what it holds back and why: `Holding`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .devices import Device
from .logs import EventLogger, LineRate
from .ownership_claims import Claim, ClaimKey, Claims, Owner, Places, Reached
from .ownership_paths import PathIndex


@dataclass(frozen=True, slots=True)
class Holding:
    """Why a device is held: logged and counted once while it stays the same."""

    reason: str
    """`owned` (another device's claim), `shared` (a node other devices share), `booked`
    (the kubelet booked one of its claims under another ID or resource: the owner is that
    booking), `place_booked` (a node or mount source of it is where a booked ID's device
    was handed out: moved there, or made anew there; the owner is that booking), `id_taken`
    (its ID is the old ID another device of the resource keeps while a booking of it holds
    that device's node), `booked_number_unknown` (a node of it may have the number of a
    booked node gone at start: `Ledger.number_unknown`),
    `unsafe_mount` (a path of it no container may be handed: no owner), `not_a_node` (a
    node's path that reaches a directory, a FIFO or a socket: no owner)."""
    owner: Owner
    path: str
    key: ClaimKey | None = None
    """The claim it waits for (a lingering one is checked again before each admission)."""
    detail: str = ""
    """Why, in words, where no owner says it (`unsafe_mount`: `config.handed`; `not_a_node`)."""


@dataclass
class ResourceState:
    """What the ownership index knows of one resource."""

    name: str
    log: EventLogger | None = None
    publish: Callable[[Mapping[str, Device]], bool] | None = None
    """The resource's table while a runtime is attached."""
    reported: Mapping[str, Device] = field(default_factory=dict)
    """The driver's last list (driver IDs)."""
    admitted_from: Mapping[str, Device] = field(default_factory=dict)
    """The list the last admission ran on: `claims` were resolved for its devices."""
    admitted: Mapping[str, Device] = field(default_factory=dict)
    """What the last admission advertised."""
    settled: bool = False
    """The last admission ran for this runtime (an unchanged list needs no walk)."""
    sent: Mapping[str, Device] | None = None
    """What this runtime's table was last given (the same again is not sent)."""
    claims: dict[Places, Claims] = field(default_factory=dict)
    """Claims by places (`ownership_claims.places`) of the devices of `admitted_from` (or
    of the list being admitted): a device renamed on the same paths is not resolved again;
    the watcher's recheck forgets the places of a changed path."""
    stale: set[str] = field(default_factory=set)
    """Devices of `admitted_from` whose places the watcher's recheck forgot (to claim anew)."""
    paths: PathIndex | None = None
    """The devices of `admitted_from` by host path, from its first recheck on."""
    owned: dict[str, Claims] = field(default_factory=dict)
    """Advertised ID -> what it claims in the index."""
    renamed: set[str] = field(default_factory=set)
    """Advertised IDs of `owned` with a host path that is not its real path (`Claims.renamed`:
    the device is advertised with its real paths, `ownership_canonical.canonical`)."""
    lingering: dict[ClaimKey, tuple[float, Claim]] = field(default_factory=dict)
    """Exclusive claims of devices no longer advertised, kept while the node is there (or a
    pod may hold them), with the time (index clock) they stopped being advertised and the
    claim (its host path: to see whether it is gone)."""
    held: dict[str, Holding] = field(default_factory=dict)
    retired: bool = False
    plain: bool = True
    """The last admission advertised every device it did not hold under its own ID."""
    replicas: int | None = None
    """The replica count its last runtime advertised with."""
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Devices of `reported` whose claims must be resolved first, with their host paths."""
    wanted: set[str] = field(default_factory=set)
    """Paths to resolve (off the loop) before the next admission."""
    known: Mapping[str, Reached] = field(default_factory=dict)
    """What the driver's scan learnt host paths of `reported` reach (not resolved again),
    until it is admitted."""
    resolving: asyncio.Task[None] | None = None
    unresolved: dict[str, str] = field(default_factory=dict)
    """Devices left out because a path of theirs did not resolve in time, with that path."""
    unseen_lines: LineRate = field(default_factory=LineRate)
    """`ownership_held`'s lines of a path where nothing is, one per `UNSEEN_LINE_EVERY` s."""
    shared_seen: tuple[tuple[int, int, int], tuple[Claim, ...]] | None = None
    """The shared claims of `owned` and `claims`, once each, with the identity and sizes of
    those maps when gathered (`ownership_lingering._listed_shared`: not gathered again per
    lingering claim while they stay as they were: a probe renaming 12,000 devices)."""

    def shared_claims(self) -> tuple[Claim, ...]:
        """The shared claims of `owned` and `claims` (`shared_seen`), each (key, real) once."""
        stamp = (id(self.claims), len(self.claims), len(self.owned))
        if self.shared_seen is not None and self.shared_seen[0] == stamp:
            return self.shared_seen[1]
        seen: dict[tuple[ClaimKey, str], Claim] = {}
        for claims in (*self.owned.values(), *self.claims.values()):
            for claim in claims.shared:
                seen.setdefault((claim[0], claim[2]), claim)
        self.shared_seen = (stamp, tuple(seen.values()))
        return self.shared_seen[1]
