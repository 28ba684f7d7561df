"""Allocation latency: GetPreferredAllocation at 1,000 available devices, Allocate with replicas,
and an Allocate that books a new ID beside 8 or 1,000 bookings.

Two views of each:
* in-process: the function the gRPC handler calls (`preferred_allocation`,
  `AllocationBuilder.container_response`), timed around the call;
* round trip: a grpcio client (raw bytes, so the client side costs the same whatever the
  server) calling a DevicePluginService served by grpclib on a unix socket, the server's
  event loop (standard asyncio) in a thread of this process.

The booking figures (`in_process_booking`): `OwnershipIndex.book` of one new ID on a real state
directory shared as a host shares it (`ownership_sync`: merged under the lock, fsync), which the
answer waits for, then the host's read of its own write (as its watcher reads it); the event
loop's CPU time of both is given too (the write's wall time is mostly the disk's fsync).

`run()` returns the figures in milliseconds; `python -m tests.bench.bench_allocation` prints
them. Not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc

from kdp_host.allocation import AllocationBuilder
from kdp_host.api.v1beta1 import (
    AllocateRequest,
    ContainerAllocateRequest,
    ContainerPreferredAllocationRequest,
    PreferredAllocationRequest,
)
from kdp_host.config import (
    AllocateConfig,
    GlobDriverConfig,
    MountConfig,
    PreferredPolicy,
    ResourceConfig,
)
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode, Snapshot
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_sync import read_shared, shared_bookings
from kdp_host.preferred import preferred_allocation
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.protocol.server import PluginServer
from kdp_host.protocol.service import DevicePluginService
from kdp_host.state_lock import hold_instance

RESOURCE = "bench.kdp-host.io/fpga"
MS = 1000.0
POLICIES: tuple[PreferredPolicy, ...] = ("packed", "spread", "numa")
PREFERRED_CALLS = 1000
ALLOCATE_CALLS = 3000
ROUND_TRIPS = 1000
BOOKINGS = (8, 1000)
NEW_BOOKINGS = 40


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered)) - 1))]


def config(replicas: int, preferred: PreferredPolicy = "packed") -> ResourceConfig:
    return ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/fpga*",)),
        allocate=AllocateConfig(
            env={"FPGA_DEVICES": "{ids}", "FPGA_COUNT": "{count}", "FPGA_PATHS": "{paths}"},
            mounts=(MountConfig("/usr/share", "/bitstreams"),),
            annotations={"bench.kdp-host.io/devices": "{ids}"},
        ),
        replicas=replicas,
        preferred=preferred,
    )


def devices(count: int, numa_nodes: int = 2) -> list[Device]:
    return [
        Device(
            id=f"fpga{i:04d}",
            nodes=(DeviceNode(f"/dev/fpga{i:04d}", f"/dev/fpga{i:04d}"),),
            numa=i % numa_nodes,
        )
        for i in range(count)
    ]


def table(physical: int, replicas: int) -> DeviceTable:
    result = DeviceTable(replicas=replicas)
    result.publish(devices(physical))
    return result


def timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(n // 10):  # warm up
        call()
    for _ in range(n):
        started = clock()
        call()
        out.append(clock() - started)
    return out


def summary(prefix: str, samples: Sequence[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(samples, 50) * MS,
        f"{prefix}_p99_ms": percentile(samples, 99) * MS,
    }


def in_process_preferred() -> dict[str, float]:
    """1,000 available IDs, as the kubelet sends them with no NUMA-aligned subset
    (docs/kubelet-contract.md §5)."""
    figures: dict[str, float] = {}
    for label, physical, replicas in (("1000x1", 1000, 1), ("100x10", 100, 10)):
        snapshot = table(physical, replicas).snapshot
        available = [entry.id for entry in snapshot.advertised]
        random.Random(1).shuffle(available)  # Go map order
        for policy in POLICIES:
            for size in (1, 8):
                call = functools.partial(
                    preferred_allocation, policy, snapshot, available, [], size
                )
                samples = timed(call, PREFERRED_CALLS)
                figures |= summary(f"preferred_inproc_{policy}_{label}_size{size}", samples)
    return figures


def in_process_allocate() -> dict[str, float]:
    """replicas=10 over 100 physical devices; requests of 1 and 4 replica IDs."""
    snapshot = table(100, 10).snapshot
    builder = AllocationBuilder(config(10))
    every = [entry.id for entry in snapshot.advertised]
    rng = random.Random(2)
    figures: dict[str, float] = {}
    for count in (1, 4):
        requests = [rng.sample(every, count) for _ in range(64)]
        cursor = iter(range(10**9))

        def call(reqs: list[list[str]] = requests, it: Iterator[int] = cursor) -> object:
            return builder.container_response(snapshot, reqs[next(it) % len(reqs)])

        figures |= summary(f"allocate_inproc_replicas10_ids{count}", timed(call, ALLOCATE_CALLS))
    return figures


async def booking_rounds(existing: int) -> dict[str, list[float]]:
    """Book `NEW_BOOKINGS` new IDs one at a time beside `existing` bookings, each read back."""
    workdir = Path(tempfile.mkdtemp(prefix="kdpb-book-", dir="/tmp"))
    log, offload = get_logger(), DaemonThreads()
    held = hold_instance(str(workdir), "bench001", log)
    try:
        index = OwnershipIndex(Metrics(), lambda path: (("c", int(path[len("/dev/fpga") :])), path))
        sync = await shared_bookings(index, str(workdir), "bench001", offload, log)
        listed = DeviceTable()
        index.attach(RESOURCE, listed.publish, log.bind(resource=RESOURCE))
        index.publish(RESOURCE, {d.id: d for d in devices(existing + NEW_BOOKINGS)})
        deadline = time.monotonic() + 60
        while len(listed.snapshot.devices) < existing + NEW_BOOKINGS:  # admitted in turns
            if time.monotonic() > deadline:
                raise TimeoutError("the devices were not admitted within 60 s")
            await asyncio.sleep(0.01)
        ids = [f"fpga{i:04d}" for i in range(existing + NEW_BOOKINGS)]
        await index.book(RESOURCE, ids[:existing])
        figures: dict[str, list[float]] = {"wall": [], "loop": [], "back_wall": [], "back_loop": []}
        for booked in ids[existing:]:
            started, cpu = time.perf_counter(), time.thread_time()
            await index.book(RESOURCE, [booked])
            figures["wall"].append(time.perf_counter() - started)
            figures["loop"].append(time.thread_time() - cpu)
            started = time.perf_counter()
            saved, others, ours, *_ = await offload.run(
                functools.partial(read_shared, sync.file, "bench001")
            )
            cpu = time.thread_time()
            await index.take_in(saved, others, ours)
            figures["back_loop"].append(time.thread_time() - cpu)
            figures["back_wall"].append(time.perf_counter() - started)
        return figures
    finally:
        os.close(held)
        shutil.rmtree(workdir, ignore_errors=True)


def in_process_booking() -> dict[str, float]:
    """An Allocate that books a new ID (its answer waits for `ownership.json`), beside 8 and
    1,000 bookings: the write's wall time and the loop's CPU for it, and the same for the
    host's read of its own write."""
    figures: dict[str, float] = {}
    for existing in BOOKINGS:
        rounds = asyncio.run(booking_rounds(existing))
        for what, samples in rounds.items():
            label = "book" if what in ("wall", "loop") else "readback"
            kind = "wall" if what.endswith("wall") else "loop_cpu"
            figures[f"allocate_{label}_new_id_{existing}_bookings_{kind}_p50_ms"] = (
                percentile(samples, 50) * MS
            )
    return figures


