"""Another kdp-host instance of one resource stopping, and why this instance then registers
again.

Two instances serve one resource name from one socket directory for a while (a `maxSurge`
rollout: same config, same `stateDir` and socket directory). The kubelet keeps one client per
name, the one that registered last, and when any stream of the name ends it disconnects the
name's current client (docs/kubelet-contract.md §9); its plugin watcher deregisters by name
(docs/kubelet-contract.md §14). When the other instance registered last (after a kubelet
restart, a reload, a socket made again) and then stops, the kubelet has no endpoint for the
name, and this instance's older stream stays open: the kubelet neither ends it nor says
anything. What this instance does see is the other's socket going (`plugin_socket.stop`
removes it once its streams ended): a socket of the same resource and another instance
(`endpoint.socket_name`, readable form) gone and not back within `SETTLE` means serving a
fresh socket and registering again, logged (`another_instance_ended`). Not when this instance
registered after the socket went or the kubelet ended its stream after it (the serving loop
registers again then anyway); nor when the kubelet ended its stream within `LOSS_WINDOW` before
it and this instance registered after that, while the other's socket was not made anew since:
the kubelet then dropped *this* client for the other's stream (the usual end of a rollout,
where the other registered first) and the registration after that is its current client. In
doubt it registers again: a needless registration costs the kubelet's client for
milliseconds, a missing one the resource. At most one registration per socket that goes, and
none while the other comes back within `SETTLE` (it registers again itself): the two
instances never take turns.

The kubelet ending this instance's stream within `SWITCH_WINDOW` after another instance's
socket was made or went is the kubelet switching between the two (the other registered; or its
plugin watcher, which deregisters by name and registers sockets anew on its next reconciler
pass, about a second later, did so for a socket that went or came), not the kubelet refusing
this one: such a loss does not count toward "the kubelet keeps ending the stream"
(`stream_losses`, `switching`).

An instance of the other registration mode (a rollout that switches `kubelet.registration`)
serves from the other directory: its socket made or gone there (`seen`, followed while that
directory exists at start) counts as one in the socket directory does (hostile17 F1, F4).

The host follows each socket directory once for every resource (`PeerSocketIndex`): an entry's
event goes to the resource its name belongs to, by its prefix, not to every resource (100
resources starting made 10,000 calls, one per resource for each socket made).

A peer killed without removing its socket (SIGKILL) is seen through `stateDir`: the host
that ended (`ownership_sync`, `bookings_taken_over`) is told to every resource
(`PeerSocketIndex.host_ended`), and where that instance's socket was made after this
instance last registered (it registered after us: the kubelet's client was its), this
instance registers again at once, by the same rules otherwise (hostile25 F4: it waited for
PodResources, 6.7-10.7 s, or for ever without it). Not seen: a socket of the compact form (a
socket directory too long for readable names), and other plugins of the same name (they
name their sockets their own way).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .endpoint import instance_id_problem, socket_instance, socket_name
from .plugin_socket import KUBELET_HANG_UP_WAIT, served

if TYPE_CHECKING:
    from .watch import Subscription, Watcher

SETTLE: Final = 2.0
"""Seconds another instance's socket must stay gone before this instance registers again (one
that serves again at once, registering again itself, is left alone)."""
LOSS_WINDOW: Final = KUBELET_HANG_UP_WAIT + 1.0
"""A stream of ours the kubelet ended this long before (or any time after) the other's socket
went was ended for the other's stream: the registration after it is the kubelet's client."""
PEER_ENDED: Final = "another_instance_ended"
"""Registering again: another instance of the resource stopped serving (the module's rules)."""
SWITCH_WINDOW: Final = 10.0
"""Seconds after another instance's socket was made or went in which the kubelet ending our
stream is its switching between the instances (a few of its plugin watcher's one-second
reconciler passes), not a refusal of ours."""
_SUFFIX: Final = ".sock"


@dataclass
class PeerSockets:
    """The sockets of one resource's other instances in its socket directory, and when their
    going calls for registering again (the module's rules)."""

    resource: str
    endpoint: str
    """This instance's socket name."""
    serve_dir: str
    wake: asyncio.Event
    """The serving loop's: set when a socket of another instance went."""
    other_dir: str | None = None
    """Where an instance of the other registration mode serves (a rollout that switches
    `kubelet.registration`): its sockets there count as those in `serve_dir` (`seen`)."""
    _prefix: str | None = field(init=False)
    _gone: dict[str, float] = field(default_factory=dict)
    """Another instance's socket path -> when it was seen gone (loop time)."""
    _made: dict[str, float] = field(default_factory=dict)
    """Another instance's socket path -> when it was last seen made (loop time; not there:
    made before this instance followed the directory)."""
    _ended: dict[str, float] = field(default_factory=dict)
    """Another instance's socket path -> when its host was seen ended (`host_ended`)."""
    _lost_at: float | None = None
    _registered_at: float | None = None
    _switched_at: float | None = None
    """When another instance's socket was last made or went (loop time)."""

    def __post_init__(self) -> None:
        self._prefix = socket_prefix(self.endpoint)

    @property
    def followed(self) -> bool:
        """Whether other instances' sockets can be told by name (readable socket names)."""
        return self._prefix is not None

    @property
    def prefix(self) -> str | None:
        """What the readable socket names of every instance of the resource start with."""
        return self._prefix

    def _is_peer(self, name: str, directory: str | None = None) -> bool:
        prefix = self._prefix
        if prefix is None or name == self.endpoint or not name.startswith(prefix):
            return False
        if not name.endswith(_SUFFIX):
            return False
        instance = name[len(prefix) : -len(_SUFFIX)]
        if instance_id_problem(instance) is not None:
            return False
        return socket_name(self.resource, instance, directory or self.serve_dir) == name

    def changed(self, name: str | None) -> None:
        """The watcher's callback for the socket directory's entries."""
        self._noted(self.serve_dir, name)

    def seen(self, name: str | None) -> None:
        """The watcher's callback for `other_dir`'s entries: another instance's socket there
        (the other registration mode) counts as one in the socket directory does."""
        if self.other_dir is not None:
            self._noted(self.other_dir, name)

    def _noted(self, directory: str, name: str | None) -> None:
        if name is None or not self._is_peer(name, directory):
            return
        now = asyncio.get_running_loop().time()
        self._switched_at = now
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            self._gone.pop(path, None)
            self._made[path] = now  # (entries' events only: made, or renamed in)
        elif path not in self._gone:
            self._gone[path] = now
            self.wake.set()

    def host_ended(self, instance: str) -> None:
        """The host `instance` ended (seen through `stateDir`), its socket maybe left behind."""
        if instance_id_problem(instance) is not None:
            return  # (no instance of ours: no socket of it)
        now = asyncio.get_running_loop().time()
        for directory in {self.serve_dir, self.other_dir or self.serve_dir}:
            name = socket_name(self.resource, instance, directory)
            if self._is_peer(name, directory):
                self._ended[os.path.join(directory, name)] = now
                self._switched_at = now
                self.wake.set()

    def lost(self) -> None:
        """The kubelet ended our stream."""
        self._lost_at = asyncio.get_running_loop().time()

    def switching(self) -> bool:
        """Whether another instance's socket was made or went within `SWITCH_WINDOW` (a
        stream the kubelet ends now is its switching between the instances)."""
        at = self._switched_at
        return at is not None and asyncio.get_running_loop().time() - at <= SWITCH_WINDOW

    def registered(self) -> None:
        """The kubelet registered this instance's socket."""
        self._registered_at = asyncio.get_running_loop().time()

    def newer_live(self) -> str | None:
        """The socket of another instance made after this instance last registered that
        accepts a connection, or None: that instance registered last, so the kubelet's
        client for the name is its, and whatever it lists (none healthy: a rollout's new
        config holding a device back) is the name's (`kubelet_absent`; hostile26 N1). A
        socket left by an instance killed (SIGKILL) accepts none."""
        for path in self._made:
            if self._made_since_registered(path) and served(path, 0.0):
                return os.path.basename(path)
        return None

    def _made_since_registered(self, path: str) -> bool:
        """Whether another instance's socket at `path` was made after this instance last
        registered (so that instance registered after it: the kubelet's client is its)."""
        made, registered = self._made.get(path), self._registered_at
        return made is not None and registered is not None and made >= registered

    def due(self) -> tuple[str | None, float | None]:
        """(the socket of another instance whose going calls for registering again, now;
        else None and the seconds until the next look, None: no look pending)."""
        now = asyncio.get_running_loop().time()
        while self._ended:  # (the host ended: no socket to come back, nothing to settle)
            path, at = self._ended.popitem()
            if self._made_since_registered(path) and not self._answered(path, at):
                self._gone.clear()
                return os.path.basename(path), None
        wait: float | None = None
        for path, at in list(self._gone.items()):
            if os.path.lexists(path) or self._answered(path, at):
                del self._gone[path]
            elif now >= at + SETTLE:
                self._gone.clear()
                return os.path.basename(path), None
            else:
                left = at + SETTLE - now
                wait = left if wait is None else min(wait, left)
        return None, wait

    def _answered(self, path: str, at: float) -> bool:
        """Whether this instance is (or is about to be) the kubelet's client again without a
        registration for the socket at `path` gone at `at` (the module's rules)."""
        registered, lost = self._registered_at, self._lost_at
        if registered is not None and registered >= at:
            return True
        if lost is None:
            return False
        if lost >= at:
            return True
        made = self._made.get(path)
        return (
            lost >= at - LOSS_WINDOW
            and registered is not None
            and registered >= lost
            and (made is None or made <= registered)
        )


NameCallback = Callable[[str], None]


@dataclass
class PeerSocketIndex:
    """The host's one subscription per socket directory for every resource's `PeerSockets`:
    an entry's event is handed to the callbacks of its name's prefix (`socket_instance`: a
    readable name's resource part), a lookup, not one call per resource."""

    _dirs: dict[str, tuple[Subscription, dict[str, list[NameCallback]]]] = field(
        default_factory=dict
    )
    _ended: list[NameCallback] = field(default_factory=list)
    """Told each host seen ended through `stateDir` (`PeerSockets.host_ended`)."""

    def follow_ended(self, callback: NameCallback) -> Callable[[], None]:
        """Call `callback` with the instance ID of each host seen ended; returns the way to stop."""
        self._ended.append(callback)
        return lambda: self._ended.remove(callback) if callback in self._ended else None

    def host_ended(self, instance: str) -> None:
        for callback in list(self._ended):
            callback(instance)

    def follow(
        self, watcher: Watcher, directory: str, prefix: str, callback: NameCallback
    ) -> Callable[[], None]:
        """Call `callback` with each entry made or removed in `directory` whose name starts
        with `prefix` as a readable socket name's resource part; returns the way to stop."""
        known = self._dirs.get(directory)
        if known is None:
            by_prefix: dict[str, list[NameCallback]] = {}
            subscription = watcher.subscribe(
                directory, lambda name: self._event(by_prefix, name), entries=True
            )
            known = self._dirs[directory] = (subscription, by_prefix)
        known[1].setdefault(prefix, []).append(callback)

        def stop() -> None:
            subscription, by_prefix = known
            callbacks = by_prefix.get(prefix, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                by_prefix.pop(prefix, None)
            if not by_prefix and self._dirs.get(directory) is known:
                del self._dirs[directory]
                subscription.cancel()

        return stop

    @staticmethod
    def _event(by_prefix: dict[str, list[NameCallback]], name: str | None) -> None:
        prefix = None if name is None else socket_prefix(name)
        if name is None or prefix is None:
            return  # (no instance's socket: `PeerSockets` looks at none other)
        for callback in list(by_prefix.get(prefix, ())):
            callback(name)


def socket_prefix(name: str) -> str | None:
    """What every instance's readable socket name of one resource starts with
    (`kdp-<slug>-` of `kdp-<slug>-<instance>.sock`); None for a name that carries no
    instance (a compact name)."""
    instance = socket_instance(name)
    return None if instance is None else name[: -len(instance) - len(_SUFFIX)]
