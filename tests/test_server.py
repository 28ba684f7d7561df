"""The plugin server: socket permissions and name, the codec, and the one grpclib workaround."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpclib.server
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hyperframe.frame import DataFrame, HeadersFrame

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateRequest,
    DevicePluginOptions,
    DevicePluginStub,
    Empty,
    ListAndWatchResponse,
    PreferredAllocationRequest,
    PreStartContainerRequest,
    RegisterRequest,
    RegistrationBase,
)
from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.endpoint import (
    INSTANCE_ID_MAX_LENGTH,
    SOCKET_NAME_MAX_LENGTH,
    SOCKET_NAME_MIN_LENGTH,
    is_socket_name,
    socket_name,
    socket_path_problem,
)
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.protocol.codec import DevicePluginCodec, EncodedMessage
from kdp_host.protocol.lists import ListAndWatchEncoder
from kdp_host.protocol.registration import Registrar, RegistrationError, file_identity
from kdp_host.protocol.server import (
    SOCKET_MODE,
    CoalescingTransport,
    PluginServer,
    written_out,
)
from kdp_host.protocol.service import DevicePluginService
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, wait_until

FPGA = "vendor.example/fpga"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------ socket permissions


@pytest.mark.usefixtures("permissive_umask")
async def test_plugin_server_socket_is_private_whatever_the_umask(short_dir: Path) -> None:
    path = short_dir / "p.sock"
    server = PluginServer([])
    await server.serve(str(path))
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == SOCKET_MODE == 0o600
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.usefixtures("permissive_umask")
async def test_host_serves_on_a_0600_socket_under_umask_0(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    running = await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    socket_path = Path(running.host.resources[FPGA].socket_path)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600


class HeldOffload:
    """An Offload that runs each call on a thread once `release` is set, recording them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.done = 0

    async def run(self, function: Callable[[], Any]) -> Any:
        self.calls += 1
        await self.release.wait()
        try:
            return await asyncio.to_thread(function)
        finally:
            self.done += 1


async def test_plugin_server_makes_its_socket_off_the_loop(short_dir: Path) -> None:
    """Issue 19 (start-up): removing an old socket file, binding the new one and setting its
    mode are file system calls (about a millisecond each here): made on the loop, a hundred
    resources starting waited on each other's. They run on the host's offload now."""
    path = short_dir / "p.sock"
    path.write_text("left behind")
    offload = HeldOffload()
    server = PluginServer([])
    serving = asyncio.ensure_future(server.serve(str(path), offload=offload))
    await wait_until(lambda: offload.calls == 1, what="the socket asked of the offload")
    assert not serving.done() and path.read_text() == "left behind"
    offload.release.set()
    try:
        identity = await serving
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert identity == file_identity(str(path))
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cancelled_server_start_leaves_no_socket_behind(short_dir: Path) -> None:
    """A start cancelled while its socket is being made off the loop closes the socket and
    removes its file once made (a resource stopped at that moment leaves nothing for the
    kubelet's plugin watcher to find)."""
    path = short_dir / "p.sock"
    offload = HeldOffload()
    server = PluginServer([])
    serving = asyncio.ensure_future(server.serve(str(path), offload=offload))
    await wait_until(lambda: offload.calls == 1, what="the socket asked of the offload")
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    offload.release.set()
    await wait_until(lambda: offload.done == 1, what="the socket made")
    await wait_until(lambda: not path.exists(), what="its file removed")


# ------------------------------------------------------------------ socket name


LONGEST_RESOURCE = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + "/" + "e" * 63


def test_socket_name_is_bounded_for_any_valid_resource_name() -> None:
    assert len(LONGEST_RESOURCE.split("/")[0]) == 253
    name = socket_name(LONGEST_RESOURCE, "f" * INSTANCE_ID_MAX_LENGTH, "/d")
    assert len(name) == SOCKET_NAME_MAX_LENGTH
    assert name.startswith("kdp-") and name.endswith(".sock")
    assert len(socket_name("x.io/y", "0", "/d")) < SOCKET_NAME_MAX_LENGTH


