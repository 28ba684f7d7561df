"""Every entry of the kubelet's checkpoint is booked whenever kdp-host may begin to advertise
a node a pod holds under a name it did not serve (`kdp_host.checkpoint_bookings`): at start
whatever `ownership.json` says (hostile11 K1: a stale one restored from a backup, the
resource renamed meanwhile), and before a reload starts a resource (hostile11 K3: a
migration from generic-device-plugin, whose pod holds the node under its own ID)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    ContainerAllocateResponse,
    DeviceSpec,
    RegisterRequest,
    RegistrationStub,
)
from kdp_host.checkpoint_bookings import book_before
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.node import NodeInfo
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .conftest import wait_until
from .fake_nodes import FakeNodes
from .kubelet_harness import GenericDevicePlugin, gdp_device, harness_binary, missing_reason
from .test_kubelet_checkpoint import entry_of, write_checkpoint
from .test_ownership import booked_ids, restarted
from .test_simulator import FakePlugin, dev

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

OTHER, GDEV = "example.com/other", "gdp.example/gdev"
A, B = "example.com/a", "example.com/b"


def config_text(kubelet: Any, root: Path, *resources: tuple[str, str]) -> str:
    """A config on `kubelet` (the simulator or the real one, PodResources in `root`/pr)."""
    lines = [
        f"kubelet: {{socketDir: {kubelet.socket_dir}, "
        f"podResourcesSocket: {root / 'pr' / 'kubelet.sock'}, "
        "podResourcesInterval: 1s}",
        f"stateDir: {root / 'state'}",
        "metrics: {listen: 127.0.0.1:0}",
        "resources:",
    ]
    for name, pattern in resources:
        lines += [f"  - name: {name}", f'    glob: {{paths: ["{pattern}"]}}']
    return "\n".join(lines) + "\n"


def nodes(root: Path, directory: str, *names: str) -> str:
    (root / directory).mkdir()
    for name in names:
        (root / directory / name).touch()
    return f"{root / directory}/*"


class ForeignPlugin(FakePlugin):
    """Another plugin (generic-device-plugin): its own IDs, each answered with its node."""

    def __init__(self, paths: dict[str, str]) -> None:
        super().__init__([dev(device_id) for device_id in paths])
        self.paths = paths

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        return AllocateResponse(
            container_responses=[
                ContainerAllocateResponse(
                    devices=[
                        DeviceSpec(container_path=self.paths[i], host_path=self.paths[i])
                        for i in request.devices_ids
                    ]
                )
                for request in message.container_requests
            ]
        )


async def serve_foreign(kubelet: Any, plugin: FakePlugin, resource: str = GDEV) -> Any:
    """`plugin` served and registered as `resource` with `kubelet` (the simulator or the
    real one)."""
    from grpclib.client import Channel
    from grpclib.server import Server

    endpoint = "gdp.sock"
    server = Server([plugin])
    await server.start(path=str(kubelet.socket_dir / endpoint))
    channel = Channel(path=str(kubelet.socket_dir / "kubelet.sock"))
    try:
        await RegistrationStub(channel).register(
            RegisterRequest(version="v1beta1", endpoint=endpoint, resource_name=resource)
        )
    finally:
        channel.close()
    return server


@pytest.mark.parametrize("how", ["reload", "label"])
async def test_a_resource_a_reload_adds_books_what_another_plugins_pods_hold(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host: Any, how: str
) -> None:
    """hostile11 K3: kdp-host serves another resource; another plugin serves GDEV on g0, g1
    under its own IDs, and p1 gets one. The plugin stops, and a reload adds GDEV (same
    nodes) to kdp-host, or a node label change selects its entry: its first list holds
    p1's node back, so p2 gets the other one and p3 none (before: p1's node went to a
    second pod under kdp-host's ID)."""
    kubelet = pod_resources_kubelet
    other = nodes(short_dir, "odev", "o0")
    pattern = nodes(short_dir, "dev", "g0", "g1")
    config = short_dir / "kdp.yaml"
    text = config_text(kubelet, short_dir, (OTHER, other))
    if how == "label":  # GDEV's entry selects nodes labelled gdp=off
        text = config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern))
        text += '    nodeSelector: {labels: {gdp: "off"}}\n'
    config.write_text(text)
    node = NodeInfo("n1", {"gdp": "on"})
    running = await start_host(config.read_text(), config_path=config, node=node)
    await kubelet.wait_for(lambda: kubelet.allocatable(OTHER) == 1)
    await kubelet.allocate(OTHER, 1, pod_uid="p0")  # (an install with bookings)
    foreign = {"u-0": str(short_dir / "dev" / "g0"), "u-1": str(short_dir / "dev" / "g1")}
    server = await serve_foreign(kubelet, ForeignPlugin(foreign))
    await kubelet.wait_for(lambda: kubelet.allocatable(GDEV) == 2)
    answer = await kubelet.allocate(GDEV, 1, pod_uid="p1")
    assert answer is not None
    [p1_node] = [spec.host_path for spec in answer.devices]
    server.close()
    await server.wait_closed()
    seen = kubelet.resource(GDEV).registrations
    if how == "label":
        assert running.host.relabel({"gdp": "off"}) is not None
    else:
        config.write_text(config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern)))
        assert await running.host.reload_from(config) == "ok"
    await kubelet.wait_for(
        lambda: (
            kubelet.resource(GDEV).registrations > seen
            and GDEV in running.host.resources
            and running.host.resources[GDEV].status.listed
        ),
        timeout=30,
        description="kdp-host serves GDEV and listed it",
    )
    assert kubelet.resource(GDEV).healthy_ids == {"g0", "g1"} - {Path(p1_node).name}
    answer = await kubelet.allocate(GDEV, 1, pod_uid="p2")
    assert answer is not None
    assert [spec.host_path for spec in answer.devices] != [p1_node]
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(GDEV, 1, pod_uid="p3")
    poller = running.host.pod_resources
    await wait_until(
        lambda: {h.pod for hs in poller.holdings.of(GDEV).values() for h in hs} == {"p1", "p2"},
        what="p1 and p2 shown",
    )
    # p1's node is there, kept for p1's foreign ID: not a device gone under its pod
    assert running.sample("kdp_devices_held_missing", resource=GDEV) == 0
    await kubelet.release("p1")
    await kubelet.release("p2")
    await kubelet.wait_for(
        lambda: kubelet.allocatable(GDEV) == 2, timeout=30, description="p1's node once p1 ended"
    )


