"""Registration through the kubelet's plugins_registry directory
(docs/kubelet-contract.md §14): kdp-host against the kubelet's real plugin manager
(tests/kubelet_harness.py) and the simulator's, and the simulator's plugin manager itself."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from grpclib.server import Server

from kdp_host.api.pluginregistration import (
    InfoRequest,
    PluginInfo,
    RegistrationBase,
    RegistrationStatus,
    RegistrationStatusResponse,
)
from kdp_host.config import ConfigError, load_config_text
from kdp_host.protocol.registration import file_identity
from kdp_host.reload import restart_required
from kdp_host.services import RegistryWait
from kdp_host.simulator import KubeletSimulator

from .conftest import RunningHost, glob_config, wait_until
from .test_ops import value

FPGA = "vendor.example/fpga"
QUICK = RegistryWait(first=1.5, maximum=3.0)
"""Verdict waits short enough for tests, and longer than the real kubelet's reconcile
period (1 s), which a new socket may wait out before its verdict."""
PATIENT = RegistryWait(first=3600.0, maximum=3600.0)
"""A host that never gives up waiting: shows what the kubelet alone does."""


def registry_config(socket_dir: Path, registry: Path, devices: Path) -> str:
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga[0-9]*"))
    return text.replace(
        f"kubelet: {{socketDir: {socket_dir}}}",
        f"kubelet: {{socketDir: {socket_dir}, registration: pluginsRegistry, "
        f"pluginsRegistryDir: {registry}}}",
    )


def two_healthy(k: Any) -> bool:
    seen = k.resource(FPGA)
    return seen is not None and seen["healthy"] == 2


@pytest.fixture
def registry(short_dir: Path) -> Path:
    return short_dir / "registry"


@pytest.fixture
async def plugin_manager(socket_dir: Path, registry: Path) -> AsyncIterator[KubeletSimulator]:
    """The simulated kubelet with its plugin manager on `registry` (reconciling every
    0.1 s instead of 1 s, to keep tests short)."""
    sim = KubeletSimulator(
        socket_dir, dial_timeout=5.0, plugins_registry_dir=registry, reconcile_period=0.1
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def start_registry_host(
    start_host: Callable[..., Any],
    sim: KubeletSimulator,
    devices: Path,
    wait: RegistryWait = QUICK,
) -> RunningHost:
    assert sim.plugins_registry_dir is not None
    config = registry_config(sim.socket_dir, sim.plugins_registry_dir, devices)
    running: RunningHost = await start_host(config, registry_wait=wait)
    return running


def register_ops(sim: KubeletSimulator, ok: bool | None = None) -> list[Any]:
    return [
        op
        for op in sim.registry_operations
        if op.kind == "register" and (ok is None or (op.error is None) == ok)
    ]


# --------------------------------------------------------------------------- the real kubelet


async def test_real_kubelet_registers_through_plugins_registry_and_again_after_its_restart(
    real_kubelet_factory, short_dir: Path, registry: Path, devices: Path, start_host
) -> None:
    """Issue 18 part 3: GetInfo names the resource, the absolute endpoint and v1beta1; the
    kubelet's plugin manager registers it; after a kubelet restart it is registered again
    with no Register call and without kdp-host creating its socket again."""
    kubelet = real_kubelet_factory(plugins_registry_dir=registry)
    config = registry_config(kubelet.socket_dir, registry, devices)
    running = await start_host(config, registry_wait=PATIENT)
    await kubelet.await_for(two_healthy, what="registered through plugins_registry")
    await wait_until(lambda: FPGA in running.host.resources, what="resource started")
    runtime = running.host.resources[FPGA]
    await wait_until(lambda: runtime.status.ready, what="kdp-host saw the kubelet's verdict")
    socket_path = runtime.socket_path
    assert Path(socket_path).parent == registry
    identity = file_identity(socket_path)
    events = await kubelet.acall(kubelet.events)
    [validated] = [e for e in events if e["kind"] == "registry_plugin_validated"]
    assert (validated["resource"], validated["endpoint"]) == (FPGA, socket_path)
    assert validated["versions"] == ["v1beta1"]
    registered = [e for e in events if e["kind"] == "registered"]
    assert [(e["via"], e["plugin_socket"]) for e in registered] == [
        ("plugins_registry", socket_path)
    ]
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == ""

    since = events[-1]["seq"]
    await kubelet.acall(kubelet.restart)
    await kubelet.await_for(two_healthy, what="registered again after the restart")
    after = await kubelet.acall(kubelet.events, since)
    assert [e["via"] for e in after if e["kind"] == "registered"] == ["plugins_registry"]
    assert not [e for e in after if e["kind"] == "register_failed"]
    assert file_identity(socket_path) == identity, "kdp-host created its socket again"
    await wait_until(lambda: runtime.status.ready, what="ready again")
    assert value(running.metrics, "kdp_registrations_total", resource=FPGA, result="ok") == 2
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"] != first["device_ids"]


async def test_real_kubelet_dropping_the_stream_for_good_gets_a_fresh_socket(
    real_kubelet_factory, short_dir: Path, registry: Path, devices: Path, start_host
) -> None:
    """Two instances overlap (maxSurge): the old one's stream ends after the new one
    registered, and the kubelet (v1.32, docs/kubelet-contract.md §9) disconnects the *new*
    client; no GetInfo follows. The new instance waits for a verdict, gets none, creates its
    socket again, and the plugin manager registers it."""
    kubelet = real_kubelet_factory(plugins_registry_dir=registry)
    config = registry_config(kubelet.socket_dir, registry, devices)
    old = await start_host(config, registry_wait=QUICK)
    await kubelet.await_for(two_healthy, what="old instance registered")
    new = await start_host(config, registry_wait=QUICK)
    await wait_until(lambda: FPGA in new.host.resources, what="new instance started")
    new_socket = new.host.resources[FPGA].socket_path

    def registered_via(k: Any, socket_path: str) -> int:
        return sum(
            1 for e in k.events() if e["kind"] == "registered" and e["plugin_socket"] == socket_path
        )

    await kubelet.await_for(lambda k: registered_via(k, new_socket) == 1, what="new registered")
    identity = file_identity(new_socket)
    await old.shutdown()
    await kubelet.await_for(
        lambda k: registered_via(k, new_socket) == 2 and two_healthy(k),
        what="the new instance registered again",
    )
    assert file_identity(new_socket) != identity
    await wait_until(lambda: new.host.resources[FPGA].status.ready, what="new instance ready")
    allocated = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert allocated["error"] == ""


# --------------------------------------------------------------------------- the simulator


async def test_sim_kubelet_restart_reregisters_with_no_register_call(
    plugin_manager: KubeletSimulator, devices: Path, start_host
) -> None:
    sim = plugin_manager
    running = await start_registry_host(start_host, sim, devices, PATIENT)
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2)
    runtime = running.host.resources[FPGA]
    identity = file_identity(runtime.socket_path)
    await sim.allocate(FPGA, 1)
    await sim.restart()
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2)
    assert sim.register_attempts == []
    assert sim.resource(FPGA).registrations == 2
    assert [op.notified for op in register_ops(sim)] == [True, True]
    assert file_identity(runtime.socket_path) == identity
    await wait_until(lambda: runtime.status.ready, what="ready after the restart")
    await sim.allocate(FPGA, 1, pod_uid="pod-2")


async def test_sim_a_failed_register_plugin_is_never_retried_by_a_v132_kubelet(
    plugin_manager: KubeletSimulator, devices: Path, start_host
) -> None:
    """The oracle keeps the kubelet's defect: after a failed RegisterPlugin (notified as a
    failure) the plugin manager does not try again while the socket stays."""
    sim = plugin_manager
    sim.fail_next_plugin_registrations(1)
    running = await start_registry_host(start_host, sim, devices, PATIENT)
    await sim.wait_for(lambda: register_ops(sim))
    [failed] = register_ops(sim)
    assert failed.notified is False
    assert failed.notify_error.startswith(
        "RegisterPlugin error -- plugin registration failed with err: failed to dial"
    )
    reconciles = sim.reconciles
    await sim.wait_for(lambda: sim.reconciles >= reconciles + 5)
    assert len(register_ops(sim)) == 1
    runtime = running.host.resources[FPGA]
    assert not runtime.status.registered
    assert "refused" in (runtime.status.not_ready_reason())


async def test_sim_a_refused_registration_makes_kdp_host_create_its_socket_again(
    plugin_manager: KubeletSimulator, devices: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refusal is counted; the same refusal again is not logged again as a warning."""
    sim = plugin_manager
    sim.fail_next_plugin_registrations(3)
    running = await start_registry_host(start_host, sim, devices)
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2, timeout=30)
    # (Under heavy load a verdict may come later than kdp-host waits: it then creates its
    # socket once more, and the plugin manager's operation on the old one fails. Allowed.)
    verdicts = [op.notified for op in register_ops(sim) if op.notified is not None]
    assert verdicts == [False, False, False, True], sim.registry_operations
    assert [op.kind for op in sim.registry_operations][-2:] == ["deregister", "register"]
    assert value(running.metrics, "kdp_registrations_total", resource=FPGA, result="refused") == 3
    assert value(running.metrics, "kdp_registrations_total", resource=FPGA, result="ok") == 1
    warnings = [
        r
        for r in caplog.records
        if r.getMessage() == "register_failed" and r.levelname == "WARNING"
    ]
    assert len(warnings) == 1
    await wait_until(lambda: running.host.resources[FPGA].status.ready, what="ready")


