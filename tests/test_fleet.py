"""One config for a mixed fleet (issue 20 item 1): entries selected by node name and labels.

Selection is checked as a function, then through the kubelet simulator (what a node's kubelet
sees), and for labels against a fake API server (tests/fake_apiserver.py) over TLS: the
labels are read, followed, and a change is applied like a config edit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kdp_host.backoff import Backoff
from kdp_host.config import ConfigError, load_config_text
from kdp_host.kubeapi import ApiError, ApiServer, NodeLabelWatch
from kdp_host.logs import get_logger
from kdp_host.node import (
    NodeInfo,
    NoLabels,
    local_node_name,
    needs_labels,
    select_for_node,
    settled,
)
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .fake_apiserver import TOKEN, FakeApiServer, self_signed

FPGA = "vendor.example/fpga"
SERIAL = "vendor.example/serial"
LABEL = "vendor.example/fpga-board"


def fleet_yaml(socket_dir: Path, dev: Path) -> str:
    """One FPGA name from two entries (labelled nodes: fpga*, edge nodes: card*), and a
    serial resource on every node."""
    return f"""\
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: {FPGA}
    nodeSelector: {{labels: {{{LABEL}: u250}}}}
    glob: {{paths: ["{dev}/fpga*"], gracePeriod: 0s}}
  - name: {FPGA}
    nodeSelector: {{names: ["edge-*"]}}
    glob: {{paths: ["{dev}/card*"], gracePeriod: 0s}}
  - name: {SERIAL}
    glob: {{paths: ["{dev}/ttyA*"], gracePeriod: 0s}}
"""


@pytest.fixture
def dev(short_dir: Path) -> Path:
    path = short_dir / "dev"
    path.mkdir()
    for name in ("fpga0", "fpga1", "card0", "ttyA0"):
        (path / name).touch()
    return path


def served(config_text: str, node: NodeInfo) -> list[tuple[str, str]]:
    selection = select_for_node(load_config_text(config_text), node)
    return [(r.name, r.driver.paths[0].rsplit("/", 1)[1]) for r in selection.config.resources]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ selection


def test_selection_by_name_and_by_label(socket_dir: Path, dev: Path) -> None:
    text = fleet_yaml(socket_dir, dev)
    assert served(text, NodeInfo("edge-1", {})) == [(FPGA, "card*"), (SERIAL, "ttyA*")]
    assert served(text, NodeInfo("gpu-1", {LABEL: "u250"})) == [(FPGA, "fpga*"), (SERIAL, "ttyA*")]
    assert served(text, NodeInfo("gpu-1", {LABEL: "u280"})) == [(SERIAL, "ttyA*")]
    assert served(text, NodeInfo("gpu-1", {})) == [(SERIAL, "ttyA*")]
    unknown = select_for_node(load_config_text(text), NodeInfo("gpu-1"))
    assert unknown.waiting == (FPGA,)
    assert needs_labels(load_config_text(text))


def test_two_entries_of_a_name_selecting_one_node_is_an_error_there(
    socket_dir: Path, dev: Path
) -> None:
    config = load_config_text(fleet_yaml(socket_dir, dev))
    with pytest.raises(ConfigError) as error:
        select_for_node(config, NodeInfo("edge-1", {LABEL: "u250"}))
    assert error.value.problems == [
        f"resources[0] and resources[1] ({FPGA}) both select node 'edge-1': "
        "at most one entry of a name may"
    ]


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            "  - {name: a.io/x, glob: {paths: [/dev/a]}}\n"
            "  - {name: a.io/x, nodeSelector: {names: [n]}, glob: {paths: [/dev/b]}}\n",
            "line 3: resources[1].name: duplicate name 'a.io/x' (also resources[0]) (entries "
            "may share a name only when each has a nodeSelector)",
        ),
        (
            "  - {name: a.io/x, nodeSelector: {}, glob: {paths: [/dev/a]}}\n",
            "line 2: resources[0].nodeSelector: needs names or labels",
        ),
        (
            "  - {name: a.io/x, nodeSelector: {labels: {'bad key!': v}}, glob: {paths: [/a]}}\n",
            "resources[0].nodeSelector.labels.bad key!: name must be",
        ),
        (
            "  - {name: a.io/x, nodeSelector: {labels: {k: 'not a value'}}, glob: {paths: [/a]}}\n",
            "resources[0].nodeSelector.labels.k: must be [A-Za-z0-9-_.]",
        ),
    ],
)
def test_bad_selectors_are_refused_at_load(entries: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text("resources:\n" + entries)
    assert len(error.value.problems) == 1 and problem in error.value.problems[0], (
        error.value.problems
    )


def test_node_name_from_the_downward_api_else_the_host_name() -> None:
    import socket

    assert local_node_name({"NODE_NAME": "edge-7"}) == "edge-7"
    assert local_node_name({}) == socket.gethostname()


def test_check_shows_what_a_node_serves(
    socket_dir: Path, dev: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdp_host.cli import main

    config = socket_dir.parent / "fleet.yaml"
    config.write_text(fleet_yaml(socket_dir, dev))
    assert main(["check", "--config", str(config), "--node-name", "edge-1"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0].endswith("(not scanned: selects by label: give --node-label)")
    assert "card0 Healthy" in rows[1] and "ttyA0 Healthy" in rows[2]
    argv = [
        "check",
        "--config",
        str(config),
        "--node-name",
        "gpu-1",
        "--node-label",
        f"{LABEL}=u250",
    ]
    assert main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert "fpga0 Healthy" in rows[0] and rows[2].endswith("(not scanned: another node's)")
    argv = [
        "check",
        "--config",
        str(config),
        "--node-name",
        "edge-1",
        "--node-label",
        f"{LABEL}=u250",
    ]
    assert main(argv) == 2
    assert "both select node 'edge-1'" in capsys.readouterr().err


# ------------------------------------------------------------------ through the simulator


async def test_each_node_serves_its_own_entry_through_the_kubelet(
    kubelet: KubeletSimulator, socket_dir: Path, dev: Path, start_host: Callable[..., Any]
) -> None:
    """An edge node advertises the edge entry's devices under the shared name."""
    await start_host(fleet_yaml(socket_dir, dev), node=NodeInfo("edge-1", {}))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    response = await kubelet.allocate(FPGA, 1)
    assert response is not None
    assert [d.host_path for d in response.devices] == [str(dev / "card0")]


