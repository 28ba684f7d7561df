"""The simulator's gRPC ends: the Registration server on ``kubelet.sock`` and the client of
each registered plugin (the kubelet's endpoint).

Written on grpclib's public API and the generated messages only, and sharing nothing with
kdp-host's own server: the simulator is the oracle the product is checked against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from kdp_host.api.v1beta1 import (
    DevicePluginOptions,
    DevicePluginStub,
    Empty,
    RegisterRequest,
    RegistrationBase,
)

from . import gotext
from .log import log_event
from .records import MAX_RECEIVE_MESSAGE, PluginOptions

T = TypeVar("T")

LIST_AND_WATCH: Final = "/v1beta1.DevicePlugin/ListAndWatch"
STOP_WAIT: Final = 5.0
"""How long stopping waits for the Registration server's connections to go away."""


class RegisterRefused(Exception):
    """Returned to the registering plugin as ``codes.Unknown`` with this message."""


class RpcFailed(Exception):
    """A call to a plugin that failed; ``str()`` is the kubelet's error text."""


# --------------------------------------------------------------------------- servers

TRANSPORT_CLOSING: Final = "transport is closing"
"""grpc-go's status text for a call on a connection its server closed."""


def stopped_server_refuses_calls(server: Server, serving: Callable[[], bool]) -> None:
    """Make ``server`` answer UNAVAILABLE to every call that arrives while ``serving()`` is
    false, before any handler runs.

    grpc-go's ``Server.Stop`` closes every connection, so nothing reaches a stopped kubelet.
    grpclib's ``Server.close`` only stops listening and cancels the calls running then: a
    client that keeps its connection (kdp-host keeps one to ``kubelet.sock``) could still
    deliver a Register to a stopped simulator, whose dial-back then outlived the stop and
    connected the plugin to the next start's fresh state."""

    async def gate(event: RecvRequest) -> None:
        if not serving():
            raise GRPCError(Status.UNAVAILABLE, TRANSPORT_CLOSING)

    listen(server, RecvRequest, gate)


# --------------------------------------------------------------------------- Registration


class _RegistrationService(RegistrationBase):
    def __init__(self, handle: Callable[[RegisterRequest], Awaitable[None]]) -> None:
        self._handle = handle

    async def register(self, message: RegisterRequest) -> Empty:
        try:
            await self._handle(message)
        except RegisterRefused as exc:
            raise GRPCError(Status.UNKNOWN, str(exc)) from None
        return Empty()


class RegistrationServer:
    """``Registration`` on a Unix socket: plain gRPC, no authentication
    (docs/kubelet-contract.md §1). ``handle`` raises RegisterRefused to refuse."""

    def __init__(self, handle: Callable[[RegisterRequest], Awaitable[None]]) -> None:
        self._server = Server([_RegistrationService(handle)])
        self._started = False
        stopped_server_refuses_calls(self._server, lambda: self._started)

    async def start(self, path: Path) -> None:
        await self._server.start(path=str(path))
        self._started = True

    async def stop(self) -> None:
        """Stop listening and cancel running Register calls. A client that keeps its
        connection open delays this by at most STOP_WAIT (Python 3.12+ waits for it)."""
        if not self._started:
            return
        self._started = False
        self._server.close()
        try:
            async with asyncio.timeout(STOP_WAIT):
                await self._server.wait_closed()
        except TimeoutError:
            log_event(logging.WARNING, "registration_server_stop_slow", waited=STOP_WAIT)


# --------------------------------------------------------------------------- plugin client


async def wait_accepting(path: Path, timeout: float) -> bool:
    """grpc-go's blocking dial: connect until the socket accepts a connection (retrying a
    missing or refusing socket) or ``timeout`` passes (False). The probe connection is
    closed; the caller opens the connection it keeps."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                _, writer = await asyncio.open_unix_connection(str(path))
        except TimeoutError:
            continue
        except OSError as exc:
            log_event(logging.DEBUG, "dial_retry", socket=path, error=exc)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 1.0)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


class RawMessage:
    """A message left undecoded: grpclib's codec hands over the bytes as they arrived, so
    the arrival time is taken before the (possibly long) decoding."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> RawMessage:
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


