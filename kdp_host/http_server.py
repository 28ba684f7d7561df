"""The HTTP endpoint's server: the standard library's WSGI server with a thread per
connection, bounded against clients that connect and then dawdle (it listens on the pod
network by default, where Prometheus scrapes it).

A connection gets one thread and at most `max_threads` are served at once. It has
`request_deadline` seconds from being accepted to deliver its whole request (request line
and headers) and, once it has, as long again to take the answer: absolute deadlines, so a
client dripping a byte now and then is cut off like a silent one. When every slot is taken,
a new connection takes the slot of the oldest one still sending its request (that one is
answered 503 "busy" and closed), so a liveness probe gets through while slow clients keep
coming. Every answer but a probe's (`PROBE_PATHS`: a line or a few, written into the
socket's buffer at once) may be long (`/metrics`, `/devices`: megabytes to a slow reader), so
those answers hold at most `max_threads - PROBE_SLOTS` slots at once and one beyond that is
answered 503 "busy": however many clients read them however slowly, the probes' slots are
either being answered (quickly) or still receiving a request (evictable), and a newcomer waits
a moment for one. Which answer a request gets is decided once, on the path the application
routes on (WSGI's PATH_INFO, un-escaped: `/%6detrics` is `/metrics`), from the very environ
the application is then called with.
"""

from __future__ import annotations

import contextlib
import io
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

MAX_THREADS = 8
"""Connections served at once: Prometheus and the kubelet's probes need one or two each."""
PROBE_SLOTS = 2
"""Slots that only probes' answers take, so the kubelet's probes get through any number of
clients reading the long answers."""
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
PROBE_PATHS = frozenset({HEALTHZ_PATH, READYZ_PATH})
"""The paths (as the application routes them) whose answers are short; any other answer,
`/metrics`, `/devices` or a 404, counts against the slots long answers may take."""
REQUEST_DEADLINE = 10.0
"""Seconds a connection has to deliver its whole request, and then to take the answer."""
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\nbusy: too many connections\n"
)
_BUSY_SEND_TIMEOUT = 0.1
_SLOT_WAIT = 1.0
"""Seconds a newcomer waits for a slot to free (an evicted connection's, or a probe's)."""


@dataclass(eq=False)
class _Connection:
    """One accepted connection holding a slot; its fields change under the server's lock."""

    sock: socket.socket
    client_address: Any
    accepted: float
    deadline: float
    """When the current phase ends: delivering the request, then taking the answer."""
    request_received: bool = False
    long_answer: bool = False
    """Answering anything but a probe (counted against the slots long answers may take)."""
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
    server: BoundedWSGIServer
    tracked: _Connection
    environ: dict[str, Any] | None = None
    """The request's WSGI environ, made once its headers are in: the slot rule reads its
    PATH_INFO and the application is called with it."""

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
        self.environ = super().get_environ()
        long_answer = self.environ["PATH_INFO"] not in PROBE_PATHS
        return self.server.request_received(self.tracked, long_answer=long_answer)

    def get_environ(self) -> dict[str, Any]:
        """The environ the slot rule read (wsgiref asks for it after `parse_request`)."""
        if self.environ is None:
            raise RuntimeError("no request parsed")
        return self.environ

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


class BoundedWSGIServer(WSGIServer):
    """A thread per connection, at most `max_threads` at once, each with its deadlines."""

    def __init__(
        self,
        address: tuple[str, int],
        max_threads: int = MAX_THREADS,
        request_deadline: float = REQUEST_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_threads = max_threads
        self.max_long_answers = max(1, max_threads - PROBE_SLOTS)
        self.request_deadline = request_deadline
        self.clock = clock
        self._slot_freed = threading.Condition()
        self._serving: list[_Connection] = []
        super().__init__(address, _QuietHandler)

    def server_bind(self) -> None:
        """Bind and name the server by its address. The standard library's HTTPServer names
        it by `socket.getfqdn`, a reverse lookup of the host's name at every start (a DNS
        query in a pod, and the idna codec loaded), for a name only WSGI's SERVER_NAME shows."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port
        self.setup_environ()

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

    def request_received(self, connection: _Connection, long_answer: bool) -> bool:
        """Start the answer phase; False (the connection is answered 503 "busy") if it was
        evicted a moment before, or is a long answer beyond the slots long answers may take."""
        with self._slot_freed:
            answering = sum(c.long_answer for c in self._serving)
            if long_answer and answering >= self.max_long_answers:
                connection.evicted = True
            if connection.evicted:
                return False
            connection.request_received = True
            connection.long_answer = long_answer
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


class _BoundedWSGIServerV6(BoundedWSGIServer):
    address_family = socket.AF_INET6


def bounded_server(
    host: str,
    port: int,
    max_threads: int = MAX_THREADS,
    request_deadline: float = REQUEST_DEADLINE,
    clock: Callable[[], float] = time.monotonic,
) -> BoundedWSGIServer:
    """The server bound to `host:port` (IPv6 when `host` has a colon); raises OSError if the
    address cannot be bound."""
    server_class = _BoundedWSGIServerV6 if ":" in host else BoundedWSGIServer
    return server_class((host, port), max_threads, request_deadline, clock)