async def test_a_conflicting_reload_is_refused_and_keeps_what_runs(
    kubelet: KubeletSimulator, socket_dir: Path, dev: Path, start_host: Callable[..., Any]
) -> None:
    config = socket_dir.parent / "config.yaml"
    text = fleet_yaml(socket_dir, dev)
    config.write_text(text)
    running = await start_host(text, config, node=NodeInfo("edge-1", {LABEL: "u280"}))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1)
    config.write_text(text.replace("u250", "u280"))  # now both FPGA entries select edge-1
    assert await running.host.reload_from(config) == "invalid"
    assert [r.name for r in running.host.selection.config.resources] == [FPGA, SERIAL]
    assert running.host.config.sha256 != load_config_text(text.replace("u250", "u280")).sha256


# ------------------------------------------------------------------ labels from the API


@pytest.fixture
async def apiserver(short_dir: Path) -> AsyncIterator[tuple[FakeApiServer, ApiServer]]:
    """The fake API server over TLS (plain HTTP where openssl is missing), and the client's
    view of it: its URL, a token file, the CA."""
    certificate = self_signed(short_dir)
    server = FakeApiServer("gpu-1", {"kubernetes.io/os": "linux"}, certificate=certificate)
    url = await server.start()
    token = short_dir / "token"
    token.write_text(TOKEN + "\n")
    ca = str(certificate[0]) if certificate else None
    try:
        yield server, ApiServer(url, str(token), ca)
    finally:
        await server.close()


@dataclass
class LabelledHost:
    """A host on node gpu-1 that follows its labels through the fake API server."""

    server: FakeApiServer
    watch: NodeLabelWatch
    running: Any


@pytest.fixture
def start_labelled(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    dev: Path,
    start_host: Callable[..., Any],
    apiserver: tuple[FakeApiServer, ApiServer],
) -> Callable[..., Awaitable[LabelledHost]]:
    """`await start_labelled(backoff=..., **host_options)`: the fleet config on node gpu-1,
    its labels followed from the fake API server; returns once the serial resource (on every
    node) is allocatable."""
    server, api = apiserver

    async def start(backoff: Backoff | None = None, **host_options: Any) -> LabelledHost:
        options = {} if backoff is None else {"backoff": backoff}
        watch = NodeLabelWatch(api, "gpu-1", get_logger(), **options)
        running = await start_host(
            fleet_yaml(socket_dir, dev), node=NodeInfo("gpu-1"), node_labels=watch, **host_options
        )
        await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
        return LabelledHost(server, watch, running)

    return start


