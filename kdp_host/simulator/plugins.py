"""The kubelet's side of plugin registration: the Register handler, one client per
resource, the ListAndWatch readers and disconnection (the kubelet's plugin handler and
client, docs/kubelet-contract.md §1-§4, §9)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from kdp_host.api.v1beta1 import RegisterRequest
from kdp_host.k8s_names import is_extended_resource_name

from . import gotext
from .listwire import WireError, decode_device_list
from .log import log_event
from .manager import DeviceManager
from .records import (
    MAX_RECEIVE_MESSAGE,
    SUPPORTED_VERSIONS,
    ListAndWatchUpdate,
    RegisterAttempt,
    StaleDisconnect,
)
from .transport import Endpoint, PluginClient, RegisterRefused, RpcFailed

DECODE_IN_THREAD: Final = 64 * 1024
"""ListAndWatch messages at least this large (~3,000 devices) are decoded off the event loop,
so other streams, Register calls and arrival stamps are not held up meanwhile."""

READ_AHEAD: Final = 1
"""ListAndWatch messages read off a stream (and stamped) while an earlier one is still being
applied. The kubelet's client receives the next message once it has applied the last (its
``Recv`` loop, docs/kubelet-contract.md §4), so a plugin that sends faster is held back by the
stream's flow control and sends its newest list next; a reader that took every message off
the stream at once made the simulator apply a backlog of stale lists long after the plugin
stopped (the ``large`` bench: ~900 lists of 10,000 devices, applied up to a minute late)."""

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class PluginHandler:
    """Registers plugins with the device manager and follows their streams; keeps the
    records of every Register call, ListAndWatch message and stale disconnect."""

    def __init__(
        self,
        manager: DeviceManager,
        *,
        socket_dir: Path,
        dial_timeout: float,
        clock: Callable[[], float],
        spawn: Spawn,
        notify: Callable[[], Awaitable[None]],
        write_checkpoint: Callable[[], Awaitable[None]],
    ) -> None:
        self._manager = manager
        self.socket_dir = socket_dir
        self.dial_timeout = dial_timeout
        self._clock = clock
        self._spawn = spawn
        self._notify = notify
        self._write_checkpoint = write_checkpoint
        self.max_receive_message = MAX_RECEIVE_MESSAGE
        """The receive limit of the clients made from now on (the kubelet's: grpc-go's default)."""
        self.clients: dict[str, PluginClient] = {}  # v1.32: one client per resource name
        self._open_clients: set[PluginClient] = set()
        self.running: dict[str, int] = {}
        """Clients per resource whose runClient has not ended: more than one means an old
        client's stream end, and the disconnect it brings (docs/kubelet-contract.md §9), is
        still to come."""
        self._serial = 0
        # records, cumulative for the simulator's life
        self.register_attempts: list[RegisterAttempt] = []
        self.list_and_watch_updates: list[ListAndWatchUpdate] = []
        self.stale_disconnect_events: list[StaleDisconnect] = []

    async def disconnect_all(self, reason: str) -> None:
        for name, client in list(self.clients.items()):
            await self.disconnect_client(name, client, reason=reason)

    def close_all(self) -> None:
        """Close every connection to a plugin and forget the clients (a stopped kubelet)."""
        for client in list(self._open_clients):
            client.close()
        self._open_clients.clear()
        self.clients.clear()
        self.running.clear()  # their runClient tasks are cancelled with the kubelet

    async def handle_register(self, request: RegisterRequest) -> None:
        """``Register`` (docs/kubelet-contract.md §1-§3): validate, dial back, ask for the
        options, and only then answer."""
        received_at = self._clock()
        version = str(request.version)
        resource = str(request.resource_name)
        endpoint = str(request.endpoint)
        log_event(
            logging.INFO, "register_request", resource=resource, endpoint=endpoint, version=version
        )
        try:
            if version not in SUPPORTED_VERSIONS:
                raise RegisterRefused(gotext.unsupported_version(version, SUPPORTED_VERSIONS))
            if not is_extended_resource_name(resource):
                raise RegisterRefused(gotext.invalid_resource_name(resource))
            socket_path = gotext.go_join(self.socket_dir, endpoint)
            # Go: the dial runs on context.Background, a cancelled Register does not stop it.
            task = self._spawn(self._connect_client(resource, socket_path), f"connect:{resource}")
            await asyncio.shield(task)
        except RegisterRefused as exc:
            self.register_attempts.append(
                RegisterAttempt(version, resource, endpoint, str(exc), received_at)
            )
            log_event(logging.INFO, "register_rejected", resource=resource, error=str(exc))
            await self._notify()
            raise
        self.register_attempts.append(
            RegisterAttempt(version, resource, endpoint, None, received_at)
        )
        await self._notify()

    # ---- the plugin manager's DevicePlugin handler (docs/kubelet-contract.md §14)

    def validate_plugin(self, name: str, versions: list[str]) -> str | None:
        """``ValidatePlugin``: why the plugin is refused, or None."""
        if not any(version in SUPPORTED_VERSIONS for version in versions):
            return gotext.plugin_versions_unsupported(SUPPORTED_VERSIONS[0], versions)
        if not is_extended_resource_name(name):
            return gotext.invalid_plugin_name(name)
        return None

    async def register_plugin(self, name: str, endpoint: Path) -> None:
        """``RegisterPlugin``: ``connectClient`` on the endpoint (an absolute path), as
        Register does after its checks. Raises RegisterRefused with the kubelet's text."""
        log_event(logging.INFO, "register_plugin", resource=name, endpoint=endpoint)
        await self._connect_client(name, endpoint)
        await self._notify()

    async def deregister_plugin(self, name: str) -> None:
        """``DeRegisterPlugin`` (v1.32): disconnect the name's current client, if any."""
        client = self.clients.get(name)
        log_event(logging.INFO, "deregister_plugin", resource=name, client=bool(client))
        if client is not None:
            await self.disconnect_client(name, client, reason="plugin deregistered")

    async def _connect_client(self, resource: str, socket_path: Path) -> None:
        """``connectClient`` of v1.32: register the client, dial, PluginConnected, run."""
        self._serial += 1
        client = PluginClient(self._serial, resource, socket_path, self.max_receive_message)
        self.clients[resource] = client  # registerClient overwrites
        self._open_clients.add(client)
        await self._notify()
        try:
            options = await client.connect(self.dial_timeout)
        except BaseException as exc:
            self.clients.pop(resource, None)  # deregisterClient(name): whatever is there
            client.close()
            self._open_clients.discard(client)
            if isinstance(exc, RegisterRefused):
                log_event(logging.INFO, "connect_failed", resource=resource, error=str(exc))
            elif not isinstance(exc, asyncio.CancelledError):
                raise RegisterRefused(gotext.dial_failed(str(exc))) from exc
            raise
        self._manager.plugin_connected(Endpoint(resource, socket_path, options, client))
        log_event(
            logging.INFO,
            "plugin_connected",
            resource=resource,
            client=client.serial,
            socket=socket_path,
            pre_start_required=options.pre_start_required,
            preferred_allocation=options.get_preferred_allocation_available,
        )
        self.running[resource] = self.running.get(resource, 0) + 1
        self._spawn(self._run_client(client), f"list-and-watch:{resource}#{client.serial}")

    async def _run_client(self, client: PluginClient) -> None:
        """``client.Run`` then ``runClient``: read ListAndWatch until it ends (never
        reconnect), then disconnect whatever client has the name
        (docs/kubelet-contract.md §4, §9)."""
        arrived: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        room = asyncio.Semaphore(READ_AHEAD)
        reader = asyncio.ensure_future(self._read(client, arrived, room))
        try:
            while (item := await arrived.get()) is not None:
                try:
                    await self._on_list(client, *item)
                finally:
                    room.release()
            reason = await reader
        except WireError as exc:
            # grpc-go fails the stream's Recv on a message it cannot unmarshal.
            reason = gotext.unmarshal_failed(str(exc))
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        log_event(
            logging.INFO,
            "list_and_watch_ended",
            resource=client.resource,
            client=client.serial,
            socket=client.socket_path,
            messages=client.messages,
            reason=reason,
        )
        # No await from here to the disconnect: whoever sees this client ended sees the
        # disconnect it brings too.
        self.running[client.resource] = self.running.get(client.resource, 1) - 1
        current = self.clients.get(client.resource)
        if current is None:
            client.close()
            self._open_clients.discard(client)
            return
        if current is not client:
            event = StaleDisconnect(client.resource, client.socket_path, current.socket_path)
            self.stale_disconnect_events.append(event)
            log_event(
                logging.WARNING,
                "stale_stream_disconnects_new_client",
                resource=client.resource,
                ended=client.socket_path,
                disconnected=current.socket_path,
            )
            client.close()
            self._open_clients.discard(client)
        await self.disconnect_client(client.resource, current, reason="list_and_watch ended")

    async def _read(
        self,
        client: PluginClient,
        arrived: asyncio.Queue[tuple[float, bytes] | None],
        room: asyncio.Semaphore,
    ) -> str:
        """Read the stream, stamping each message as it arrives; returns why it ended. The
        messages are applied in order by ``_run_client``: reading ahead keeps a slow step of
        the simulator (decoding, the checkpoint write) out of the arrival times, by
        `READ_AHEAD` messages at most (`room`: one taken per message handed on, given back
        once it is applied); past that the stream is not read, as the kubelet's is not."""
        try:
            async with contextlib.aclosing(client.list_and_watch()) as messages:
                async for raw in messages:
                    received_at = self._clock()
                    await room.acquire()
                    arrived.put_nowait((received_at, raw))
            return "stream ended"
        except RpcFailed as exc:
            return str(exc)
        finally:
            arrived.put_nowait(None)

    async def _on_list(self, client: PluginClient, received_at: float, raw: bytes) -> None:
        if len(raw) >= DECODE_IN_THREAD:
            devices = await asyncio.to_thread(decode_device_list, raw)
        else:
            devices = decode_device_list(raw)
        name = client.resource
        healthy = self._manager.apply_list(name, devices)
        total = len(devices)
        self.list_and_watch_updates.append(
            ListAndWatchUpdate(name, client.serial, received_at, total, healthy)
        )
        log_event(
            logging.INFO,
            "devices_updated",
            resource=name,
            client=client.serial,
            total=total,
            healthy=healthy,
        )
        await self._write_checkpoint()
        await self._notify()

    async def disconnect_client(self, name: str, client: PluginClient, *, reason: str) -> None:
        """``disconnectClient`` -> ``Disconnect`` -> ``PluginDisconnected``
        (docs/kubelet-contract.md §4)."""
        self.clients.pop(name, None)
        client.close()
        self._open_clients.discard(client)
        self._manager.plugin_disconnected(name, self._clock())
        log_event(
            logging.INFO,
            "plugin_disconnected",
            resource=name,
            client=client.serial,
            reason=reason,
            capacity=self._manager.capacity(name),
            allocatable=self._manager.allocatable(name),
        )
        await self._notify()