@contextlib.contextmanager
def served(resource: ResourceConfig, physical: int) -> Iterator[tuple[Path, Snapshot]]:
    """A DevicePluginService on a unix socket, its event loop in a daemon thread."""
    workdir = Path(tempfile.mkdtemp(prefix="kdpb-alloc-", dir="/tmp"))
    socket_path = workdir / "plugin.sock"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        devices_table = table(physical, resource.replicas)
        service = DevicePluginService(
            resource, devices_table, ListAndWatchEncoder(), Metrics(), get_logger()
        )
        server = PluginServer([service])
        await server.serve(str(socket_path))
        holder["server"] = server
        holder["snapshot"] = devices_table.snapshot
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
    ready.wait(30)
    try:
        snapshot = holder["snapshot"]
        assert isinstance(snapshot, Snapshot)
        yield socket_path, snapshot
    finally:

        async def close() -> None:
            server = holder["server"]
            assert isinstance(server, PluginServer)
            server.close()
            server.close_connections()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)


def raw_unary(channel: grpc.Channel, method: str) -> Callable[[bytes], bytes]:
    call: Callable[[bytes], bytes] = channel.unary_unary(
        f"/v1beta1.DevicePlugin/{method}", request_serializer=None, response_deserializer=None
    )
    return call


def round_trips() -> dict[str, float]:
    figures: dict[str, float] = {}
    with served(config(1), 1000) as (socket_path, snapshot):
        available = [entry.id for entry in snapshot.advertised]
        random.Random(3).shuffle(available)
        request = bytes(
            PreferredAllocationRequest(
                container_requests=[
                    ContainerPreferredAllocationRequest(
                        available_deviceIDs=available, must_include_deviceIDs=[], allocation_size=4
                    )
                ]
            )
        )
        with grpc.insecure_channel(
            f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]
        ) as channel:
            call = raw_unary(channel, "GetPreferredAllocation")
            figures |= summary(
                "preferred_grpc_packed_1000x1_size4", timed(lambda: call(request), ROUND_TRIPS)
            )
    with served(config(10), 100) as (socket_path, snapshot):
        every = [entry.id for entry in snapshot.advertised]
        rng = random.Random(4)
        requests = [
            bytes(
                AllocateRequest(
                    container_requests=[ContainerAllocateRequest(devices_ids=rng.sample(every, 4))]
                )
            )
            for _ in range(64)
        ]
        with grpc.insecure_channel(
            f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]
        ) as channel:
            call = raw_unary(channel, "Allocate")
            cursor = iter(range(10**9))
            figures |= summary(
                "allocate_grpc_replicas10_ids4",
                timed(lambda: call(requests[next(cursor) % len(requests)]), ROUND_TRIPS),
            )
    return figures


def run() -> dict[str, float]:
    figures: dict[str, float] = {}
    figures |= in_process_preferred()
    figures |= in_process_allocate()
    figures |= in_process_booking()
    figures |= round_trips()
    return figures


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:55s} {value:8.3f}")
