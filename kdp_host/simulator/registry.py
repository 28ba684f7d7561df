"""The kubelet's plugin manager for device plugins (``pkg/kubelet/pluginmanager``, v1.32):
plugins registered through the ``plugins_registry`` directory (docs/kubelet-contract.md §14).

The watcher's desired state (socket path -> the time its creation was seen) is taken from a
scan of the directory at every reconcile instead of fsnotify events: the reconciler only
looks at that state once per period, so it makes the same decisions (a socket created again
between two reconciles has a new identity, hence a new timestamp, as a delete and a create
event would give). The identity is the inode and its modification time, not its change time:
a chmod or chown (IN_ATTRIB, which the kubelet's watcher ignores) changes only the latter).
The rest is the kubelet's: the reconciler (deregister first, then register), one operation
per socket at a time with a back-off after a failure, the register operation (dial, GetInfo,
ValidatePlugin, RegisterPlugin, NotifyRegistrationStatus) with the v1.32 defect that a failed
RegisterPlugin is never retried until the socket is created again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

from grpclib.client import Channel

from kdp_host.api.pluginregistration import (
    InfoRequest,
    PluginInfo,
    RegistrationStatus,
    RegistrationStub,
)

from . import gotext
from .log import log_event
from .plugins import PluginHandler
from .transport import RegisterRefused, wait_accepting

RECONCILE_PERIOD: Final = 1.0
"""The plugin manager's reconciler loop period."""
GET_INFO_TIMEOUT: Final = 1.0
NOTIFY_TIMEOUT: Final = 5.0
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAXIMUM: Final = 122.0
"""goroutinemap's exponential back-off after a failed operation (500 ms doubling to 2m2s)."""
DEVICE_PLUGIN_TYPE: Final = "DevicePlugin"

Identity = tuple[int, int]


@dataclass(frozen=True, slots=True)
class RegistryOperation:
    """One operation of the plugin manager, as it ended: ``error`` None is success.

    ``kind`` is ``register`` or ``deregister``; ``name`` is the plugin's name from GetInfo
    ("" if it was not learnt); ``notified`` what NotifyRegistrationStatus told the plugin
    (None: not called), ``notify_error`` its text."""

    kind: str
    socket: Path
    name: str
    error: str | None
    at: float
    notified: bool | None = None
    notify_error: str = ""


@dataclass(slots=True)
class _Registered:
    """The actual state of one registered plugin."""

    name: str
    timestamp: float


@dataclass(slots=True)
class _Backoff:
    """When a plugin may register again, and the next delay."""

    until: float = 0.0
    delay: float = 0.0


class RegistryFailure(Exception):
    """A register operation failed; ``str()`` is the kubelet's error text."""


