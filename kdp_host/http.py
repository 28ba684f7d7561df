"""`/metrics`, `/healthz` and `/readyz`, served from a daemon thread.

prometheus-client's WSGI app behind a small dispatcher, on the standard library's threading
WSGI server: probes are answered even while the event loop is busy, which is the point of
`/healthz` (a stalled loop must turn into a 503, not a timeout nobody can explain).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .metrics import Metrics

HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_STALE = 2.0

StartResponse = Callable[..., Any]


@dataclass
class HealthState:
    """Written by the event loop, read by the HTTP thread (plain attribute swaps only)."""

    clock: Callable[[], float] = time.monotonic
    last_beat: float = field(default=0.0)
    dead: tuple[str, ...] = ()
    not_ready: dict[str, str] = field(default_factory=lambda: {"host": "starting"})

    def beat(self) -> None:
        self.last_beat = self.clock()

    def liveness_problem(self) -> str | None:
        age = self.clock() - self.last_beat
        if age > HEARTBEAT_STALE:
            return f"event loop stalled: last heartbeat {age:.1f}s ago"
        if self.dead:
            return "resources failed for good: " + ", ".join(self.dead)
        return None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


def make_app(metrics: Metrics, health: HealthState) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(metrics.registry)

    def text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
        data = (body + "\n").encode()
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            problem = health.liveness_problem()
            if problem:
                return text(start_response, "503 Service Unavailable", problem)
            return text(start_response, "200 OK", "ok")
        if path == "/readyz":
            not_ready = dict(health.not_ready)
            if not_ready:
                lines = [f"not ready: {name}: {why}" for name, why in sorted(not_ready.items())]
                return text(start_response, "503 Service Unavailable", "\n".join(lines))
            return text(start_response, "200 OK", "ok")
        return text(start_response, "404 Not Found", "not found: try /metrics, /healthz, /readyz")

    return app


class _ThreadingWSGIServerV6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class HttpServer:
    """Raises OSError if the address cannot be bound."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: HealthState) -> None:
        server_class = _ThreadingWSGIServerV6 if ":" in host else ThreadingWSGIServer
        self._server: WSGIServer = make_server(
            host,
            port,
            make_app(metrics, health),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kdp-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port bound (the one chosen by the system when port 0 was asked for)."""
        return int(self._server.server_port)

    @property
    def address(self) -> str:
        """`host:port` as bound, `[v6]:port` for IPv6."""
        host = str(self._server.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