def test_any_resource_fits_a_reasonable_socket_dir_readably() -> None:
    """A 50-byte socket dir (the kubelet's default is 31) gets the readable name."""
    socket_dir = "/var/lib/kubelet/plugins_registry/device-plugins_x"
    assert len(socket_dir) == 50
    name = socket_name(LONGEST_RESOURCE, "0123abcd", socket_dir)
    assert name.startswith("kdp-aaaa") and name.endswith("-0123abcd.sock")
    assert socket_path_problem(os.path.join(socket_dir, name)) is None


@pytest.mark.parametrize("length", [60, 80, 94])
def test_every_dir_the_kubelet_can_serve_from_serves_every_resource(length: int) -> None:
    """Issue 17 item 14: a dir too long for the readable name (over 59 bytes) gets the
    compact, hash-only name; it is as long as kubelet.sock, so it fits wherever the kubelet's
    own socket does (94 bytes), and stays unique per resource and instance."""
    socket_dir = "/" + "d" * (length - 1)
    assert socket_path_problem(os.path.join(socket_dir, "kubelet.sock")) is None
    names = set()
    for resource in (LONGEST_RESOURCE, FPGA, FPGA + "2"):
        for instance in ("0011aabb", "0011aabc"):
            name = socket_name(resource, instance, socket_dir)
            assert socket_path_problem(os.path.join(socket_dir, name)) is None
            assert is_socket_name(name)
            assert name == socket_name(resource, instance, socket_dir)
            names.add(name)
    assert len(names) == 6
    compact = socket_name(LONGEST_RESOURCE, "0011aabb", socket_dir)
    assert len(compact) == SOCKET_NAME_MIN_LENGTH == len("kubelet.sock")
    assert re.fullmatch(r"kdp-[a-z2-7]{8}", compact)
    # the readable name is kept wherever it fits
    assert socket_name(FPGA, "0011aabb", "/" + "d" * 58).endswith(".sock")


def test_socket_names_stay_apart() -> None:
    shared = "vendor.example/" + "x" * 30
    names = {socket_name(shared + suffix, "00000000", "/d") for suffix in ("a", "b", "")}
    assert len(names) == 3
    assert socket_name(FPGA, "0011aabb", "/d") == socket_name(FPGA, "0011aabb", "/d")
    assert socket_name(FPGA, "0011aabb", "/d") != socket_name(FPGA, "0011aabc", "/d")
    assert socket_name(FPGA, "0011aabb", "/d").startswith("kdp-vendor.example_fpga-")


def test_only_socket_names_of_either_form_are_ours() -> None:
    assert is_socket_name("kdp-vendor.example_fpga-0a1b2c3d-0011aabb.sock")
    assert is_socket_name("kdp-abcdefg2")
    for other in ("kubelet.sock", "kdp-ABCDEFG2", "kdp-abcdefg1", "kdp-abcdefg", "x-kdp-a.sock"):
        assert not is_socket_name(other), other


@pytest.mark.parametrize("instance", ["", "123456789", "a/b", "a b"])
def test_socket_name_refuses_an_instance_id_that_would_break_the_bound(instance: str) -> None:
    with pytest.raises(ValueError, match="instance ID"):
        socket_name(FPGA, instance, "/d")


# ------------------------------------------------------------------ the codec


def test_codec_sends_encoded_messages_only_where_their_type_is_expected() -> None:
    codec = DevicePluginCodec()
    encoded = EncodedMessage(ListAndWatchResponse, b"\x0a\x00")
    assert codec.encode(encoded, ListAndWatchResponse) == b"\x0a\x00"
    assert repr(encoded) == "EncodedMessage(ListAndWatchResponse, 2 bytes)"
    with pytest.raises(TypeError, match="AllocateResponse"):
        codec.encode(encoded, AllocateResponse)
    with pytest.raises(TypeError, match="AllocateResponse"):
        codec.encode(Empty(), AllocateResponse)