async def test_a_stale_ownership_file_and_a_renamed_resource_keep_what_pods_hold(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host: Any
) -> None:
    """hostile11 K1: p0 gets a node of A, the state directory is backed up, p1 gets the
    other; kdp-host stops, the backup is restored (a valid, stale ownership.json) and the
    resource is renamed B. The start books the checkpoint's entries of every resource with
    the bookings kept: B's first list holds p0's node and p1's, and p2 gets none."""
    kubelet = pod_resources_kubelet
    pattern = nodes(short_dir, "dev", "n0", "n1")
    running = await start_host(config_text(kubelet, short_dir, (A, pattern)))
    await kubelet.wait_for(lambda: kubelet.allocatable(A) == 2)
    await kubelet.allocate(A, 1, pod_uid="p0")
    state = short_dir / "state"
    shutil.copytree(state, short_dir / "backup", symlinks=True)
    await kubelet.allocate(A, 1, pod_uid="p1")
    await running.shutdown()
    shutil.rmtree(state)
    shutil.copytree(short_dir / "backup", state, symlinks=True)
    running = await start_host(config_text(kubelet, short_dir, (B, pattern)))
    await wait_until(
        lambda: B in running.host.resources and running.host.resources[B].status.listed,
        what="B listed",
    )
    await kubelet.wait_for(lambda: kubelet.resource(B).list_and_watch_messages > 0)
    assert kubelet.resource(B).healthy_ids == frozenset()
    with pytest.raises(SimulatorAllocationError):
        await kubelet.allocate(B, 1, pod_uid="p2")
    await kubelet.release("p1")
    await kubelet.wait_for(
        lambda: kubelet.allocatable(B) == 1, timeout=30, description="p1's node once p1 ended"
    )


