"""One host device node, or one mount source, in at most one advertised device of the host.

The kubelet books devices per resource by ID; it cannot know that two IDs (of one resource
or of two) reach the same node. So the host keeps one ownership index, shared by every
resource, that every published device list passes through (`OwnershipIndex.publish`, which a
resource's `DeviceReporter` writes to through `OwnedTable`). Each device claims what it would
put into a container:

- every DeviceSpec host path: a character or block node by its device number (so a second
  node or a link for it is the same claim), anything else by its resolved real path;
- every mount source of the device, by its resolved real path.

A directory mounted into a container holds everything below it, so a claim below a
directory another device claims (a mount of `/dev/dri` and the node `/dev/dri/card0`), or a
directory with another's claim below it, clashes as if both were one claim.

Nodes a driver marks `shared` (a control node every device needs, like `/dev/vfio/vfio`) are
claimed shared: any number of shared claims may coexist, but not with an exclusive one.

Rules:

- **First owner keeps it.** A device whose claim is owned by another device (of any resource)
  is not advertised: logged once with both owners (`device_held`) and counted
  (`kdp_driver_skipped_total{reason="node_owned"}`). Within one list, devices that own their
  claims already come first, then the others in ID order.
- **The owner keeps its claim while a pod may hold the node.** The Device Plugin API never
  says when a pod lets go of a device. So a claim whose device stops being advertised (it
  left its list, its resource was restarted or removed by a reload) *lingers* with its owner
  while a pod may hold it: until the node is gone, or, with PodResources polling on
  (`kubelet.podResourcesInterval`), until the kubelet's answer shows no pod holding it. The
  held device is then advertised (`device_claim_won`). A resource restarted by a reload or
  after a crash finds its claims where it left them, so no other resource can take a node
  in between; a resource added back takes its lingering claims back.
- **IDs follow the physical device.** A device whose claims are owned by another ID of the
  same resource (a reload changed the patterns, `usbIdFrom`, ...) is advertised under that
  old ID, which the kubelet may have given to a pod: the kubelet then never hands the same
  node out a second time under a new ID. A device whose own ID is taken that way is held
  (`id_taken`) until the old one is gone.
- **Kept IDs survive a restart.** The claims of devices advertised under such an inherited
  ID are kept in `<stateDir>/ownership.json` (`keep_in`, written by `StateFile`) and read back
  at start as lingering claims, so the first list after a restart (a crash, SIGKILL, a
  rolling upgrade) advertises the device under the ID the kubelet booked again. An entry goes
  when the index lets go of its claim: the node is gone, or the device is no longer
  advertised and PodResources (asked `HEARD_AFTER` later) shows no pod holding the ID. While
  the device is advertised under the kept ID the entry stays: a pod may get it at any time.
  A device waiting on a change of `replicas` is kept there too, and still waits after a
  restart until PodResources shows no pod holding one of its old IDs.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .devices import REPLICA_SEPARATOR, Device, replica_ids
from .files import Offload
from .logs import EventLogger
from .metrics import Metrics
from .ownership_claims import (
    Claim,
    ClaimKey,
    Claims,
    Owner,
    Reached,
    Resolver,
    ancestors,
    below,
    device_claims,
    host_paths,
    owner_order,
    reach,
)
from .ownership_resolve import HUNG, RESOLVE_TIMEOUT, PathResolver, Resolution

if TYPE_CHECKING:
    from .podresources import Holdings
    from .watch import Watcher

HEARD_AFTER = 5.0
"""Seconds after a device stops being advertised by which the kubelet has heard of it (a
ListAndWatch update, or the end of a stopped resource's stream): a PodResources answer asked
for later shows every pod that can hold it."""

OWNERSHIP_FILE = "ownership.json"
OWNERSHIP_VERSION = 1

HELD_REASON = "node_owned"
"""The `reason` of `kdp_driver_skipped_total` for a device held back by another's claim."""

UNRESOLVED_REASON = "read_timeout"
"""The `reason` of `kdp_driver_skipped_total` for a device left out because a path of it did
not resolve in time (a hung file system)."""


def _batch_reach() -> Resolver:
    """`reach` with a cache of directories' real paths for one batch."""
    return functools.partial(reach, real_dirs={})


def _through(device: Device, directory: str, paths: set[str] | None) -> bool:
    """Whether a host path of `device` is one of `paths` (None: any in `directory`)."""
    for host_path in host_paths(device):
        if host_path in paths if paths is not None else os.path.dirname(host_path) == directory:
            return True
    return False


def _advertises(advertised_id: str, device_id: str) -> bool:
    """Whether an advertised ID is the device or one of its replicas (`<id>::<k>`)."""
    return advertised_id == device_id or (
        advertised_id.startswith(device_id)
        and advertised_id[len(device_id) :].startswith(REPLICA_SEPARATOR)
    )


@dataclass(frozen=True, slots=True)
class _Holding:
    """Why a device is held: logged and counted once while it stays the same."""

    reason: str
    """`owned` (another device's claim), `shared` (a node other devices share),
    `replicas_changed` (pods may hold the device under its IDs before a change of
    `replicas`; the owner's device field lists them),
    `id_taken` (its ID is the old ID of another device of the resource)."""
    owner: Owner
    path: str
    key: ClaimKey | None = None
    """The claim it waits for (a lingering one is checked again before each admission)."""


@dataclass
class _Resource:
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
    claims: dict[str, Claims] = field(default_factory=dict)
    """Claims per driver ID, resolved for the device of `admitted_from` (or the one being
    admitted)."""
    owned: dict[str, Claims] = field(default_factory=dict)
    """Advertised ID -> what it claims in the index."""
    lingering: dict[ClaimKey, tuple[float, Claim]] = field(default_factory=dict)
    """Exclusive claims of devices no longer advertised, kept while the node is there (or a
    pod may hold them), with the time (index clock) they stopped being advertised and the
    claim (its host path: to see whether it is gone)."""
    held: dict[str, _Holding] = field(default_factory=dict)
    retired: bool = False
    plain: bool = True
    """The last admission advertised every device it did not hold under its own ID."""
    replicas: int | None = None
    """The replica count its last runtime advertised with."""
    waits: dict[str, _ReplicaWait] = field(default_factory=dict)
    """Devices held after a change of `replicas` while pods may hold their old IDs."""
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Devices of `reported` whose claims must be resolved first, with their host paths."""
    wanted: set[str] = field(default_factory=set)
    """Paths to resolve (off the loop) before the next admission."""
    resolving: asyncio.Task[None] | None = None
    unresolved: dict[str, str] = field(default_factory=dict)
    """Devices left out because a path of theirs did not resolve in time, with that path."""


@dataclass(frozen=True, slots=True)
class _ReplicaWait:
    vanished: frozenset[str]
    """Advertised IDs of the device before the change that the new count does not have."""
    since: float


class OwnershipIndex:
    """The host-wide index of claims (one per host, passed to every resource).

    A claim whose device stops being advertised (it left the list, is held, or its resource
    was removed) *lingers*: it keeps its owner while its node is still there, because a pod
    may hold the device under that ID and the kubelet never says when it lets go. It is
    released once the node is gone (checked whenever the owner's resource publishes, and
    whenever another device is held by it), or taken back by its own resource.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        resolve: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
        offload: Offload | None = None,
        timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self._metrics = metrics
        self._paths = PathResolver(
            (lambda: resolve) if resolve is not None else _batch_reach, offload, timeout
        )
        self._fresh: dict[str, Resolution] = {}
        """Paths resolved for the admissions running now (emptied once they ran)."""
        self._late: dict[str, set[str]] = {}
        self._admitting = ""
        """The resource being admitted."""
        """Paths of lingering claims an admission met unresolved -> the resources to admit
        again once they are (with an offload: the claim held meanwhile)."""
        self._clock = clock
        """The PodResources poller's clock (`Holdings.asked_at`)."""
        self._exclusive: dict[ClaimKey, Owner] = {}
        self._shared: dict[ClaimKey, set[Owner]] = {}
        """Key -> the advertised devices that claim it shared."""
        self._dirs: dict[str, ClaimKey] = {}
        """Real path -> key of every claimed directory (a mount contains what is below)."""
        self._at: dict[ClaimKey, str] | None = None
        """Key -> real path of every claim, kept from the first directory claim on (a host
        without directory mounts pays nothing for containment)."""
        self._below: dict[str, int] = {}
        """Directory -> how many claims of `_at` are below it."""
        self._resources: dict[str, _Resource] = {}
        self._pending: dict[str, None] = {}
        self._draining = False
        self._kept: dict[ClaimKey, tuple[Owner, Claim]] = {}
        """Exclusive claims of devices advertised under an ID they inherited, advertised or
        lingering: what `<stateDir>/ownership.json` holds."""
        self._sink: StateSink | None = None
        self._watcher: Watcher | None = None
        self._followed: dict[str, set[str]] = {}
        """Directory of a claimed host path -> the resources that claimed through it."""
        self._changed: dict[str, set[str] | None] = {}
        """Names the watcher reported changed per directory since the last recheck (None:
        anything in it)."""

    # ------------------------------------------------------------------ runtimes

    def watch(self, watcher: Watcher) -> None:
        """Follow the directories of claimed host paths through the host's watcher: a claim
        is resolved again when its path changes (a node replaced by one with another device
        number must not keep the old claim). Their subscriptions last as long as the host."""
        self._watcher = watcher

    def _follow(self, resource: str, claims: Claims) -> None:
        watcher = self._watcher
        if watcher is None:
            return
        for _, path, _ in claims.all():
            directory = os.path.dirname(path)
            users = self._followed.get(directory)
            if users is None:
                users = self._followed[directory] = set()
                watcher.subscribe(directory, functools.partial(self._path_changed, directory))
            users.add(resource)

    def _path_changed(self, directory: str, name: str | None) -> None:
        """A watcher callback: note it, and recheck once the burst is over (soon)."""
        first = not self._changed
        if name is None:
            self._changed[directory] = None
        else:
            names = self._changed.setdefault(directory, set())
            if names is not None:
                names.add(name)
        if first:
            asyncio.get_running_loop().call_soon(self._recheck)

    def _recheck(self) -> None:
        """Forget the claims of devices with a changed path, and admit their resources
        again (which resolves them anew)."""
        changed, self._changed = self._changed, {}
        for directory, names in changed.items():
            paths = None if names is None else {os.path.join(directory, n) for n in names}
            for name in self._followed.get(directory, ()):
                state = self._resources[name]
                stale = [
                    device_id
                    for device_id, device in state.admitted_from.items()
                    if _through(device, directory, paths)
                ]
                for device_id in stale:
                    state.claims.pop(device_id, None)
                if stale and state.publish is not None and not state.retired:
                    state.settled = False
                    self._pending[name] = None
        self._drain()

    def attach(
        self,
        resource: str,
        publish: Callable[[Mapping[str, Device]], bool],
        log: EventLogger,
        replicas: int = 1,
    ) -> Callable[[], None]:
        """A runtime of `resource` starts publishing to `publish`; returns its detach.

        A resource added back after it was retired takes its old claims back. When its
        `replicas` changed, every device whose old replica IDs are not all among the new
        ones waits until no pod holds one of those (PodResources), then is advertised."""
        state = self._state(resource)
        state.publish, state.log, state.retired = publish, log, False
        state.held = {}
        state.settled, state.sent = False, None
        # A new runtime's first list is admitted in full (and logged, what it holds too)
        # unless the resource never listed a device.
        state.plain = not state.admitted_from and not state.owned and not state.lingering
        if state.replicas is not None and state.replicas != replicas:
            now = self._clock()
            for device_id in [*state.owned, *state.waits]:
                gone = set(replica_ids(device_id, state.replicas))
                gone -= set(replica_ids(device_id, replicas))
                before = state.waits.get(device_id)
                if before is not None:
                    gone |= before.vanished
                if gone:
                    state.waits[device_id] = _ReplicaWait(frozenset(gone), now)
            if state.waits:
                self._kept_changed()
        state.replicas = replicas

        def detach() -> None:
            """The runtime stopped: an admission waiting for paths is dropped with it."""
            if state.publish is publish:
                state.publish = None
                if state.resolving is not None:
                    state.resolving.cancel()

        return detach

    def retire(self, resource: str) -> None:
        """`resource` left the config: its claims linger while their nodes are there."""
        state = self._resources.get(resource)
        if state is None:
            return
        state.retired = True
        state.publish = None
        state.held = {}
        state.settled = False
        released = False
        for advertised_id in list(state.owned):
            released |= self._unadvertise(state, advertised_id)
        if released:
            self._wake_waiting(resource)
            self._drain()

    def holdings(self, holdings: Holdings) -> None:
        """Who holds what, from the kubelet's PodResources API: a lingering claim whose
        device no pod holds is released (its waiter is advertised), once the answer was
        asked for well after the device stopped being advertised (the kubelet may have
        admitted a pod with it until it heard of that)."""
        released = False
        for state in self._resources.values():
            held = holdings.of(state.name)
            for device_id, wait in list(state.waits.items()):
                late = holdings.asked_at >= wait.since + HEARD_AFTER
                if late and not any(replica in held for replica in wait.vanished):
                    del state.waits[device_id]
                    released = True
                    self._kept_changed()
            for key, (since, _) in list(state.lingering.items()):
                if holdings.asked_at < since + HEARD_AFTER:
                    continue
                device = self._exclusive[key].device
                if not any(_advertises(a, device) for a in held):
                    self._release_lingering(state, key)
                    released = True
        if released:
            self._wake_waiting("")
            self._drain()

    # ------------------------------------------------------------------ kept IDs

    def keep_in(self, sink: StateSink, saved: Saved | None) -> None:
        """Keep the claims of devices advertised under inherited IDs, and the devices waiting
        on a change of `replicas`, in `sink` from now on, after taking back those `saved` by
        the last run (before any resource publishes): each claim lingers with its owner, as if
        its device had just stopped being advertised; each wait starts again."""
        now = self._clock()
        for resource, device, vanished in saved.waits if saved else ():
            self._state(resource).waits.setdefault(device, _ReplicaWait(vanished, now))
        for owner, claim in saved.claims if saved else ():
            key = claim[0]
            if key in self._exclusive:
                continue
            state = self._state(owner.resource)
            if state.publish is None:
                state.retired = True  # until a runtime of it attaches
            self._count(key, claim[2])
            self._exclusive[key] = owner
            self._kept[key] = (owner, claim)
            state.lingering[key] = (now, claim)
        self._sink = sink

    def _kept_changed(self) -> None:
        if self._sink is not None:
            self._sink.changed(self._kept_document)

    def _kept_document(self) -> Mapping[str, Any]:
        waits = [
            {"resource": state.name, "device": device, "vanished": sorted(wait.vanished)}
            for state in self._resources.values()
            for device, wait in sorted(state.waits.items())
        ]
        return {
            "waits": waits,
            "claims": [
                {
                    "resource": owner.resource,
                    "device": owner.device,
                    "kind": key[0],
                    "key": key[1],
                    "path": path,
                    "real": real,
                }
                for (key, path, real), owner in sorted(
                    ((claim, owner) for owner, claim in self._kept.values()),
                    key=lambda item: str(item[0][0]),
                )
            ],
        }

    # ------------------------------------------------------------------ publishing

    def publish(self, resource: str, devices: Mapping[str, Device]) -> bool:
        """A complete list of `resource` (driver IDs): claim, and publish what may be
        advertised (under the IDs the kubelet knows). Returns whether the resource's table
        changed. A retired resource's runtime that is still stopping changes nothing."""
        state = self._state(resource)
        if state.retired:
            return False
        state.reported = devices
        changed = self._admit_or_defer(state)
        self._drain()
        return changed

    def _admit_or_defer(self, state: _Resource) -> bool:
        """Admit `state` now if every path it needs is resolved (inline without an offload),
        else once they are, off the loop. Returns whether its table changed now."""
        wanted = self._wanted(state)
        if wanted:
            if self._paths.offload is not None:
                self._defer(state, wanted)
                return False
            self._take(state, self._paths.inline(wanted))
        changed = self._apply(state)
        state.needs = {}  # (kept only while its paths are resolved: a list can be long)
        late, self._late = self._late, {}
        for path, names in late.items():
            for name in names:
                self._defer(self._resources[name], {path})
        return changed

    def _defer(self, state: _Resource, paths: set[str]) -> None:
        """Resolve `paths` off the loop, then admit `state` again."""
        state.wanted |= paths
        if state.resolving is None:
            state.resolving = asyncio.get_running_loop().create_task(
                self._resolve_for(state), name=f"claims {state.name}"
            )

    async def _resolve_for(self, state: _Resource) -> None:
        """Resolve what `state` waits for off the loop, then admit it."""
        try:
            while state.wanted:
                paths, state.wanted = state.wanted, set()
                resolved = await self._paths.resolve(paths)
                if state.retired or state.publish is None:
                    continue
                self._take(state, resolved)
                changed = self._admit_or_defer(state)
                self._drain()
                if changed and state.log is not None:  # (as the reporter logs a list it gave)
                    healthy = sum(1 for device in state.reported.values() if device.healthy)
                    unhealthy = len(state.reported) - healthy
                    state.log.info("devices_changed", healthy=healthy, unhealthy=unhealthy)
        finally:
            state.resolving = None

    def _take(self, state: _Resource, resolved: Mapping[str, Resolution]) -> None:
        """Resolutions for the admissions to come; a device a path of which did not answer
        in time is left out (logged and counted once), until a later list tries again."""
        self._fresh.update(resolved)
        unresolved: dict[str, str] = {}
        for device_id, paths in state.needs.items():
            hung = next((p for p in paths if resolved.get(p, "") == HUNG), None)
            if hung is not None:
                unresolved[device_id] = hung
        for device_id in unresolved.keys() - state.unresolved.keys():
            if self._metrics is not None:
                self._metrics.driver_skipped.labels(state.name, UNRESOLVED_REASON).inc()
            if state.log is not None:
                state.log.warning(
                    "device_path_unresolved",
                    device=device_id,
                    path=unresolved[device_id],
                    timeout=self._paths.timeout,
                    action="not advertised; tried again with the next list",
                )
        state.unresolved = unresolved

    def _wanted(self, state: _Resource) -> set[str]:
        """The paths the next admission of `state` must have resolved: those of devices whose
        claims are not known (a walk of the list only when it changed), its lingering claims
        (gone?), and the lingering claims its held devices wait for."""
        devices = state.reported
        needs: dict[str, tuple[str, ...]] = {}
        if not (
            state.settled and (devices is state.admitted_from or devices == state.admitted_from)
        ):
            cache, before = state.claims, state.admitted_from
            for device_id, device in devices.items():
                old = before.get(device_id)
                if device_id in cache and old is not None and old.same_places(device):
                    continue
                needs[device_id] = host_paths(device)
        state.needs = needs
        state.unresolved = {d: p for d, p in state.unresolved.items() if d in needs}
        wanted = {path for paths in needs.values() for path in paths}
        wanted.update(claim[1] for _, claim in state.lingering.values())
        for why in state.held.values():
            owner = None if why.key is None else self._exclusive.get(why.key)
            if owner is not None and why.key is not None:
                lingering = self._resources[owner.resource].lingering.get(why.key)
                if lingering is not None:
                    wanted.add(lingering[1][1])
        return wanted - self._fresh.keys()

    def _state(self, resource: str) -> _Resource:
        state = self._resources.get(resource)
        if state is None:
            state = self._resources[resource] = _Resource(resource)
        return state

    def _apply(self, state: _Resource) -> bool:
        admitted = self._admit(state)
        if state.publish is None or admitted is state.sent:
            return False
        state.sent = admitted
        return state.publish(admitted)

    def _drain(self) -> None:
        """Publish again the resources that wait for a released claim (one at a time, never
        nested: a publish that releases more only queues)."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._pending:
                name = next(iter(self._pending))
                del self._pending[name]
                state = self._resources[name]
                if state.publish is not None and not state.retired:
                    self._admit_or_defer(state)
        finally:
            self._draining = False
            self._fresh.clear()

    def _claims_of(self, state: _Resource, devices: Mapping[str, Device]) -> dict[str, Claims]:
        """Claims of every device, resolved again only for devices that changed."""
        cache, before = state.claims, state.admitted_from
        fresh: dict[str, Claims] = {}
        for device_id, device in devices.items():
            known = cache.get(device_id)
            old = before.get(device_id)
            if known is None or old is None or not (old is device or old.same_places(device)):
                known = device_claims(device, self._lookup)
            fresh[device_id] = known
        state.claims = fresh
        return fresh

    def _lookup(self, path: str) -> Reached | None:
        """A path's claim, as resolved for this admission (`_wanted` named every one; a
        path it did not name, which should not happen, is resolved here)."""
        if path not in self._fresh:
            self._fresh.update(self._paths.inline([path]))
        resolved = self._fresh[path]
        return None if isinstance(resolved, str) else resolved

    def _admit(self, state: _Resource) -> Mapping[str, Device]:
        """What to advertise of `state.reported`. An unchanged list costs what is held and
        what lingers, not a walk of the list: advertised devices own their claims, so only a
        held device (its owner may have gone) or a lingering claim (its node may have gone)
        can change the outcome."""
        self._admitting = state.name
        devices = state.reported
        if state.unresolved:
            devices = {d: device for d, device in devices.items() if d not in state.unresolved}
        unchanged = state.settled and (
            devices is state.admitted_from or devices == state.admitted_from
        )
        if unchanged and not state.held and not state.lingering and not state.waits:
            return state.admitted
        admitted = self._admit_changes(state, devices, unchanged)
        if admitted is None:
            admitted = self._admit_all(state, devices)
        state.admitted_from, state.admitted, state.settled = devices, admitted, True
        return admitted

    def _admit_all(self, state: _Resource, devices: Mapping[str, Device]) -> Mapping[str, Device]:
        name = state.name
        released = self._prune_gone(state)
        claims = self._claims_of(state, devices)
        # The ID each device is advertised under: the ID of this resource that owns its
        # claims already (the kubelet may have given it to a pod), else its own.
        ids: dict[str, str] = {}
        for device_id, claim in claims.items():
            inherited = [
                owner.device
                for key, _, _ in claim.exclusive
                if (owner := self._exclusive.get(key)) is not None
                and owner.resource == name
                and owner.device != device_id
            ]
            ids[device_id] = min(inherited) if inherited else device_id
        # Devices that own their claims already go first (the kubelet may have given them
        # to a pod), then the others in ID order.
        order = sorted(claims, key=lambda d: (not self._incumbent(state, ids[d], claims[d]), d))
        wanted: dict[str, Claims] = {}
        for device_id in order:
            wanted.setdefault(ids[device_id], claims[device_id])
        released |= self._release_stale(state, wanted)
        admitted: dict[str, Device] = {}
        holding: dict[str, _Holding] = {}
        taken: set[str] = set()
        """Advertised IDs whose device owns its claims (advertised, or waiting on replicas)."""
        for device_id in order:
            advertised_id = ids[device_id]
            claim = claims[device_id]
            if advertised_id in taken:
                holding[device_id] = _Holding("id_taken", Owner(name, advertised_id), "")
                continue
            why = self._conflict(name, advertised_id, claim)
            if why is not None:
                holding[device_id] = why
                released |= self._unadvertise(state, advertised_id)
                continue
            self._claim(state, advertised_id, claim, inherited=advertised_id != device_id)
            taken.add(advertised_id)
            wait = state.waits.get(advertised_id)
            if wait is not None:
                # it keeps its claims: pods may hold it under its old replica IDs
                vanished = ",".join(sorted(wait.vanished))
                holding[device_id] = _Holding("replicas_changed", Owner(name, vanished), "")
                continue
            device = devices[device_id]
            admitted[advertised_id] = (
                device if advertised_id == device_id else device.with_id(advertised_id)
            )
        for advertised_id in [a for a in state.owned if a not in taken]:
            released |= self._unadvertise(state, advertised_id)
        for advertised_id in [a for a in state.waits if a not in taken]:
            del state.waits[advertised_id]  # gone from the list: nothing left to wait for
            self._kept_changed()
        self._note_held(state, holding, ids)
        if released:
            self._wake_waiting(name)
        state.plain = not state.waits and all(ids[d] == d for d in ids if d not in holding)
        if not holding and state.plain:
            return devices
        return admitted

    def _admit_changes(
        self, state: _Resource, devices: Mapping[str, Device], unchanged: bool
    ) -> Mapping[str, Device] | None:
        """The common case in O(changed) claim work: every device the last admission
        advertised kept its own ID, and nothing waits on replicas. Devices that changed, and
        those held last time, are admitted or held one by one (with `unchanged`, the list is
        the last one: only those held); a change that may rename a device (a node let go of,
        a claim of a device of this resource that is no longer advertised) goes to the full
        admission, which starts from what this did. Returns what to advertise, or None."""
        if not state.plain or state.waits:
            return None
        cache, before = state.claims, state.admitted_from
        dirty = [d for d in state.held if d in devices]
        released = self._prune_gone(state)
        if not unchanged:
            added = 0
            for device_id, device in devices.items():
                old = before.get(device_id)
                if old is None or device_id not in cache:
                    added += old is None
                    dirty.append(device_id)
                elif old is not device and old != device:
                    dirty.append(device_id)
            if len(before) + added != len(devices):
                for device_id in [d for d in before if d not in devices]:
                    cache.pop(device_id, None)
                    released |= self._unadvertise(state, device_id)
        holding: dict[str, _Holding] = {}
        result: Mapping[str, Device] | None = devices
        for device_id in sorted(set(dirty)):
            device = devices[device_id]
            known = cache.get(device_id)
            old = before.get(device_id)
            if known is not None and old is not None and old.same_places(device):
                claims = known
                if device_id not in state.held:
                    continue  # health or env changed: it owns its claims
            else:
                claims = cache[device_id] = device_claims(device, self._lookup)
            owned = state.owned.get(device_id)
            if owned is not None and not owned.exclusive_keys() <= claims.exclusive_keys():
                result = None  # it lets go of a node, which may keep its ID
                break
            why = self._conflict(state.name, device_id, claims)
            if why is not None:
                if why.owner.resource == state.name and why.owner.device not in state.owned:
                    result = None  # a node of a device of ours that went: a rename
                    break
                holding[device_id] = why
                released |= self._unadvertise(state, device_id)
                continue
            released |= self._drop_keys(state, device_id, claims)
            self._claim(state, device_id, claims)
        if released:
            self._wake_waiting(state.name)
        if result is None:
            return None
        same_held = holding.keys() == state.held.keys()
        self._note_held(state, holding, {d: d for d in devices if d in state.held})
        if unchanged and same_held:
            return state.admitted
        if holding:
            return {d: device for d, device in devices.items() if d not in holding}
        return devices

    def _incumbent(self, state: _Resource, advertised_id: str, claims: Claims) -> bool:
        """Whether the device advertised as `advertised_id` owns its claims already."""
        me = Owner(state.name, advertised_id)
        return bool(claims.exclusive) and all(
            self._exclusive.get(key) == me for key, _, _ in claims.exclusive
        )

    def _conflict(self, resource: str, device_id: str, claims: Claims) -> _Holding | None:
        """Why the device cannot own its claims: another owns one of them (or a directory
        one is below, or one below a directory it mounts), or shares it while the device
        wants it alone. None: it can."""
        me = Owner(resource, device_id)
        for claim in claims.exclusive:
            why = self._clash(me, claim[0], claim[1], False)
            if why is not None:
                return why
        for claim in claims.shared:
            why = self._clash(me, claim[0], claim[1], True)
            if why is not None:
                return why
        if self._dirs or any(claim[0][0] == "dir" for claim in claims.all()):
            return self._contained(me, claims)
        return None

    def _clash(self, me: Owner, key: ClaimKey, path: str, shared: bool) -> _Holding | None:
        """Whether `key`, claimed by `me` (shared or not), clashes with another's claim."""
        owner = self._exclusive.get(key)
        if owner is not None and owner != me and not self._released_if_gone(key):
            return _Holding("owned", owner, path, key)
        if not shared:
            sharers = self._shared.get(key)
            if sharers and (len(sharers) > 1 or me not in sharers):
                return _Holding("shared", min(sharers - {me}, key=owner_order), path)
        return None

    def _contained(self, me: Owner, claims: Claims) -> _Holding | None:
        """Containment: a claim below a directory another device mounts, or a directory
        mount with another's claim below it, clashes as if it were the same claim (two
        shared claims excepted)."""
        at, below_counts = self._containment()
        mine = claims.all()
        for key, path, real in mine:
            shared = claims.shared != () and key in claims.shared_keys()
            for directory in ancestors(real):
                outer = self._dirs.get(directory)
                if outer is not None:
                    why = self._clash(me, outer, path, shared)
                    if why is not None:
                        return why
            if key[0] != "dir" or not below_counts.get(real):
                continue
            own = sum(
                1
                for other_key, _, other_real in mine
                if other_key in at and below(other_real, real) and self._holds(me, other_key)
            )
            if below_counts[real] <= own:
                continue
            for inner in [k for k, r in at.items() if below(r, real)]:
                if inner in at:
                    why = self._clash(me, inner, path, shared)
                    if why is not None:
                        return why
        return None

    def _holds(self, me: Owner, key: ClaimKey) -> bool:
        return self._exclusive.get(key) == me or me in self._shared.get(key, ())

    def _containment(self) -> tuple[dict[ClaimKey, str], dict[str, int]]:
        """The real path of every claim and the counts below each directory, built from
        the claims on first use."""
        if self._at is None:
            self._at = {}
            for state in self._resources.values():
                for claims in state.owned.values():
                    for key, _, real in claims.all():
                        self._count(key, real)
                for _, (key, _, real) in state.lingering.values():
                    self._count(key, real)
        return self._at, self._below

    def _count(self, key: ClaimKey, real: str) -> None:
        """A claim is made: its directory is one a claim may be below, and it is below its
        ancestors."""
        if key[0] == "dir":
            self._dirs[real] = key
        at = self._at
        if at is None or key in at:
            return
        at[key] = real
        counts = self._below
        for directory in ancestors(real):
            counts[directory] = counts.get(directory, 0) + 1

    def _uncount(self, key: ClaimKey) -> None:
        """A claim is gone (from both maps)."""
        if key in self._exclusive or key in self._shared:
            return
        if key[0] == "dir" and isinstance(key[1], str):
            self._dirs.pop(key[1], None)
        real = None if self._at is None else self._at.pop(key, None)
        if real is None:
            return
        counts = self._below
        for directory in ancestors(real):
            left = counts[directory] - 1
            if left:
                counts[directory] = left
            else:
                del counts[directory]

    def _released_if_gone(self, key: ClaimKey) -> bool:
        """Release a lingering claim whose node is gone; True if it was released."""
        owner = self._exclusive[key]
        state = self._resources[owner.resource]
        lingering = state.lingering.get(key)
        if lingering is None:
            return False
        path = lingering[1][1]
        if path not in self._fresh:
            if self._paths.offload is not None:
                self._late.setdefault(path, set()).add(self._admitting)
                return False  # not known yet: it holds until it is
            self._fresh.update(self._paths.inline([path]))
        reached = self._fresh[path]
        if isinstance(reached, str) or (reached is not None and reached[0] == key):
            return False  # (no answer in time: it holds)
        self._release_lingering(state, key)
        return True

    def _release_lingering(self, state: _Resource, key: ClaimKey) -> None:
        del state.lingering[key]
        del self._exclusive[key]
        self._uncount(key)
        if self._kept.pop(key, None) is not None:
            self._kept_changed()

    def _prune_gone(self, state: _Resource) -> bool:
        """Release this resource's lingering claims whose nodes are gone."""
        return any([self._released_if_gone(key) for key in list(state.lingering)])

    def _claim(
        self, state: _Resource, device_id: str, claims: Claims, inherited: bool = False
    ) -> None:
        me = Owner(state.name, device_id)
        lingering = state.lingering
        exclusive = self._exclusive
        kept = self._kept
        changed = False
        for claim in claims.exclusive:
            key = claim[0]
            if key not in exclusive:
                self._count(key, claim[2])
            exclusive[key] = me
            if lingering:
                lingering.pop(key, None)
            if inherited:
                if kept.get(key) != (me, claim):
                    kept[key] = (me, claim)
                    changed = True
            elif kept and kept.pop(key, None) is not None:
                changed = True
        if changed:
            self._kept_changed()
        for key, _, real in claims.shared:
            sharers = self._shared.get(key)
            if sharers is None:
                self._count(key, real)
                sharers = self._shared[key] = set()
            sharers.add(me)
        state.owned[device_id] = claims
        self._follow(state.name, claims)

    def _release_stale(self, state: _Resource, wanted: Mapping[str, Claims]) -> bool:
        """Claims of advertised IDs that are gone, or that a device no longer has, linger."""
        released = False
        for advertised_id in list(state.owned):
            new = wanted.get(advertised_id)
            if new is None:
                released |= self._unadvertise(state, advertised_id)
            else:
                released |= self._drop_keys(state, advertised_id, new)
        return released

    def _drop_keys(self, state: _Resource, advertised_id: str, new: Claims) -> bool:
        """An advertised device's claims it no longer makes: exclusive ones linger, shared
        ones go (True if one did)."""
        old = state.owned.get(advertised_id)
        if old is None or old is new:
            return False
        me = Owner(state.name, advertised_id)
        kept = new.exclusive_keys()
        for claim in old.exclusive:
            key = claim[0]
            if key not in kept and self._exclusive.get(key) == me:
                state.lingering.setdefault(key, (self._clock(), claim))
        kept = new.shared_keys()
        return any([self._unshare(claim[0], me) for claim in old.shared if claim[0] not in kept])

    def _unadvertise(self, state: _Resource, advertised_id: str) -> bool:
        """The device is no longer advertised: its exclusive claims linger, its shared ones
        go. True if something was released."""
        old = state.owned.pop(advertised_id, None)
        if old is None:
            return False
        me = Owner(state.name, advertised_id)
        now = self._clock()
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

    def _wake_waiting(self, releaser: str) -> None:
        for name, other in self._resources.items():
            if name != releaser and other.held and other.publish is not None:
                self._pending[name] = None

    def _note_held(
        self, state: _Resource, holding: dict[str, _Holding], ids: Mapping[str, str]
    ) -> None:
        log = state.log
        for device_id, why in holding.items():
            before = state.held.get(device_id)
            if before == why:
                continue
            if self._metrics is not None and before is None:
                self._metrics.driver_skipped.labels(state.name, HELD_REASON).inc()
            if log is not None:
                owner = why.owner
                owner_state = self._resources.get(owner.resource)
                log.warning(
                    "device_held",
                    device=device_id,
                    reason=why.reason,
                    path=why.path,
                    owner_resource=owner.resource,
                    owner_device=owner.device,
                    owner_advertised=bool(owner_state and owner.device in owner_state.owned),
                    owner_retired=bool(owner_state and owner_state.retired),
                    action="not advertised until the owner is gone",
                )
        for device_id in state.held.keys() - holding.keys():
            if log is not None and device_id in ids:
                log.info("device_claim_won", device=device_id, advertised_as=ids[device_id])
        state.held = holding


