"""The simulated kubelet: its lifecycle (start, stop, restart, crash; the plugin manager and
the PodResources server with it) and its pods; what it shows a test (records, node status,
waiting) is `view.KubeletView`.

Deliberately reproduced kubelet behaviour that plugins must cope with:

* Register returns only after the dial-back and GetDevicePluginOptions
  (docs/kubelet-contract.md §1, §2).
* Every ListAndWatch message is a complete list; only ``"Healthy"`` is healthy
  (docs/kubelet-contract.md §4).
* When a stream ends the resource keeps its capacity, allocatable drops to 0, the endpoint is
  stopped and nothing reconnects (docs/kubelet-contract.md §4).
* A ListAndWatch message over the kubelet's receive limit (grpc-go's default, 4 MiB;
  ``max_receive_message``) fails the stream with ResourceExhausted, which ends it as above
  (docs/kubelet-contract.md §4).
* If an *old* plugin client's stream ends after the same resource registered again, the *new*
  client is disconnected (docs/kubelet-contract.md §9). Counted in
  :attr:`KubeletSimulator.stale_disconnects`.
* A start removes every non-directory entry of the socket directory except the checkpoint,
  and resources from the checkpoint come back with capacity 0 and a stopped endpoint
  (docs/kubelet-contract.md §9).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

from kdp_host.api.v1beta1 import ContainerAllocateResponse

from .admission import Admission
from .checkpoint import CheckpointFile
from .directory import cleanup_plugin_directory, remove_socket
from .log import log_event
from .manager import DeviceManager
from .plugins import PluginHandler
from .podresources import PodResourcesServer
from .records import (
    CHECKPOINT_NAME,
    DIAL_TIMEOUT,
    ENDPOINT_STOP_GRACE_PERIOD,
    KUBELET_SOCKET_NAME,
    PRE_START_TIMEOUT,
)
from .registry import RECONCILE_PERIOD, PluginManager, RegistryOperation
from .transport import RegisterRefused, RegistrationServer
from .view import KubeletView


class KubeletSimulator(KubeletView):
    """The kubelet's device manager on ``socket_dir``; see the module docstring."""

    def __init__(
        self,
        socket_dir: Path,
        *,
        dial_timeout: float = DIAL_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        endpoint_stop_grace_period: float = ENDPOINT_STOP_GRACE_PERIOD,
        pre_start_timeout: float = PRE_START_TIMEOUT,
        rpc_timeout: float | None = None,
        cleanup_sockets_only: bool = False,
        plugins_registry_dir: Path | None = None,
        reconcile_period: float = RECONCILE_PERIOD,
        pod_resources_dir: Path | None = None,
    ) -> None:
        """
        ``rpc_timeout`` bounds GetPreferredAllocation/Allocate (the kubelet has none: keep
        None to reproduce a hung admission). ``cleanup_sockets_only`` removes only sockets at
        start, like newer kubelets; the default removes every non-directory entry
        (docs/kubelet-contract.md §9). ``clock`` stamps records and stopped endpoints.
        ``plugins_registry_dir`` also runs the plugin manager on that directory
        (docs/kubelet-contract.md §14), reconciling every ``reconcile_period`` seconds; it
        may lie inside ``socket_dir`` but must not be it or contain it.
        ``pod_resources_dir``: also serve the PodResources API on ``<dir>/kubelet.sock``
        while running (``simulator/podresources.py``).
        """
        self.socket_dir = Path(socket_dir)
        if plugins_registry_dir is not None:
            registry = Path(os.path.normpath(plugins_registry_dir))
            if (
                registry == Path(os.path.normpath(self.socket_dir))
                or registry in Path(os.path.normpath(self.socket_dir)).parents
            ):
                raise ValueError(
                    f"plugins_registry_dir {registry} must not be the socket dir or contain it"
                )
        self.plugins_registry_dir = plugins_registry_dir
        self.reconcile_period = reconcile_period
        self.socket_path = self.socket_dir / KUBELET_SOCKET_NAME
        self.checkpoint_path = self.socket_dir / CHECKPOINT_NAME
        self.cleanup_sockets_only = cleanup_sockets_only
        manager = DeviceManager()
        super().__init__(
            manager,
            CheckpointFile(self.checkpoint_path),
            Admission(
                manager,
                write_checkpoint=self._write_checkpoint,
                notify=self._notify,
                rpc_timeout=rpc_timeout,
                pre_start_timeout=pre_start_timeout,
            ),
            PluginHandler(
                manager,
                socket_dir=self.socket_dir,
                dial_timeout=dial_timeout,
                clock=clock,
                spawn=self._spawn,
                notify=self._notify,
                write_checkpoint=self._write_checkpoint,
            ),
            clock=clock,
            endpoint_stop_grace_period=endpoint_stop_grace_period,
        )
        self.removed_at_start: list[str] = []
        self.starts = 0
        self.listening_since = float("nan")
        """The clock just before ``kubelet.sock`` was created by the last start."""

        self._server: RegistrationServer | None = None
        self._plugin_manager: PluginManager | None = None
        self.registry_operations: list[RegistryOperation] = []
        """Every operation of the plugin manager, cumulative across restarts."""
        self._registry_faults = 0
        self.pod_resources = (
            None
            if pod_resources_dir is None
            else PodResourcesServer(self._manager, pod_resources_dir)
        )
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """``ManagerImpl.Start``: read the checkpoint, clean the directory, serve."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._manager.reset()
        self._plugins.close_all()
        contents = await self._checkpoint.load()
        if contents is not None:
            self._manager.restore(contents, self._clock())
        self.removed_at_start = await asyncio.to_thread(
            cleanup_plugin_directory, self.socket_dir, CHECKPOINT_NAME, self.cleanup_sockets_only
        )
        server = RegistrationServer(self._plugins.handle_register)
        self.listening_since = self._clock()
        await server.start(self.socket_path)
        self._server = server
        if self.pod_resources is not None:
            await self.pod_resources.start()
        self.starts += 1
        if self.plugins_registry_dir is not None:
            manager = PluginManager(
                Path(self.plugins_registry_dir),
                self._plugins,
                reconcile_period=self.reconcile_period,
                dial_timeout=self.dial_timeout,
                clock=self._clock,
                notify=self._notify,
                record=self.registry_operations.append,
            )
            manager.register_faults = self._registry_faults
            self._plugin_manager = manager
            manager.start()
        log_event(
            logging.INFO,
            "kubelet_started",
            socket=self.socket_path,
            removed=",".join(self.removed_at_start) or "-",
            restored=",".join(sorted(self._manager.endpoints)) or "-",
        )
        await self._notify()

    async def stop(self, *, crash: bool = False) -> None:
        """``server.Stop``: disconnect every client (every resource unhealthy), then stop
        serving and remove ``kubelet.sock``. ``crash``: go away like a killed kubelet
        process instead: the socket first, then every connection, no state changes."""
        server = self._server
        if server is None:
            return
        self._server = None
        manager, self._plugin_manager = self._plugin_manager, None
        if manager is not None:
            self._registry_faults = manager.register_faults
            await manager.stop()
        if self.pod_resources is not None:
            await self.pod_resources.stop()
        if crash:
            await server.stop()
            await asyncio.to_thread(remove_socket, self.socket_path)
        else:
            await self._plugins.disconnect_all("kubelet stopping")
            await server.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._plugins.close_all()
        await asyncio.to_thread(remove_socket, self.socket_path)
        log_event(logging.INFO, "kubelet_stopped", socket=self.socket_path, crash=crash)
        await self._notify()

    async def restart(self, *, gap: float = 0.0, crash: bool = False) -> None:
        """A kubelet restart (docs/kubelet-contract.md §9): stop, wait ``gap`` seconds,
        start on the same directory."""
        await self.stop(crash=crash)
        if gap:
            await asyncio.sleep(gap)
        await self.start()

    async def __aenter__(self) -> KubeletSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, RegisterRefused):
            log_event(logging.ERROR, "task_died", task=task.get_name(), error=repr(exc))

    @property
    def reconciles(self) -> int:
        """Reconciles of the running plugin manager (0 without one)."""
        return 0 if self._plugin_manager is None else self._plugin_manager.reconciles

    def fail_next_plugin_registrations(self, count: int = 1) -> None:
        """Make the plugin manager's next ``count`` RegisterPlugin calls fail as a dial of
        the plugin's endpoint would (docs/kubelet-contract.md §14: never retried in v1.32)."""
        self._registry_faults = count
        if self._plugin_manager is not None:
            self._plugin_manager.register_faults = count

    # ------------------------------------------------------------------ pods

    async def allocate(
        self,
        resource: str,
        count: int,
        *,
        pod_uid: str = "pod-1",
        container: str = "c0",
        numa_affinity: Collection[int] | None = None,
        pre_start: bool = True,
        init_container: bool = False,
    ) -> ContainerAllocateResponse | None:
        """Admit ``count`` devices of ``resource`` for one container and start it
        (``init_container``: a regular init container, which PodResources leaves out,
        docs/kubelet-contract.md §15).

        Runs ``devicesToAllocate`` (with GetPreferredAllocation when advertised), one
        Allocate RPC with exactly one container request, records the allocation, writes the
        checkpoint, then (``pre_start``) starts the container: PreStartContainer if the
        plugin requires it. Returns the ContainerAllocateResponse (``ContainerResponses[0]``).
        Raises SimulatorAllocationError with the kubelet's message. A resource the kubelet
        never heard of raises "cannot allocate unregistered device" (the real kubelet would
        admit the pod without devices).
        """
        return await self._admission.allocate(
            resource,
            count,
            pod_uid=pod_uid,
            container=container,
            numa_affinity=numa_affinity,
            pre_start=pre_start,
            init_container=init_container,
        )

    async def pre_start_container(self, pod_uid: str, container: str, resource: str) -> None:
        """A container (re)start: PreStartContainer if the plugin asked for it
        (docs/kubelet-contract.md §8)."""
        await self._admission.pre_start_container(pod_uid, container, resource)

    async def release(self, pod_uid: str) -> int:
        """The pod is gone: ``UpdateAllocatedDevices`` frees its devices. No checkpoint write
        (docs/kubelet-contract.md §10). Returns how many device allocations were dropped."""
        freed = self._manager.release(pod_uid)
        log_event(logging.INFO, "pod_released", pod=pod_uid, devices=freed)
        await self._notify()
        return freed