async def test_sim_a_socket_removed_by_someone_else_is_created_again(
    plugin_manager: KubeletSimulator, devices: Path, start_host
) -> None:
    sim = plugin_manager
    running = await start_registry_host(start_host, sim, devices, PATIENT)
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2)
    socket_path = Path(running.host.resources[FPGA].socket_path)
    socket_path.unlink()
    await sim.wait_for(
        lambda: len(register_ops(sim, ok=True)) == 2 and sim.resource(FPGA).allocatable == 2,
        timeout=20,
    )
    assert socket_path.exists()
    assert "deregister" in [op.kind for op in sim.registry_operations]


async def test_sim_a_chmod_of_a_registered_socket_is_no_new_socket(
    plugin_manager: KubeletSimulator, devices: Path, start_host
) -> None:
    """The kubelet's plugin watcher acts on fsnotify Create events only; a chmod (IN_ATTRIB)
    is ignored. The simulator took a socket's change time as part of its identity, so
    kdp-host's chmod right after bind, seen between two of its scans, made it deregister and
    register the plugin again, and an Allocate then lost its connection."""
    sim = plugin_manager
    running = await start_registry_host(start_host, sim, devices, PATIENT)
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2)
    socket_path = Path(running.host.resources[FPGA].socket_path)
    os.chmod(socket_path, 0o640)
    os.chmod(socket_path, 0o600)
    reconciles = sim.reconciles
    await sim.wait_for(lambda: sim.reconciles >= reconciles + 5)
    assert [op.kind for op in sim.registry_operations] == ["register"], sim.registry_operations
    await sim.allocate(FPGA, 1)