async def test_the_client_reads_labels_with_the_token_over_tls(
    apiserver: tuple[FakeApiServer, ApiServer],
) -> None:
    server, api = apiserver
    if server.certificate is None:
        pytest.skip("no openssl command: the fake API server runs plain HTTP")
    watch = NodeLabelWatch(api, "gpu-1", get_logger())
    assert await watch.get() == ({"kubernetes.io/os": "linux"}, "1")
    target, headers = server.requests[-1]
    assert target == "/api/v1/nodes/gpu-1"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert "as=PartialObjectMetadata" in headers["accept"]


async def test_a_wrong_ca_or_token_is_a_clear_reason(
    apiserver: tuple[FakeApiServer, ApiServer], short_dir: Path
) -> None:
    server, api = apiserver
    token = short_dir / "other-token"
    token.write_text("nope")
    with pytest.raises(ApiError, match=r"HTTP 401 \(token refused\)"):
        await NodeLabelWatch(
            ApiServer(api.url, str(token), api.ca_file), "gpu-1", get_logger()
        ).get()
    server.fail_with = 403
    with pytest.raises(ApiError, match=r"HTTP 403 \(RBAC: get, list, watch nodes\)"):
        await NodeLabelWatch(api, "gpu-1", get_logger()).get()
    if server.certificate is not None:
        import ssl

        server.fail_with = None
        with pytest.raises(ssl.SSLError):  # the system CAs do not know the fake's certificate
            await NodeLabelWatch(ApiServer(api.url, api.token_file), "gpu-1", get_logger()).get()


async def test_labels_are_followed_and_a_change_is_applied_like_a_config_edit(
    kubelet: KubeletSimulator, start_labelled: Callable[..., Awaitable[LabelledHost]]
) -> None:
    labelled = await start_labelled()
    server, running = labelled.server, labelled.running
    await wait_until(lambda: server.open_watches == 1, what="the node watched")
    assert running.host.node.labels == {"kubernetes.io/os": "linux"}
    assert FPGA not in running.host.resources and not running.host.not_ready()
    serial = running.host.resources[SERIAL]

    server.set_labels({"kubernetes.io/os": "linux", LABEL: "u250"})  # kubectl label node
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    assert running.host.resources[SERIAL] is serial  # untouched, like a config edit

    server.expire_watches()  # 410 Gone: read afresh, watch again
    await wait_until(lambda: sum(t.startswith("/api/v1/nodes/") for t, _ in server.requests) == 2)
    await wait_until(lambda: server.open_watches == 1, what="watching again")

    server.set_labels({"kubernetes.io/os": "linux"})
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 0)
    await wait_until(lambda: FPGA not in running.host.resources, what="FPGA stopped")
    assert running.host.resources[SERIAL] is serial


async def test_label_entries_wait_and_say_why_while_the_api_refuses(
    kubelet: KubeletSimulator,
    apiserver: tuple[FakeApiServer, ApiServer],
    start_labelled: Callable[..., Awaitable[LabelledHost]],
) -> None:
    server, _ = apiserver
    server.fail_with = 403
    labelled = await start_labelled(backoff=Backoff(0.05, 0.05))
    watch, running = labelled.watch, labelled.running
    await wait_until(lambda: watch.problem is not None and "403" in watch.problem)
    reason = running.host.not_ready()["node"]
    assert "HTTP 403 (RBAC: get, list, watch nodes)" in reason and FPGA in reason
    server.fail_with = None
    server.labels = {LABEL: "u250"}
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await wait_until(lambda: "node" not in running.host.not_ready(), what="ready")


async def test_no_api_leaves_label_entries_out_and_says_why(
    kubelet: KubeletSimulator, socket_dir: Path, dev: Path, start_host: Callable[..., Any]
) -> None:
    running = await start_host(
        fleet_yaml(socket_dir, dev),
        node=NodeInfo("gpu-1"),
        node_labels=NoLabels("not in a cluster (KUBERNETES_SERVICE_HOST is not set)"),
    )
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    assert "KUBERNETES_SERVICE_HOST is not set" in running.host.not_ready()["node"]


def test_in_cluster_config_from_the_environment(short_dir: Path) -> None:
    with pytest.raises(ApiError, match="KUBERNETES_SERVICE_HOST is not set"):
        ApiServer.in_cluster({}, str(short_dir))
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    with pytest.raises(ApiError, match="no service account token"):
        ApiServer.in_cluster(env, str(short_dir))
    (short_dir / "token").write_text("t1\n")
    api = ApiServer.in_cluster(env, str(short_dir))
    assert api.url == "https://[fd00::1]:6443"
    assert api.ca_file == str(short_dir / "ca.crt")
    assert api.token() == "t1"
    (short_dir / "token").write_text("t2\n")  # bound tokens rotate: read at every call
    assert api.token() == "t2"


