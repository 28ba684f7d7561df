"""One resource's socket: served, registered with the kubelet, and served again.

The loop follows the kubelet's rules. With `registration: deviceSocket`: serve
first, then Register (the kubelet dials back inside Register); when the kubelet restarts
(kubelet.sock re-created, our socket deleted by its cleanup) or drops our stream, stop the
old server and its streams first, then serve on a fresh socket and register again. With
`registration: pluginsRegistry` the socket itself is the registration
(docs/kubelet-contract.md §14): create it once the first list is ready, and let the kubelet's
plugin manager register it, also after kubelet restarts; create it again only when the
kubelet refuses it or no verdict comes in time (a v1.32 kubelet never retries a failed
registration by itself). Either way the kubelet learns of the resource once its first list
is ready (`first_list.FirstList`, the rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from . import plugin_socket
from .backoff import Backoff
from .endpoint import socket_name
from .first_list import FirstList
from .kubelet_absent import ABSENT, ABSENT_ANSWERS, AbsentCheck
from .logs import EventLogger
from .peer_sockets import PEER_ENDED, PeerSockets
from .protocol.registration import (
    KUBELET_SOCKET,
    FileIdentity,
    RegistrationError,
    file_identity,
    kubelet_socket_identity,
)
from .protocol.server import PluginServer
from .protocol.service import DevicePluginService
from .services import HostServices, ResourceStatus
from .stream_losses import StreamLosses

if TYPE_CHECKING:  # imported with `registration: pluginsRegistry` only (ServingLoop)
    from .serving_registry import PluginManagerFollower

SAFETY_CHECK_INTERVAL = 30.0
"""Re-check sockets this often even when no watch event came (a lost event costs at most this),
on the host's one safety-net timer (`safety_net.SafetyNet`): no resource wakes for it."""
FRESH_KUBELET_RETRY = 0.01
STREAM_CLOSED: Final = "stream_closed_by_kubelet"
"""Registering again: the kubelet ended our stream (after a wait when it keeps doing so)."""


ServiceFactory = Callable[[Callable[[], None]], DevicePluginService]
"""Makes a new socket's DevicePlugin service, given what to call when its stream ends."""