class StateSink(Protocol):
    """Where the index keeps its kept IDs (`state_file.StateFile`)."""

    def changed(self, document: Callable[[], Mapping[str, Any]]) -> None: ...


@dataclass(frozen=True)
class Saved:
    """What `ownership.json` held: kept claims with their owners, and devices waiting on a
    change of `replicas` (resource, device, the old advertised IDs a pod may hold)."""

    claims: list[tuple[Owner, Claim]]
    waits: list[tuple[str, str, frozenset[str]]]


def read_saved(document: Mapping[str, Any]) -> Saved:
    """`ownership.json`, checked: each claim a `kind` of `c` or `b` with a device number, or
    `path` or `dir` with a path, and text resource, device, path and real path; each wait a
    text resource and device and a list of text IDs."""
    saved = Saved([], [])
    for entry in document.get("waits", ()):
        names = [entry["resource"], entry["device"], *entry["vanished"]]
        if not all(isinstance(text, str) and text for text in names):
            raise TypeError(f"a wait's resource, device and IDs must be text: {entry!r}")
        saved.waits.append((names[0], names[1], frozenset(names[2:])))
    for entry in document["claims"]:
        kind, value = entry["kind"], entry["key"]
        if kind in ("c", "b") and isinstance(value, int) and not isinstance(value, bool):
            key: ClaimKey = (kind, value)
        elif kind in ("path", "dir") and isinstance(value, str):
            key = (kind, value)
        else:
            raise TypeError(f"a claim is not c/b with a number or path/dir with a path: {entry!r}")
        texts = [entry[name] for name in ("resource", "device", "path", "real")]
        if not all(isinstance(text, str) and text for text in texts):
            raise TypeError(f"a claim's resource, device, path and real must be text: {entry!r}")
        saved.claims.append((Owner(texts[0], texts[1]), (key, texts[2], texts[3])))
    return saved


class _Table(Protocol):
    """What OwnedTable needs of a DeviceTable (lists go through the index)."""

    def set_degraded(self, reason: str | None) -> bool: ...


@dataclass
class OwnedTable:
    """The sink a resource's reporter writes to: lists go through the host's ownership
    index on their way to the resource's device table."""

    index: OwnershipIndex
    resource: str
    table: _Table

    def publish(self, devices: Iterable[Device] | Mapping[str, Device]) -> bool:
        if not isinstance(devices, Mapping):
            listed: dict[str, Device] = {}
            for device in devices:
                listed.setdefault(device.id, device)
            devices = listed
        return self.index.publish(self.resource, devices)

    def set_degraded(self, reason: str | None) -> bool:
        return self.table.set_degraded(reason)