async def test_sim_a_rolling_update_does_not_leave_the_new_instance_unregistered(
    plugin_manager: KubeletSimulator, devices: Path, start_host
) -> None:
    """hostile6 M1: two instances serve one resource through plugins_registry (a rolling
    update); the old one stops and its socket goes; the kubelet deregisters the plugin by its
    name, which ends the new instance's stream too. The new instance waited for a verdict
    that never comes (5 s, here for ever) with the resource gone from the kubelet. A stream
    the kubelet ends while it keeps running is the kubelet giving up on the socket: it is
    created again at once, and the plugin watcher registers it."""
    sim = plugin_manager
    old = await start_registry_host(start_host, sim, devices, PATIENT)
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2)
    new = await start_registry_host(start_host, sim, devices, PATIENT)
    await wait_until(lambda: FPGA in new.host.resources, what="the new instance started")
    runtime = new.host.resources[FPGA]
    await wait_until(lambda: runtime.status.registered, what="the new instance registered")
    await old.shutdown()
    await wait_until(
        lambda: [op.kind for op in sim.registry_operations].count("deregister") >= 1,
        what="the old socket deregistered",
    )
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2, timeout=20)
    await wait_until(lambda: runtime.status.registered, what="registered again")
    await sim.allocate(FPGA, 1)


