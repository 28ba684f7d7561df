"""The gRPC server that carries one resource's DevicePlugin service on a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import weakref
from collections.abc import Collection
from typing import Any, cast

import grpclib.server
from grpclib.encoding.base import CodecBase
from grpclib.protocol import H2Protocol

from ..files import Offload
from .codec import DevicePluginCodec
from .registration import FileIdentity, file_identity

SOCKET_MODE = 0o600
"""Plugin sockets: only the kubelet (root) may connect, whatever the process umask is."""


def bind_unix_socket(path: str, mode: int = SOCKET_MODE) -> socket.socket:
    """A Unix stream socket bound at `path` with permissions `mode`, not yet listening.

    The file is created with the umask's permissions, so it is chmod-ed before the server
    calls listen(): until then a connect is refused, so no client ever sees wider rights.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def fresh_unix_socket(path: str, mode: int = SOCKET_MODE) -> tuple[socket.socket, FileIdentity]:
    """`bind_unix_socket` at `path` after removing a file already there, with the identity
    of the new file. File system calls only (each a few hundred microseconds to a few
    milliseconds on a busy disk): a host runs it off its loop."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = bind_unix_socket(path, mode)
    identity = file_identity(path)
    if identity is None:  # removed at once by someone else
        sock.close()
        raise FileNotFoundError(path)
    return sock, identity


def _discard(path: str, made: asyncio.Future[tuple[socket.socket, FileIdentity]]) -> None:
    """A socket made for a server whose start was cancelled meanwhile: closed, its file
    removed (unless it is another one by now)."""
    if made.cancelled() or made.exception() is not None:
        return
    sock, identity = made.result()
    sock.close()
    if file_identity(path) == identity:
        with contextlib.suppress(OSError):
            os.unlink(path)


HTTP2_DATA = 0x0
"""The type of an HTTP/2 DATA frame (RFC 9113, section 6.1), in the fourth byte of a frame:
what h2 writes for a message sent on an open stream."""


class CoalescingTransport(asyncio.Transport):
    """A transport that sends what was written during two turns of the event loop at once,
    except a message pushed on an open stream while nothing waits, which leaves at once.

    grpclib writes each HTTP/2 frame group as soon as it is made: an answer to a unary call
    is four writes (the flow-control update for the request, the headers, the message, the
    trailers), so four system calls and, at the peer, up to four wake-ups for one answer.
    Here they are gathered and leave in one write. The write is scheduled at the first write
    of a turn, for the end of the next turn: a request's handler runs in the turn after the
    request was read, so what h2 answers while reading it (the PING acknowledgement the
    kubelet's gRPC client asks for with each request, flow-control updates) leaves with the
    answer, and the kubelet wakes once per call instead of twice. Nothing waits longer than
    the next turn. Everything else goes to the real transport; `close` sends what is
    pending first.

    A write that begins with a DATA frame while nothing is pending or scheduled is a message
    on a stream already answered (a ListAndWatch update; an answer starts with its headers):
    nothing is to be gathered with it, so it leaves at once (holding it two turns cost
    0.1-0.6 ms of a hot-plug under load, issue 19). What follows it in the same turn (the
    rest of a long list, a burst) is gathered and leaves in the next turn.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._scheduled:
            self._pending.append(bytes(data))
            return
        self._scheduled = True
        if len(data) > 3 and data[3] == HTTP2_DATA:
            if not self._transport.is_closing():
                self._transport.write(data)
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))
            self._loop.call_soon(self._flush_next_turn)

    def _flush_next_turn(self) -> None:
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what is pending now (also run by the loop in the turn after the next one)."""
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._scheduled = False
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()


async def written_out() -> None:
    """Returns once what every `CoalescingTransport` was given before the call has gone to
    its transport: each sends what it was given in a turn of the loop by the end of the next
    turn (its first write schedules a callback that schedules the send), so it has left two
    turns later."""
    for _ in range(2):
        await asyncio.sleep(0)


class _CoalescingProtocol(asyncio.Protocol):
    """Hands the connection's protocol a `CoalescingTransport` in place of the real one,
    and tells the server's `_Connections` when the connection opens and closes."""

    def __init__(self, protocol: H2Protocol, connections: _Connections) -> None:
        self._protocol = protocol
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport).
        stream = cast(asyncio.Transport, transport)
        self._connections.opened()
        self._protocol.connection_made(CoalescingTransport(stream, asyncio.get_running_loop()))

    def data_received(self, data: bytes) -> None:
        self._protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.closed()
        self._protocol.connection_lost(exc)


class _Connections:
    """How many accepted connections are open; an event set while there are none."""

    def __init__(self) -> None:
        self.count = 0
        self.none_open = asyncio.Event()
        self.none_open.set()

    def opened(self) -> None:
        self.count += 1
        self.none_open.clear()

    def closed(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.none_open.set()


class PluginServer(grpclib.server.Server):
    """A grpclib server on a Unix socket of fixed permissions, with the DevicePlugin codec
    by default, that can also close the connections it accepted, and sends each loop
    turn's writes of a connection at once (`CoalescingTransport`)."""

    def __init__(self, handlers: Collection[Any], *, codec: CodecBase | None = None) -> None:
        super().__init__(handlers, codec=DevicePluginCodec() if codec is None else codec)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()
        self._connections = _Connections()

    async def serve(
        self, path: str, mode: int = SOCKET_MODE, *, offload: Offload | None = None
    ) -> FileIdentity:
        """Start serving on a new socket file at `path`, in place of a file there
        (`fresh_unix_socket`, made on `offload` when given: a hundred resources starting
        at once no longer wait on each other's file system calls on the loop); returns
        the identity of the socket file."""
        make = functools.partial(fresh_unix_socket, path, mode)
        if offload is None:
            sock, identity = make()
        else:
            made = asyncio.ensure_future(offload.run(make))
            try:
                sock, identity = await asyncio.shield(made)
            except asyncio.CancelledError:
                made.add_done_callback(functools.partial(_discard, path))
                raise
        try:
            await self.start(sock=sock)
        except BaseException:
            sock.close()
            raise
        return identity

    # ---- The one use of grpclib internals in kdp-host (tests/test_private_api.py allows
    # only this). `Server.close()` stops accepting and cancels handlers, but leaves the
    # peer's HTTP/2 connection open (the kubelet's ListAndWatch hangs, new Allocate calls
    # are still served) and on Python 3.12+ `wait_closed()` then never returns. grpclib has
    # no public way to close the connections a server accepted (its upstream issues about
    # graceful close are open), so this records the protocols its private
    # `_protocol_factory` creates and closes their `processor` (the connection's event
    # processor, which closes the transport). tests/test_server.py fails loudly if grpclib
    # stops calling the factory or the processor stops closing the connection.
    # The same hook is the one place a connection's transport can be chosen: the protocol
    # is wrapped so that grpclib writes to a `CoalescingTransport` (asyncio's public
    # Protocol and Transport interfaces, nothing of grpclib's).

    def _protocol_factory(self) -> asyncio.Protocol:  # type: ignore[override]
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return _CoalescingProtocol(protocol, self._connections)

    async def wait_peers_hung_up(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until every accepted connection is closed;
        whether they are. After its ListAndWatch stream ends, the kubelet forgets the
        client and then closes its connection (docs/kubelet-contract.md §9)."""
        try:
            async with asyncio.timeout(timeout):
                await self._connections.none_open.wait()
        except TimeoutError:
            return False
        return True

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            # `processor` exists once the connection is made; an accepted socket whose
            # connection_made has not run yet is closed with the listening server.
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close()
