"""`registration: pluginsRegistry`: the socket is the registration
(docs/kubelet-contract.md §14). The kubelet's plugin manager calls GetInfo on it and tells
its verdict (NotifyRegistrationStatus); `PluginManagerFollower` follows what the kubelet
does with the socket `serving.ServingLoop` created, in the order it came (verdicts, our
streams' ends), and says why the socket must be created again: refused (after a back-off),
no verdict in time, or dropped by a kubelet that keeps running. The registration service
itself (`protocol.plugin_registry`) is imported only in this mode.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from .backoff import Backoff
from .kubelet_absent import ABSENT, ABSENT_ANSWERS, AbsentCheck
from .logs import EventLogger
from .metrics import Metrics
from .peer_sockets import PEER_ENDED, PeerSockets
from .protocol.registration import (
    FileIdentity,
    file_identity,
    kubelet_listening,
    kubelet_socket_identity,
)
from .services import ResourceStatus
from .stream_losses import StreamLosses

if TYPE_CHECKING:  # imported where used: only this mode needs it
    from .protocol.plugin_registry import KubeletVerdict, PluginRegistrationService

KUBELET_ALIVE_SETTLE: Final = 0.5
"""Seconds after the kubelet ended a stream before asking whether it still runs (a kubelet
going down ends its streams before its listener closes)."""
STREAM_LOST: Final = "stream_lost"
"""In the queue of what the kubelet did, beside its verdicts: it ended our last stream."""


@dataclass
class PluginManagerFollower:
    """What the kubelet's plugin manager did with one resource's socket, and the following
    of it (the module's rules); made by `serving.ServingLoop` in this mode."""

    name: str
    socket_path: str
    serve_dir: str
    kubelet_dir: str
    status: ResourceStatus
    losses: StreamLosses
    peers: PeerSockets
    """The other instances of the resource: the plugin watcher deregisters by name, so one
    that stops leaves the name with no endpoint whoever registered last."""
    absent: AbsentCheck
    """Whether the kubelet serves no device of the resource (PodResources), though
    registered."""
    metrics: Metrics
    log: EventLogger
    wake: asyncio.Event
    """The serving loop's: set on every verdict (the loop clears it, then checks)."""
    sleep_or_wake: Callable[[float | None], Awaitable[None]]
    _events: collections.deque[KubeletVerdict | Literal["stream_lost"]] = field(
        default_factory=collections.deque
    )
    """The kubelet's verdicts and stream ends, in the order they came."""
    _info_asked: bool = False
    """The kubelet called GetInfo on the current socket."""
    _last_refusal: str | None = None
    """The kubelet's last refusal, logged once while it repeats."""
    _registered_with: FileIdentity | None = None
    """The kubelet.sock of the last registration (None: none yet)."""

    def handler(self) -> PluginRegistrationService:
        """The registration service a new socket serves beside the DevicePlugin service (a
        fresh socket: nothing heard yet)."""
        from .protocol.plugin_registry import PluginRegistrationService

        self._events.clear()
        self._info_asked = False
        return PluginRegistrationService(
            self.name, self.socket_path, on_info=self._on_info, on_verdict=self._on_verdict
        )

    def stream_lost(self) -> None:
        self._events.append(STREAM_LOST)

    def _on_info(self) -> None:
        self._info_asked = True

    def _on_verdict(self, verdict: KubeletVerdict) -> None:
        self._events.append(verdict)
        self.wake.set()

    async def follow(
        self,
        identity: FileIdentity,
        patience: Backoff,
        refusals: Backoff,
    ) -> str:
        """pluginsRegistry: follow the kubelet's verdicts on the socket just created; returns
        why the socket must be created again (docs/kubelet-contract.md §14).

        Registered: nothing to do until the kubelet ends our stream. It does that when it
        restarts (its new plugin manager then registers the socket again) or when it gives up
        on us (nothing follows): so after a stream end, as after creating the socket, a verdict
        must come within `patience`. But a stream the kubelet ends while it keeps running (the
        same kubelet.sock as at the registration, listening `KUBELET_ALIVE_SETTLE` later) is
        the kubelet giving up on the socket (its watcher deregisters a plugin by name: the old
        instance of a rolling update removing its socket ends ours too): nothing will register
        it again, so it is created again then (or after the lost streams' delay, if longer). A
        refusal is retried after `refusals`, unless the kubelet (a newer one retries by itself)
        registers the socket meanwhile.
        """
        loop = asyncio.get_running_loop()
        metrics, losses, status, log = self.metrics, self.losses, self.status, self.log
        deadline: float | None = loop.time() + patience.next_delay()
        refused, lost_here, kubelet_dir = None, False, self.kubelet_dir
        alive_check: float | None = None
        while True:
            self.wake.clear()
            if file_identity(self.socket_path) != identity:
                return "socket_removed"
            while self._events:
                event = self._events.popleft()
                if isinstance(event, str):  # STREAM_LOST
                    delay = losses.lost(self.peers.switching())
                    lost_here = True
                    if status.registered:
                        status.mark(registered=False, error="not registered: stream closed")
                        log.info("awaiting_kubelet", reason="stream_closed_by_kubelet")
                        deadline = loop.time() + patience.next_delay()
                        if self._registered_with is not None:  # did it keep running? (below)
                            alive_check = loop.time() + max(delay, KUBELET_ALIVE_SETTLE)
                elif event.registered:
                    metrics.registrations.labels(self.name, "ok").inc()
                    losses.registered(restarted=lost_here)  # (by itself: a restart)
                    if not losses.in_a_row:  # (else the kubelet keeps dropping us)
                        patience.reset()
                    refusals.reset()
                    deadline, refused, lost_here, self._last_refusal = None, None, False, None
                    alive_check = None
                    self._registered_with = kubelet_socket_identity(kubelet_dir)
                    self.peers.registered()
                    self.absent.registered()
                    status.mark(registered=True)
                    log.info("registered", endpoint=self.socket_path, via="pluginsRegistry")
                else:
                    metrics.registrations.labels(self.name, "refused").inc()
                    status.mark(registered=False, error="not registered: refused")
                    level = log.debug if event.error == self._last_refusal else log.warning
                    level("register_failed", result="refused", reason=event.error)
                    self._last_refusal = event.error
                    deadline, refused = loop.time() + refusals.next_delay(), event.error
            if alive_check is not None and loop.time() >= alive_check:
                alive_check = None
                if kubelet_socket_identity(kubelet_dir) == self._registered_with and (
                    await kubelet_listening(kubelet_dir)
                ):
                    log.info("dropped_by_kubelet", action="new socket")
                    return "dropped_by_kubelet"
            if deadline is not None and loop.time() >= deadline:
                if refused is not None:
                    return "registration_refused"
                metrics.registrations.labels(self.name, "unavailable").inc()
                status.mark(registered=False, error="not registered: unavailable")
                log.info(
                    "register_failed",
                    result="unavailable",
                    reason=(
                        "the kubelet asked GetInfo but sent no registration status"
                        if self._info_asked
                        else "no GetInfo from the kubelet's plugin watcher"
                    ),
                    dir=self.serve_dir,
                )
                return "no_registration_status"
            peer, peer_wait = self.peers.due()
            if peer is not None and status.registered:
                log.info(PEER_ENDED, socket=peer, action="new socket")
                return PEER_ENDED
            if self.absent.due:
                self.absent.taken()
                log.warning(ABSENT, answers=ABSENT_ANSWERS, action="new socket")
                return ABSENT
            losses.check_stable()
            now = loop.time()
            left = [None if at is None else at - now for at in (deadline, alive_check)]
            waits = [w for w in (losses.until_stable(), peer_wait, *left) if w is not None]
            await self.sleep_or_wake(min(waits, default=None))
