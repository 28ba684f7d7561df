"""`/metrics`, `/healthz` and `/readyz`, served from daemon threads.

prometheus-client's WSGI app behind a small dispatcher, on the standard library's WSGI
server: probes are answered even while the event loop is busy, which is the point of
`/healthz` (a stalled loop must turn into a 503, not a timeout nobody can explain).

The endpoint listens on the pod network by default (Prometheus scrapes it there), so it is
bounded: at most `max_threads` connections are served at once (one more is answered 503
at once and closed), and a connection that sends or reads nothing for `idle_timeout`
seconds is closed. What it prints names resources and short fixed reasons, never host
paths or probe output.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app

from .logs import quote_text
from .metrics import Metrics

HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_STALE = 2.0
MAX_THREADS = 8
"""Connections served at once: Prometheus and the kubelet's probes need one or two each."""
IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay silent (sending its request, or reading the answer)."""
MAX_REASON = 120
"""Characters of a not-ready reason shown on /readyz."""
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\nbusy: too many connections\n"
)

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
    server: _BoundedWSGIServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


class _BoundedWSGIServer(WSGIServer):
    """A thread per connection, at most `max_threads` at once; idle connections time out."""

    def __init__(
        self,
        address: tuple[str, int],
        max_threads: int = MAX_THREADS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.max_threads = max_threads
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_threads)
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        worker = threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name="kdp-http-worker",
            daemon=True,
        )
        try:
            worker.start()
        except RuntimeError:
            self._slots.release()
            self._refuse(request)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(0.1)
            request.sendall(_BUSY)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went silent or away is normal; anything else is printed."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _BoundedWSGIServerV6(_BoundedWSGIServer):
    address_family = socket.AF_INET6


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
                lines = [
                    f"not ready: {quote_text(name)}: {quote_text(why[:MAX_REASON])}"
                    for name, why in sorted(not_ready.items())
                ]
                return text(start_response, "503 Service Unavailable", "\n".join(lines))
            return text(start_response, "200 OK", "ok")
        return text(start_response, "404 Not Found", "not found: try /metrics, /healthz, /readyz")

    return app


class HttpServer:
    """Raises OSError if the address cannot be bound."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: HealthState,
        *,
        max_threads: int = MAX_THREADS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        server_class = _BoundedWSGIServerV6 if ":" in host else _BoundedWSGIServer
        self._server = server_class((host, port), max_threads, idle_timeout)
        self._server.set_app(make_app(metrics, health))
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
        """Stop serving and close the socket (a server never started is only closed)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
