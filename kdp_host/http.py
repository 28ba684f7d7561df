"""`/metrics`, `/healthz`, `/readyz` and `/devices`, served from daemon threads.

prometheus-client's WSGI app behind a small dispatcher, on the bounded server of
`http_server.py`: probes are answered even while the event loop is busy, which is the point
of `/healthz` (what the probes say is `probes.HealthState`). What it prints names resources
and short fixed reasons, never host paths or probe output.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import make_wsgi_app

from .http_server import (
    HEALTHZ_PATH,
    MAX_THREADS,
    READYZ_PATH,
    REQUEST_DEADLINE,
    bounded_server,
)
from .logs import quote_text
from .metrics import Metrics
from .probes import HealthState

METRICS_PATH = "/metrics"
MAX_REASON = 120
"""Characters of a not-ready reason shown on /readyz."""

StartResponse = Callable[..., Any]


DevicesView = Callable[[], bytes]
"""The `/devices` answer's JSON (called in an HTTP thread; `status.DevicesAnswer`)."""


def make_app(
    metrics: Metrics, health: HealthState, devices: DevicesView | None = None
) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(metrics.registry)

    def text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
        data = (body + "\n").encode()
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # PATH_INFO (un-escaped): the path the server's slot rule read (`PROBE_PATHS`).
        path = environ.get("PATH_INFO", "")
        if path == METRICS_PATH:
            health.ask_loop()  # the loop-lag gauges are as of this scrape
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == HEALTHZ_PATH:
            problem = health.liveness_problem()
            if problem:
                return text(start_response, "503 Service Unavailable", problem)
            return text(start_response, "200 OK", "ok")
        if path == READYZ_PATH:
            not_ready = dict(health.not_ready)
            if not_ready:
                lines = [
                    f"not ready: {quote_text(name)}: {quote_text(why[:MAX_REASON])}"
                    for name, why in sorted(not_ready.items())
                ]
                return text(start_response, "503 Service Unavailable", "\n".join(lines))
            return text(start_response, "200 OK", "ok")
        if path == "/devices" and devices is not None:
            try:
                data = devices()
            except RuntimeError:  # the loop changed a map while we read it: rare, retry
                return text(start_response, "503 Service Unavailable", "busy: try again")
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
            )
            return [data]
        return text(
            start_response,
            "404 Not Found",
            "not found: try /metrics, /healthz, /readyz, /devices",
        )

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
        request_deadline: float = REQUEST_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
        devices: DevicesView | None = None,
    ) -> None:
        self._server = bounded_server(host, port, max_threads, request_deadline, clock)
        self._server.set_app(make_app(metrics, health, devices))
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
