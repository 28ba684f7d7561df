"""A resource's socket stopped in the order the kubelet needs (`stop`): the ListAndWatch
streams end first, so the kubelet sees a clean end of stream; the kubelet drops whichever
client holds the name when an old stream's end reaches it (docs/kubelet-contract.md §9), so
the stop waits for it to hang up before the server, its connections and the socket file go.
Also whether a process serves a plugin socket (`served`: a stale one, another instance's).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from .logs import EventLogger
from .protocol.server import PluginServer
from .protocol.service import DevicePluginService

KUBELET_HANG_UP_WAIT = 1.0
"""How long a stopping server waits for the kubelet to hang up once the streams ended."""


async def stop(
    service: DevicePluginService, server: PluginServer, socket_path: str, log: EventLogger
) -> None:
    """End the streams first (clean EOF at the kubelet), then close server and connections.

    The synchronous part (close, drop connections, remove the socket) runs even when the
    wait for the streams is interrupted by a second cancel.
    """
    try:
        await service.end_streams()
        await server.wait_peers_hung_up(KUBELET_HANG_UP_WAIT)
    finally:
        server.close()
        server.close_connections()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    try:
        async with asyncio.timeout(1.0):
            await server.wait_closed()
    except TimeoutError:
        log.warning("server_close_slow")


def served(path: str, timeout: float) -> bool | None:
    """Whether a process serves the Unix socket at `path`: True when a connection is made
    (made and closed at once; with `timeout` 0, a full backlog is a server too), False when
    it is refused (a socket file no process listens on: what a killed instance leaves), None
    when that cannot be told (nothing there, not a socket, no answer within `timeout`).
    Blocking for up to `timeout` seconds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except BlockingIOError:
            return True
        except OSError:
            return None
    return True
