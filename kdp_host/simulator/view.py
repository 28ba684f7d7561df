"""What the simulated kubelet shows a test: the records of every call it made or took,
node status (capacity, allocatable, the resources as the device manager holds them, the
checkpoint), and waiting for a state change. `KubeletSimulator` is this view with a
lifecycle and pods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .admission import Admission
from .changes import ChangeFeed
from .checkpoint import CheckpointFile
from .log import log_event
from .manager import DeviceManager, describe
from .plugins import PluginHandler
from .records import (
    AllocateCall,
    Allocation,
    ListAndWatchUpdate,
    PluginOptions,
    PreferredAllocationCall,
    PreStartCall,
    RegisterAttempt,
    ResourceSnapshot,
    StaleDisconnect,
)


class KubeletView:
    """The device manager's parts as a test reads them; every change is counted."""

    def __init__(
        self,
        manager: DeviceManager,
        checkpoint: CheckpointFile,
        admission: Admission,
        plugins: PluginHandler,
        *,
        clock: Callable[[], float],
        endpoint_stop_grace_period: float,
    ) -> None:
        self.endpoint_stop_grace_period = endpoint_stop_grace_period
        self._clock = clock
        self._manager = manager
        self._checkpoint = checkpoint
        self._admission = admission
        self._plugins = plugins
        self._changes = ChangeFeed(lambda: "; ".join(self.describe().values()) or "no resources")

    # ------------------------------------------------------------------ records

    @property
    def preferred_allocation_calls(self) -> list[PreferredAllocationCall]:
        return self._admission.preferred_allocation_calls

    @property
    def allocate_calls(self) -> list[AllocateCall]:
        return self._admission.allocate_calls

    @property
    def pre_start_calls(self) -> list[PreStartCall]:
        return self._admission.pre_start_calls

    @property
    def pre_start_timeout(self) -> float:
        return self._admission.pre_start_timeout

    @property
    def rpc_timeout(self) -> float | None:
        return self._admission.rpc_timeout

    @property
    def version(self) -> int:
        """Incremented on every state change."""
        return self._changes.version

    @property
    def dial_timeout(self) -> float:
        return self._plugins.dial_timeout

    @property
    def max_receive_message(self) -> int:
        """The largest ListAndWatch message the kubelet takes (docs/kubelet-contract.md §4):
        grpc-go's default, 4 MiB; a larger one ends the stream. Set it to model a kubelet
        that refuses what a plugin sends (it applies to the clients registered after)."""
        return self._plugins.max_receive_message

    @max_receive_message.setter
    def max_receive_message(self, limit: int) -> None:
        self._plugins.max_receive_message = limit

    @property
    def register_attempts(self) -> list[RegisterAttempt]:
        return self._plugins.register_attempts

    @property
    def list_and_watch_updates(self) -> list[ListAndWatchUpdate]:
        return self._plugins.list_and_watch_updates

    @property
    def stale_disconnect_events(self) -> list[StaleDisconnect]:
        return self._plugins.stale_disconnect_events

    @property
    def stale_disconnects(self) -> int:
        """How often the stale-stream bug of docs/kubelet-contract.md §9 hit: an old stream's
        end disconnected a newer client."""
        return len(self.stale_disconnect_events)

    async def _notify(self) -> None:
        await self._changes.notify()

    async def _write_checkpoint(self) -> None:
        await self._checkpoint.write(self._manager.checkpoint_data)

    # ------------------------------------------------------------------ node status

    def capacity(self, resource: str) -> int:
        """Capacity as ``GetCapacity`` would report it now: healthy + unhealthy."""
        return self._manager.capacity(resource)

    def allocatable(self, resource: str) -> int:
        """Allocatable: healthy devices only (allocated ones are not subtracted)."""
        return self._manager.allocatable(resource)

    def options(self, resource: str) -> PluginOptions | None:
        endpoint = self._manager.endpoints.get(resource)
        return endpoint.options if endpoint is not None else None

    async def get_capacity(self) -> tuple[dict[str, int], dict[str, int], list[str]]:
        """``GetCapacity``: also deletes resources whose stopped endpoint outlived the grace
        period (or that have no endpoint) and then rewrites the checkpoint
        (docs/kubelet-contract.md §4)."""
        result = self._manager.get_capacity(self._clock(), self.endpoint_stop_grace_period)
        if result.deleted:
            log_event(logging.INFO, "resources_deleted", resources=",".join(result.deleted))
            await self._write_checkpoint()
            await self._notify()
        return result.capacity, result.allocatable, result.deleted

    def resource(self, name: str) -> ResourceSnapshot:
        """Snapshot of one resource; KeyError if the simulator never heard of it."""
        return self._manager.snapshot(name)

    def snapshot(self) -> dict[str, ResourceSnapshot]:
        return {name: self._manager.snapshot(name) for name in self._manager.names()}

    def describe(self) -> dict[str, str]:
        """One human line per resource: what the kubelet sees."""
        return {name: describe(snap) for name, snap in self.snapshot().items()}

    def plugin_clients(self) -> dict[str, Path]:
        """The registration server's client map: resource -> socket of its current client
        (set when Register starts dialling, removed on disconnect or a failed dial)."""
        return {name: client.socket_path for name, client in self._plugins.clients.items()}

    def clients_running(self, resource: str) -> int:
        """Clients of the resource still reading their ListAndWatch stream (the current one,
        and old ones whose end, and the disconnect of the current client it brings, is still
        to come: docs/kubelet-contract.md §9)."""
        return self._plugins.running.get(resource, 0)

    @property
    def allocations(self) -> list[Allocation]:
        return list(self._manager.pod_devices.values())

    def allocation(self, pod_uid: str, container: str, resource: str) -> Allocation | None:
        return self._manager.pod_devices.get((pod_uid, container, resource))

    async def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint file as JSON, after every write requested so far has landed."""
        return await self._checkpoint.read_json()

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        predicate: Callable[[], object],
        timeout: float = 10.0,
        *,
        description: str | None = None,
    ) -> None:
        """Wait until ``predicate()`` is true, re-checking on every state change.

        A predicate raising LookupError (e.g. ``sim.resource(x)`` before x registered)
        counts as false. Raises TimeoutError describing what it waited for.
        """
        await self._changes.wait_for(predicate, timeout, description)

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:
        """Wait until :attr:`version` differs from ``since``; returns the new version."""
        return await self._changes.wait_changed(since, timeout)