def healthy_count(resource: str, count: int) -> Any:
    def check(k: Any) -> bool:
        seen = k.resource(resource)
        return seen is not None and seen["healthy"] == count

    return check


async def test_migrating_from_generic_device_plugin_by_reload_keeps_its_pods_node(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """hostile11 K3 through the kubelet's real device manager and the real
    generic-device-plugin (the harness's build): p1 holds a node under GDP's ID; GDP stops
    and a reload adds its resource name to kdp-host: p2 gets the other node, p3 none."""
    if harness_binary("generic-device-plugin") is None:
        pytest.skip(missing_reason("generic-device-plugin"))
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    other = nodes(short_dir, "odev", "o0")
    pattern = nodes(short_dir, "dev", "g0", "g1")
    config = short_dir / "kdp.yaml"
    config.write_text(config_text(kubelet, short_dir, (OTHER, other)))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy_count(OTHER, 1), what="kdp-host serves OTHER")
    assert (await kubelet.acall(kubelet.allocate, "p0", {OTHER: 1}))["error"] == ""
    gdp = GenericDevicePlugin(kubelet.socket_dir, [gdp_device("gdev", pattern)], short_dir / "g")
    gdp.start()
    try:
        await kubelet.await_for(healthy_count(GDEV, 2), what="GDP serves g0 and g1")
        p1 = await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1})
        assert p1["error"] == "", p1
        [p1_node] = [d["PathOnHost"] for d in p1["devices"]]
    finally:
        gdp.stop()
    since = await kubelet.acall(kubelet.last_seq)
    config.write_text(config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern)))
    assert await running.host.reload_from(config) == "ok"
    first = await kubelet.acall(kubelet.first_list_after_registering, GDEV, since)
    assert first["healthy"] == 1, "kdp-host's first list holds p1's node back"
    p2 = await kubelet.acall(kubelet.allocate, "p2", {GDEV: 1})
    assert p2["error"] == "", p2
    assert [d["PathOnHost"] for d in p2["devices"]] != [p1_node]
    p3 = await kubelet.acall(kubelet.allocate, "p3", {GDEV: 1})
    assert p3["error"] and not p3["device_ids"], p3


async def test_a_reload_books_the_names_not_served_before_and_after_and_only_new_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`book_before`: the entries of the names served before and after are this host's own
    (not read again); of the others, only the IDs not booked yet are booked (a reload does
    not book the whole file again on the loop), and their IDs are unlisted."""
    caplog.set_level(logging.INFO)
    dp = tmp_path / "dp"
    dp.mkdir()
    gpu = "vendor.example/gpu"
    write_checkpoint(dp, entry_of(A, "a0", "/dev/a"), entry_of(gpu, "g0", "/dev/g"))
    host, state = restarted(tmp_path / "state", FakeNodes({"/dev/a": ("c", 1), "/dev/g": ("c", 2)}))
    taken: list[tuple[str, str]] = []
    poller = SimpleNamespace(unlisted=SimpleNamespace(take=taken.extend))
    await book_before(host.index, str(dp), [A], DaemonThreads(), get_logger(), poller)
    await asyncio.wait_for(state.flush(), 30)
    assert booked_ids(tmp_path / "state") == [f"{gpu}/g0"]
    assert taken == [(gpu, "g0")]
    entries = [entry_of(A, "a0", "/dev/a"), entry_of(gpu, "g0", "/dev/g")]
    write_checkpoint(dp, *entries, entry_of(gpu, "g1", "/dev/g"))
    taken.clear()
    await book_before(host.index, str(dp), [A], DaemonThreads(), get_logger(), poller)
    assert taken == [(gpu, "g1")], "g0 was booked already"
    lines = [r.__dict__["kdp_fields"] for r in caplog.records if "checkpoint_booked" in r.msg]
    assert [line["device"] for line in lines] == ["g0", "g1"]
