"""Removing plugin sockets that an instance killed without cleanup left behind."""

from __future__ import annotations

import contextlib
import os
import socket

from .logs import EventLogger

SOCKET_PREFIX = "kdp-"
SOCKET_SUFFIX = ".sock"
CONNECT_TIMEOUT = 0.5


def remove_stale_sockets(socket_dir: str, log: EventLogger) -> None:
    """Remove `kdp-*.sock` files nobody listens on: left by an instance that was killed.

    Sockets of a live instance (another pod during a rolling upgrade) accept connections
    and are kept. Blocking: run it in a thread.
    """
    try:
        names = [
            n
            for n in os.listdir(socket_dir)
            if n.startswith(SOCKET_PREFIX) and n.endswith(SOCKET_SUFFIX)
        ]
    except OSError:
        return
    for name in names:
        path = os.path.join(socket_dir, name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(CONNECT_TIMEOUT)
            try:
                probe.connect(path)
                continue
            except ConnectionRefusedError:
                pass
            except OSError:
                continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            log.info("stale_socket_removed", socket=path)