async def test_no_verdict_in_time_creates_the_socket_again_until_a_kubelet_registers_it(
    socket_dir: Path, registry: Path, devices: Path, start_host
) -> None:
    """No plugin watcher on the directory (a kubelet without it, or down): kdp-host waits for
    a verdict, says why it is not ready, counts `unavailable`, creates its socket again; a
    kubelet that watches the directory then registers it."""
    registry.mkdir()
    plain = KubeletSimulator(socket_dir, dial_timeout=5.0)
    await plain.start()
    try:
        running = await start_host(
            registry_config(socket_dir, registry, devices), registry_wait=QUICK
        )
        await wait_until(lambda: FPGA in running.host.resources, what="resource started")
        runtime = running.host.resources[FPGA]
        await wait_until(lambda: runtime.status.serving, what="serving")
        first = file_identity(runtime.socket_path)
        await wait_until(
            lambda: file_identity(runtime.socket_path) not in (None, first),
            what="socket created again",
        )
        assert "unavailable" in running.host.health.not_ready[FPGA]
        count = value(
            running.metrics, "kdp_registrations_total", resource=FPGA, result="unavailable"
        )
        assert count >= 1
        assert plain.register_attempts == []
    finally:
        await plain.stop()
    watching = KubeletSimulator(
        socket_dir, dial_timeout=5.0, plugins_registry_dir=registry, reconcile_period=0.1
    )
    await watching.start()
    try:
        await watching.wait_for(lambda: watching.resource(FPGA).allocatable == 2, timeout=20)
        await wait_until(lambda: runtime.status.ready, what="ready")
    finally:
        await watching.stop()


async def test_stale_sockets_in_the_registry_dir_are_removed_at_start(
    plugin_manager: KubeletSimulator, registry: Path, devices: Path, start_host
) -> None:
    sim = plugin_manager
    registry.mkdir(exist_ok=True)
    stale = registry / "kdp-vendor.example_fpga-802607f6-dead0000.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))
    await start_registry_host(start_host, sim, devices)
    await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2)
    assert not stale.exists()


# ------------------------------------------------------- the simulator's plugin manager alone


class FakePlugin(RegistrationBase):
    """A registration socket with a GetInfo of the test's choosing; records the verdicts."""

    def __init__(self, info: PluginInfo) -> None:
        self.info = info
        self.verdicts: list[RegistrationStatus] = []

    async def get_info(self, message: InfoRequest) -> PluginInfo:
        return self.info

    async def notify_registration_status(
        self, message: RegistrationStatus
    ) -> RegistrationStatusResponse:
        self.verdicts.append(message)
        return RegistrationStatusResponse()


@contextlib.asynccontextmanager
async def serving(info: PluginInfo, path: Path) -> AsyncIterator[FakePlugin]:
    """A FakePlugin with `info` on a registration socket at `path`, while in the block."""
    plugin = FakePlugin(info)
    server = Server([plugin])
    path.parent.mkdir(parents=True, exist_ok=True)
    await server.start(path=str(path))
    try:
        yield plugin
    finally:
        server.close()
        await server.wait_closed()


