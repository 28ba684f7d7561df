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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .devices import REPLICA_SEPARATOR, Device, replica_ids
from .files import Offload
from .logs import EventLogger
from .metrics import Metrics
from .ownership_claims import ClaimKey, Claims, Owner, Resolver, host_paths
from .ownership_resolve import RESOLVE_TIMEOUT, Resolving
from .ownership_table import Holding, ReplicaWait, ResourceState, Saved

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


class OwnershipIndex(Resolving):
    """The host-wide index of claims (one per host, passed to every resource). Built in
    layers, one module each: the claim table (`ownership_table.ClaimTable`), admission
    (`ownership_admission.Admission`), resolving off the loop (`ownership_resolve.Resolving`);
    this adds runtimes, publishing, PodResources answers and the watcher.

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
        super().__init__(clock, metrics, resolve, offload, timeout)
        self._pending: dict[str, None] = {}
        self._draining = False
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
                    state.waits[device_id] = ReplicaWait(frozenset(gone), now)
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
                    self._kept_changed()
                    released = True
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

    def _apply(self, state: ResourceState) -> bool:
        self._admitting = state.name
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

    def _wake_waiting(self, releaser: str) -> None:
        for name, other in self._resources.items():
            if name != releaser and other.held and other.publish is not None:
                self._pending[name] = None

    def _note_held(
        self, state: ResourceState, holding: dict[str, Holding], ids: Mapping[str, str]
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
