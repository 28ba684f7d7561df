"""The PodResources calls the poller makes, their answers decoded off the event loop when large.

`GetAllocatableResources` names every healthy device of every resource of the node, any
plugin's: a probe listing 120,000 devices makes it a ~1 MiB answer, which betterproto2's
pure-Python decoder reads in ~120 ms, on the loop every other resource's gRPC and the
probes' answers wait on (issue 19). grpclib decodes a reply where it arrives (its codec calls
`FromString` on the loop), so the reply is taken in as its bytes (`_Undecoded`) and an
answer larger than `DECODE_ON_LOOP_BYTES` is decoded, and what the poller keeps of it made,
through the host's offload. A short one (the common node) is decoded where it arrives:
a thread hop costs more than it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import grpclib.client
from grpclib.const import Cardinality

from .api.v1 import (
    AllocatableResourcesRequest,
    AllocatableResourcesResponse,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
)
from .files import Offload

DECODE_ON_LOOP_BYTES: Final = 16 * 1024
"""An answer up to this size is decoded on the event loop (about 2 ms of betterproto2)."""
LIST: Final = "/v1.PodResourcesLister/List"
ALLOCATABLE: Final = "/v1.PodResourcesLister/GetAllocatableResources"

T = TypeVar("T")


class _Undecoded:
    """A reply as its bytes: grpclib's codec makes one with `FromString`, on the loop."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> _Undecoded:  # (the name grpclib's codec calls)
        return cls(data)


async def _call(
    channel: grpclib.client.Channel,
    route: str,
    request: object,
    timeout: float,
    offload: Offload | None,
    read: Callable[[bytes], T],
) -> T:
    """Call `route` with `request`; `read` of the answer's bytes, through `offload` when the
    answer is larger than `DECODE_ON_LOOP_BYTES` (inline without an offload). Raises what
    grpclib raises."""
    stream: grpclib.client.Stream[object, _Undecoded]
    async with channel.request(
        route, Cardinality.UNARY_UNARY, type(request), _Undecoded, timeout=timeout
    ) as stream:
        await stream.send_message(request, end=True)
        reply = await stream.recv_message()
    data = b"" if reply is None else reply.data
    if offload is None or len(data) <= DECODE_ON_LOOP_BYTES:
        return read(data)
    return await offload.run(lambda: read(data))


async def list_pod_resources(
    channel: grpclib.client.Channel, timeout: float, offload: Offload | None
) -> ListPodResourcesResponse:
    """PodResources `List`."""
    return await _call(
        channel, LIST, ListPodResourcesRequest(), timeout, offload,
        ListPodResourcesResponse.FromString,
    )  # fmt: skip


async def allocatable_devices(
    channel: grpclib.client.Channel, timeout: float, offload: Offload | None
) -> Mapping[str, frozenset[str]]:
    """PodResources `GetAllocatableResources`: resource -> the IDs the kubelet could hand out."""
    return await _call(
        channel, ALLOCATABLE, AllocatableResourcesRequest(), timeout, offload, _by_resource
    )


def _by_resource(data: bytes) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for devices in AllocatableResourcesResponse.FromString(data).devices:
        found.setdefault(devices.resource_name, set()).update(devices.device_ids)
    return {name: frozenset(ids) for name, ids in found.items()}
