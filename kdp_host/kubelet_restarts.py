"""Kubelet restarts, seen from its registration socket: `kubelet.sock` in the device-plugin
directory made anew (another file than the one seen before) is a restart, counted
(`kdp_kubelet_restarts_total`), logged, and told to the PodResources poller (its first
answers after one may lack pods). Each resource's runtime follows the socket on its own to
register again (`serving`); this is the host's one count of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from .logs import EventLogger
from .protocol.registration import KUBELET_SOCKET, kubelet_socket_identity
from .watch import Watcher


class Counter(Protocol):
    def inc(self) -> None: ...


class RestartListener(Protocol):
    """The PodResources poller (`podresources.PodResourcesPoller.kubelet_restarted`)."""

    def kubelet_restarted(self) -> None: ...


def follow_kubelet_restarts(
    watcher: Watcher,
    socket_dir: str,
    restarts: Counter,
    log: EventLogger,
    poller: RestartListener | None,
) -> Callable[[], None]:
    """Follow `socket_dir`'s kubelet.sock from now on; returns what stops it."""
    last = kubelet_socket_identity(socket_dir)

    def on_event(name: str | None) -> None:
        nonlocal last
        ours = name in (None, KUBELET_SOCKET)
        current = kubelet_socket_identity(socket_dir) if ours else None
        if current is None or current == last:
            return
        if last is not None:
            restarts.inc()
            log.info("kubelet_restarted", socket=os.path.join(socket_dir, KUBELET_SOCKET))
            if poller is not None:
                poller.kubelet_restarted()  # its first answers may lack pods
        last = current

    subscription = watcher.subscribe(socket_dir, on_event, names=(KUBELET_SOCKET,))
    return subscription.cancel
