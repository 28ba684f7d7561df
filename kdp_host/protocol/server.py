"""The gRPC server that carries one resource's DevicePlugin service."""

from __future__ import annotations

import weakref
from collections.abc import Collection
from typing import Any

import grpclib.server
from grpclib.protocol import H2Protocol


class PluginServer(grpclib.server.Server):
    """A grpclib server that can also close the connections it accepted.

    `Server.close()` stops accepting and cancels handlers, but leaves the peer's HTTP/2
    connection open, and on Python 3.12+ `wait_closed()` then never returns.
    """

    def __init__(self, handlers: Collection[Any]) -> None:
        super().__init__(handlers)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

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
