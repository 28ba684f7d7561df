"""`/metrics`, `/healthz`, `/readyz` and `/devices`, served from daemon threads.

prometheus-client's WSGI app behind a small dispatcher, on the standard library's WSGI
server: probes are answered even while the event loop is busy, which is the point of
`/healthz` (a stalled loop must turn into a 503, not a timeout nobody can explain). The
loop is asked when a probe or a scrape comes (`HealthState.ask_loop`), not by a timer:
nothing here wakes up while nobody asks.

The endpoint listens on the pod network by default (Prometheus scrapes it there), so it is
bounded against clients that connect and then dawdle. A connection gets one thread and at
most `max_threads` are served at once. It has `request_deadline` seconds from being
accepted to deliver its whole request (request line and headers) and, once it has, as long
again to take the answer: absolute deadlines, so a client dripping a byte now and then is
cut off like a silent one. When every slot is taken, a new connection takes the slot of the
oldest one still sending its request (that one is answered 503 "busy" and closed), so a
liveness probe gets through while slow clients keep coming. `/metrics` answers (the long
ones: a big exposition to a slow reader) hold at most `max_threads - PROBE_SLOTS` slots at
once; a scrape beyond that is answered 503 "busy", so however many scrapers there are, the
probes' slots are either being answered (quickly) or still receiving a request (evictable),
and a newcomer waits a moment for one. What it prints names resources and short fixed
reasons, never host paths or probe output.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
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

LOOP_ANSWER_TIMEOUT = 2.0
"""A loop that does not run a probe's callback within this is stalled (/healthz: 503)."""
MAX_THREADS = 8
"""Connections served at once: Prometheus and the kubelet's probes need one or two each."""
PROBE_SLOTS = 2
"""Slots `/metrics` answers never take, so the kubelet's probes get through any number of
scrapers."""
METRICS_PATH = "/metrics"
REQUEST_DEADLINE = 10.0
"""Seconds a connection has to deliver its whole request, and then to take the answer."""
MAX_REASON = 120
"""Characters of a not-ready reason shown on /readyz."""
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\nbusy: too many connections\n"
)
_BUSY_SEND_TIMEOUT = 0.1
_SLOT_WAIT = 1.0
"""Seconds a newcomer waits for a slot to free (an evicted connection's, or a probe's)."""

StartResponse = Callable[..., Any]


LoopAnswer = Callable[[float], None]
"""Run on the event loop when it answers a probe, with the seconds the answer took."""


@dataclass
class HealthState:
    """Written by the event loop, read by the HTTP thread (plain attribute swaps only)."""

    clock: Callable[[], float] = time.monotonic
    dead: tuple[str, ...] = ()
    not_ready: dict[str, str] = field(default_factory=lambda: {"host": "starting"})
    answer_timeout: float = LOOP_ANSWER_TIMEOUT
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _on_answer: LoopAnswer | None = field(default=None, repr=False)

    def attach(self, loop: asyncio.AbstractEventLoop, on_answer: LoopAnswer) -> None:
        """The host's loop answers probes from now on (`on_answer` runs on it each time)."""
        self._on_answer = on_answer
        self._loop = loop

    def detach(self) -> None:
        self._loop = None

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def ask_loop(self) -> float | None:
        """From another thread: the seconds the loop took to run a callback, or None when
        it did not within `answer_timeout` (or no loop is attached). A late answer still
        runs `on_answer` with its delay when the loop gets to it."""
        loop, on_answer = self._loop, self._on_answer
        if loop is None or on_answer is None:
            return None
        asked = self.clock()
        answered = threading.Event()
        delay: list[float] = []

        def answer() -> None:
            delay.append(self.clock() - asked)
            on_answer(delay[0])
            answered.set()

        try:
            loop.call_soon_threadsafe(answer)
        except RuntimeError:  # the loop is closed
            return None
        return delay[0] if answered.wait(self.answer_timeout) else None

    def liveness_problem(self) -> str | None:
        if self._loop is None:
            return "event loop stalled: not running"
        if self.ask_loop() is None:
            return f"event loop stalled: no answer within {self.answer_timeout:g}s"
        if self.dead:
            return "resources failed for good: " + ", ".join(self.dead)
        return None


@dataclass(eq=False)
class _Connection:
    """One accepted connection holding a slot; its fields change under the server's lock."""

    sock: socket.socket
    client_address: Any
    accepted: float
    deadline: float
    """When the current phase ends: delivering the request, then taking the answer."""
    request_received: bool = False
    scrape: bool = False
    """Answering `/metrics` (counted against the slots scrapes may take)."""
    evicted: bool = False
    """Told to give up its slot: it is answered 503 "busy" and closed."""


class _DeadlineReader(io.RawIOBase):
    """Reads the socket until the connection's deadline, however the bytes trickle in."""

    def __init__(self, connection: _Connection, clock: Callable[[], float]) -> None:
        super().__init__()
        self._connection = connection
        self._clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._connection.evicted:
            raise ConnectionAbortedError("evicted: its slot went to a newer connection")
        remaining = self._connection.deadline - self._clock()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._connection.sock.settimeout(remaining)
        return self._connection.sock.recv_into(buffer)