async def test_a_silent_or_garbage_server_is_an_error_not_a_hang(short_dir: Path) -> None:
    """Every read is bounded: a server that sends garbage, or a huge head, fails the call."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"SSH-2.0-OpenSSH\r\n" + b"x" * 100 + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * 70000 + b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    for handler, match in ((garbage, "not an HTTP answer"), (huge_head, "limit")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            watch = NodeLabelWatch(ApiServer(f"http://127.0.0.1:{port}"), "n", get_logger())
            with pytest.raises((ApiError, ValueError), match=match):
                await asyncio.wait_for(watch.get(), 30)
        finally:
            server.close()
            await server.wait_closed()


async def test_the_host_stops_at_once_when_the_api_server_has_just_gone(
    kubelet: KubeletSimulator, start_labelled: Callable[..., Awaitable[LabelledHost]]
) -> None:
    """Stopping while the label watch reconnects (the API server just went away) must not
    lose the cancellation (Python 3.11's wait_for can: the host then waited for ever)."""
    labelled = await start_labelled()
    server, running = labelled.server, labelled.running
    await wait_until(lambda: server.open_watches == 1, what="the node watched")
    server.set_labels({"kubernetes.io/os": "linux", LABEL: "u250"})
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    server.set_labels({"kubernetes.io/os": "linux"})
    await wait_until(lambda: FPGA not in running.host.resources, what="FPGA stopped")
    await server.close()
    await running.shutdown(timeout=20)


# ------------------------------------------------------------------ flapping labels


async def test_settled_passes_the_first_value_then_one_per_window() -> None:
    """The first labels at once; a burst after them comes out once, as its latest value."""
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def source() -> AsyncIterator[dict[str, str]]:
        while True:
            yield await queue.get()

    gate, sleeping = asyncio.Event(), asyncio.Event()
    windows: list[float] = []

    async def sleep(window: float) -> None:
        windows.append(window)
        sleeping.set()
        await gate.wait()

    changes = settled(source(), 5.0, sleep)
    async with contextlib.aclosing(changes):
        queue.put_nowait({})
        assert await anext(changes) == {}
        queue.put_nowait({LABEL: "u250"})
        after = asyncio.ensure_future(anext(changes))
        await wait_until(sleeping.is_set, what="the window opened")
        queue.put_nowait({})
        queue.put_nowait({LABEL: "u250", "x": "1"})
        await wait_until(queue.empty, what="the burst read")
        assert not after.done()
        gate.set()
        assert await after == {LABEL: "u250", "x": "1"}
        assert windows == [5.0]


async def test_settled_ends_and_fails_as_its_source_does() -> None:
    async def failing() -> AsyncIterator[dict[str, str]]:
        yield {"a": "1"}
        raise ApiError("gone")

    changes = settled(failing(), 60.0)
    assert await anext(changes) == {"a": "1"}
    with pytest.raises(ApiError, match="gone"):
        await anext(changes)

    async def two() -> AsyncIterator[int]:
        yield 1

    assert [value async for value in settled(two(), 60.0)] == [1]


async def test_a_flapping_label_reloads_once(
    kubelet: KubeletSimulator,
    start_labelled: Callable[..., Awaitable[LabelledHost]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kubectl label on/off/on within the settle window: the entries it selects are applied
    once (the FPGA entry starts once, not started, stopped, started), and off/on/off once."""
    labelled = await start_labelled()
    server, running = labelled.server, labelled.running
    await wait_until(lambda: server.open_watches == 1, what="the node watched")
    await wait_until(lambda: running.host.node.labels is not None, what="labels read")
    on = {"kubernetes.io/os": "linux", LABEL: "u250"}
    off = {"kubernetes.io/os": "linux"}

    def applied() -> int:
        return sum(r.getMessage() == "node_labels_applied" for r in caplog.records)

    with caplog.at_level("INFO", logger="kdp_host"):
        caplog.clear()  # the labels read at start were applied too
        for labels in (on, off, on):
            server.set_labels(labels)
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
        assert running.host.node.labels == on and applied() == 1
        for labels in (off, on, off):
            server.set_labels(labels)
        await wait_until(lambda: FPGA not in running.host.resources, what="FPGA stopped")
        assert running.host.node.labels == off and applied() == 2
