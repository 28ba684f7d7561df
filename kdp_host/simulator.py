"""A kubelet device-manager simulator that follows the Kubernetes v1.32 contract.

It plays the kubelet side of the device plugin API v1beta1 on a socket directory of our
choosing: it serves ``Registration`` on ``<dir>/kubelet.sock``, dials every registering plugin
back *inside* the Register call, runs ListAndWatch, keeps capacity/allocatable the way the
device manager does, allocates devices with the kubelet's ``devicesToAllocate`` algorithm
(GetPreferredAllocation, Allocate, PreStartContainer) and writes ``kubelet_internal_checkpoint``.
It follows docs/kubelet-contract.md; the §N references below are its sections.

Deliberately reproduced kubelet behaviour that plugins must cope with:

* Register returns only after the dial-back and GetDevicePluginOptions
  (docs/kubelet-contract.md §1, §2).
* Every ListAndWatch message is a complete list; only ``"Healthy"`` is healthy
  (docs/kubelet-contract.md §4).
* When a stream ends the resource keeps its capacity, allocatable drops to 0, the endpoint is
  stopped and nothing reconnects (docs/kubelet-contract.md §4).
* If an *old* plugin client's stream ends after the same resource registered again, the *new*
  client is disconnected (docs/kubelet-contract.md §9). Counted in
  :attr:`KubeletSimulator.stale_disconnects`.
* A restart removes every non-directory entry of the socket directory except the checkpoint,
  and resources from the checkpoint come back with capacity 0 and a stopped endpoint
  (docs/kubelet-contract.md §9).

Known simplifications: device IDs are picked in sorted order (the kubelet iterates a Go set,
i.e. randomly); the checkpoint checksum is a CRC-32 of the canonical JSON of ``Data`` (the
kubelet hashes a Go object dump) and the file is not fsync'ed; GetDevicePluginOptions is
bounded by ``dial_timeout`` (the kubelet waits forever); channels the kubelet would leak are
closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import posixpath
import re
import stat
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    ContainerAllocateRequest,
    ContainerAllocateResponse,
    ContainerPreferredAllocationRequest,
    DevicePluginStub,
    Empty,
    ListAndWatchResponse,
    PreferredAllocationRequest,
    PreStartContainerRequest,
    RegistrationBase,
)
from kdp_host.plugin import PluginServer

__all__ = [
    "CHECKPOINT_NAME",
    "HEALTHY",
    "KUBELET_SOCKET_NAME",
    "SUPPORTED_VERSIONS",
    "AllocateCall",
    "Allocation",
    "DeviceView",
    "KubeletSimulator",
    "PluginOptions",
    "PreStartCall",
    "PreferredAllocationCall",
    "RegisterAttempt",
    "ResourceSnapshot",
    "SimulatorAllocationError",
    "StaleDisconnect",
    "go_quote",
    "is_extended_resource_name",
    "run_simulator",
]

log = logging.getLogger("kdp_host.simulator")

KUBELET_SOCKET_NAME: Final = "kubelet.sock"
CHECKPOINT_NAME: Final = "kubelet_internal_checkpoint"
HEALTHY: Final = "Healthy"
SUPPORTED_VERSIONS: Final = ("v1beta1",)
NODE_WITHOUT_TOPOLOGY: Final = -1
ENDPOINT_STOP_GRACE_PERIOD: Final = 300.0  # types.go endpointStopGracePeriod = 5 min
PRE_START_TIMEOUT: Final = 30.0  # KubeletPreStartContainerRPCTimeoutInSecs

_LW_PATH: Final = "/v1beta1.DevicePlugin/ListAndWatch"


# --------------------------------------------------------------------------- validation


_QNAME_RE: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN_RE: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)


def _is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS1123_SUBDOMAIN_RE.fullmatch(value) is not None


def _is_qualified_name(value: str) -> bool:
    """k8s.io/apimachinery validation.IsQualifiedName: ``[prefix/]name``."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix or not _is_dns1123_subdomain(prefix):
            return False
    else:
        return False
    return 0 < len(name) <= 63 and _QNAME_RE.fullmatch(name) is not None


def is_extended_resource_name(name: str) -> bool:
    """``v1helper.IsExtendedResourceName`` as the kubelet's Register applies it
    (docs/kubelet-contract.md §1).

    Not native (it must contain ``/`` and must not contain ``kubernetes.io/``), no
    ``requests.`` prefix, and ``requests.<name>`` must be a qualified name.
    """
    if "/" not in name or "kubernetes.io/" in name:
        return False
    if name.startswith("requests."):
        return False
    return _is_qualified_name("requests." + name)


_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(value: str) -> str:
    """Go's ``%q`` / ``strconv.Quote`` for a string (close enough for error messages)."""
    out = ['"']
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp < 0x10000:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def _go_join(directory: Path, endpoint: str) -> Path:
    """``filepath.Join(dir, endpoint)``: join then clean (``..`` may escape,
    docs/kubelet-contract.md §1)."""
    joined = f"{directory}/{endpoint}" if endpoint else str(directory)
    return Path(posixpath.normpath(joined))


_GO_CODE_NAMES: Final = {
    Status.OK: "OK",
    Status.CANCELLED: "Canceled",
    Status.UNKNOWN: "Unknown",
    Status.INVALID_ARGUMENT: "InvalidArgument",
    Status.DEADLINE_EXCEEDED: "DeadlineExceeded",
    Status.NOT_FOUND: "NotFound",
    Status.ALREADY_EXISTS: "AlreadyExists",
    Status.PERMISSION_DENIED: "PermissionDenied",
    Status.RESOURCE_EXHAUSTED: "ResourceExhausted",
    Status.FAILED_PRECONDITION: "FailedPrecondition",
    Status.ABORTED: "Aborted",
    Status.OUT_OF_RANGE: "OutOfRange",
    Status.UNIMPLEMENTED: "Unimplemented",
    Status.INTERNAL: "Internal",
    Status.UNAVAILABLE: "Unavailable",
    Status.DATA_LOSS: "DataLoss",
    Status.UNAUTHENTICATED: "Unauthenticated",
}


