"""A refusal's status message is bounded (hostile27 F6): an Allocate naming 20,000 unknown
IDs made a 150 kB reason whose HPACK encoding held the event loop 6 s, the caller's
connection was lost before the refusal arrived, and its log line was 150 kB too. The reason
names the smallest `IDS_NAMED` IDs and how many more (`rules.named_ids`); any reason past
`STATUS_MESSAGE_LIMIT` is cut where it becomes the status (`protocol.refusal`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpclib
import pytest
from grpclib.client import Channel
from grpclib.const import Status

from kdp_host.api.v1beta1 import AllocateRequest, ContainerAllocateRequest, DevicePluginStub
from kdp_host.protocol.refusal import refusal
from kdp_host.rules import IDS_NAMED, STATUS_MESSAGE_LIMIT, named_ids
from kdp_host.simulator import KubeletSimulator

from .test_e2e import FPGA, two_resources

UNKNOWN = 20_000


def test_named_ids_names_the_smallest_and_counts_the_rest() -> None:
    assert named_ids(["b", "a", "b"]) == "a, b"
    many = named_ids(f"x{i:05d}" for i in range(UNKNOWN))
    assert many.startswith("x00000, x00001, ") and many.endswith(
        f"x{IDS_NAMED - 1:05d} (and {UNKNOWN - IDS_NAMED} more)"
    )


def test_a_reason_past_the_limit_is_cut_saying_so() -> None:
    assert refusal(Status.UNAVAILABLE, "short").message == "short"
    long = "r" * (3 * STATUS_MESSAGE_LIMIT)
    cut = refusal(Status.INVALID_ARGUMENT, long)
    assert cut.status == Status.INVALID_ARGUMENT and cut.message is not None
    assert len(cut.message) == STATUS_MESSAGE_LIMIT and cut.message.startswith("rrr")
    kept = cut.message.index(" ... (")
    assert cut.message.endswith(f"({len(long) - kept} more characters in kdp-host's log)")


async def test_an_allocate_naming_many_unknown_ids_is_refused_briefly(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host: Any
) -> None:
    running = await start_host(two_resources(socket_dir, devices))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    channel = Channel(path=running.host.resources[FPGA].socket_path)
    ids = [f"x{i}" for i in range(UNKNOWN)]
    try:
        with pytest.raises(grpclib.GRPCError) as err:
            await DevicePluginStub(channel).allocate(
                AllocateRequest(container_requests=[ContainerAllocateRequest(devices_ids=ids)])
            )
    finally:
        channel.close()
    message = err.value.message or ""
    assert err.value.status == Status.INVALID_ARGUMENT, err.value
    assert len(message) <= STATUS_MESSAGE_LIMIT
    assert f"(and {UNKNOWN - IDS_NAMED} more)" in message, message
    assert (await kubelet.allocate(FPGA, 1)) is not None  # (and answers the kubelet after)
