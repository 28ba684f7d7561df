"""Registering a resource with the kubelet (Registration.Register on kubelet.sock)."""

from __future__ import annotations

import asyncio
import contextlib
import os

import grpclib
import grpclib.client
from grpclib.const import Status
from grpclib.exceptions import ProtocolError, StreamTerminatedError

from ..api.v1beta1 import DevicePluginOptions, RegisterRequest, RegistrationStub
from .codec import DevicePluginCodec

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT = 30.0
"""The kubelet dials us back inside Register with its own 10 s limit; leave room for that."""


class RegistrationError(Exception):
    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result
        """`unavailable` (no kubelet listening), `refused` (the kubelet said no), `error`."""


FileIdentity = tuple[int, int]


def file_identity(path: str) -> FileIdentity | None:
    """Inode and modification time: a re-created file can reuse the inode number, not both.
    Not the change time: a chmod or chown of the same socket (which the kubelet's own
    watcher ignores) is no new socket."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def kubelet_socket_identity(socket_dir: str) -> FileIdentity | None:
    return file_identity(os.path.join(socket_dir, KUBELET_SOCKET))


async def kubelet_listening(socket_dir: str, timeout: float = 1.0) -> bool:
    """Whether kubelet.sock accepts a connection now. A kubelet listens only after its
    start-up clean-up of the socket dir (docs/kubelet-contract.md §9), so a plugin socket
    that exists after this returned True is not deleted by that kubelet's clean-up."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_unix_connection(os.path.join(socket_dir, KUBELET_SOCKET))
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Registrar:
    """Registration.Register of every resource of a host, over one connection per
    kubelet.sock (grpclib multiplexes the calls of concurrent resources on it), and the
    question whether that kubelet listens yet, asked once per kubelet.sock file.

    A connection per call cost each resource a connect and an HTTP/2 handshake with the
    kubelet: most of a resource's start-up work beside the kubelet's own dial-back. The
    connection is made again when kubelet.sock is a new file (a restarted kubelet) and
    after a call failed for want of the connection; the host closes it when it stops. The
    Register request is written by `wire` (the channel's codec: `DevicePluginCodec`).
    """

    def __init__(self) -> None:
        self._channels: dict[str, tuple[FileIdentity, grpclib.client.Channel]] = {}
        self._listening: dict[str, FileIdentity] = {}
        """kubelet.sock files (by path) seen accepting a connection: their kubelet is past
        its start-up clean-up, for good (a restarted kubelet makes a new file)."""
        self._asking: dict[tuple[str, FileIdentity], asyncio.Future[bool]] = {}
        """The check under way per kubelet.sock file: concurrent callers share it."""

    async def wait_listening(self, socket_dir: str) -> bool:
        """`kubelet_listening` of `socket_dir`, asked once per kubelet.sock file: a hundred
        resources registering at start cost the kubelet one connection, not a hundred."""
        path = os.path.join(socket_dir, KUBELET_SOCKET)
        identity = file_identity(path)
        if identity is None:
            return False
        if self._listening.get(path) == identity:
            return True
        key = (path, identity)
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(kubelet_listening(socket_dir))
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
        listening = await asyncio.shield(asking)  # one caller cancelled: not the others
        if listening:
            self._listening[path] = identity
        return listening

    def _channel(self, path: str, identity: FileIdentity) -> grpclib.client.Channel:
        known = self._channels.get(path)
        if known is not None:
            if known[0] == identity:
                return known[1]
            known[1].close()
        channel = grpclib.client.Channel(path=path, codec=DevicePluginCodec())
        self._channels[path] = (identity, channel)
        return channel

    def _drop(self, path: str, channel: grpclib.client.Channel) -> None:
        """Forget a channel whose connection failed (unless another call replaced it)."""
        known = self._channels.get(path)
        if known is not None and known[1] is channel:
            del self._channels[path]
            channel.close()

    async def register(
        self,
        socket_dir: str,
        resource: str,
        endpoint: str,
        options: DevicePluginOptions,
        timeout: float = REGISTER_TIMEOUT,
    ) -> None:
        """One Register call. The plugin must already be serving on `endpoint`."""
        path = os.path.join(socket_dir, KUBELET_SOCKET)
        identity = file_identity(path)
        if identity is None:
            raise RegistrationError("unavailable", f"{path} does not exist (kubelet not running?)")
        channel = self._channel(path, identity)
        try:
            await RegistrationStub(channel).register(
                RegisterRequest(
                    version=API_VERSION, endpoint=endpoint, resource_name=resource, options=options
                ),
                timeout=timeout,
            )
        except grpclib.GRPCError as exc:
            result = "unavailable" if exc.status == Status.UNAVAILABLE else "refused"
            if result == "unavailable":
                self._drop(path, channel)
            raise RegistrationError(result, f"kubelet: {exc.message or exc.status.name}") from None
        except (OSError, ConnectionError, StreamTerminatedError, ProtocolError) as exc:
            self._drop(path, channel)
            raise RegistrationError("unavailable", f"cannot reach {path}: {exc}") from None
        except AttributeError as exc:
            # grpclib (0.4.x, its issue #110) fails this way when the peer closes the
            # connection before the request goes out: a kubelet stopping or restarting then.
            self._drop(path, channel)
            raise RegistrationError("unavailable", f"{path} closed the connection: {exc}") from None
        except TimeoutError:
            self._drop(path, channel)
            raise RegistrationError("error", f"Register timed out after {timeout:g}s") from None

    def close(self) -> None:
        for _, channel in self._channels.values():
            channel.close()
        self._channels.clear()
        for asking in self._asking.values():
            asking.cancel()