class PluginClient:
    """The kubelet's connection to one registered plugin (one per registration)."""

    def __init__(
        self,
        serial: int,
        resource: str,
        socket_path: Path,
        max_receive_message: int = MAX_RECEIVE_MESSAGE,
    ) -> None:
        self.serial = serial
        self.resource = resource
        self.socket_path = socket_path
        self.max_receive_message = max_receive_message
        self.messages = 0
        self._channel: Channel | None = None

    def __repr__(self) -> str:
        return f"<client #{self.serial} {self.resource} {self.socket_path}>"

    @property
    def stub(self) -> DevicePluginStub | None:
        return DevicePluginStub(self._channel) if self._channel is not None else None

    async def connect(self, dial_timeout: float) -> PluginOptions:
        """Blocking dial (retried until the deadline), then GetDevicePluginOptions
        (docs/kubelet-contract.md §2, §3). Raises RegisterRefused with the kubelet's text."""
        if not await wait_accepting(self.socket_path, dial_timeout):
            raise RegisterRefused(gotext.dial_failed("context deadline exceeded"))
        self._channel = Channel(path=str(self.socket_path))
        stub = DevicePluginStub(self._channel)
        try:
            options: DevicePluginOptions = await stub.get_device_plugin_options(
                Empty(), timeout=dial_timeout
            )
        except TimeoutError:
            # The simulator's own bound (the kubelet waits forever, docs/kubelet-contract.md §13).
            raise RegisterRefused(gotext.options_failed("context deadline exceeded")) from None
        except Exception as exc:
            raise RegisterRefused(gotext.options_failed(gotext.rpc_error_text(exc))) from exc
        return PluginOptions(
            pre_start_required=bool(options.pre_start_required),
            get_preferred_allocation_available=bool(options.get_preferred_allocation_available),
        )

    async def list_and_watch(self) -> AsyncGenerator[bytes, None]:
        """The messages of the ListAndWatch stream, undecoded, until it ends. Raises
        RpcFailed with grpc-go's text if it fails."""
        channel = self._channel
        if channel is None:
            raise RpcFailed("client disconnected before ListAndWatch")
        try:
            async with channel.request(
                LIST_AND_WATCH, Cardinality.UNARY_STREAM, Empty, RawMessage
            ) as stream:
                await stream.send_message(Empty(), end=True)
                async for message in stream:
                    if (size := len(message.data)) > (limit := self.max_receive_message):
                        # grpc-go fails Recv and resets the stream (docs/kubelet-contract.md §4)
                        raise RpcFailed(gotext.message_too_large(size, limit))
                    self.messages += 1
                    yield message.data
        except (asyncio.CancelledError, GeneratorExit, RpcFailed):
            raise
        except Exception as exc:
            raise RpcFailed(gotext.rpc_error_text(exc)) from exc

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def sent_timeout(timeout: float) -> float:
    """The timeout to give grpclib for a call whose deadline (``timeout`` from now) travels
    to the plugin, so that the plugin's copy never passes before the kubelet's own.

    grpclib writes the grpc-timeout header truncated to its unit (whole seconds above 10 s,
    milliseconds above 10 ms, microseconds below), so a 30 s deadline reached the plugin as
    29 s and a 0.3 s one as 0.299 s: the plugin's server gave up first and the kubelet saw its
    DEADLINE_EXCEEDED status instead of its own expired context. grpc-go rounds the header up;
    one unit more gives the same, while the kubelet's own deadline (``Endpoint.call``) stays
    exact."""
    return timeout + (1.0 if timeout > 10 else 1e-3 if timeout > 0.01 else 1e-6)


@dataclass(slots=True)
class Endpoint:
    """The kubelet's endpoint of a registered resource: its options and client, or a stopped
    placeholder (restored from the checkpoint, or after the stream ended)."""

    resource: str
    socket_path: Path | None
    options: PluginOptions | None
    client: PluginClient | None
    stopped_at: float | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    async def call(
        self, call: Callable[[DevicePluginStub], Awaitable[T]], timeout: float | None
    ) -> T:
        """One RPC as the kubelet's endpoint makes it: a stopped endpoint refuses, a failure
        becomes grpc-go's status text, ``timeout`` (None: none) is the caller's deadline."""
        stub = self.client.stub if self.client is not None else None
        if self.stopped or stub is None:
            raise RpcFailed(gotext.endpoint_stopped(self.resource))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await call(stub)
        except Exception as exc:
            if deadline is not None and loop.time() >= deadline:
                # Whoever noticed first (this side or the plugin's server), grpc-go reports
                # its own expired context.
                raise RpcFailed(gotext.DEADLINE_EXCEEDED) from exc
            raise RpcFailed(gotext.rpc_error_text(exc)) from exc
