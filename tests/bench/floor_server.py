"""The floor for the Allocate benchmark: a minimal grpcio DevicePlugin on a unix socket.

It parses each AllocateRequest with the official protobuf classes (as any server would) and
answers with fixed response bytes (the very bytes kdp-host answered with), so it measures
what gRPC itself costs on this machine. Run as a child process:

    python -m tests.bench.floor_server --socket S --response FILE --kind aio|sync

It prints `ready` once serving and stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

from .proto import load_api

SERVICE = "v1beta1.DevicePlugin"


def _handlers(response: bytes, options: bytes, is_async: bool) -> Any:
    api = load_api()
    parse = api.pb2.AllocateRequest.FromString
    empty = api.pb2.Empty.FromString

    if is_async:

        async def allocate_async(request: Any, context: Any) -> bytes:
            return response

        async def options_async(request: Any, context: Any) -> bytes:
            return options

        allocate_fn: Any = allocate_async
        options_fn: Any = options_async
    else:

        def allocate_sync(request: Any, context: Any) -> bytes:
            return response

        def options_sync(request: Any, context: Any) -> bytes:
            return options

        allocate_fn = allocate_sync
        options_fn = options_sync

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Allocate": grpc.unary_unary_rpc_method_handler(
                allocate_fn, request_deserializer=parse
            ),
            "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
                options_fn, request_deserializer=empty
            ),
        },
    )


def _wait_stdin_closed() -> None:
    sys.stdin.read()


def serve_sync(socket_path: str, response: bytes, options: bytes) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_handlers(response, options, False),))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    print("ready", flush=True)
    _wait_stdin_closed()
    server.stop(None)


async def serve_aio(socket_path: str, response: bytes, options: bytes) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(response, options, True),))
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    print("ready", flush=True)
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch_stdin() -> None:
        _wait_stdin_closed()
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    await closed.wait()
    await server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--response", required=True, help="file with the response bytes")
    parser.add_argument("--kind", choices=("aio", "sync"), default="aio")
    args = parser.parse_args()
    with open(args.response, "rb") as f:
        response = f.read()
    options = load_api().pb2.DevicePluginOptions().SerializeToString()
    if args.kind == "sync":
        serve_sync(args.socket, response, options)
    else:
        asyncio.run(serve_aio(args.socket, response, options))


if __name__ == "__main__":
    main()