BAD_BYTES = [b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\xff" * 11, b"\x0f"]


@pytest.mark.parametrize(
    ("message_type", "data"),
    [(t, d) for t in (AllocateRequest, PreferredAllocationRequest) for d in BAD_BYTES]
    + [
        (PreStartContainerRequest, b"\x0a\x02\xff\xfe"),
        (PreStartContainerRequest, b"\xff" * 11),
        (Empty, b"\xff" * 11),
    ],
)
def test_codec_turns_bad_request_bytes_into_invalid_argument(
    message_type: type, data: bytes
) -> None:
    """Truncated fields, invalid UTF-8, overlong varints, wire type 7: the hand-written
    decoders refuse them all; betterproto2 (the other requests) refuses what it detects."""
    with pytest.raises(GRPCError) as caught:
        DevicePluginCodec().decode(data, message_type)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert f"cannot parse {message_type.__name__}" in str(caught.value.message)


# ------------------------------------------------------------------ the grpclib workaround


def service_with(table: DeviceTable) -> DevicePluginService:
    config = load_config_text("resources: [{name: t.io/r, glob: {paths: [/dev/r*]}}]")
    return DevicePluginService(
        config.resources[0], table, ListAndWatchEncoder(), Metrics(), get_logger()
    )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def test_close_connections_really_closes_what_grpclib_accepted(short_dir: Path) -> None:
    """The one use of grpclib internals (kdp_host/protocol/server.py): if grpclib stops
    creating connections through `Server._protocol_factory`, or closing a connection's
    `processor` stops closing it, this fails, and shutdown would leave the kubelet's
    connection open (and hang `wait_closed()` on Python 3.12+)."""
    assert callable(getattr(grpclib.server.Server, "_protocol_factory", None)), (
        "grpclib.server.Server._protocol_factory is gone: PluginServer.close_connections "
        "no longer sees any connection"
    )
    table = DeviceTable()
    table.publish([Device("a")])
    server = PluginServer([service_with(table)])
    path = str(short_dir / "p.sock")
    await server.serve(path)
    channel = Channel(path=path)  # a client with a stream open
    reader, writer = await asyncio.open_unix_connection(path)  # an idle HTTP/2 client
    try:
        writer.write(HTTP2_PREFACE)
        assert await reader.read(9)  # the server's SETTINGS frame: the connection is made
        async with channel.request(
            "/v1beta1.DevicePlugin/ListAndWatch",
            grpclib.const.Cardinality.UNARY_STREAM,
            Empty,
            ListAndWatchResponse,
        ) as stream:
            await stream.send_message(Empty(), end=True)
            assert await stream.recv_message() is not None
            server.close()
            server.close_connections()
            async with asyncio.timeout(10):
                await server.wait_closed()
                while await reader.read(65536):
                    pass  # drain whatever was sent before the close; b"" is the EOF
            with pytest.raises(Exception) as caught:
                async with asyncio.timeout(10):
                    await stream.recv_message()
            assert not isinstance(caught.value, TimeoutError), "stream still open"
    finally:
        writer.close()
        channel.close()


async def test_without_close_connections_grpclib_keeps_the_connection(short_dir: Path) -> None:
    """The behaviour the workaround exists for: `Server.close()` alone leaves an accepted
    connection serving. When grpclib fixes that, the workaround can go (this fails then)."""
    server = PluginServer([service_with(DeviceTable())])
    path = str(short_dir / "p.sock")
    await server.serve(path)
    channel = Channel(path=path)
    try:
        stub = DevicePluginStub(channel)
        before = await stub.get_device_plugin_options(Empty())
        server.close()
        async with asyncio.timeout(5):
            options = await stub.get_device_plugin_options(Empty())
        assert options == before
    finally:
        server.close_connections()
        channel.close()
        async with asyncio.timeout(5):
            await server.wait_closed()


async def test_a_cancelled_list_and_watch_runs_its_cleanup(short_dir: Path) -> None:
    """ListAndWatch is driven under aclosing by the service's own handler: a client that
    cancels its stream closes the generator (gauge back to 0, on_stream_lost called).
    `on_listed` is told once the list went out (the host's start is over: `heap`)."""
    table = DeviceTable()
    table.publish([Device("a")])
    lost: list[bool] = []
    listed: list[bool] = []
    metrics = Metrics()
    config = load_config_text("resources: [{name: t.io/r, glob: {paths: [/dev/r*]}}]")
    service = DevicePluginService(
        config.resources[0],
        table,
        ListAndWatchEncoder(),
        metrics,
        get_logger(),
        on_stream_lost=lambda: lost.append(True),
        on_listed=lambda: listed.append(True),
    )
    server = PluginServer([service])
    path = str(short_dir / "p.sock")
    await server.serve(path)
    channel = Channel(path=path)

    def stream_count() -> float | None:
        return metrics.registry.get_sample_value(
            "kdp_list_and_watch_streams", {"resource": "t.io/r"}
        )

    try:
        async with channel.request(
            "/v1beta1.DevicePlugin/ListAndWatch",
            grpclib.const.Cardinality.UNARY_STREAM,
            Empty,
            ListAndWatchResponse,
        ) as stream:
            await stream.send_message(Empty(), end=True)
            first = await stream.recv_message()
            assert first is not None and [d.id for d in first.devices] == ["a"]
            assert stream_count() == 1
            await wait_until(lambda: listed == [True], what="on_listed after the first list")
            await stream.cancel()
        await wait_until(lambda: lost == [True], what="on_stream_lost after the cancel")
        assert stream_count() == 0
    finally:
        channel.close()
        server.close()
        server.close_connections()
        async with asyncio.timeout(5):
            await server.wait_closed()


# ------------------------------------------------------------------ Register


async def test_register_with_a_kubelet_that_drops_every_connection_is_unavailable(
    socket_dir: Path,
) -> None:
    """A kubelet stopping or restarting closes connections as they come: Register is then
    `unavailable` (retried) every time. grpclib raised AttributeError there (its issue
    #110) about once in thirty calls, and the resource crashed and waited out a restart."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_dir / "kubelet.sock"))
    listener.listen(64)

    def drop_connections() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                connection.close()

    dropper = threading.Thread(target=drop_connections, daemon=True)
    dropper.start()
    registrar = Registrar()
    try:
        for _ in range(60):
            with pytest.raises(RegistrationError) as refused:
                await registrar.register(
                    str(socket_dir), FPGA, "x.sock", DevicePluginOptions(), timeout=5
                )
            assert refused.value.result == "unavailable"
    finally:
        registrar.close()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        dropper.join(5)


class RecordingKubelet(RegistrationBase):
    def __init__(self) -> None:
        self.requests: list[RegisterRequest] = []
        self.refuse: str | None = None

    async def register(self, message: RegisterRequest) -> Empty:
        self.requests.append(message)
        if self.refuse is not None:
            raise GRPCError(Status.INVALID_ARGUMENT, self.refuse)
        return Empty()


@contextlib.asynccontextmanager
async def counted_kubelet_sock(
    socket_dir: Path, kubelet: RecordingKubelet
) -> AsyncIterator[list[int]]:
    """kubelet.sock in front of a Registration server: yields the list of connections
    accepted (each one's number), forwarding their bytes both ways."""
    backend = socket_dir / "backend.sock"
    server = grpclib.server.Server([kubelet])
    await server.start(path=str(backend))
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []
    forwarding: set[asyncio.Task[Any]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (task := asyncio.current_task()) is not None:
            forwarding.add(task)
        accepted.append(len(accepted))
        writers.append(writer)
        to_reader, to_writer = await asyncio.open_unix_connection(str(backend))
        writers.append(to_writer)
        await asyncio.gather(pipe(reader, to_writer), pipe(to_reader, writer))

    front = await asyncio.start_unix_server(forward, path=str(socket_dir / "kubelet.sock"))
    try:
        yield accepted
    finally:
        # A closed server keeps the connections it accepted (until Python 3.13's
        # close_clients): this proxy ends its own, both sides, before it goes.
        front.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*forwarding, return_exceptions=True)
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_the_resources_of_a_host_register_over_one_connection(socket_dir: Path) -> None:
    """Issue 19 (start-up): concurrent Register calls of many resources share one
    connection to kubelet.sock (a connect and HTTP/2 handshake each cost most of a
    resource's start-up work); a refusal keeps it; a re-created kubelet.sock (a restarted
    kubelet) gets a new one."""
    kubelet = RecordingKubelet()
    registrar = Registrar()
    try:
        async with counted_kubelet_sock(socket_dir, kubelet) as accepted:
            await asyncio.gather(
                *(
                    registrar.register(
                        str(socket_dir), f"r{i}.io/x", f"r{i}.sock", DevicePluginOptions()
                    )
                    for i in range(20)
                )
            )
            assert sorted(r.resource_name for r in kubelet.requests) == sorted(
                f"r{i}.io/x" for i in range(20)
            )
            kubelet.refuse = "no such resource"
            with pytest.raises(RegistrationError) as refused:
                await registrar.register(str(socket_dir), "bad", "b.sock", DevicePluginOptions())
            assert refused.value.result == "refused"
            kubelet.refuse = None
            await registrar.register(str(socket_dir), "r0.io/x", "r0.sock", DevicePluginOptions())
            assert accepted == [0]
        async with counted_kubelet_sock(socket_dir, kubelet) as accepted:
            await registrar.register(str(socket_dir), "r0.io/x", "r0.sock", DevicePluginOptions())
            assert accepted == [0]
        assert len(kubelet.requests) == 23
    finally:
        registrar.close()


async def test_the_resources_of_a_host_ask_once_whether_the_kubelet_listens(
    socket_dir: Path,
) -> None:
    """Issue 19 (start-up): before registering, each resource connected to kubelet.sock to
    learn whether the kubelet listens (past its start-up clean-up): a connection per
    resource. Now the resources of a host ask once per kubelet.sock file, concurrent
    callers sharing the one connection; a re-created kubelet.sock is asked again."""
    kubelet = RecordingKubelet()
    registrar = Registrar()
    try:
        async with counted_kubelet_sock(socket_dir, kubelet) as accepted:
            asked = [registrar.wait_listening(str(socket_dir)) for _ in range(20)]
            assert await asyncio.gather(*asked) == [True] * 20
            assert await registrar.wait_listening(str(socket_dir))
            # accepted in the order they connected: the check, then Register's connection
            await registrar.register(str(socket_dir), "r0.io/x", "r0.sock", DevicePluginOptions())
            assert accepted == [0, 1]
        async with counted_kubelet_sock(socket_dir, kubelet) as accepted:
            assert await registrar.wait_listening(str(socket_dir))
            await registrar.register(str(socket_dir), "r0.io/x", "r0.sock", DevicePluginOptions())
            assert accepted == [0, 1]
        (socket_dir / "kubelet.sock").unlink(missing_ok=True)
        assert not await registrar.wait_listening(str(socket_dir))
    finally:
        registrar.close()


# ------------------------------------------------------------------ coalesced writes


class RecordingTransport(asyncio.Transport):
    """A stream transport that records what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_two_loop_turns_leave_in_one_write() -> None:
    loop = asyncio.get_running_loop()
    real = RecordingTransport()
    transport = CoalescingTransport(real, loop)
    transport.write(b"ping ack|")
    transport.write(b"")
    # the handler of the request runs in the next turn
    loop.call_soon(transport.write, bytearray(b"headers|message|"))
    loop.call_soon(transport.write, memoryview(b"trailers"))
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == []
    assert transport.get_write_buffer_size() == len(b"ping ack|headers|message|trailers")
    await asyncio.sleep(0)
    assert real.writes == [b"ping ack|headers|message|trailers"]
    transport.write(b"later")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert real.writes == [b"ping ack|headers|message|trailers", b"later"]


async def test_written_out_returns_once_every_write_before_it_has_left() -> None:
    loop = asyncio.get_running_loop()
    real, other = RecordingTransport(), RecordingTransport()
    transport, started_earlier = CoalescingTransport(real, loop), CoalescingTransport(other, loop)
    started_earlier.write(b"headers|")
    await asyncio.sleep(0)
    started_earlier.write(b"list")
    transport.write(b"list")
    await written_out()
    assert real.writes == [b"list"] and other.writes == [b"headers|list"]


async def test_a_message_pushed_on_an_open_stream_leaves_at_once() -> None:
    """A ListAndWatch update (a DATA frame, nothing waiting to be gathered with it) is not
    held two turns (issue 19: 0.1-0.6 ms of a hot-plug under load); what follows it in the
    same turn is gathered for the next turn, and an answer (headers first) still waits for
    the turn after."""
    loop = asyncio.get_running_loop()
    real = RecordingTransport()
    transport = CoalescingTransport(real, loop)
    update = DataFrame(1, b"\x00\x00\x00\x00\x02list").serialize()
    rest = DataFrame(1, b"more").serialize()
    transport.write(update)
    assert real.writes == [update]
    transport.write(rest)
    transport.write(rest)
    assert real.writes == [update]
    await asyncio.sleep(0)
    assert real.writes == [update, rest + rest]
    answer = HeadersFrame(3, b"headers").serialize()
    transport.write(answer)
    transport.write(update)
    await asyncio.sleep(0)
    assert real.writes == [update, rest + rest]
    await asyncio.sleep(0)
    assert real.writes == [update, rest + rest, answer + update]
    transport.write(update)
    assert real.writes[-1] == update


async def test_close_sends_what_is_pending_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = RecordingTransport()
    transport = CoalescingTransport(real, loop)
    transport.write(b"goaway")
    transport.close()
    assert real.writes == [b"goaway"] and real.closed
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert real.writes == [b"goaway"], "nothing is written to a closed transport"
    dropped = RecordingTransport()
    transport = CoalescingTransport(dropped, loop)
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert dropped.writes == [] and dropped.aborted


def counted_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per write PluginServer makes to a socket from now on."""
    import kdp_host.protocol.server as server_module

    writes: list[int] = []

    class Socket(asyncio.Transport):
        def __init__(self, real: asyncio.Transport) -> None:
            super().__init__()
            self.real = real

        def write(self, data: bytes | bytearray | memoryview) -> None:
            writes.append(1)
            self.real.write(data)

        def is_closing(self) -> bool:
            return self.real.is_closing()

        def close(self) -> None:
            self.real.close()

        def abort(self) -> None:
            self.real.abort()

    class Counting(CoalescingTransport):
        def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(Socket(transport), loop)

    monkeypatch.setattr(server_module, "CoalescingTransport", Counting)
    return writes


@contextlib.asynccontextmanager
async def serving_a_and_b(short_dir: Path) -> AsyncIterator[str]:
    """A PluginServer listing devices a and b on a socket (its path), closed on the way out."""
    table = DeviceTable()
    table.publish([Device("a"), Device("b")])
    server = PluginServer([service_with(table)])
    path = str(short_dir / "p.sock")
    await server.serve(path)
    try:
        yield path
    finally:
        server.close()
        server.close_connections()
        async with asyncio.timeout(5):
            await server.wait_closed()


def run_on(loop_kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main()` on the standard asyncio loop or on uvloop (skipped where it is absent)."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_unary_answer_leaves_the_server_in_one_write(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, loop_kind: str
) -> None:
    """grpclib writes the flow-control update, headers, message and trailers of an answer
    separately; through PluginServer they reach the socket in one write (on either loop)."""
    counted = counted_writes(monkeypatch)

    async def main() -> None:
        async with serving_a_and_b(short_dir) as path:
            channel = Channel(path=path)
            try:
                stub = DevicePluginStub(channel)
                await stub.get_device_plugin_options(Empty())
                for _ in range(5):
                    before = len(counted)
                    response = await stub.allocate(
                        AllocateRequest(container_requests=[ContainerAllocateRequest(["a"])])
                    )
                    assert len(response.container_responses) == 1
                    await asyncio.sleep(0.01)
                    assert len(counted) - before == 1
            finally:
                channel.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_the_ping_ack_of_a_request_leaves_with_its_answer(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, loop_kind: str
) -> None:
    """The kubelet's gRPC client (grpc-go) sends a PING with each request (its bandwidth
    estimate); h2 acknowledges it while reading the request, a turn before the handler
    answers. Both leave in one write: one wake-up of the kubelet per call, not two."""
    import h2.config
    import h2.connection
    import h2.events

    flushed = counted_writes(monkeypatch)
    request = bytes(AllocateRequest(container_requests=[ContainerAllocateRequest(["a"])]))
    message = b"\x00" + len(request).to_bytes(4, "big") + request

    async def main() -> None:
        async with serving_a_and_b(short_dir) as path:
            reader, writer = await asyncio.open_unix_connection(path)
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            writer.write(client.data_to_send())

            async def until(kind: type) -> list[h2.events.Event]:
                seen: list[h2.events.Event] = []
                async with asyncio.timeout(5):
                    while not any(isinstance(e, kind) for e in seen):
                        data = await reader.read(65536)
                        assert data, "the server closed the connection"
                        seen += client.receive_data(data)
                        writer.write(client.data_to_send())
                return seen

            try:
                await until(h2.events.RemoteSettingsChanged)
                for call in range(3):
                    await asyncio.sleep(0.05)  # the handshake's writes are out
                    before = len(flushed)
                    stream = client.get_next_available_stream_id()
                    client.send_headers(
                        stream,
                        [
                            (":method", "POST"),
                            (":scheme", "http"),
                            (":path", "/v1beta1.DevicePlugin/Allocate"),
                            (":authority", "localhost"),
                            ("content-type", "application/grpc"),
                            ("te", "trailers"),
                        ],
                    )
                    client.send_data(stream, message, end_stream=True)
                    client.ping(call.to_bytes(8, "big"))
                    writer.write(client.data_to_send())  # one read at the server, as grpc-go's
                    events = await until(h2.events.StreamEnded)
                    assert any(isinstance(e, h2.events.PingAckReceived) for e in events)
                    await asyncio.sleep(0.05)
                    assert len(flushed) - before == 1
            finally:
                writer.close()

    run_on(loop_kind, main)


async def test_a_stopping_server_waits_for_its_peers_to_hang_up_but_not_forever(
    short_dir: Path,
) -> None:
    server = PluginServer([service_with(DeviceTable())])
    path = str(short_dir / "p.sock")
    await server.serve(path)
    assert await server.wait_peers_hung_up(0.01), "no connection: nothing to wait for"
    first, second = Channel(path=path), Channel(path=path)
    try:
        for channel in (first, second):
            await DevicePluginStub(channel).get_device_plugin_options(Empty())
        assert not await server.wait_peers_hung_up(0.05)  # a client that stays: bounded
        first.close()
        assert not await server.wait_peers_hung_up(0.05)
        second.close()
        assert await server.wait_peers_hung_up(5)
    finally:
        first.close()
        second.close()
        server.close()
        server.close_connections()
        async with asyncio.timeout(5):
            await server.wait_closed()