async def test_sim_plugin_manager_validates_notifies_and_retries_with_backoff(
    plugin_manager: KubeletSimulator, registry: Path
) -> None:
    """A plugin the kubelet's ValidatePlugin refuses is told why and tried again after a
    back-off (0.5 s, doubling); nothing is registered."""
    sim = plugin_manager
    info = PluginInfo(type="DevicePlugin", name=FPGA, endpoint="", supported_versions=["v9", "v8"])
    async with serving(info, registry / "fake.sock") as plugin:
        await sim.wait_for(lambda: len(register_ops(sim)) >= 2, timeout=20)
        first, second = register_ops(sim)[:2]
        assert first.error == "RegisterPlugin error -- pluginHandler.ValidatePluginFunc failed"
        assert first.notify_error == (
            "RegisterPlugin error -- plugin validation failed with err: manager version, "
            "v1beta1, is not among plugin supported versions [v9 v8]"
        )
        assert second.at - first.at >= 0.5
        assert [v.plugin_registered for v in plugin.verdicts[:2]] == [False, False]
        with pytest.raises(KeyError):
            sim.resource(FPGA)


async def test_sim_plugin_manager_refuses_a_name_that_is_no_extended_resource(
    plugin_manager: KubeletSimulator, registry: Path
) -> None:
    sim = plugin_manager
    info = PluginInfo(type="DevicePlugin", name="fpga", endpoint="", supported_versions=["v1beta1"])
    async with serving(info, registry / "sub" / "fake.sock"):
        await sim.wait_for(lambda: register_ops(sim), timeout=20)
        assert register_ops(sim)[0].notify_error == (
            "RegisterPlugin error -- plugin validation failed with err: invalid name of device "
            'plugin socket: the ResourceName "fpga" is invalid'
        )


async def test_sim_plugin_manager_ignores_hidden_names_and_files_that_are_no_sockets(
    plugin_manager: KubeletSimulator, registry: Path
) -> None:
    sim = plugin_manager
    info = PluginInfo(type="DevicePlugin", name=FPGA, endpoint="", supported_versions=["v9"])
    async with serving(info, registry / ".hidden.sock"):
        (registry / "plain.sock").write_text("")
        reconciles = sim.reconciles
        await sim.wait_for(lambda: sim.reconciles >= reconciles + 5)
        assert sim.registry_operations == []
        async with serving(info, registry / "shown.sock"):
            await sim.wait_for(lambda: register_ops(sim), timeout=20)
            assert {op.socket.name for op in sim.registry_operations} == {"shown.sock"}


async def test_sim_plugin_manager_dial_failure_is_retried_and_recorded(
    plugin_manager: KubeletSimulator, registry: Path, socket_dir: Path
) -> None:
    """A socket nobody listens on: the dial fails at the (shortened) dial deadline."""
    sim = KubeletSimulator(
        socket_dir.parent / "dp2",
        dial_timeout=0.2,
        plugins_registry_dir=registry.parent / "reg2",
        reconcile_period=0.1,
    )
    await sim.start()
    try:
        assert sim.plugins_registry_dir is not None
        dead = Path(sim.plugins_registry_dir) / "dead.sock"
        with socket.socket(socket.AF_UNIX) as unbound:
            unbound.bind(str(dead))
        await sim.wait_for(lambda: len(register_ops(sim)) >= 2, timeout=20)
        assert register_ops(sim)[0].error.startswith("RegisterPlugin error -- dial failed")
        assert register_ops(sim)[0].notified is None
    finally:
        await sim.stop()


