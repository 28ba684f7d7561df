"""One resource's runtime: driver, device table, gRPC server and registration, as a unit.

The serving loop follows the kubelet's rules: serve first, then Register (the kubelet dials
back inside Register); when the kubelet restarts (kubelet.sock re-created, our socket
deleted by its cleanup) or drops our stream, stop the old server and its streams first,
then serve on a fresh socket and register again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .backoff import Backoff
from .config import ResourceConfig
from .devices import DeviceTable, Snapshot
from .drivers import (
    DeviceReporter,
    Driver,
    DriverDeps,
    DriverFactory,
    failure_threshold,
    make_driver,
)
from .files import DaemonThreads, Offload
from .hooks import AllocateHook, PreStartHook
from .logs import EventLogger
from .metrics import Metrics
from .ownership import OwnedTable, OwnershipIndex
from .process import CommandRunner, ProcessRunner
from .protocol.endpoint import socket_name
from .protocol.registration import (
    KUBELET_SOCKET,
    FileIdentity,
    RegistrationError,
    file_identity,
    kubelet_socket_identity,
    register,
)
from .protocol.server import PluginServer
from .protocol.service import DevicePluginService, ListAndWatchEncoder
from .watch import Watcher

SAFETY_CHECK_INTERVAL = 30.0
"""Re-check sockets this often even when no watch event came (a lost event costs at most this)."""
FRESH_KUBELET_RETRY = 0.01
FIRST_SCAN_WAIT = 2.0
"""Register only after the driver's first list (so the kubelet does not see 0 devices first),
but do not wait longer than this for a slow probe."""


@dataclass(frozen=True)
class HostServices:
    """What the host lends every resource."""

    socket_dir: str
    instance_id: str
    watcher: Watcher
    metrics: Metrics
    log: EventLogger
    drivers: DriverFactory = make_driver
    """Makes each resource's driver (tests pass their own)."""
    offload: Offload = field(default_factory=DaemonThreads)
    """The host's one way off the event loop (scans, CDI writes), shared by every resource."""
    commands: CommandRunner = field(default_factory=ProcessRunner)
    """Runs the preStart and allocate commands."""
    ownership: OwnershipIndex = field(default_factory=OwnershipIndex)
    """The host's one index of claimed nodes and mount sources, shared by every resource."""
    status_changed: Callable[[], None] = lambda: None
    """Called whenever a resource's `ResourceStatus` changes (the host refreshes /readyz)."""


@dataclass
class ResourceStatus:
    """What /readyz says about a resource. Reasons are short and fixed (no host paths, no
    probe output): the endpoint is reachable from the pod network."""

    serving: bool = False
    registered: bool = False
    last_error: str | None = None
    problems: dict[str, str] = field(default_factory=dict)
    """Parts of the resource that keep it from being ready (e.g. `cdi`), with a short reason."""

    @property
    def ready(self) -> bool:
        return self.serving and self.registered and not self.problems

    def not_ready_reason(self) -> str:
        if self.problems:
            return "; ".join(self.problems[part] for part in sorted(self.problems))
        return self.last_error or ("not serving" if not self.serving else "not registered")