class PluginManager:
    """The plugin manager of one kubelet generation, with the DevicePlugin handler only."""

    def __init__(
        self,
        directory: Path,
        handler: PluginHandler,
        *,
        reconcile_period: float,
        dial_timeout: float,
        clock: Callable[[], float],
        notify: Callable[[], Awaitable[None]],
        record: Callable[[RegistryOperation], None],
    ) -> None:
        self.directory = directory
        self._handler = handler
        self.reconcile_period = reconcile_period
        self._dial_timeout = dial_timeout
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._notify = notify
        self._record = record
        self._desired: dict[Path, tuple[Identity, float]] = {}
        self._actual: dict[Path, _Registered] = {}
        self._running: set[Path] = set()
        self._backoff: dict[Path, _Backoff] = {}
        self.register_faults = 0
        """Make this many next RegisterPlugin calls fail (a dial failure of the endpoint)."""
        self.reconciles = 0

    def start(self) -> None:
        """``Run``: the watcher creates the directory (mode 0755) if needed; then reconcile at
        once (the first reconcile after a start) and every period."""
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._spawn(self._run(), "plugin-manager")

    async def stop(self) -> None:
        """Close the stop channel: the watcher and reconciler end, operations in flight are
        abandoned (the kubelet process is going away) and nothing is deregistered."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._desired = await asyncio.to_thread(self._scan, dict(self._desired))
            self._reconcile(loop.time())
            self.reconciles += 1
            await self._notify()
            await asyncio.sleep(self.reconcile_period)

    def _scan(
        self, known: dict[Path, tuple[Identity, float]]
    ) -> dict[Path, tuple[Identity, float]]:
        """The watcher's desired state: every socket under the directory whose name does not
        start with ".", with the time its current file was first seen."""
        found: dict[Path, tuple[Identity, float]] = {}
        for root, dirs, files in os.walk(self.directory):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(root) / name
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if not stat.S_ISSOCK(st.st_mode):
                    continue
                identity = (st.st_ino, st.st_mtime_ns)
                previous = known.get(path)
                if previous is not None and previous[0] == identity:
                    found[path] = previous
                else:
                    found[path] = (identity, self._clock())
        return found

    def _reconcile(self, now: float) -> None:
        """Deregister what is gone or was created again, then register what is new."""
        for path, registered in list(self._actual.items()):
            desired = self._desired.get(path)
            if desired is None or desired[1] != registered.timestamp:
                self._start(path, now, self._deregister(path, registered))
        for path, (_, timestamp) in self._desired.items():
            current = self._actual.get(path)
            if current is None or current.timestamp != timestamp:
                self._start(path, now, self._register(path, timestamp))

    def _start(self, path: Path, now: float, operation: Coroutine[Any, Any, None]) -> None:
        """goroutinemap: one operation per socket; after a failure none until the back-off."""
        backoff = self._backoff.get(path)
        if path in self._running or (backoff is not None and now < backoff.until):
            operation.close()
            return
        self._running.add(path)

        async def run() -> None:
            try:
                await operation
            except RegistryFailure as exc:
                log_event(logging.INFO, "registry_operation_failed", socket=path, error=exc)
                state = self._backoff.setdefault(path, _Backoff())
                state.delay = min(
                    BACKOFF_MAXIMUM, state.delay * 2 if state.delay else BACKOFF_INITIAL
                )
                state.until = asyncio.get_running_loop().time() + state.delay
            else:
                self._backoff.pop(path, None)
            finally:
                self._running.discard(path)

        self._spawn(run(), f"plugin-manager:{path.name}")

    async def _deregister(self, path: Path, registered: _Registered) -> None:
        """``GenerateUnregisterPluginFunc``: forget the plugin, then ``DeRegisterPlugin``."""
        self._actual.pop(path, None)
        await self._handler.deregister_plugin(registered.name)
        self._record(RegistryOperation("deregister", path, registered.name, None, self._clock()))
        await self._notify()

    async def _register(self, path: Path, timestamp: float) -> None:
        """``GenerateRegisterPluginFunc`` of v1.32 (docs/kubelet-contract.md §14)."""
        if not await wait_accepting(path, self._dial_timeout):
            await self._failed(path, "", gotext.registry_dial_failed(path))
        channel = Channel(path=str(path))
        try:
            stub = RegistrationStub(channel)
            try:
                info: PluginInfo = await stub.get_info(InfoRequest(), timeout=GET_INFO_TIMEOUT)
            except Exception as exc:
                await self._failed(
                    path, "", gotext.get_info_failed(path, gotext.rpc_error_text(exc))
                )
            name = str(info.name)
            if info.type != DEVICE_PLUGIN_TYPE:
                text = gotext.no_handler(str(info.type), path)
                await self._tell(stub, path, name, False, text, failed=text)
            endpoint = Path(str(info.endpoint) or str(path))
            versions = [str(v) for v in info.supported_versions]
            why = self._handler.validate_plugin(name, versions)
            if why is not None:
                text = gotext.validation_failed(why)
                await self._tell(stub, path, name, False, text, failed=gotext.VALIDATE_FUNC_FAILED)
            # Recorded before RegisterPlugin: a failure below is never retried (v1.32).
            self._actual[path] = _Registered(name, timestamp)
            try:
                if self.register_faults > 0:
                    self.register_faults -= 1
                    raise RegisterRefused(gotext.dial_failed("injected fault"))
                await self._handler.register_plugin(name, endpoint)
            except RegisterRefused as exc:
                text = gotext.registration_failed(str(exc))
                await self._tell(stub, path, name, False, text, failed=text)
            await self._tell(stub, path, name, True, "", failed=None)
        finally:
            channel.close()

    async def _tell(
        self,
        stub: RegistrationStub,
        path: Path,
        name: str,
        registered: bool,
        error: str,
        *,
        failed: str | None,
    ) -> None:
        """``notifyPlugin``; raises RegistryFailure with ``failed`` (or the notify error)."""
        try:
            await stub.notify_registration_status(
                RegistrationStatus(plugin_registered=registered, error=error),
                timeout=NOTIFY_TIMEOUT,
            )
        except Exception as exc:
            reason = gotext.rpc_error_text(exc)
            self._record(
                RegistryOperation("register", path, name, reason, self._clock(), None, error)
            )
            await self._notify()
            raise RegistryFailure(f"{error}: {reason}") from exc
        self._record(
            RegistryOperation("register", path, name, failed, self._clock(), registered, error)
        )
        await self._notify()
        if failed is not None:
            raise RegistryFailure(failed)

    async def _failed(self, path: Path, name: str, text: str) -> NoReturn:
        self._record(RegistryOperation("register", path, name, text, self._clock()))
        await self._notify()
        raise RegistryFailure(text)