def test_sim_refuses_a_registry_dir_that_is_or_contains_the_socket_dir(tmp_path: Path) -> None:
    for bad in (tmp_path / "dp", tmp_path):
        with pytest.raises(ValueError, match="must not be the socket dir or contain it"):
            KubeletSimulator(tmp_path / "dp", plugins_registry_dir=bad)
    KubeletSimulator(tmp_path / "dp", plugins_registry_dir=tmp_path / "dp" / "registry")


# --------------------------------------------------------------------------- config


RESOURCES = "resources: [{name: a.io/b, glob: {paths: [/dev/x*]}}]\n"


def test_registration_keys_default_and_validate() -> None:
    config = load_config_text(RESOURCES)
    assert config.kubelet.registration == "deviceSocket"
    assert config.kubelet.plugins_registry_dir == "/var/lib/kubelet/plugins_registry"
    assert config.kubelet.serve_dir == "/var/lib/kubelet/device-plugins"
    chosen = load_config_text("kubelet: {registration: pluginsRegistry}\n" + RESOURCES)
    assert chosen.kubelet.serve_dir == "/var/lib/kubelet/plugins_registry"
    inside = load_config_text(
        "kubelet: {registration: pluginsRegistry, socketDir: /k/dp, pluginsRegistryDir: "
        "/k/dp/registry}\n" + RESOURCES
    )
    assert inside.kubelet.serve_dir == "/k/dp/registry"
    with pytest.raises(ConfigError, match=r"kubelet\.registration"):
        load_config_text("kubelet: {registration: both}\n" + RESOURCES)
    for registry in ("/k/dp", "/k/dp/", "/k", "/"):
        with pytest.raises(ConfigError, match="must not be socketDir or contain it"):
            load_config_text(
                "kubelet: {registration: pluginsRegistry, socketDir: /k/dp, "
                f"pluginsRegistryDir: {registry}}}\n" + RESOURCES
            )
    with pytest.raises(ConfigError, match=r"kubelet\.pluginsRegistryDir"):
        load_config_text("kubelet: {pluginsRegistryDir: relative/dir}\n" + RESOURCES)
    with pytest.raises(ConfigError, match="too long to serve from"):
        load_config_text("kubelet: {pluginsRegistryDir: /" + "r" * 100 + "}\n" + RESOURCES)


def test_registration_keys_need_a_restart() -> None:
    old = load_config_text(RESOURCES)
    new = load_config_text(
        "kubelet: {registration: pluginsRegistry, pluginsRegistryDir: /r}\n" + RESOURCES
    )
    assert restart_required(old, new) == [
        "kubelet.registration changed: restart kdp-host to apply",
        "kubelet.pluginsRegistryDir changed: restart kdp-host to apply",
    ]


async def test_an_unused_registry_dir_is_never_touched(
    kubelet: KubeletSimulator, socket_dir: Path, registry: Path, devices: Path, start_host
) -> None:
    """deviceSocket (the default) registers on kubelet.sock and leaves pluginsRegistryDir
    alone, even when it is configured."""
    config = registry_config(socket_dir, registry, devices).replace(
        "registration: pluginsRegistry", "registration: deviceSocket"
    )
    await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    assert len(kubelet.register_attempts) == 1
    assert not registry.exists()


# --------------------------------------------------------------------------- the proto

KUBELET_PLUGINREGISTRATION = {
    "PluginInfo": [
        ("type", 1, "string", "optional"),
        ("name", 2, "string", "optional"),
        ("endpoint", 3, "string", "optional"),
        ("supported_versions", 4, "string", "repeated"),
    ],
    "RegistrationStatus": [
        ("plugin_registered", 1, "bool", "optional"),
        ("error", 2, "string", "optional"),
    ],
    "RegistrationStatusResponse": [],
    "InfoRequest": [],
}
"""k8s.io/kubelet pkg/apis/pluginregistration/v1/api.proto, field for field."""