class ResourceRuntime:
    def __init__(self, config: ResourceConfig, services: HostServices) -> None:
        self.config = config
        self._services = services
        self.log = services.log.bind(resource=config.name)
        self.status = ResourceStatus()
        self.endpoint = socket_name(config.name, services.instance_id, services.socket_dir)
        self.socket_path = os.path.join(services.socket_dir, self.endpoint)
        self.table = DeviceTable(replicas=config.replicas)
        self.table.add_listener(self._on_devices_changed)
        self._encoder = ListAndWatchEncoder()
        self._wake = asyncio.Event()
        self._stream_lost = False
        self._pre_start = (
            None
            if config.pre_start is None
            else PreStartHook(
                config.pre_start,
                config,
                self.table,
                services.commands,
                services.metrics,
                self.log,
            )
        )
        command = config.allocate.command
        self._allocate_hook = (
            None
            if command is None
            else AllocateHook(
                command,
                config.allocate.timeout,
                config.name,
                services.commands,
                services.metrics,
                self.log,
            )
        )
        self._first_list_ready: list[asyncio.Event] = [self.table.published]
        """Set when the first list is complete (the driver's first scan, the first CDI spec
        write): the kubelet's first ListAndWatch then sees final health, not a flap."""

    def _on_devices_changed(self, snapshot: Snapshot) -> None:
        self._services.metrics.set_device_counts(
            self.config.name, snapshot.healthy_count, snapshot.unhealthy_count
        )

    async def run(self) -> None:
        """Run until cancelled; an exception means the resource crashed (the host restarts it)."""
        services = self._services
        deps = DriverDeps(self.log, services.watcher, offload=services.offload)
        driver = services.drivers(self.config.driver, deps)
        detach = services.ownership.attach(self.config.name, self.table.publish, self.log)
        try:
            await self._run(deps, driver)
        finally:
            detach()

    async def _run(self, deps: DriverDeps, driver: Driver) -> None:
        services = self._services
        reporter = DeviceReporter(
            OwnedTable(services.ownership, self.config.name, self.table),
            resource=self.config.name,
            log=self.log,
            metrics=services.metrics,
            failure_threshold=failure_threshold(self.config.driver),
        )
        self._on_devices_changed(self.table.snapshot)
        async with asyncio.TaskGroup() as group:
            group.create_task(driver.run(reporter), name=f"{self.config.name}:driver")
            if self.config.health is not None:
                from .health import HealthChecker

                checker = HealthChecker(
                    self.config.health,
                    self.table,
                    resource=self.config.name,
                    log=self.log,
                    metrics=services.metrics,
                    commands=deps.commands,
                )
                group.create_task(checker.run(), name=f"{self.config.name}:health")
            if self.config.allocate.cdi is not None:
                from .cdi import CdiSpecWriter

                cdi_failures = services.metrics.cdi_spec_failures.labels(self.config.name)
                writer = CdiSpecWriter(
                    self.config,
                    self.table,
                    self.log,
                    report=functools.partial(self._set_problem, "cdi"),
                    count_failure=cdi_failures.inc,
                    offload=services.offload,
                )
                self._first_list_ready.append(writer.first_sync)
                group.create_task(writer.run(), name=f"{self.config.name}:cdi")
            group.create_task(self._serve_forever(), name=f"{self.config.name}:serve")

    async def _serve_forever(self) -> None:
        subscription = self._services.watcher.subscribe(
            self._services.socket_dir, self._on_socket_dir_event
        )
        try:
            while True:
                service, server, identity = await self._start_server()
                try:
                    kubelet = await self._register_until_done(service, identity)
                    reason = await self._wait_until_reregister_needed(identity, kubelet)
                except _SocketLost:
                    reason = "socket_removed"
                finally:
                    await self._stop_server(service, server)
                self.log.info("reregistering", reason=reason)
        finally:
            subscription.cancel()
            self._mark(serving=False, registered=False)

    def _on_socket_dir_event(self, name: str | None) -> None:
        if name is None or name in (KUBELET_SOCKET, self.endpoint):
            self._wake.set()

    def _on_stream_lost(self) -> None:
        self._stream_lost = True
        self._wake.set()

    async def _start_server(self) -> tuple[DevicePluginService, PluginServer, FileIdentity]:
        """Serve on a fresh socket, waiting (with backoff) for the socket dir to exist."""
        backoff = Backoff()
        while True:
            self._wake.clear()
            service = DevicePluginService(
                self.config,
                self.table,
                self._encoder,
                self._services.metrics,
                self.log,
                on_stream_lost=self._on_stream_lost,
                pre_start=self._pre_start,
                allocate_hook=self._allocate_hook,
            )
            server = PluginServer([service])
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)
                await server.serve(self.socket_path)
                identity = file_identity(self.socket_path)
                if identity is None:
                    raise FileNotFoundError(self.socket_path)
            except OSError as exc:
                self._mark(serving=False, error=f"cannot serve: {type(exc).__name__}")
                self.log.warning("serve_failed", socket=self.socket_path, reason=str(exc))
                await self._sleep_or_wake(backoff.next_delay())
                continue
            self._mark(serving=True)
            self.log.info("serving", socket=self.socket_path)
            return service, server, identity

    async def _stop_server(self, service: DevicePluginService, server: PluginServer) -> None:
        """End streams first (clean EOF at the kubelet), then close server and connections.

        The synchronous part (close, drop connections, remove the socket) runs even when
        the wait for the streams is interrupted by a second cancel.
        """
        self._mark(serving=False, registered=False)
        try:
            await service.end_streams()
        finally:
            server.close()
            server.close_connections()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        try:
            async with asyncio.timeout(1.0):
                await server.wait_closed()
        except TimeoutError:
            self.log.warning("server_close_slow")

    async def _register_until_done(
        self, service: DevicePluginService, identity: FileIdentity
    ) -> FileIdentity | None:
        """Register, retrying with backoff; returns the identity of the kubelet.sock used."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_SCAN_WAIT):
                for event in self._first_list_ready:
                    await event.wait()
        backoff = Backoff()
        metrics = self._services.metrics
        last_message = None
        refused: FileIdentity | None = None
        while True:
            self._wake.clear()
            kubelet = kubelet_socket_identity(self._services.socket_dir)
            if file_identity(self.socket_path) != identity:
                raise _SocketLost()
            try:
                await register(
                    self._services.socket_dir, self.config.name, self.endpoint, service.options
                )
            except RegistrationError as exc:
                metrics.registrations.labels(self.config.name, exc.result).inc()
                message = str(exc)
                self._mark(registered=False, error=f"not registered: {exc.result}")
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
            metrics.registrations.labels(self.config.name, "ok").inc()
            self._stream_lost = False
            self._mark(registered=True)
            self.log.info("registered", endpoint=self.endpoint)
            return kubelet

    async def _wait_until_reregister_needed(
        self, identity: FileIdentity, kubelet: FileIdentity | None
    ) -> str:
        while True:
            self._wake.clear()
            if file_identity(self.socket_path) != identity:
                return "socket_removed"
            current = kubelet_socket_identity(self._services.socket_dir)
            if current is not None and current != kubelet:
                return "kubelet_restarted"
            if self._stream_lost:
                return "stream_closed_by_kubelet"
            await self._sleep_or_wake(SAFETY_CHECK_INTERVAL)

    async def _sleep_or_wake(self, delay: float) -> None:
        """Sleep, cut short by a socket-dir event (callers clear the event before checking)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _set_problem(self, part: str, reason: str | None) -> None:
        """A part of the resource keeps it from being ready (reason), or no longer (None)."""
        if reason is None:
            self.status.problems.pop(part, None)
        else:
            self.status.problems[part] = reason
        self._services.status_changed()

    def _mark(
        self,
        *,
        serving: bool | None = None,
        registered: bool | None = None,
        error: str | None = None,
    ) -> None:
        if serving is not None:
            self.status.serving = serving
        if registered is not None:
            self.status.registered = registered
            self._services.metrics.registered.labels(self.config.name).set(int(registered))
            if registered:
                self.status.last_error = None
        if error is not None:
            self.status.last_error = error
        self._services.status_changed()


class _SocketLost(Exception):
    pass
