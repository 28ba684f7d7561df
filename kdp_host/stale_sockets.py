"""Removing plugin sockets that an instance killed without cleanup left behind, and finding
those of another kdp-host that serves the node from another `stateDir`."""

from __future__ import annotations

import contextlib
import os
import stat

from .config import KubeletConfig
from .endpoint import is_socket_name, socket_instance
from .logs import EventLogger
from .plugin_socket import served
from .state_lock import running

CONNECT_TIMEOUT = 0.5


def remove_stale_sockets(socket_dir: str, log: EventLogger) -> list[str]:
    """Remove kdp-host's sockets (`endpoint.is_socket_name`) nobody listens on: left by an
    instance that was killed. Returns the names of those kept because they are live.

    Sockets of a live instance (another pod during a rolling upgrade) accept connections
    and are kept; so is anything that is not a socket. Blocking: run it in a thread.
    """
    live: list[str] = []
    try:
        names = [n for n in os.listdir(socket_dir) if is_socket_name(n)]
    except OSError:
        return live
    for name in names:
        path = os.path.join(socket_dir, name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        answer = served(path, CONNECT_TIMEOUT)
        if answer is not False:
            if answer:
                live.append(name)
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            log.info("stale_socket_removed", socket=path)
    return live


def clear_sockets(kubelet: KubeletConfig, state_dir: str, instance: str, log: EventLogger) -> None:
    """At start: remove the stale sockets of the directory resources are served from, and
    warn of the live ones of another kdp-host that does not run on `state_dir`
    (`other_hosts`). Blocking."""
    socket_dir = kubelet.serve_dir
    strangers = other_hosts(socket_dir, state_dir, instance, log)
    if strangers:
        log.warning(
            "another_host_on_node",
            socket_dir=socket_dir,
            sockets=",".join(sorted(strangers)),
            state_dir=state_dir,
            consequence="a kdp-host that does not run on this stateDir serves this node: "
            "neither sees the other's claims or bookings, so both may advertise one node "
            "and two pods may get it; serve a node from one kdp-host (or one stateDir)",
        )


def other_hosts(socket_dir: str, state_dir: str, instance: str, log: EventLogger) -> list[str]:
    """Remove the stale sockets of `socket_dir`; return the live ones of another kdp-host
    that does not run on `state_dir` (a readable name carries its instance: a host on
    `state_dir` holds its lock file there, `state_lock.running`). Blocking."""
    return [
        name
        for name in remove_stale_sockets(socket_dir, log)
        if (other := socket_instance(name)) is not None
        and other != instance
        and not running(state_dir, other)
    ]
