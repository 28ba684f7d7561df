"""What the allocation-path commands cost: Allocate with and without `allocate.command`, and a
PreStartContainer round trip with a trivial `preStart.command`.

Three kdp-host processes (default loop), each with one glob resource: the rich allocate
section of the latency benchmark alone, the same plus an `allocate.command` that prints `{}`,
and one with a `preStart.command` of `true`. A grpcio client sends pre-serialized requests.
The hook figures are dominated by one fork and exec per call; the last figure is that
cost alone: `ProcessRunner.run(["true"])` in this process (spawn through the death-signal
wrapper, wait, reap, close the pipes), and how long each spawn holds the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from typing import Any

from kdp_host.process import ProcessRunner

from .harness import (
    BenchError,
    Figure,
    Options,
    RawClient,
    glob_resource,
    make_device_files,
    make_workdir,
    percentile,
    remove_tree,
    rich_allocate,
    time_calls,
)
from .latency import RESOURCE, allocate_request, check_response, served_host
from .proto import load_api

MS = 1000.0
HOOK_CALLS = 300
"""Calls per run with a command: each one forks and execs, so fewer than plain Allocates."""


def _printf() -> str:
    path = shutil.which("printf")
    if path is None:
        raise BenchError("no printf executable on PATH")
    return path


def _true() -> str:
    path = shutil.which("true")
    if path is None:
        raise BenchError("no true executable on PATH")
    return path


def _spawn_figures(opts: Options, calls: int) -> list[Figure]:
    run_figure = Figure("command run p50 (true)", "ms", note="ProcessRunner.run, in process")
    held = Figure("event loop held per spawn p50", "ms", note="create_subprocess_exec call")
    true = _true()

    async def measure() -> None:
        runner = ProcessRunner()
        loop_held: list[float] = []
        original = asyncio.create_subprocess_exec

        async def timed(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
            started = time.perf_counter()
            process = await original(*args, **kwargs)
            loop_held.append(time.perf_counter() - started)
            return process

        asyncio.create_subprocess_exec = timed  # type: ignore[assignment]
        try:
            for _ in range(opts.repeats):
                loop_held.clear()
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    await runner.run([true], timeout=10)
                    times.append(time.perf_counter() - started)
                run_figure.add(percentile(times, 50) * MS)
                held.add(percentile(loop_held, 50) * MS)
        finally:
            asyncio.create_subprocess_exec = original  # type: ignore[assignment]

    asyncio.run(measure())
    return [run_figure, held]


def run(opts: Options) -> list[Figure]:
    workdir = make_workdir("hooks")
    plain = Figure("allocate p50 without allocate.command", "ms")
    hooked = Figure("allocate p50 with allocate.command", "ms", note="prints {}: one fork+exec")
    pre_start = Figure("PreStartContainer p50 with preStart: true", "ms")
    hook_calls = min(opts.calls, HOOK_CALLS)
    try:
        make_device_files(workdir / "dev", 4, "fpga")
        pattern = f"{workdir}/dev/fpga*"
        allocate = rich_allocate(workdir)
        with_command: dict[str, Any] = {
            **allocate,
            "command": [_printf(), "{}"],  # `{}` is literal text, not a template field
        }
        resources = {
            "plain": [glob_resource(RESOURCE, pattern, allocate)],
            "hooked": [glob_resource(RESOURCE, pattern, with_command)],
            "pre-start": [
                glob_resource(RESOURCE, pattern, allocate, preStart={"command": [_true()]})
            ],
        }
        with contextlib.ExitStack() as stack:
            served = {
                name: stack.enter_context(served_host(workdir, f"kdp-{name}", res))
                for name, res in resources.items()
            }
            clients = {
                name: stack.enter_context(contextlib.closing(RawClient(s.socket_path)))
                for name, s in served.items()
            }
            request = allocate_request(served["plain"].device_ids[:2])
            pre_start_request = (
                load_api()
                .pb2.PreStartContainerRequest(devices_ids=served["pre-start"].device_ids[:2])
                .SerializeToString()
            )
            allocate_plain = clients["plain"].unary("Allocate")
            allocate_hooked = clients["hooked"].unary("Allocate")
            call_pre_start = clients["pre-start"].unary("PreStartContainer")
            check_response(allocate_plain(request))
            check_response(allocate_hooked(request))
            call_pre_start(pre_start_request)
            for _ in range(opts.repeats):
                time_calls(allocate_plain, request, opts.warmup)
                plain.add(percentile(time_calls(allocate_plain, request, opts.calls), 50) * MS)
                time_calls(allocate_hooked, request, min(opts.warmup, 20))
                times = time_calls(allocate_hooked, request, hook_calls)
                hooked.add(percentile(times, 50) * MS)
                times = time_calls(call_pre_start, pre_start_request, hook_calls)
                pre_start.add(percentile(times, 50) * MS)
                for host in served.values():
                    host.host.check_alive()
    finally:
        remove_tree(workdir)
    return [plain, hooked, pre_start, *_spawn_figures(opts, hook_calls)]
