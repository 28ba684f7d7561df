"""The HTTP endpoint's slots: every long answer (`/metrics`, `/devices`, however it is spelled)
counts against the slots long answers may take, so the kubelet's probes get through any
number of clients reading them however slowly (hostile22 F1)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from kdp_host.http import HttpServer
from kdp_host.http_server import MAX_THREADS, PROBE_SLOTS
from kdp_host.metrics import Metrics
from kdp_host.status import DevicesAnswer

from .test_ops import _answered, _read_to_end, _SlowCollector, answering_health, http_get
from .test_podresources import one_resource_host

BIG_HOST = 40_000
"""Devices on the host whose `/devices` answer (2 MB) outgrows a loopback socket's buffers."""


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as resources:
        yield resources


def never_reading(port: int, path: str) -> socket.socket:
    """A client that asks for `path` and never reads a byte of the answer."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    client.settimeout(30)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    return client


def test_probes_get_through_clients_never_reading_a_big_devices_answer(
    stack: contextlib.ExitStack,
) -> None:
    """hostile22 F1: only `/metrics` counted against the slots long answers may take, so
    eight clients asking a 40,000-device host for `/devices` and never reading the answer
    (more than the sockets buffer) held every slot, and `/healthz` was answered 503 "busy":
    the liveness probe failed and the kubelet restarted a healthy pod. `/devices` takes the
    same slots as `/metrics`: the ones beyond are answered 503 "busy", the probes get through."""
    host, _ = one_resource_host("vendor.example/fpga", [f"fpga{i:06d}" for i in range(BIG_HOST)])
    devices = DevicesAnswer(host)
    assert len(devices()) > 2_000_000
    health = stack.enter_context(answering_health())
    server = HttpServer(
        "127.0.0.1", 0, Metrics(process_collectors=False), health,
        request_deadline=60.0, devices=devices,
    )  # fmt: skip
    server.start()
    stack.callback(server.stop)
    readers = [never_reading(server.port, "/devices") for _ in range(MAX_THREADS)]
    for reader in readers:
        stack.callback(reader.close)
    refused = _answered(readers, MAX_THREADS)  # the held ones have their answer's first bytes
    busy = [r for r in refused if r.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 503"]
    assert len(busy) == PROBE_SLOTS
    for _ in range(3):
        assert http_get(server.port, "/healthz") == (200, "ok\n")
        assert http_get(server.port, "/readyz")[0] == 503  # "host: starting", but answered


@pytest.mark.parametrize("path", ["/metrics", "/%6detrics", "/%6D%65trics"])
def test_a_long_answer_counts_however_its_path_is_spelled(
    stack: contextlib.ExitStack, path: str
) -> None:
    """hostile22 F1: the slot rule read the raw path and the dispatcher the un-escaped one,
    so `GET /%6detrics` was served the metrics app without counting as a scrape: eight of
    them held every slot. The rule reads the very PATH_INFO the dispatcher routes on, and a
    probe spelled escaped is still a probe."""
    metrics = Metrics(process_collectors=False)
    slow = _SlowCollector()
    metrics.registry.register(slow)  # type: ignore[arg-type]
    stack.callback(slow.release.set)
    health = stack.enter_context(answering_health())
    server = HttpServer("127.0.0.1", 0, metrics, health, request_deadline=60.0)
    server.start()
    stack.callback(server.stop)
    scrapers = [never_reading(server.port, path) for _ in range(MAX_THREADS)]
    for scraper in scrapers:
        stack.callback(scraper.close)
    refused = _answered(scrapers, PROBE_SLOTS)
    assert len(refused) == PROBE_SLOTS
    assert slow.await_entered(MAX_THREADS - PROBE_SLOTS) == MAX_THREADS - PROBE_SLOTS
    for connection in refused:
        assert _read_to_end(connection).startswith(b"HTTP/1.1 503")
    assert http_get(server.port, "/healthz") == (200, "ok\n")
    assert http_get(server.port, "/%68ealthz") == (200, "ok\n")
    slow.release.set()
    for connection in scrapers:
        if connection not in refused:
            assert _read_to_end(connection).startswith(b"HTTP/1.0 200 OK")
