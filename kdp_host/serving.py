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
import collections
import contextlib
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

from . import plugin_socket
from .backoff import Backoff
from .endpoint import socket_name
from .first_list import FirstList
from .logs import EventLogger
from .protocol.registration import (
    KUBELET_SOCKET,
    FileIdentity,
    RegistrationError,
    file_identity,
    kubelet_listening,
    kubelet_socket_identity,
)
from .protocol.server import PluginServer
from .protocol.service import DevicePluginService
from .services import HostServices, ResourceStatus
from .stream_losses import StreamLosses

if TYPE_CHECKING:  # imported where used: only `registration: pluginsRegistry` needs it
    from .protocol.plugin_registry import KubeletVerdict

SAFETY_CHECK_INTERVAL = 30.0
"""Re-check sockets this often even when no watch event came (a lost event costs at most this),
on the host's one safety-net timer (`safety_net.SafetyNet`): no resource wakes for it."""
KUBELET_ALIVE_SETTLE: Final = 0.5
"""pluginsRegistry: seconds after the kubelet ended a stream before asking whether it still
runs (a kubelet going down ends its streams before its listener closes)."""
FRESH_KUBELET_RETRY = 0.01
OPTIONS_CHANGED: Final = "options_changed"
"""Registering again: the kubelet must learn new options (GetPreferredAllocation matters)."""
STREAM_LOST: Final = "stream_lost"
"""In the queue of what the kubelet did, beside its verdicts: it ended our last stream."""
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
        self._service: DevicePluginService | None = None
        """The service of the socket served now (None between two servers)."""
        self._expected: tuple[FileIdentity, FileIdentity | None] | None = None
        """The socket and kubelet.sock the safety net checks (`_sockets_unchanged`)."""
        self._wake = asyncio.Event()
        self._stream_lost = False
        self._kubelet_events: collections.deque[KubeletVerdict | Literal["stream_lost"]] = (
            collections.deque()
        )
        """pluginsRegistry: the kubelet's verdicts and stream ends, in the order they came."""
        self._info_asked = False
        """pluginsRegistry: the kubelet called GetInfo on the current socket."""
        self._last_refusal: str | None = None
        """pluginsRegistry: the kubelet's last refusal, logged once while it repeats."""
        self._registered_with: FileIdentity | None = None
        """The kubelet.sock of the last registration (None: none yet)."""
        self._losses = StreamLosses(
            services.registry_wait.lost,
            services.metrics.streams_lost.labels(name),
            lambda reason: self.status.set_problem("stream", reason),
        )

    def devices_changed(self) -> None:
        """The device list changed: register again if the kubelet must learn new options."""
        if self._service is not None and self._service.options_outdated():
            self._wake.set()

    async def run(self) -> None:
        """Serve and stay registered until cancelled."""
        subscription = self._services.watcher.subscribe(
            self._serve_dir, self._on_socket_dir_event, names=(KUBELET_SOCKET, self.endpoint)
        )
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
                    if self._registry:
                        reason = await self._follow_the_plugin_manager(
                            service, identity, patience, refusals
                        )
                    else:
                        kubelet = await self._register_until_done(service, identity)
                        reason = await self._wait_until_reregister_needed(
                            service, identity, kubelet
                        )
                except _SocketLost:
                    reason = "socket_removed"
                finally:
                    self._service, self._expected = None, None
                    self.status.mark(serving=False, registered=False)
                    await plugin_socket.stop(service, server, self.socket_path, self.log)
                self.log.info("reregistering", reason=reason)
                if reason == STREAM_CLOSED and (delay := self._losses.lost()):
                    await self._back_off(delay, kubelet)
        finally:
            leave_net()
            subscription.cancel()
            self.status.mark(serving=False, registered=False)

    def _safety_answer(self, unchanged: bool) -> None:
        if not unchanged:  # no answer within 5 s counts as a change, too
            self._wake.set()

    def _on_socket_dir_event(self, name: str | None) -> None:
        if name is None or name in (KUBELET_SOCKET, self.endpoint):
            self._wake.set()

    def _on_stream_lost(self) -> None:
        self._stream_lost = True
        self._kubelet_events.append(STREAM_LOST)
        self._wake.set()

    def _on_info(self) -> None:
        self._info_asked = True

    def _on_verdict(self, verdict: KubeletVerdict) -> None:
        self._kubelet_events.append(verdict)
        self._wake.set()

    async def _start_server(self) -> tuple[DevicePluginService, PluginServer, FileIdentity]:
        """Serve on a fresh socket, waiting (with backoff) for the socket dir to exist."""
        backoff = Backoff()
        while True:
            self._wake.clear()
            service = self._make_service(self._on_stream_lost)
            handlers: list[object] = [service]
            if self._registry:
                from .protocol.plugin_registry import PluginRegistrationService

                handlers.append(
                    PluginRegistrationService(
                        self.name,
                        self.socket_path,
                        on_info=self._on_info,
                        on_verdict=self._on_verdict,
                    )
                )
            self._kubelet_events.clear()
            self._info_asked = False
            server = PluginServer(handlers)
            try:
                identity = await server.serve(self.socket_path, offload=self._services.offload)
            except OSError as exc:
                self.status.mark(serving=False, error=f"cannot serve: {type(exc).__name__}")
                self.log.warning("serve_failed", socket=self.socket_path, reason=str(exc))
                await self._sleep_or_wake(backoff.next_delay())
                continue
            self._service = service
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
            self.status.mark(registered=True)
            self.log.info("registered", endpoint=self.endpoint)
            return kubelet

    async def _wait_until_reregister_needed(
        self, service: DevicePluginService, identity: FileIdentity, kubelet: FileIdentity | None
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
            if service.options_outdated():
                return OPTIONS_CHANGED
            self._losses.check_stable()
            await self._sleep_or_wake(self._losses.until_stable())

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

    async def _follow_the_plugin_manager(
        self,
        service: DevicePluginService,
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
        self._expected = (identity, None)
        loop = asyncio.get_running_loop()
        metrics = self._services.metrics
        deadline: float | None = loop.time() + patience.next_delay()
        refused, lost_here, kubelet_dir = None, False, self._services.kubelet.socket_dir
        alive_check: float | None = None
        while True:
            self._wake.clear()
            if file_identity(self.socket_path) != identity:
                return "socket_removed"
            if service.options_outdated():
                return OPTIONS_CHANGED
            while self._kubelet_events:
                event = self._kubelet_events.popleft()
                if isinstance(event, str):  # STREAM_LOST
                    delay = self._losses.lost()
                    lost_here = True
                    if self.status.registered:
                        self.status.mark(registered=False, error="not registered: stream closed")
                        self.log.info("awaiting_kubelet", reason="stream_closed_by_kubelet")
                        deadline = loop.time() + patience.next_delay()
                        if self._registered_with is not None:  # did it keep running? (below)
                            alive_check = loop.time() + max(delay, KUBELET_ALIVE_SETTLE)
                elif event.registered:
                    metrics.registrations.labels(self.name, "ok").inc()
                    self._losses.registered(restarted=lost_here)  # (by itself: a restart)
                    if not self._losses.in_a_row:  # (else the kubelet keeps dropping us)
                        patience.reset()
                    refusals.reset()
                    deadline, refused, lost_here, self._last_refusal = None, None, False, None
                    alive_check = None
                    self._registered_with = kubelet_socket_identity(kubelet_dir)
                    self.status.mark(registered=True)
                    self.log.info("registered", endpoint=self.socket_path, via="pluginsRegistry")
                else:
                    metrics.registrations.labels(self.name, "refused").inc()
                    self.status.mark(registered=False, error="not registered: refused")
                    level = (
                        self.log.debug if event.error == self._last_refusal else self.log.warning
                    )
                    level("register_failed", result="refused", reason=event.error)
                    self._last_refusal = event.error
                    deadline, refused = loop.time() + refusals.next_delay(), event.error
            if alive_check is not None and loop.time() >= alive_check:
                alive_check = None
                if kubelet_socket_identity(kubelet_dir) == self._registered_with and (
                    await kubelet_listening(kubelet_dir)
                ):
                    self.log.info("dropped_by_kubelet", action="new socket")
                    return "dropped_by_kubelet"
            if deadline is not None and loop.time() >= deadline:
                if refused is not None:
                    return "registration_refused"
                metrics.registrations.labels(self.name, "unavailable").inc()
                self.status.mark(registered=False, error="not registered: unavailable")
                self.log.info(
                    "register_failed",
                    result="unavailable",
                    reason=(
                        "the kubelet asked GetInfo but sent no registration status"
                        if self._info_asked
                        else "no GetInfo from the kubelet's plugin watcher"
                    ),
                    dir=self._serve_dir,
                )
                return "no_registration_status"
            self._losses.check_stable()
            now = loop.time()
            left = [None if at is None else at - now for at in (deadline, alive_check)]
            waits = [w for w in (self._losses.until_stable(), *left) if w is not None]
            await self._sleep_or_wake(min(waits, default=None))

    async def _sleep_or_wake(self, delay: float | None) -> None:
        """Sleep (None: until woken), cut short by `_wake` (callers clear it, then check)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()


class _SocketLost(Exception):
    pass
