"""A child process that pings a plugin socket (GetDevicePluginOptions) every interval.

    python -m tests.bench.pinger --socket S [--interval 0.001]

Kept out of the benchmark process so that its timing does not share a GIL with the work
that triggers the stall being measured. Prints `ready` once the first ping came back; on the
stdin line `dump` prints a JSON list of `[sent_monotonic, rtt_seconds]` pairs recorded since
the last dump; stops when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--interval", type=float, default=0.001)
    args = parser.parse_args()
    channel = grpc.insecure_channel(
        f"unix:{args.socket}", options=[("grpc.default_authority", "localhost")]
    )
    call = channel.unary_unary(
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        request_serializer=None,
        response_deserializer=None,
    )
    call(b"", timeout=10, wait_for_ready=True)
    lock = threading.Lock()
    records: list[tuple[float, float]] = []
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "dump":
                with lock:
                    batch = records[:]
                    records.clear()
                print(json.dumps(batch), flush=True)
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    print("ready", flush=True)
    clock = time.monotonic
    while not stop.is_set():
        sent = clock()
        call(b"", timeout=30)
        rtt = clock() - sent
        with lock:
            records.append((sent, rtt))
        time.sleep(args.interval)
    channel.close()


if __name__ == "__main__":
    main()