class _DeadlineWriter(io.BufferedIOBase):
    """Writes the answer until the connection's deadline, however slowly it is read.

    A passed deadline is a ConnectionAbortedError, which wsgiref takes for a client gone
    away (no traceback), where a TimeoutError would be printed as an application error.
    """

    def __init__(self, connection: _Connection, clock: Callable[[], float]) -> None:
        super().__init__()
        self._connection = connection
        self._clock = clock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._connection.evicted:
            raise ConnectionAbortedError("evicted: its slot went to a newer connection")
        remaining = self._connection.deadline - self._clock()
        if remaining <= 0:
            raise ConnectionAbortedError("answer deadline passed")
        self._connection.sock.settimeout(remaining)
        try:
            self._connection.sock.sendall(data)
        except TimeoutError as exc:
            raise ConnectionAbortedError("answer deadline passed") from exc
        return len(memoryview(data))


class _QuietHandler(WSGIRequestHandler):
    server: _BoundedWSGIServer
    tracked: _Connection

    def setup(self) -> None:
        super().setup()
        self.tracked = self.server.tracked(self.request)
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.tracked, self.server.clock))
        self.wfile = _DeadlineWriter(self.tracked, self.server.clock)

    def parse_request(self) -> bool:
        """Once the request line and headers are in, the answer phase begins."""
        if not super().parse_request():
            return False
        path = self.path.split("?", 1)[0]
        return self.server.request_received(self.tracked, scrape=path == METRICS_PATH)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


class _BoundedWSGIServer(WSGIServer):
    """A thread per connection, at most `max_threads` at once, each with its deadlines."""

    def __init__(
        self,
        address: tuple[str, int],
        max_threads: int = MAX_THREADS,
        request_deadline: float = REQUEST_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_threads = max_threads
        self.max_scrapes = max(1, max_threads - PROBE_SLOTS)
        self.request_deadline = request_deadline
        self.clock = clock
        self._slot_freed = threading.Condition()
        self._serving: list[_Connection] = []
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._slot_freed:
            if len(self._serving) >= self.max_threads:
                victim = self._oldest_incomplete()
                if victim is not None:
                    self._evict(victim)
                self._slot_freed.wait_for(lambda: len(self._serving) < self.max_threads, _SLOT_WAIT)
            connection = (
                self._track(request, client_address)
                if len(self._serving) < self.max_threads
                else None
            )
        if connection is None:
            self._refuse(request)
            return
        worker = threading.Thread(
            target=self._work, args=(connection,), name="kdp-http-worker", daemon=True
        )
        try:
            worker.start()
        except RuntimeError:
            self._release(connection)
            self._refuse(request)

    def tracked(self, request: socket.socket) -> _Connection:
        """The slot of a connection being served (the handler's way to its deadlines)."""
        with self._slot_freed:
            return next(c for c in self._serving if c.sock is request)

    def request_received(self, connection: _Connection, scrape: bool = False) -> bool:
        """Start the answer phase; False (the connection is answered 503 "busy") if it was
        evicted a moment before, or is a scrape beyond the slots scrapes may take."""
        with self._slot_freed:
            if scrape and sum(c.scrape for c in self._serving) >= self.max_scrapes:
                connection.evicted = True
            if connection.evicted:
                return False
            connection.request_received = True
            connection.scrape = scrape
            connection.deadline = self.clock() + self.request_deadline
            return True

    def _track(self, request: socket.socket, client_address: Any) -> _Connection:
        now = self.clock()
        connection = _Connection(request, client_address, now, now + self.request_deadline)
        self._serving.append(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        with self._slot_freed:
            self._serving.remove(connection)
            self._slot_freed.notify_all()

    def _oldest_incomplete(self) -> _Connection | None:
        waiting = [c for c in self._serving if not (c.request_received or c.evicted)]
        return min(waiting, key=lambda c: c.accepted, default=None)

    @staticmethod
    def _evict(victim: _Connection) -> None:
        """Wake the victim's thread: its read returns, it answers 503 and frees its slot."""
        victim.evicted = True
        with contextlib.suppress(OSError):
            victim.sock.shutdown(socket.SHUT_RD)

    def _work(self, connection: _Connection) -> None:
        try:
            self.finish_request(connection.sock, connection.client_address)
        except Exception:
            self.handle_error(connection.sock, connection.client_address)
        finally:
            if connection.evicted:
                self._refuse(connection.sock)
            else:
                self.shutdown_request(connection.sock)
            self._release(connection)

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(_BUSY_SEND_TIMEOUT)
            request.sendall(_BUSY)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went silent, slow or away is normal; anything else is printed."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _BoundedWSGIServerV6(_BoundedWSGIServer):
    address_family = socket.AF_INET6


DevicesView = Callable[[], dict[str, Any]]
"""Builds the `/devices` document (called in an HTTP thread)."""


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
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            health.ask_loop()  # the loop-lag gauges are as of this scrape
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
        if path == "/devices" and devices is not None:
            try:
                document = devices()
            except RuntimeError:  # the loop changed a map while we read it: rare, retry
                return text(start_response, "503 Service Unavailable", "busy: try again")
            data = (json.dumps(document, sort_keys=True) + "\n").encode()
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
        server_class = _BoundedWSGIServerV6 if ":" in host else _BoundedWSGIServer
        self._server = server_class((host, port), max_threads, request_deadline, clock)
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