def _rpc_error_text(exc: BaseException) -> str:
    """Render an RPC failure the way grpc-go's status error prints."""
    if isinstance(exc, GRPCError):
        code = _GO_CODE_NAMES.get(exc.status, exc.status.name)
        return f"rpc error: code = {code} desc = {exc.message or ''}"
    if isinstance(exc, TimeoutError):
        return "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
    return f"rpc error: code = Unavailable desc = {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- logging


# The record's message is the event name; the fields travel in ``record.kdp_fields``, which
# kdp_host's log formatters render as ``key=value`` text (or JSON). ``record.kv`` holds the
# same line pre-rendered (``event=... key=value ...``) for handlers that want plain text.


def _fmt_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def _log(level: int, event: str, **fields: object) -> None:
    if log.isEnabledFor(level):
        line = " ".join([f"event={event}", *(f"{k}={_fmt_value(v)}" for k, v in fields.items())])
        log.log(level, event, extra={"kdp_fields": fields, "kv": line}, stacklevel=2)


# --------------------------------------------------------------------------- public records


class SimulatorAllocationError(Exception):
    """An allocation the kubelet would refuse; ``str()`` is the kubelet's message."""


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the kubelet stored it from the last ListAndWatch message."""

    id: str
    health: str
    numa: tuple[int, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """The GetDevicePluginOptions answer the kubelet stored (only this copy counts,
    docs/kubelet-contract.md §3)."""

    pre_start_required: bool
    get_preferred_allocation_available: bool


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    """What the kubelet knows about one resource, plus cumulative counters."""

    name: str
    known: bool  # the device manager has the resource (healthy/unhealthy sets or endpoint)
    registrations: int  # successful registrations, cumulative across restarts
    options: PluginOptions | None
    devices: Mapping[str, DeviceView]
    healthy_ids: frozenset[str]
    unhealthy_ids: frozenset[str]
    allocated_ids: frozenset[str]
    list_and_watch_messages: int  # cumulative across registrations and restarts
    endpoint_stopped: bool
    stopped_at: float | None
    socket_path: Path | None

    @property
    def capacity(self) -> int:
        return len(self.healthy_ids) + len(self.unhealthy_ids)

    @property
    def allocatable(self) -> int:
        return len(self.healthy_ids)


@dataclass(frozen=True, slots=True)
class RegisterAttempt:
    version: str
    resource: str
    endpoint: str
    error: str | None  # None: accepted


@dataclass(frozen=True, slots=True)
class StaleDisconnect:
    """The stale-stream bug of docs/kubelet-contract.md §9: an old client's stream ended and
    the current client was disconnected."""

    resource: str
    ended_socket: Path
    disconnected_socket: Path


@dataclass(frozen=True, slots=True)
class Allocation:
    pod_uid: str
    container: str
    resource: str
    device_ids: tuple[str, ...]
    devices_per_numa: Mapping[int, tuple[str, ...]]
    response: Any  # ContainerAllocateResponse


@dataclass(frozen=True, slots=True)
class PreferredAllocationCall:
    resource: str
    pod_uid: str
    container: str
    available: tuple[str, ...]
    must_include: tuple[str, ...]
    size: int
    request: Any  # PreferredAllocationRequest as sent
    response_ids: tuple[str, ...] | None  # ContainerResponses[0].DeviceIDs, None on error
    error: str | None
    response: Any = None  # PreferredAllocationResponse as received


@dataclass(frozen=True, slots=True)
class AllocateCall:
    resource: str
    pod_uid: str
    container: str
    device_ids: tuple[str, ...]
    request: Any  # AllocateRequest as sent
    response: Any  # AllocateResponse or None on error
    error: str | None


@dataclass(frozen=True, slots=True)
class PreStartCall:
    resource: str
    pod_uid: str
    container: str
    device_ids: tuple[str, ...]
    error: str | None


# --------------------------------------------------------------------------- internals


class _RegisterError(Exception):
    """Returned to the registering plugin as codes.Unknown with this message."""


@dataclass(slots=True)
class _Endpoint:
    resource: str
    socket_path: Path | None
    options: PluginOptions | None
    stub: Any  # DevicePluginStub, None for an endpoint restored from the checkpoint
    stopped_at: float | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None


@dataclass(slots=True)
class _Stats:
    registrations: int = 0
    list_and_watch_messages: int = 0


class _PluginClient:
    """One registration: a channel to the plugin and its ListAndWatch reader."""

    def __init__(self, serial: int, resource: str, socket_path: Path) -> None:
        self.serial = serial
        self.resource = resource
        self.socket_path = socket_path
        self.channel: Channel | None = None
        self.stub: Any = None
        self.messages = 0

    def __repr__(self) -> str:
        return f"<client #{self.serial} {self.resource} {self.socket_path}>"

    async def connect(self, dial_timeout: float) -> PluginOptions:
        """Blocking dial (retry until the deadline), then GetDevicePluginOptions
        (docs/kubelet-contract.md §2, §3)."""
        loop = asyncio.get_running_loop()
        channel = Channel(path=str(self.socket_path))
        self.channel = channel
        deadline = loop.time() + dial_timeout
        delay = 0.01
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _RegisterError("failed to dial device plugin: context deadline exceeded")
            try:
                async with asyncio.timeout(remaining):
                    await channel.__connect__()
                break
            except TimeoutError:
                continue
            except OSError as exc:
                _log(logging.DEBUG, "dial_retry", socket=self.socket_path, error=exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(delay * 2, 1.0)
        # Go's Disconnect of a client still dialling closes nothing (its conn is nil) and the
        # dial then stores the conn: keep the channel even if close() ran meanwhile.
        self.channel = channel
        self.stub = DevicePluginStub(channel)
        try:
            async with asyncio.timeout(dial_timeout):
                opts = await self.stub.get_device_plugin_options(Empty())
        except TimeoutError:
            raise _RegisterError(
                "failed to get device plugin options: context deadline exceeded"
            ) from None
        except Exception as exc:
            raise _RegisterError(
                f"failed to get device plugin options: {_rpc_error_text(exc)}"
            ) from exc
        return PluginOptions(
            pre_start_required=bool(opts.pre_start_required),
            get_preferred_allocation_available=bool(opts.get_preferred_allocation_available),
        )

    async def run(self, on_message: Callable[[_PluginClient, Any], Awaitable[None]]) -> None:
        """``client.Run``: read ListAndWatch until it ends or fails; never reconnect
        (docs/kubelet-contract.md §4)."""
        channel = self.channel
        reason = "stream ended"
        try:
            if channel is None:
                raise ConnectionError("client disconnected before ListAndWatch")
            async with channel.request(
                _LW_PATH,
                Cardinality.UNARY_STREAM,
                Empty,
                ListAndWatchResponse,
            ) as stream:
                await stream.send_message(Empty(), end=True)
                async for message in stream:
                    self.messages += 1
                    await on_message(self, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = _rpc_error_text(exc)
        _log(
            logging.INFO,
            "list_and_watch_ended",
            resource=self.resource,
            client=self.serial,
            socket=self.socket_path,
            messages=self.messages,
            reason=reason,
        )

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class _RegistrationService(RegistrationBase):
    def __init__(self, simulator: KubeletSimulator) -> None:
        self._simulator = simulator

    async def register(self, message: Any) -> Any:
        return await self._simulator._handle_register(message)


def _cleanup_plugin_directory(directory: Path, keep: str, sockets_only: bool) -> list[str]:
    """``MkdirAll(dir, 0750)`` + ``CleanupPluginDirectory`` (docs/kubelet-contract.md §9).
    Runs in a thread."""
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    removed: list[str] = []
    with os.scandir(directory) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        if name == keep:
            continue
        path = directory / name
        try:
            st = os.stat(path)
        except OSError as exc:
            _log(logging.WARNING, "cleanup_stat_failed", path=path, error=exc)
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if sockets_only and not stat.S_ISSOCK(st.st_mode):
            continue
        try:
            os.remove(path)
        except OSError as exc:
            _log(logging.WARNING, "cleanup_remove_failed", path=path, error=exc)
            continue
        removed.append(name)
    return removed


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def checkpoint_checksum(data: Mapping[str, Any]) -> int:
    """CRC-32 of the canonical JSON of the checkpoint's ``Data`` object."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(canonical.encode())


