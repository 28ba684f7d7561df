"""The DevicePlugin gRPC service of one resource, and the server that carries it.

Each ListAndWatch message is the complete device list. Encoding it with betterproto2 costs
~20 us per device, so the service sends bytes built by `ListAndWatchEncoder`: every device
entry is encoded once per distinct (id, health, NUMA) and cached, the message is their
concatenation (byte-identical to encoding the whole message), and a large cold build
yields to the event loop between chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpclib
import grpclib.server
from grpclib.const import Status
from grpclib.protocol import H2Protocol

from .allocation import AllocationBuilder, AllocationError, preferred_allocation
from .api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerPreferredAllocationResponse,
    Device,
    DevicePluginBase,
    DevicePluginOptions,
    Empty,
    ListAndWatchResponse,
    NumaNode,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
    PreStartContainerRequest,
    PreStartContainerResponse,
    TopologyInfo,
)
from .config import ResourceConfig
from .devices import HEALTHY, UNHEALTHY, AdvertisedDevice, DeviceTable, Snapshot
from .logs import EventLogger
from .metrics import Metrics

ENCODE_CHUNK = 256
_LIST_AND_WATCH_TAG = b"\x0a"  # field 1, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class PreEncodedListAndWatchResponse(ListAndWatchResponse):
    """A ListAndWatchResponse whose wire bytes were built ahead (grpclib only serializes it)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializeToString(self) -> bytes:
        return self._data

    def __bytes__(self) -> bytes:
        return self._data


def device_message(entry: AdvertisedDevice) -> Device:
    topology = None
    if entry.device.numa is not None:
        topology = TopologyInfo(nodes=[NumaNode(id=entry.device.numa)])
    return Device(id=entry.id, health=HEALTHY if entry.healthy else UNHEALTHY, topology=topology)


