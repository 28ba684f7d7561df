"""The gRPC server that carries one resource's DevicePlugin service on a Unix socket."""

from __future__ import annotations

import os
import socket
import weakref
from collections.abc import Collection
from typing import Any

import grpclib.server
from grpclib.encoding.base import CodecBase
from grpclib.protocol import H2Protocol

from .codec import DevicePluginCodec

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


class PluginServer(grpclib.server.Server):
    """A grpclib server on a Unix socket of fixed permissions, with the DevicePlugin codec
    by default, that can also close the connections it accepted."""

    def __init__(self, handlers: Collection[Any], *, codec: CodecBase | None = None) -> None:
        super().__init__(handlers, codec=DevicePluginCodec() if codec is None else codec)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    async def serve(self, path: str, mode: int = SOCKET_MODE) -> None:
        """Start serving on a new socket file at `path` (see `bind_unix_socket`)."""
        sock = bind_unix_socket(path, mode)
        try:
            await self.start(sock=sock)
        except BaseException:
            sock.close()
            raise

    # ---- The one use of grpclib internals in kdp-host (tests/test_private_api.py allows
    # only this). `Server.close()` stops accepting and cancels handlers, but leaves the
    # peer's HTTP/2 connection open (the kubelet's ListAndWatch hangs, new Allocate calls
    # are still served) and on Python 3.12+ `wait_closed()` then never returns. grpclib has
    # no public way to close the connections a server accepted (its upstream issues about
    # graceful close are open), so this records the protocols its private
    # `_protocol_factory` creates and closes their `processor` (the connection's event
    # processor, which closes the transport). tests/test_server.py fails loudly if grpclib
    # stops calling the factory or the processor stops closing the connection.

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            # `processor` exists once the connection is made; an accepted socket whose
            # connection_made has not run yet is closed with the listening server.
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close()
