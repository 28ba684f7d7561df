"""Allocate round trips from a grpcio client, kdp-host against the floor.

One glob resource with a rich allocate section (env templates, a mount, annotations) served
by kdp-host under uvloop (the default loop) and under the standard asyncio loop, and two
minimal grpcio servers (grpc.aio and the thread-pool server) answering with the very bytes
kdp-host answered with. Every run measures all four, in rotating order, and the ratios are
taken within the run; the floor of a run is the faster of the two grpcio servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import (
    BenchError,
    BenchKubelet,
    Figure,
    KdpHost,
    Options,
    RawClient,
    glob_resource,
    helper_process,
    make_device_files,
    make_workdir,
    percentile,
    read_line,
    remove_tree,
    rich_allocate,
    time_calls,
)
from .proto import load_api

RESOURCE = "bench.kdp-host.io/fpga"
MS = 1000.0


@dataclass
class Target:
    label: str
    call: Callable[[bytes], bytes]


@dataclass
class ServedHost:
    host: KdpHost
    kubelet: BenchKubelet
    socket_path: Path
    device_ids: list[str]


@contextlib.contextmanager
def served_host(
    workdir: Path,
    name: str,
    resources: list[dict[str, Any]],
    loop: str = "auto",
    wait_for: list[str] | None = None,
) -> Iterator[ServedHost]:
    """kdp-host with its own socket dir and kubelet; the resources `wait_for` (default: all)
    registered and their first lists received. The socket is the first of them."""
    socket_dir = workdir / f"{name}-plugins"
    kubelet = BenchKubelet(socket_dir)
    kubelet.start()
    host = KdpHost(workdir, socket_dir, resources, loop=loop, name=name)
    try:
        started = host.start()
        names = wait_for if wait_for is not None else [r["name"] for r in resources]
        try:
            events = kubelet.wait_registrations(names, since=started, timeout=30)
        except BenchError:
            host.check_alive()
            raise
        first = events[names[0]]
        connection = kubelet.plugins[names[0]]
        connection.wait_update(lambda u: u.total() > 0, timeout=10)
        yield ServedHost(host, kubelet, socket_dir / first.endpoint, connection.device_ids())
    finally:
        host.stop()
        kubelet.close()


def allocate_request(device_ids: list[str]) -> bytes:
    pb2 = load_api().pb2
    request = pb2.AllocateRequest(
        container_requests=[pb2.ContainerAllocateRequest(devices_ids=device_ids)]
    )
    data: bytes = request.SerializeToString()
    return data


def check_response(data: bytes) -> None:
    response = load_api().pb2.AllocateResponse.FromString(data)
    if len(response.container_responses) != 1:
        raise BenchError("Allocate answered without exactly one container response")
    container = response.container_responses[0]
    if not (container.envs and container.mounts and container.annotations and container.devices):
        raise BenchError(f"Allocate response is not the rich one configured: {container}")


def allocate_targets(
    stack: contextlib.ExitStack, labels: list[str], hosts: list[ServedHost], request: bytes
) -> list[Target]:
    """One Allocate target per served host, each checked with `request` once; the clients
    close with `stack`."""
    targets = []
    for label, served in zip(labels, hosts, strict=True):
        client = RawClient(served.socket_path)
        stack.callback(client.close)
        call = client.unary("Allocate")
        check_response(call(request))
        targets.append(Target(label, call))
    return targets


def measure(
    targets: list[Target], request: bytes, opts: Options, figures: dict[str, Figure], run: int
) -> dict[str, tuple[float, float]]:
    """One run: warm-up then `opts.calls` timed calls per target; returns label -> (p50, p99)."""
    out = {}
    shift = run % len(targets)
    for target in targets[shift:] + targets[:shift]:
        time_calls(target.call, request, opts.warmup)
        times = time_calls(target.call, request, opts.calls)
        p50, p99 = percentile(times, 50) * MS, percentile(times, 99) * MS
        figures[f"allocate p50 {target.label}"].add(p50)
        figures[f"allocate p99 {target.label}"].add(p99)
        out[target.label] = (p50, p99)
    return out


def run(opts: Options) -> list[Figure]:
    workdir = make_workdir("alloc")
    labels = ["kdp-host uvloop", "kdp-host asyncio", "floor grpc.aio", "floor grpc sync"]
    figures: dict[str, Figure] = {}
    for label in labels:
        figures[f"allocate p50 {label}"] = Figure(f"allocate p50 {label}", "ms")
        figures[f"allocate p99 {label}"] = Figure(f"allocate p99 {label}", "ms")
    ratio = Figure(
        "allocate p50 ratio kdp-host/floor",
        "x",
        target=1.5,
        note="kdp-host on uvloop (its default loop) vs the faster grpcio server, same run",
    )
    ratio_asyncio = Figure(
        "allocate p50 ratio kdp-host asyncio/floor", "x", note="kdp-host --loop asyncio"
    )
    ratio_p99 = Figure("allocate p99 ratio kdp-host/floor", "x", note="uvloop")
    try:
        make_device_files(workdir / "dev", 16, "fpga")
        resources = [glob_resource(RESOURCE, f"{workdir}/dev/fpga*", rich_allocate(workdir))]
        with contextlib.ExitStack() as stack:
            uv = stack.enter_context(served_host(workdir, "kdp-uvloop", resources, "uvloop"))
            aio = stack.enter_context(served_host(workdir, "kdp-asyncio", resources, "asyncio"))
            request = allocate_request(uv.device_ids[:2])
            clients = [stack.enter_context(_closing(RawClient(h.socket_path))) for h in (uv, aio)]
            calls = [c.unary("Allocate") for c in clients]
            response = calls[0](request)
            check_response(response)
            (workdir / "response.bin").write_bytes(response)
            floors = []
            for kind in ("aio", "sync"):
                socket_path = workdir / f"floor-{kind}.sock"
                proc = stack.enter_context(
                    helper_process(
                        "floor_server",
                        "--socket",
                        str(socket_path),
                        "--response",
                        str(workdir / "response.bin"),
                        "--kind",
                        kind,
                    )
                )
                if read_line(proc, 30, "ready line") != "ready":
                    raise BenchError("floor server did not start")
                client = stack.enter_context(_closing(RawClient(socket_path)))
                floors.append(client.unary("Allocate"))
            if floors[0](request) != response:
                raise BenchError("the floor server does not answer with kdp-host's bytes")
            targets = [
                Target(labels[0], calls[0]),
                Target(labels[1], calls[1]),
                Target(labels[2], floors[0]),
                Target(labels[3], floors[1]),
            ]
            for i in range(opts.repeats):
                result = measure(targets, request, opts, figures, i)
                floor_p50 = min(result[labels[2]][0], result[labels[3]][0])
                floor_p99 = min(result[labels[2]][1], result[labels[3]][1])
                ratio.add(result[labels[0]][0] / floor_p50)
                ratio_asyncio.add(result[labels[1]][0] / floor_p50)
                ratio_p99.add(result[labels[0]][1] / floor_p99)
                uv.host.check_alive()
                aio.host.check_alive()
    finally:
        remove_tree(workdir)
    return [*figures.values(), ratio, ratio_asyncio, ratio_p99]


@contextlib.contextmanager
def _closing(client: RawClient) -> Iterator[RawClient]:
    try:
        yield client
    finally:
        client.close()