# --------------------------------------------------------------------------- the simulator


class KubeletSimulator:
    """The kubelet device manager, on ``socket_dir``; see the module docstring."""

    def __init__(
        self,
        socket_dir: Path,
        *,
        dial_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        endpoint_stop_grace_period: float = ENDPOINT_STOP_GRACE_PERIOD,
        pre_start_timeout: float = PRE_START_TIMEOUT,
        rpc_timeout: float | None = None,
        cleanup_sockets_only: bool = False,
    ) -> None:
        """
        ``rpc_timeout`` bounds GetPreferredAllocation/Allocate (the kubelet has none: keep
        None to reproduce a hung admission). ``cleanup_sockets_only`` removes only sockets at
        start, like newer kubelets; the default removes every non-directory entry
        (docs/kubelet-contract.md §9).
        """
        self.socket_dir = Path(socket_dir)
        self.socket_path = self.socket_dir / KUBELET_SOCKET_NAME
        self.checkpoint_path = self.socket_dir / CHECKPOINT_NAME
        self.dial_timeout = dial_timeout
        self.endpoint_stop_grace_period = endpoint_stop_grace_period
        self.pre_start_timeout = pre_start_timeout
        self.rpc_timeout = rpc_timeout
        self.cleanup_sockets_only = cleanup_sockets_only
        self._clock = clock

        # device manager state (reset by start(), restored from the checkpoint)
        self._endpoints: dict[str, _Endpoint] = {}
        self._healthy: dict[str, set[str]] = {}
        self._unhealthy: dict[str, set[str]] = {}
        self._all_devices: dict[str, dict[str, DeviceView]] = {}
        self._allocated: dict[str, set[str]] = {}
        self._pod_devices: dict[tuple[str, str, str], Allocation] = {}
        self._clients: dict[str, _PluginClient] = {}  # v1.32: one client per resource name

        # records, cumulative for the simulator's life
        self._stats: dict[str, _Stats] = {}
        self.register_attempts: list[RegisterAttempt] = []
        self.stale_disconnect_events: list[StaleDisconnect] = []
        self.preferred_allocation_calls: list[PreferredAllocationCall] = []
        self.allocate_calls: list[AllocateCall] = []
        self.pre_start_calls: list[PreStartCall] = []
        self.removed_at_start: list[str] = []
        self.starts = 0

        self._server: PluginServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._client_channels: set[_PluginClient] = set()
        self._serial = 0
        self._version = 0
        self._cond: asyncio.Condition | None = None
        self._alloc_lock: asyncio.Lock | None = None
        self._ckpt_lock: asyncio.Lock | None = None
        self._ckpt_requested = 0
        self._ckpt_written = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def version(self) -> int:
        """Incremented on every state change."""
        return self._version

    @property
    def stale_disconnects(self) -> int:
        """How often the stale-stream bug of docs/kubelet-contract.md §9 hit: an old stream's
        end disconnected a newer client."""
        return len(self.stale_disconnect_events)

    def _locks(self) -> tuple[asyncio.Condition, asyncio.Lock, asyncio.Lock]:
        if self._cond is None or self._alloc_lock is None or self._ckpt_lock is None:
            self._cond = asyncio.Condition()
            self._alloc_lock = asyncio.Lock()
            self._ckpt_lock = asyncio.Lock()
        return self._cond, self._alloc_lock, self._ckpt_lock

    async def start(self) -> None:
        """``ManagerImpl.Start``: read the checkpoint, clean the directory, serve."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._locks()
        self._reset_manager_state()
        await self._read_checkpoint_into_state()
        removed = await asyncio.to_thread(
            _cleanup_plugin_directory,
            self.socket_dir,
            CHECKPOINT_NAME,
            self.cleanup_sockets_only,
        )
        self.removed_at_start = removed
        server = PluginServer([_RegistrationService(self)])
        await server.start(path=str(self.socket_path))
        self._server = server
        self.starts += 1
        _log(
            logging.INFO,
            "kubelet_started",
            socket=self.socket_path,
            removed=",".join(removed) or "-",
            restored=",".join(sorted(self._endpoints)) or "-",
        )
        await self._notify()

    async def stop(self) -> None:
        """``server.Stop``: disconnect every client (resources unhealthy), stop serving."""
        server = self._server
        if server is None:
            return
        self._server = None
        for name, client in list(self._clients.items()):
            await self._disconnect_client(name, client, reason="kubelet stopping")
        server.close()
        server.close_connections()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await server.wait_closed()
        for client in list(self._client_channels):
            client.close()
        self._client_channels.clear()
        await asyncio.to_thread(_unlink, self.socket_path)
        _log(logging.INFO, "kubelet_stopped", socket=self.socket_path)
        await self._notify()

    async def restart(self) -> None:
        """A kubelet restart (docs/kubelet-contract.md §9): stop, then start on the same
        directory."""
        await self.stop()
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

    def _reset_manager_state(self) -> None:
        self._endpoints.clear()
        self._healthy.clear()
        self._unhealthy.clear()
        self._all_devices.clear()
        self._allocated.clear()
        self._pod_devices.clear()
        self._clients.clear()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, _RegisterError):
            _log(logging.ERROR, "task_died", task=task.get_name(), error=repr(exc))

    async def _notify(self) -> None:
        self._version += 1
        cond, _, _ = self._locks()
        async with cond:
            cond.notify_all()

    # ----------------------------------------------- registration (docs/kubelet-contract.md §1-§3)

    async def _handle_register(self, request: Any) -> Any:
        version = str(request.version)
        resource = str(request.resource_name)
        endpoint = str(request.endpoint)
        _log(
            logging.INFO,
            "register_request",
            resource=resource,
            endpoint=endpoint,
            version=version,
        )
        try:
            if version not in SUPPORTED_VERSIONS:
                supported = "[" + " ".join(go_quote(v) for v in SUPPORTED_VERSIONS) + "]"
                raise _RegisterError(
                    f"requested API version {go_quote(version)} is not supported by kubelet."
                    f" Supported version is {supported}"
                )
            if not is_extended_resource_name(resource):
                raise _RegisterError(f"the ResourceName {go_quote(resource)} is invalid")
            socket_path = _go_join(self.socket_dir, endpoint)
            # Go: the dial runs on context.Background, a cancelled Register does not stop it.
            task = self._spawn(self._connect_client(resource, socket_path), f"connect:{resource}")
            await asyncio.shield(task)
        except _RegisterError as exc:
            self.register_attempts.append(RegisterAttempt(version, resource, endpoint, str(exc)))
            _log(logging.INFO, "register_rejected", resource=resource, error=str(exc))
            await self._notify()
            raise GRPCError(Status.UNKNOWN, str(exc)) from None
        self.register_attempts.append(RegisterAttempt(version, resource, endpoint, None))
        await self._notify()
        return Empty()

    async def _connect_client(self, resource: str, socket_path: Path) -> None:
        """``connectClient`` of v1.32: register first, dial, PluginConnected, run."""
        self._serial += 1
        client = _PluginClient(self._serial, resource, socket_path)
        self._clients[resource] = client  # registerClient overwrites
        self._client_channels.add(client)
        await self._notify()
        try:
            options = await client.connect(self.dial_timeout)
        except BaseException as exc:
            if self._clients.get(resource) is not None:
                del self._clients[resource]  # deregisterClient(name): whatever is there
            client.close()
            self._client_channels.discard(client)
            if isinstance(exc, _RegisterError):
                _log(logging.INFO, "connect_failed", resource=resource, error=str(exc))
            elif not isinstance(exc, asyncio.CancelledError):
                raise _RegisterError(f"failed to dial device plugin: {exc}") from exc
            raise
        self._client_channels.add(client)
        # PluginConnected: a fresh, running endpoint replaces any previous one.
        self._endpoints[resource] = _Endpoint(resource, socket_path, options, client.stub)
        stats = self._stats.setdefault(resource, _Stats())
        stats.registrations += 1
        _log(
            logging.INFO,
            "plugin_connected",
            resource=resource,
            client=client.serial,
            socket=socket_path,
            pre_start_required=options.pre_start_required,
            preferred_allocation=options.get_preferred_allocation_available,
        )
        self._spawn(self._run_client(client), f"list-and-watch:{resource}#{client.serial}")

    async def _run_client(self, client: _PluginClient) -> None:
        """``runClient``: when the stream ends, disconnect whatever client has the name."""
        await client.run(self._on_list_and_watch)
        current = self._clients.get(client.resource)
        if current is None:
            client.close()
            self._client_channels.discard(client)
            return
        if current is not client:
            event = StaleDisconnect(client.resource, client.socket_path, current.socket_path)
            self.stale_disconnect_events.append(event)
            _log(
                logging.WARNING,
                "stale_stream_disconnects_new_client",
                resource=client.resource,
                ended=client.socket_path,
                disconnected=current.socket_path,
            )
            client.close()
            self._client_channels.discard(client)
        await self._disconnect_client(client.resource, current, reason="list_and_watch ended")

    async def _disconnect_client(self, name: str, client: _PluginClient, *, reason: str) -> None:
        """``disconnectClient`` -> ``Disconnect`` -> ``PluginDisconnected``
        (docs/kubelet-contract.md §4)."""
        if self._clients.get(name) is not None:
            del self._clients[name]
        client.close()
        self._client_channels.discard(client)
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            healthy = self._healthy.get(name, set())
            self._healthy[name] = set()
            self._unhealthy[name] = self._unhealthy.get(name, set()) | healthy
            endpoint.stopped_at = self._clock()
        _log(
            logging.INFO,
            "plugin_disconnected",
            resource=name,
            client=client.serial,
            reason=reason,
            capacity=self.capacity(name),
            allocatable=self.allocatable(name),
        )
        await self._notify()

    async def _on_list_and_watch(self, client: _PluginClient, message: Any) -> None:
        """``genericDeviceUpdateCallback``: every message is the complete list
        (docs/kubelet-contract.md §4)."""
        name = client.resource
        healthy: set[str] = set()
        unhealthy: set[str] = set()
        devices: dict[str, DeviceView] = {}
        for device in message.devices:
            topology = device.topology
            numa = tuple(int(n.id) for n in topology.nodes) if topology is not None else ()
            view = DeviceView(str(device.id), str(device.health), numa)
            devices[view.id] = view
            (healthy if view.healthy else unhealthy).add(view.id)
        self._healthy[name] = healthy
        self._unhealthy[name] = unhealthy
        self._all_devices[name] = devices
        stats = self._stats.setdefault(name, _Stats())
        stats.list_and_watch_messages += 1
        _log(
            logging.INFO,
            "devices_updated",
            resource=name,
            client=client.serial,
            total=len(message.devices),
            healthy=len(healthy),
        )
        await self._write_checkpoint()
        await self._notify()

    # ------------------------------------------------------------------ node status

    def capacity(self, resource: str) -> int:
        """Capacity as ``GetCapacity`` would report it now: healthy + unhealthy."""
        return len(self._healthy.get(resource, ())) + len(self._unhealthy.get(resource, ()))

    def allocatable(self, resource: str) -> int:
        """Allocatable: healthy devices only (allocated ones are not subtracted)."""
        return len(self._healthy.get(resource, ()))

    def options(self, resource: str) -> PluginOptions | None:
        endpoint = self._endpoints.get(resource)
        return endpoint.options if endpoint is not None else None

    async def get_capacity(self) -> tuple[dict[str, int], dict[str, int], list[str]]:
        """``GetCapacity``: also deletes resources whose stopped endpoint outlived the grace
        period (or that have no endpoint) and then rewrites the checkpoint
        (docs/kubelet-contract.md §4)."""
        capacity: dict[str, int] = {}
        allocatable: dict[str, int] = {}
        deleted: set[str] = set()
        now = self._clock()

        def expired(name: str) -> bool:
            endpoint = self._endpoints.get(name)
            if endpoint is None:
                return True
            return (
                endpoint.stopped_at is not None
                and now - endpoint.stopped_at > self.endpoint_stop_grace_period
            )

        for name, devices in list(self._healthy.items()):
            if expired(name):
                self._endpoints.pop(name, None)
                del self._healthy[name]
                deleted.add(name)
            else:
                capacity[name] = len(devices)
                allocatable[name] = len(devices)
        for name, devices in list(self._unhealthy.items()):
            if expired(name):
                self._endpoints.pop(name, None)
                del self._unhealthy[name]
                deleted.add(name)
            else:
                capacity[name] = capacity.get(name, 0) + len(devices)
        if deleted:
            _log(logging.INFO, "resources_deleted", resources=",".join(sorted(deleted)))
            await self._write_checkpoint()
            await self._notify()
        return capacity, allocatable, sorted(deleted)

    def resource(self, name: str) -> ResourceSnapshot:
        """Snapshot of one resource; KeyError if the simulator never heard of it."""
        known = name in self._healthy or name in self._unhealthy or name in self._endpoints
        stats = self._stats.get(name)
        if not known and stats is None:
            raise KeyError(name)
        stats = stats or _Stats()
        endpoint = self._endpoints.get(name)
        return ResourceSnapshot(
            name=name,
            known=known,
            registrations=stats.registrations,
            options=endpoint.options if endpoint is not None else None,
            devices=dict(self._all_devices.get(name, {})),
            healthy_ids=frozenset(self._healthy.get(name, ())),
            unhealthy_ids=frozenset(self._unhealthy.get(name, ())),
            allocated_ids=frozenset(self._allocated.get(name, ())),
            list_and_watch_messages=stats.list_and_watch_messages,
            endpoint_stopped=endpoint is None or endpoint.stopped,
            stopped_at=endpoint.stopped_at if endpoint is not None else None,
            socket_path=endpoint.socket_path if endpoint is not None else None,
        )

    def snapshot(self) -> dict[str, ResourceSnapshot]:
        names = set(self._stats) | set(self._healthy) | set(self._unhealthy) | set(self._endpoints)
        return {name: self.resource(name) for name in sorted(names)}

    def describe(self) -> dict[str, str]:
        """One human line per resource: what the kubelet sees."""
        lines: dict[str, str] = {}
        for name, snap in self.snapshot().items():
            unhealthy = ",".join(sorted(snap.unhealthy_ids))
            state = "stopped" if snap.endpoint_stopped else "running"
            if not snap.known:
                state = "deleted"
            lines[name] = (
                f"resource={name} capacity={snap.capacity} allocatable={snap.allocatable}"
                f" unhealthy=[{unhealthy}] allocated={len(snap.allocated_ids)}"
                f" endpoint={state} registrations={snap.registrations}"
            )
        return lines

    def plugin_clients(self) -> dict[str, Path]:
        """The registration server's client map: resource -> socket of its current client
        (set when Register starts dialling, removed on disconnect or a failed dial)."""
        return {name: client.socket_path for name, client in self._clients.items()}

    @property
    def allocations(self) -> list[Allocation]:
        return list(self._pod_devices.values())

    def allocation(self, pod_uid: str, container: str, resource: str) -> Allocation | None:
        return self._pod_devices.get((pod_uid, container, resource))

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
        cond, _, _ = self._locks()

        def check() -> bool:
            try:
                return bool(predicate())
            except LookupError:
                return False

        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    await cond.wait_for(check)
        except TimeoutError:
            what = description or getattr(predicate, "__qualname__", repr(predicate))
            state = "; ".join(self.describe().values()) or "no resources"
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {what}; kubelet sees: {state}"
            ) from None

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:
        """Wait until :attr:`version` differs from ``since``; returns the new version."""
        cond, _, _ = self._locks()
        async with asyncio.timeout(timeout):
            async with cond:
                await cond.wait_for(lambda: self._version != since)
        return self._version

    # ------------------------------------------------- allocation (docs/kubelet-contract.md §5-§8)

    async def allocate(
        self,
        resource: str,
        count: int,
        *,
        pod_uid: str = "pod-1",
        container: str = "c0",
        numa_affinity: Collection[int] | None = None,
        pre_start: bool = True,
    ) -> Any:
        """Admit ``count`` devices of ``resource`` for one container and start it.

        Runs ``devicesToAllocate`` (with GetPreferredAllocation when advertised), one
        Allocate RPC with exactly one container request, records the allocation, writes the
        checkpoint, then PreStartContainer if the plugin requires it (container start).
        Returns the ContainerAllocateResponse (``ContainerResponses[0]``). Raises
        SimulatorAllocationError with the kubelet's message. A resource the kubelet never
        heard of raises "cannot allocate unregistered device" (the real kubelet would admit
        the pod without devices).
        """
        _, alloc_lock, _ = self._locks()
        async with alloc_lock:  # the kubelet admits pods one at a time
            affinity = frozenset(numa_affinity) if numa_affinity is not None else None
            devs = await self._devices_to_allocate(pod_uid, container, resource, count, affinity)
            if devs:
                response = await self._allocate_rpc(pod_uid, container, resource, devs)
            else:
                existing = self._pod_devices.get((pod_uid, container, resource))
                response = existing.response if existing is not None else None
            if pre_start:
                await self._pre_start_if_needed(pod_uid, container, resource)
            return response

    async def pre_start_container(self, pod_uid: str, container: str, resource: str) -> None:
        """A container (re)start: PreStartContainer if the plugin asked for it
        (docs/kubelet-contract.md §8)."""
        await self._pre_start_if_needed(pod_uid, container, resource)

    async def release(self, pod_uid: str) -> int:
        """The pod is gone: ``UpdateAllocatedDevices`` frees its devices. No checkpoint write
        (docs/kubelet-contract.md §10). Returns how many device allocations were dropped."""
        keys = [key for key in self._pod_devices if key[0] == pod_uid]
        freed = 0
        for key in keys:
            freed += len(self._pod_devices.pop(key).device_ids)
        self._recompute_allocated()
        _log(logging.INFO, "pod_released", pod=pod_uid, devices=freed)
        await self._notify()
        return freed

    def _recompute_allocated(self) -> None:
        allocated: dict[str, set[str]] = {}
        for alloc in self._pod_devices.values():
            allocated.setdefault(alloc.resource, set()).update(alloc.device_ids)
        self._allocated = allocated

    def _has_topology(self, resource: str) -> bool:
        return any(dev.numa for dev in self._all_devices.get(resource, {}).values())

    def _filter_by_affinity(
        self, resource: str, available: set[str], affinity: frozenset[int] | None
    ) -> tuple[set[str], set[str], set[str]]:
        """``filterByAffinity``: aligned / unaligned / no-topology split
        (docs/kubelet-contract.md §5, §11)."""
        if affinity is None or not self._has_topology(resource):
            return set(), set(), set(available)
        all_devices = self._all_devices.get(resource, {})
        per_node: dict[int, set[str]] = {}
        for dev_id in available:
            dev = all_devices.get(dev_id)
            nodes = dev.numa if dev is not None else ()
            for node in nodes or (NODE_WITHOUT_TOPOLOGY,):
                per_node.setdefault(node, set()).add(dev_id)

        def rank(node: int) -> tuple[int, int, int]:
            if node >= 0 and node in affinity:
                group = 0
            elif node == NODE_WITHOUT_TOPOLOGY:
                group = 2
            else:
                group = 1
            return group, len(per_node[node]), node

        order = sorted(per_node, key=rank)
        aligned: set[str] = set()
        unaligned: set[str] = set()
        without: set[str] = set()
        for dev_id in available:
            for node in order:
                if dev_id in per_node[node]:
                    if node == NODE_WITHOUT_TOPOLOGY:
                        without.add(dev_id)
                    elif node in affinity:
                        aligned.add(dev_id)
                    else:
                        unaligned.add(dev_id)
                    break
        return aligned, unaligned, without

    async def _devices_to_allocate(
        self,
        pod_uid: str,
        container: str,
        resource: str,
        required: int,
        affinity: frozenset[int] | None,
    ) -> list[str]:
        """``devicesToAllocate`` (manager.go); an empty list means no Allocate RPC."""
        needed = required
        existing = self._pod_devices.get((pod_uid, container, resource))
        if existing is not None:
            needed -= len(existing.device_ids)
            if needed != 0:
                raise SimulatorAllocationError(
                    f"pod {go_quote(pod_uid)} container {go_quote(container)} changed request"
                    f" for resource {go_quote(resource)} from {len(existing.device_ids)}"
                    f" to {required}"
                )
        healthy = self._healthy.get(resource)
        if healthy is None:
            raise SimulatorAllocationError(f"cannot allocate unregistered device {resource}")
        if not healthy:
            raise SimulatorAllocationError(
                f"no healthy devices present; cannot allocate unhealthy devices {resource}"
            )
        if existing is not None and not healthy.issuperset(existing.device_ids):
            raise SimulatorAllocationError(
                "previously allocated devices are no longer healthy; cannot allocate unhealthy"
                f" devices {resource}"
            )
        if needed == 0:
            return []

        allocated: list[str] = []
        in_use = self._allocated.setdefault(resource, set())

        def take(devices: set[str]) -> bool:
            nonlocal needed
            for dev_id in sorted(devices.difference(allocated)):
                self._allocated.setdefault(resource, set()).add(dev_id)
                allocated.append(dev_id)
                needed -= 1
                if needed == 0:
                    return True
            return False

        available = healthy - in_use
        if len(available) < needed:
            raise SimulatorAllocationError(
                f"requested number of devices unavailable for {resource}."
                f" Requested: {needed}, Available: {len(available)}"
            )
        aligned, unaligned, no_affinity = self._filter_by_affinity(resource, available, affinity)

        if needed < len(aligned):
            preferred = await self._preferred_if_available(
                pod_uid, container, resource, aligned | set(allocated), allocated, required
            )
            if take(preferred & aligned) or take(aligned):
                return allocated
            raise SimulatorAllocationError(
                "unexpectedly allocated less resources than required."
                f" Requested: {required}, Got: {required - needed}"
            )
        if take(aligned):
            return allocated
        preferred = await self._preferred_if_available(
            pod_uid, container, resource, available | set(allocated), allocated, required
        )
        if take(preferred & available) or take(unaligned) or take(no_affinity):
            return allocated
        raise SimulatorAllocationError(
            "unexpectedly allocated less resources than required."
            f" Requested: {required}, Got: {required - needed}"
        )

    async def _preferred_if_available(
        self,
        pod_uid: str,
        container: str,
        resource: str,
        available: set[str],
        must_include: list[str],
        size: int,
    ) -> set[str]:
        """``callGetPreferredAllocationIfAvailable`` (docs/kubelet-contract.md §5)."""
        endpoint = self._endpoints.get(resource)
        if endpoint is None:
            raise SimulatorAllocationError(
                f"endpoint not found in cache for a registered resource: {resource}"
            )
        if endpoint.options is None or not endpoint.options.get_preferred_allocation_available:
            return set()
        available_ids = tuple(sorted(available))
        must_ids = tuple(must_include)
        request = PreferredAllocationRequest(
            container_requests=[
                ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available_ids),
                    must_include_deviceIDs=list(must_ids),
                    allocation_size=size,
                )
            ]
        )
        try:
            response = await _call_endpoint(
                endpoint,
                resource,
                lambda stub: stub.get_preferred_allocation(request),
                self.rpc_timeout,
            )
        except _RpcFailed as exc:
            text = str(exc)
            self.preferred_allocation_calls.append(
                PreferredAllocationCall(
                    resource, pod_uid, container, available_ids, must_ids, size, request, None, text
                )
            )
            await self._notify()
            raise SimulatorAllocationError(
                f"device plugin GetPreferredAllocation rpc failed with err: {text}"
            ) from exc
        ids: tuple[str, ...] = ()
        if response.container_responses:
            ids = tuple(str(i) for i in response.container_responses[0].device_i_ds)
        self.preferred_allocation_calls.append(
            PreferredAllocationCall(
                resource,
                pod_uid,
                container,
                available_ids,
                must_ids,
                size,
                request,
                ids,
                None,
                response,
            )
        )
        _log(
            logging.INFO,
            "preferred_allocation",
            resource=resource,
            pod=pod_uid,
            container=container,
            size=size,
            available=len(available_ids),
            preferred=",".join(ids) or "-",
        )
        return set(ids)

    async def _allocate_rpc(
        self, pod_uid: str, container: str, resource: str, devs: list[str]
    ) -> Any:
        """The Allocate part of ``allocateContainerResources`` (docs/kubelet-contract.md §6)."""
        endpoint = self._endpoints.get(resource)
        if endpoint is None:
            self._recompute_allocated()
            raise SimulatorAllocationError(f"unknown Device Plugin {resource}")
        request = AllocateRequest(container_requests=[ContainerAllocateRequest(devices_ids=devs)])
        try:
            response = await _call_endpoint(
                endpoint, resource, lambda stub: stub.allocate(request), self.rpc_timeout
            )
        except _RpcFailed as exc:
            text = str(exc)
            self.allocate_calls.append(
                AllocateCall(resource, pod_uid, container, tuple(devs), request, None, text)
            )
            self._recompute_allocated()  # restore allocatedDevices from podDevices
            await self._notify()
            raise SimulatorAllocationError(text) from exc
        self.allocate_calls.append(
            AllocateCall(resource, pod_uid, container, tuple(devs), request, response, None)
        )
        if not response.container_responses:
            # The kubelet does not restore allocatedDevices here: the devices stay taken.
            await self._notify()
            raise SimulatorAllocationError(
                "no containers return in allocation response"
                " &AllocateResponse{ContainerResponses:[]*ContainerAllocateResponse{},}"
            )
        per_numa: dict[int, list[str]] = {}
        all_devices = self._all_devices.get(resource, {})
        for dev_id in devs:
            dev = all_devices.get(dev_id)
            for node in (dev.numa if dev is not None else ()) or (NODE_WITHOUT_TOPOLOGY,):
                per_numa.setdefault(node, []).append(dev_id)
        allocation = Allocation(
            pod_uid=pod_uid,
            container=container,
            resource=resource,
            device_ids=tuple(devs),
            devices_per_numa={k: tuple(v) for k, v in per_numa.items()},
            response=response.container_responses[0],
        )
        self._pod_devices[(pod_uid, container, resource)] = allocation
        _log(
            logging.INFO,
            "allocated",
            resource=resource,
            pod=pod_uid,
            container=container,
            devices=",".join(devs),
        )
        await self._write_checkpoint()
        await self._notify()
        return allocation.response

    async def _pre_start_if_needed(self, pod_uid: str, container: str, resource: str) -> None:
        """``callPreStartContainerIfNeeded`` (docs/kubelet-contract.md §8): 30 s deadline,
        response ignored."""
        endpoint = self._endpoints.get(resource)
        if endpoint is None:
            raise SimulatorAllocationError(
                f"endpoint not found in cache for a registered resource: {resource}"
            )
        if endpoint.options is None or not endpoint.options.pre_start_required:
            return
        allocation = self._pod_devices.get((pod_uid, container, resource))
        if allocation is None:
            raise SimulatorAllocationError(
                f"no devices found allocated in local cache for pod {pod_uid},"
                f" container {container}, resource {resource}"
            )
        devs = list(allocation.device_ids)
        request = PreStartContainerRequest(devices_ids=devs)
        try:
            # The kubelet's own 30 s deadline travels with the call (grpc-timeout).
            await _call_endpoint(
                endpoint,
                resource,
                lambda stub: stub.pre_start_container(request, timeout=self.pre_start_timeout),
                None,
            )
        except _RpcFailed as exc:
            text = str(exc)
            self.pre_start_calls.append(
                PreStartCall(resource, pod_uid, container, tuple(devs), text)
            )
            await self._notify()
            raise SimulatorAllocationError(
                f"device plugin PreStartContainer rpc failed with err: {text}"
            ) from exc
        self.pre_start_calls.append(PreStartCall(resource, pod_uid, container, tuple(devs), None))
        await self._notify()

    # --------------------------------------------------- checkpoint (docs/kubelet-contract.md §10)

    def _checkpoint_document(self) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for alloc in self._pod_devices.values():
            entries.append(
                {
                    "PodUID": alloc.pod_uid,
                    "ContainerName": alloc.container,
                    "ResourceName": alloc.resource,
                    "DeviceIDs": {
                        str(node): list(ids) for node, ids in alloc.devices_per_numa.items()
                    },
                    "AllocResp": base64.b64encode(bytes(alloc.response)).decode("ascii"),
                }
            )
        data: dict[str, Any] = {
            # Go marshals the nil slice of an empty podDevices as null.
            "PodDeviceEntries": entries or None,
            "RegisteredDevices": {
                name: sorted(devices) for name, devices in sorted(self._healthy.items())
            },
        }
        return {"Data": data, "Checksum": checkpoint_checksum(data)}

    async def _write_checkpoint(self) -> None:
        """Temp file + rename, serialized; later writes cover earlier requests."""
        _, _, lock = self._locks()
        self._ckpt_requested += 1
        wanted = self._ckpt_requested
        async with lock:
            if self._ckpt_written >= wanted:
                return
            covered = self._ckpt_requested
            payload = json.dumps(self._checkpoint_document(), separators=(",", ":")).encode()
            try:
                await asyncio.to_thread(_atomic_write, self.checkpoint_path, payload)
            except OSError as exc:
                _log(logging.ERROR, "checkpoint_write_failed", path=self.checkpoint_path, error=exc)
            self._ckpt_written = covered

    async def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint file as JSON, after every write requested so far has landed."""
        _, _, lock = self._locks()
        async with lock:
            raw = await asyncio.to_thread(_read_bytes, self.checkpoint_path)
        if raw is None:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document

    async def _read_checkpoint_into_state(self) -> None:
        """``readCheckpoint``: restore allocations; registered resources get empty device
        sets and a stopped endpoint until the plugin registers again
        (docs/kubelet-contract.md §9)."""
        raw = await asyncio.to_thread(_read_bytes, self.checkpoint_path)
        if raw is None:
            return
        try:
            document = json.loads(raw)
            data = document["Data"]
            if checkpoint_checksum(data) != document["Checksum"]:
                raise ValueError("checkpoint is corrupted")
            pod_entries = data.get("PodDeviceEntries") or []
            registered = data.get("RegisteredDevices") or {}
            allocations = []
            for entry in pod_entries:
                per_numa = {int(k): tuple(v) for k, v in (entry["DeviceIDs"] or {}).items()}
                ids: list[str] = []
                for node_ids in per_numa.values():
                    ids.extend(i for i in node_ids if i not in ids)
                response = ContainerAllocateResponse.parse(base64.b64decode(entry["AllocResp"]))
                allocations.append(
                    Allocation(
                        pod_uid=entry["PodUID"],
                        container=entry["ContainerName"],
                        resource=entry["ResourceName"],
                        device_ids=tuple(ids),
                        devices_per_numa=per_numa,
                        response=response,
                    )
                )
        except (ValueError, KeyError, TypeError) as exc:
            _log(logging.ERROR, "checkpoint_read_failed", path=self.checkpoint_path, error=exc)
            return
        for alloc in allocations:
            self._pod_devices[(alloc.pod_uid, alloc.container, alloc.resource)] = alloc
        self._recompute_allocated()
        now = self._clock()
        for name in registered:
            self._healthy[name] = set()
            self._unhealthy[name] = set()
            self._endpoints[name] = _Endpoint(name, None, None, None, stopped_at=now)


