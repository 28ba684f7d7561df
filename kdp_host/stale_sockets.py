"""Removing plugin sockets that an instance killed without cleanup left behind."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from .endpoint import is_socket_name
from .logs import EventLogger

CONNECT_TIMEOUT = 0.5


def remove_stale_sockets(socket_dir: str, log: EventLogger) -> None:
    """Remove kdp-host's sockets (`endpoint.is_socket_name`) nobody listens on: left by an
    instance that was killed.

    Sockets of a live instance (another pod during a rolling upgrade) accept connections
    and are kept; so is anything that is not a socket. Blocking: run it in a thread.
    """
    try:
        names = [n for n in os.listdir(socket_dir) if is_socket_name(n)]
    except OSError:
        return
    for name in names:
        path = os.path.join(socket_dir, name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
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