def test_the_registration_proto_matches_the_kubelets_field_for_field(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    protos = Path(__file__).resolve().parent.parent / "protos"
    out = tmp_path / "set.pb"
    args = ["protoc", f"-I{protos}", f"--descriptor_set_out={out}", "pluginregistration.proto"]
    assert protoc.main(args) == 0
    [file] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert file.package == "pluginregistration"  # part of the method paths
    assert file.syntax == "proto3"
    kinds = {
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
        descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    }
    labels = {
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL: "optional",
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED: "repeated",
    }
    found = {
        message.name: [
            (f.name, f.number, kinds.get(f.type, str(f.type)), labels[f.label])
            for f in message.field
        ]
        for message in file.message_type
    }
    assert found == KUBELET_PLUGINREGISTRATION
    [service] = file.service
    assert service.name == "Registration"
    assert [(m.name, m.input_type, m.output_type) for m in service.method] == [
        ("GetInfo", ".pluginregistration.InfoRequest", ".pluginregistration.PluginInfo"),
        (
            "NotifyRegistrationStatus",
            ".pluginregistration.RegistrationStatus",
            ".pluginregistration.RegistrationStatusResponse",
        ),
    ]
    assert not any(m.client_streaming or m.server_streaming for m in service.method)


async def test_the_verdict_text_kept_is_bounded() -> None:
    """Whoever calls NotifyRegistrationStatus (root only: the socket is 0600), its error text
    reaches the log bounded."""
    from kdp_host.protocol.plugin_registry import (
        MAX_ERROR_TEXT,
        KubeletVerdict,
        PluginRegistrationService,
    )

    verdicts: list[KubeletVerdict] = []
    service = PluginRegistrationService(
        FPGA, "/r/x.sock", on_info=lambda: None, on_verdict=verdicts.append
    )
    info = await service.get_info(InfoRequest())
    assert (info.type, info.name, info.endpoint, info.supported_versions) == (
        "DevicePlugin",
        FPGA,
        "/r/x.sock",
        ["v1beta1"],
    )
    await service.notify_registration_status(RegistrationStatus(error="x" * 10**6))
    assert verdicts == [KubeletVerdict(False, "x" * MAX_ERROR_TEXT)]


def test_stale_socket_cleanup_removes_only_dead_sockets_of_ours(short_dir: Path) -> None:
    """Both name forms; a live socket, a regular file with our name and another's socket stay."""
    from kdp_host.logs import get_logger
    from kdp_host.stale_sockets import remove_stale_sockets

    def bound(name: str, listening: bool) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(short_dir / name))
        if listening:
            sock.listen()
        return sock

    dead = [bound("kdp-abcdefgh", False), bound("kdp-a.io_b-0a1b2c3d-00000000.sock", False)]
    live = bound("kdp-live.io_b-0a1b2c3d-00000000.sock", True)
    other = bound("other.sock", False)
    (short_dir / "kdp-zzzzzzzz").write_text("not a socket")
    try:
        remove_stale_sockets(str(short_dir), get_logger())
        assert sorted(p.name for p in short_dir.iterdir()) == [
            "kdp-live.io_b-0a1b2c3d-00000000.sock",
            "kdp-zzzzzzzz",
            "other.sock",
        ]
    finally:
        for sock in (*dead, live, other):
            sock.close()


async def test_a_registry_dir_that_is_a_file_is_reported_and_waited_out(
    kubelet: KubeletSimulator, socket_dir: Path, registry: Path, devices: Path, start_host
) -> None:
    registry.write_text("not a directory")
    running = await start_host(registry_config(socket_dir, registry, devices), registry_wait=QUICK)
    await wait_until(
        lambda: "cannot serve" in running.host.health.not_ready.get(FPGA, ""),
        what="not ready: cannot serve",
    )
    registry.unlink()
    registry.mkdir()
    await wait_until(lambda: running.host.resources[FPGA].status.serving, what="serving")
    assert Path(running.host.resources[FPGA].socket_path).parent == registry