class ServingLoop:
    """Serves one resource's socket and keeps it registered (the module's rules), with the
    resource's `ResourceStatus`."""

    def __init__(
        self,
        name: str,
        services: HostServices,
        log: EventLogger,
        make_service: ServiceFactory,
        first_list: FirstList,
        healthy: Callable[[], int] = lambda: 0,
    ) -> None:
        self.name = name
        self._services = services
        self.log = log
        self._make_service = make_service
        self.first_list = first_list
        """What the kubelet waits for: the driver's first list, the first CDI spec write
        (its first ListAndWatch then sees every device and final health, not a flap)."""
        self.status = ResourceStatus(
            functools.partial(services.status_changed, name),
            services.metrics.registered.labels(name),
        )
        kubelet = services.kubelet
        self._registry = kubelet.registration == "pluginsRegistry"
        self._serve_dir = kubelet.serve_dir
        self.endpoint = socket_name(name, services.instance_id, self._serve_dir)
        self.socket_path = os.path.join(self._serve_dir, self.endpoint)
        self._expected: tuple[FileIdentity, FileIdentity | None] | None = None
        """The socket and kubelet.sock the safety net checks (`_sockets_unchanged`)."""
        self._wake = asyncio.Event()
        self._stream_lost = False
        self._registered_with: FileIdentity | None = None
        """The kubelet.sock of the last registration (None: none yet)."""
        self._healthy = healthy
        """The resource's healthy devices now (`AbsentCheck`)."""
        other = kubelet.socket_dir if self._registry else kubelet.plugins_registry_dir
        self._peers = PeerSockets(name, self.endpoint, self._serve_dir, self._wake, other)
        """The other instances of the resource in the socket dir (a rollout), whose end calls
        for registering again."""
        poller = services.pod_resources
        self._absent = AbsentCheck(
            name,
            self._wake,
            time.monotonic if poller is None else poller.clock,
            self._peers.newer_live,
        )
        """Whether the kubelet serves no device of the resource (PodResources), though
        registered."""
        self._losses = StreamLosses(
            services.registry_wait.lost,
            services.metrics.streams_lost.labels(name),
            lambda reason: self.status.set_problem("stream", reason),
        )
        self._plugins: PluginManagerFollower | None = None
        """pluginsRegistry: what the kubelet's plugin manager does with the socket."""
        if self._registry:
            from .serving_registry import PluginManagerFollower

            self._plugins = PluginManagerFollower(
                name, self.socket_path, self._serve_dir, kubelet.socket_dir, self.status,
                self._losses, self._peers, self._absent, services.metrics, log, self._wake,
                self._sleep_or_wake,
            )  # fmt: skip

    async def run(self) -> None:
        """Serve and stay registered until cancelled."""
        subscription = self._services.watcher.subscribe(
            self._serve_dir, self._on_socket_dir_event, names=(KUBELET_SOCKET, self.endpoint)
        )
        peers: list[Callable[[], None]] = []
        if (prefix := self._peers.prefix) is not None:  # (the entries of its name's instances)
            index, watcher = self._services.peer_sockets, self._services.watcher
            other = self._peers.other_dir
            peers.append(index.follow(watcher, self._serve_dir, prefix, self._peers.changed))
            peers.append(index.follow_ended(self._peers.host_ended))
            if other is not None and other != self._serve_dir and os.path.isdir(other):
                peers.append(index.follow(watcher, other, prefix, self._peers.seen))
        poller = self._services.pod_resources
        stop_absent = None if poller is None else poller.subscribe_allocatable(self._allocatable)
        wait = self._services.registry_wait
        patience = Backoff(wait.first, wait.maximum)
        refusals = Backoff()
        leave_net = self._services.safety_net.join(
            SAFETY_CHECK_INTERVAL, self._sockets_unchanged, self._safety_answer, timeout=5.0
        )
        try:
            kubelet: FileIdentity | None = None
            while True:
                if self._registry:
                    await self.first_list.wait(self.log)  # creating the socket registers it
                service, server, identity = await self._start_server()
                try:
                    if self._plugins is not None:
                        self._expected = (identity, None)
                        reason = await self._plugins.follow(identity, patience, refusals)
                    else:
                        kubelet = await self._register_until_done(service, identity)
                        reason = await self._wait_until_reregister_needed(identity, kubelet)
                except _SocketLost:
                    reason = "socket_removed"
                finally:
                    self._expected = None
                    self.status.mark(serving=False, registered=False)
                    await plugin_socket.stop(service, server, self.socket_path, self.log)
                self.log.info("reregistering", reason=reason)
                if reason == STREAM_CLOSED and (
                    delay := self._losses.lost(self._peers.switching())
                ):
                    await self._back_off(delay, kubelet)
        finally:
            leave_net()
            subscription.cancel()
            for stop_following in peers:
                stop_following()
            if stop_absent is not None:
                stop_absent()
            self.status.mark(serving=False, registered=False)

    def _allocatable(self, allocatable: Mapping[str, frozenset[str]], asked_at: float) -> None:
        self._absent.answer(allocatable, asked_at, self.status.ready, self._healthy())

    def _safety_answer(self, unchanged: bool) -> None:
        if not unchanged:  # no answer within 5 s counts as a change, too
            self._wake.set()

    def _on_socket_dir_event(self, name: str | None) -> None:
        if name is None or name in (KUBELET_SOCKET, self.endpoint):
            self._wake.set()

    def _on_stream_lost(self) -> None:
        self._stream_lost = True
        self._peers.lost()
        if self._plugins is not None:
            self._plugins.stream_lost()
        self._wake.set()

    async def _start_server(self) -> tuple[DevicePluginService, PluginServer, FileIdentity]:
        """Serve on a fresh socket, waiting (with backoff) for the socket dir to exist."""
        backoff = Backoff()
        while True:
            self._wake.clear()
            service = self._make_service(self._on_stream_lost)
            handlers: list[object] = [service]
            if self._plugins is not None:
                handlers.append(self._plugins.handler())
            server = PluginServer(handlers)
            try:
                identity = await server.serve(self.socket_path, offload=self._services.offload)
            except OSError as exc:
                self.status.mark(serving=False, error=f"cannot serve: {type(exc).__name__}")
                self.log.warning("serve_failed", socket=self.socket_path, reason=str(exc))
                await self._sleep_or_wake(backoff.next_delay())
                continue
            self.status.mark(serving=True)
            self.log.info("serving", socket=self.socket_path)
            return service, server, identity

    async def _register_until_done(
        self, service: DevicePluginService, identity: FileIdentity
    ) -> FileIdentity | None:
        """Register, retrying with backoff; returns the identity of the kubelet.sock used."""
        await self.first_list.wait(self.log)
        backoff = Backoff()
        metrics = self._services.metrics
        last_message = None
        refused: FileIdentity | None = None
        while True:
            self._wake.clear()
            kubelet = kubelet_socket_identity(self._serve_dir)
            # Our socket is checked once the kubelet listens: a kubelet that is starting
            # deletes plugin sockets before it listens, and one deleted under a Register
            # call costs the kubelet's 10 s dial-back deadline.
            await self._services.registrar.wait_listening(self._serve_dir)
            if file_identity(self.socket_path) != identity:
                raise _SocketLost()
            self.status.mark(error="not registered: waiting for the kubelet to answer Register")
            try:
                await self._services.registrar.register(
                    self._serve_dir, self.name, self.endpoint, service.options
                )
            except RegistrationError as exc:
                metrics.registrations.labels(self.name, exc.result).inc()
                message = str(exc)
                self.status.mark(registered=False, error=f"not registered: {exc.result}")
                if message != last_message:
                    level = self.log.info if exc.result == "unavailable" else self.log.warning
                    level("register_failed", result=exc.result, reason=message)
                    last_message = message
                delay = backoff.next_delay()
                if exc.result == "unavailable" and kubelet not in (None, refused):
                    # A kubelet.sock that was just created may not be listening yet.
                    refused, delay = kubelet, FRESH_KUBELET_RETRY
                await self._sleep_or_wake(delay)
                continue
            metrics.registrations.labels(self.name, "ok").inc()
            self._stream_lost = False
            self._losses.registered(restarted=self._registered_with not in (None, kubelet))
            self._registered_with = kubelet
            self._peers.registered()
            self._absent.registered()
            self.status.mark(registered=True)
            self.log.info("registered", endpoint=self.endpoint)
            return kubelet

    async def _wait_until_reregister_needed(
        self, identity: FileIdentity, kubelet: FileIdentity | None
    ) -> str:
        self._expected = (identity, kubelet)
        while True:
            self._wake.clear()
            if file_identity(self.socket_path) != identity:
                return "socket_removed"
            current = kubelet_socket_identity(self._serve_dir)
            if current is not None and current != kubelet:
                return "kubelet_restarted"
            if self._stream_lost:
                return STREAM_CLOSED
            peer, peer_wait = self._peers.due()
            if peer is not None:
                self.log.info(PEER_ENDED, socket=peer, action="register again")
                return PEER_ENDED
            if self._absent.due:
                self._absent.taken()
                self.log.warning(ABSENT, answers=ABSENT_ANSWERS, action="register again")
                return ABSENT
            self._losses.check_stable()
            waits = [w for w in (self._losses.until_stable(), peer_wait) if w is not None]
            await self._sleep_or_wake(min(waits, default=None))

    async def _back_off(self, delay: float, kubelet: FileIdentity | None) -> None:
        """Wait `delay` before serving and registering again (the kubelet keeps ending our
        stream, `stream_losses`), cut short by a new kubelet.sock: a restarted kubelet is
        registered with at once."""
        self.status.mark(error="not registered: stream closed by the kubelet")
        self.log.warning("reregister_backoff", delay=delay, losses=self._losses.in_a_row)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0:
            self._wake.clear()
            if kubelet_socket_identity(self._serve_dir) not in (None, kubelet):
                return
            await self._sleep_or_wake(left)

    def _sockets_unchanged(self) -> bool:
        """The safety net's check, off the loop (False wakes the loop to look itself)."""
        if (expected := self._expected) is None:
            return True
        socket, kubelet = expected
        if file_identity(self.socket_path) != socket:
            return False
        return self._registry or kubelet_socket_identity(self._serve_dir) in (None, kubelet)

    async def _sleep_or_wake(self, delay: float | None) -> None:
        """Sleep (None: until woken), cut short by `_wake` (callers clear it, then check)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()


class _SocketLost(Exception):
    pass