class _RpcFailed(Exception):
    """An RPC to a plugin endpoint that failed; str() is the kubelet's error text."""


async def _call_endpoint(
    endpoint: _Endpoint,
    resource: str,
    call: Callable[[DevicePluginStub], Awaitable[Any]],
    timeout: float | None,
) -> Any:
    """One RPC through an endpoint the way the kubelet's endpoint.go does it: a stopped
    endpoint refuses, any failure becomes grpc-go's status text."""
    if endpoint.stopped or endpoint.stub is None:
        raise _RpcFailed(f"endpoint {resource} has been stopped")
    try:
        async with asyncio.timeout(timeout):
            return await call(endpoint.stub)
    except Exception as exc:
        raise _RpcFailed(_rpc_error_text(exc)) from exc


# --------------------------------------------------------------------------- CLI entry


async def run_simulator(
    socket_dir: Path,
    *,
    print_fn: Callable[[str], object] = print,
    dial_timeout: float = 10.0,
) -> None:
    """Run a simulated kubelet on ``socket_dir`` until cancelled, printing one line per
    change of what the kubelet sees per resource (and every Register outcome)."""
    simulator = KubeletSimulator(Path(socket_dir), dial_timeout=dial_timeout)
    await simulator.start()
    print_fn(f"kubelet simulator serving {simulator.socket_path}")
    last: dict[str, str] = {}
    attempts_seen = 0
    try:
        while True:
            seen = simulator.version
            for attempt in simulator.register_attempts[attempts_seen:]:
                outcome = "ok" if attempt.error is None else f"error={json.dumps(attempt.error)}"
                print_fn(
                    f"register resource={attempt.resource} endpoint={attempt.endpoint} {outcome}"
                )
            attempts_seen = len(simulator.register_attempts)
            current = simulator.describe()
            for name, line in current.items():
                if last.get(name) != line:
                    print_fn(line)
            last = current
            await simulator.wait_changed(seen)
    finally:
        await simulator.stop()