class ListAndWatchEncoder:
    """Builds ListAndWatchResponse bytes for snapshots, reusing per-device encodings."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, bool, int | None], bytes] = {}
        self._last: tuple[int, bytes] | None = None

    async def encode(self, snapshot: Snapshot) -> bytes:
        if self._last is not None and self._last[0] == snapshot.version:
            return self._last[1]
        entries: dict[tuple[str, bool, int | None], bytes] = {}
        parts: list[bytes] = []
        misses = 0
        for entry in snapshot.advertised:
            key = (entry.id, entry.healthy, entry.device.numa)
            encoded = self._entries.get(key)
            if encoded is None:
                payload = bytes(device_message(entry))
                encoded = _LIST_AND_WATCH_TAG + _varint(len(payload)) + payload
                misses += 1
                if misses % ENCODE_CHUNK == 0:
                    await asyncio.sleep(0)
            entries[key] = encoded
            parts.append(encoded)
        data = b"".join(parts)
        self._entries = entries
        self._last = (snapshot.version, data)
        return data


class DevicePluginService(DevicePluginBase):
    def __init__(
        self,
        config: ResourceConfig,
        table: DeviceTable,
        encoder: ListAndWatchEncoder,
        metrics: Metrics,
        log: EventLogger,
        *,
        on_stream_lost: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._config = config
        self._table = table
        self._encoder = encoder
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._on_stream_lost = on_stream_lost
        self._builder = AllocationBuilder(config)
        self._closing = asyncio.Event()
        self._open_streams = 0
        self._streams_drained = asyncio.Event()
        self._streams_drained.set()
        self.options = DevicePluginOptions(
            pre_start_required=False,
            get_preferred_allocation_available=config.preferred != "none",
        )

    async def end_streams(self, timeout: float = 0.5) -> None:
        """End every ListAndWatch stream with a clean end-of-stream and wait until sent."""
        self._closing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._streams_drained.wait(), timeout)

    async def get_device_plugin_options(self, message: Empty) -> DevicePluginOptions:
        return self.options

    async def _call_rpc_handler_server_stream(
        self, handler: Callable[..., Any], stream: grpclib.server.Stream[Any, Any], request: Any
    ) -> None:
        """Drive the stream under aclosing, so the generator's `finally` runs on cancel.

        When the generator ends (the host is closing the server) the trailers are sent
        right here, so `end_streams` knows the client got a clean end-of-stream before the
        connection is closed.
        """
        self._open_streams += 1
        self._streams_drained.clear()
        try:
            async with contextlib.aclosing(handler(request)) as responses:
                async for response in responses:
                    await stream.send_message(response)
            await stream.send_trailing_metadata()
        finally:
            self._open_streams -= 1
            if self._open_streams == 0:
                self._streams_drained.set()

    async def list_and_watch(self, message: Empty) -> AsyncIterator[ListAndWatchResponse]:
        name = self._config.name
        streams = self._metrics.list_and_watch_streams.labels(name)
        updates = self._metrics.list_and_watch_updates.labels(name)
        streams.inc()
        self._log.info("list_and_watch_opened")
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            snapshot = self._table.snapshot
            while not self._closing.is_set():
                data = await self._encoder.encode(snapshot)
                yield PreEncodedListAndWatchResponse(data)
                updates.inc()
                newer = asyncio.ensure_future(self._table.wait_newer(snapshot.version))
                await asyncio.wait((newer, closing), return_when=asyncio.FIRST_COMPLETED)
                if not newer.done():
                    newer.cancel()
                    break
                snapshot = newer.result()
        finally:
            closing.cancel()
            streams.dec()
            by_peer = not self._closing.is_set()
            self._log.info("list_and_watch_closed", by="kubelet" if by_peer else "plugin")
            if by_peer and self._on_stream_lost is not None:
                self._on_stream_lost()

    async def get_preferred_allocation(
        self, message: PreferredAllocationRequest
    ) -> PreferredAllocationResponse:
        started = self._clock()
        snapshot = self._table.snapshot
        responses = []
        for request in message.container_requests:
            try:
                ids = preferred_allocation(
                    self._config.preferred,
                    snapshot,
                    request.available_deviceIDs,
                    request.must_include_deviceIDs,
                    request.allocation_size,
                )
            except Exception:
                self._log.exception("preferred_allocation_failed", fallback="first_available")
                self._metrics.preferred_fallbacks.labels(self._config.name).inc()
                ids = list(dict.fromkeys(request.must_include_deviceIDs))
                for device_id in request.available_deviceIDs:
                    if len(ids) >= request.allocation_size:
                        break
                    entry = snapshot.by_advertised_id.get(device_id)
                    if entry is not None and entry.healthy and device_id not in ids:
                        ids.append(device_id)
            responses.append(ContainerPreferredAllocationResponse(device_i_ds=ids))
        self._metrics.preferred_seconds.labels(self._config.name).observe(self._clock() - started)
        return PreferredAllocationResponse(container_responses=responses)

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        started = self._clock()
        name = self._config.name
        snapshot = self._table.snapshot
        try:
            if not message.container_requests:
                raise AllocationError(f"{name}: Allocate request has no container requests")
            responses = [
                self._builder.container_response(snapshot, request.devices_ids)
                for request in message.container_requests
            ]
        except AllocationError as exc:
            self._metrics.allocations.labels(name, "invalid").inc()
            self._log.warning("allocate_refused", reason=str(exc))
            raise grpclib.GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        self._metrics.allocations.labels(name, "ok").inc(len(responses))
        self._metrics.allocate_seconds.labels(name).observe(self._clock() - started)
        return AllocateResponse(container_responses=responses)

    async def pre_start_container(
        self, message: PreStartContainerRequest
    ) -> PreStartContainerResponse:
        return PreStartContainerResponse()


class PluginServer(grpclib.server.Server):
    """A grpclib server that can also close the connections it accepted.

    `Server.close()` stops accepting and cancels handlers, but leaves the kubelet's HTTP/2
    connection open, and on Python 3.12+ `wait_closed()` then never returns.
    """

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self._protocols: set[H2Protocol] = set()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in self._protocols:
            transport = getattr(protocol.connection, "_transport", None)
            if transport is not None:
                transport.close()
        self._protocols.clear()
