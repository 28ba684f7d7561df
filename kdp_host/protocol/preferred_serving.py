"""GetPreferredAllocation of one resource: the request read, off the event loop where large,
and answered by what it needs (`preferred_need.PreferredNeed`).

The kubelet's request names every free device of the resource (docs/kubelet-contract.md §5):
a probe of 60,000 devices makes it ~0.5 MB, ~9 ms to read. grpclib reads a request where it
arrives (its codec, on the loop), so this call's request is taken in as its bytes
(`ReceivedBytes`) and one larger than `DECODE_ON_LOOP_BYTES` is read through the offload,
the other resources' calls and the probes served meanwhile. The answer then looks at the
request's every ID only where the policy ranks them or the container may be given two
devices that collide (`PreferredNeed.steers`): otherwise "no preference".
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import grpclib.server

from ..api.v1beta1 import (
    ContainerPreferredAllocationRequest,
    ContainerPreferredAllocationResponse,
    PreferredAllocationRequest,
    PreferredAllocationResponse,
)
from ..config import ResourceConfig
from ..device_table import DeviceTable
from ..devices import Snapshot
from ..files import Offload
from ..logs import EventLogger
from ..metric_histograms import Observer
from ..metrics import Metrics
from ..preferred import first_healthy, preferred_allocation
from ..preferred_need import PreferredNeed
from .codec import ReceivedBytes, unparsable
from .wire_read import WireError, decode_preferred_allocation_request

PREFERRED_ALLOCATION: Final = "/v1beta1.DevicePlugin/GetPreferredAllocation"
DECODE_ON_LOOP_BYTES: Final = 64 * 1024
"""A request up to this size (~9,000 short IDs, ~1 ms to read) is read on the event loop: a
thread hop costs more than a shorter one."""
_NO_PREFERENCE = ContainerPreferredAllocationResponse(device_i_ds=[])
"""No preference (docs/kubelet-contract.md §5)."""


@dataclass
class PreferredServing:
    """Answers a resource's GetPreferredAllocation calls (asked only where advertised:
    `PreferredNeed.announced`)."""

    config: ResourceConfig
    table: DeviceTable
    need: PreferredNeed
    metrics: Metrics
    log: EventLogger
    clock: Callable[[], float]
    offload: Offload | None = None
    """Where a large request is read (None: on the loop)."""

    async def serve(
        self, stream: grpclib.server.Stream[ReceivedBytes, PreferredAllocationResponse]
    ) -> None:
        """The handler: the request read (through the offload when large), then answered."""
        received = await stream.recv_message()
        assert received is not None
        await stream.send_message(await self.answer(await self._read(received.data)))

    async def _read(self, data: bytes) -> PreferredAllocationRequest:
        try:
            if self.offload is None or len(data) <= DECODE_ON_LOOP_BYTES:
                return decode_preferred_allocation_request(data)
            return await self.offload.run(lambda: decode_preferred_allocation_request(data))
        except WireError as exc:
            raise unparsable(PreferredAllocationRequest, exc) from None

    @functools.cached_property
    def _seconds(self) -> Observer:
        return self.metrics.preferred_seconds.labels(self.config.name)

    async def answer(self, message: PreferredAllocationRequest) -> PreferredAllocationResponse:
        started = self.clock()
        snapshot = self.table.snapshot
        ranked = self.need.policy_matters(snapshot)
        asked = message.container_requests
        responses = [self._container(snapshot, request, ranked) for request in asked]
        self._seconds.observe(self.clock() - started)
        return PreferredAllocationResponse(container_responses=responses)

    def _container(
        self, snapshot: Snapshot, request: ContainerPreferredAllocationRequest, ranked: bool
    ) -> ContainerPreferredAllocationResponse:
        available, must = request.available_deviceIDs, request.must_include_deviceIDs
        size = request.allocation_size
        steer = self.need.steers(snapshot, available, must, size)
        if not steer and not ranked:
            # nothing to choose by: "no preference" (but what the container has, kept anyway)
            if not must:
                return _NO_PREFERENCE
            return ContainerPreferredAllocationResponse(device_i_ds=list(dict.fromkeys(must)))
        try:
            policy = self.config.preferred
            ids = preferred_allocation(policy, snapshot, available, must, size, steer=steer)
        except Exception:
            self.log.exception("preferred_allocation_failed", fallback="first_available")
            self.metrics.preferred_fallbacks.labels(self.config.name).inc()
            ids = first_healthy(snapshot, available, must, size)
        return ContainerPreferredAllocationResponse(device_i_ds=ids)
