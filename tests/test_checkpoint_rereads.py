"""The kubelet's checkpoint read again where a read before registering may have missed an
admission of the plugin that served the name before (hostile12 L1), failing closed at a
reload while it cannot be read (hostile12 L3): `checkpoint_reads.CheckpointReads`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.api.v1beta1 import AllocateRequest, AllocateResponse
from kdp_host.checkpoint_reads import UNREADABLE, CheckpointReads
from kdp_host.config import DriverConfig, GlobDriverConfig
from kdp_host.drivers import Driver, DriverDeps, make_driver
from kdp_host.drivers.glob import GlobDriver
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .conftest import wait_until
from .fake_nodes import FakeNodes
from .kubelet_harness import GenericDevicePlugin, gdp_device, harness_binary, missing_reason
from .test_checkpoint_bookings import (
    GDEV,
    OTHER,
    ForeignPlugin,
    config_text,
    healthy_count,
    nodes,
    serve_foreign,
)
from .test_first_list import HeldFirstScan
from .test_kubelet_checkpoint import entry_of, write_checkpoint
from .test_ownership import restarted


def booked_ids_now(host: Any) -> set[str]:
    return {f"{r}/{i}" for r, ids in host.index.handed_out().items() for i in ids}


def holding_gdev(release: threading.Event) -> Callable[[DriverConfig, DriverDeps], Driver]:
    """A driver factory: GDEV's glob driver (its nodes are under `dev/`) waits for `release`
    before its first scan, so kdp-host registers GDEV only then (the window between the
    reload's read of the checkpoint and the registration, held open)."""

    def make(config: DriverConfig, deps: DriverDeps) -> Driver:
        if not isinstance(config, GlobDriverConfig) or "/dev/" not in config.paths[0]:
            return make_driver(config, deps)
        driver = GlobDriver(config, deps)
        driver.scanner = HeldFirstScan(driver.scanner, release=release)  # type: ignore[assignment]
        return driver

    return make


class SlowForeignPlugin(ForeignPlugin):
    """Another plugin whose Allocate is answered once `answer` is set (`entered`: called)."""

    def __init__(self, paths: dict[str, str]) -> None:
        super().__init__(paths)
        self.entered, self.answer = asyncio.Event(), asyncio.Event()

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        self.entered.set()
        await self.answer.wait()
        return await super().allocate(message)


async def test_a_pod_the_old_plugin_admits_before_kdp_host_registers_keeps_its_node(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host: Any
) -> None:
    """hostile12 L1: the reload adding GDEV lands while the other plugin still serves it (its
    pod terminating); the reload's read of the checkpoint is done, kdp-host's first scan is
    held, and the other plugin admits p1 meanwhile. kdp-host's first list, sent after the
    checkpoint is read again once the kubelet called ListAndWatch, holds p1's node back: p2
    gets the other node, p3 none (before: p1's node went to p2 under kdp-host's ID)."""
    kubelet = pod_resources_kubelet
    other = nodes(short_dir, "odev", "o0")
    pattern = nodes(short_dir, "dev", "g0", "g1")
    config = short_dir / "kdp.yaml"
    config.write_text(config_text(kubelet, short_dir, (OTHER, other)))
    release = threading.Event()
    running = await start_host(
        config.read_text(), config_path=config, drivers=holding_gdev(release)
    )
    await kubelet.wait_for(lambda: kubelet.allocatable(OTHER) == 1)
    foreign = {"u-0": str(short_dir / "dev" / "g0"), "u-1": str(short_dir / "dev" / "g1")}
    server = await serve_foreign(kubelet, ForeignPlugin(foreign))
    try:
        await kubelet.wait_for(lambda: kubelet.allocatable(GDEV) == 2)
        seen = kubelet.resource(GDEV).registrations
        config.write_text(config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern)))
        assert await running.host.reload_from(config) == "ok"
        answer = await kubelet.allocate(GDEV, 1, pod_uid="p1")  # (the other plugin's)
        assert answer is not None
        [p1_node] = [spec.host_path for spec in answer.devices]
        release.set()
        await wait_until(
            lambda: GDEV in running.host.resources and running.host.resources[GDEV].status.listed,
            timeout=30,
            what="kdp-host serves GDEV and listed it",
        )
        assert kubelet.resource(GDEV).registrations > seen
        await kubelet.wait_for(lambda: not {"u-0", "u-1"} & kubelet.resource(GDEV).healthy_ids)
        assert kubelet.resource(GDEV).healthy_ids == {"g0", "g1"} - {Path(p1_node).name}
        answer = await kubelet.allocate(GDEV, 1, pod_uid="p2")
        assert answer is not None
        assert [spec.host_path for spec in answer.devices] != [p1_node]
        with pytest.raises(SimulatorAllocationError):
            await kubelet.allocate(GDEV, 1, pod_uid="p3")
    finally:
        release.set()
        server.close()


async def test_an_admission_the_old_plugin_answers_across_the_registration_is_not_missed(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host: Any
) -> None:
    """hostile12 L1, the narrowest window: the other plugin's Allocate for p1 is in flight
    while kdp-host registers and reads the checkpoint (p1 not in it yet) and lists g0. The
    kubelet admits one pod at a time and writes its checkpoint after each, so the read
    kdp-host's first Allocate waits for sees p1: p2, handed g0 by the kubelet, is refused
    (before: p2 got g0, p1's node)."""
    kubelet = pod_resources_kubelet
    other = nodes(short_dir, "odev", "o0")
    pattern = nodes(short_dir, "dev", "g0")
    config = short_dir / "kdp.yaml"
    config.write_text(config_text(kubelet, short_dir, (OTHER, other)))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.wait_for(lambda: kubelet.allocatable(OTHER) == 1)
    plugin = SlowForeignPlugin({"u-0": str(short_dir / "dev" / "g0")})
    server = await serve_foreign(kubelet, plugin)
    try:
        await kubelet.wait_for(lambda: kubelet.allocatable(GDEV) == 1)
        p1 = asyncio.ensure_future(kubelet.allocate(GDEV, 1, pod_uid="p1"))
        await asyncio.wait_for(plugin.entered.wait(), 30)
        config.write_text(config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern)))
        assert await running.host.reload_from(config) == "ok"
        await wait_until(
            lambda: GDEV in running.host.resources and running.host.resources[GDEV].status.listed,
            timeout=30,
            what="kdp-host serves GDEV and listed it",
        )
        await kubelet.wait_for(lambda: kubelet.resource(GDEV).healthy_ids == {"g0"})
        plugin.answer.set()
        assert await asyncio.wait_for(p1, 30) is not None
        with pytest.raises(SimulatorAllocationError):
            await kubelet.allocate(GDEV, 1, pod_uid="p2")
    finally:
        plugin.answer.set()
        server.close()


async def test_an_unreadable_checkpoint_at_a_reload_keeps_the_added_resource_unlisted(
    pod_resources_kubelet: KubeletSimulator,
    short_dir: Path,
    start_host: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile12 L3: another plugin handed p1 g0 under its own ID and stopped; the kubelet's
    checkpoint is garbage when the reload adds the name. kdp-host registers it but sends no
    list (fail closed: the file is the only record of what the other plugin handed out),
    /readyz names the resource (`first_list_held`), the read is counted and tried again,
    and OTHER's list is
    sent again so that the kubelet writes the file anew; then the first list holds p1's
    node back (before: g0 and g1 listed at
    once, p2 got p1's node)."""
    kubelet = pod_resources_kubelet
    other = nodes(short_dir, "odev", "o0")
    pattern = nodes(short_dir, "dev", "g0", "g1")
    config = short_dir / "kdp.yaml"
    config.write_text(config_text(kubelet, short_dir, (OTHER, other)))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.wait_for(lambda: kubelet.allocatable(OTHER) == 1)
    foreign = {"u-0": str(short_dir / "dev" / "g0"), "u-1": str(short_dir / "dev" / "g1")}
    server = await serve_foreign(kubelet, ForeignPlugin(foreign))
    await kubelet.wait_for(lambda: kubelet.allocatable(GDEV) == 2)
    answer = await kubelet.allocate(GDEV, 1, pod_uid="p1")
    assert answer is not None
    [p1_node] = [spec.host_path for spec in answer.devices]
    server.close()
    await server.wait_closed()
    (kubelet.socket_dir / "kubelet_internal_checkpoint").write_text('{"Data": nonsense')
    config.write_text(config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern)))
    assert await running.host.reload_from(config) == "ok"
    await wait_until(
        lambda: running.sample("kdp_kubelet_checkpoint_unusable_total") >= 1,
        what="the read after the registration could not use the file",
    )
    await wait_until(  # (OTHER's list sent again: the kubelet wrote its file anew)
        lambda: running.host.resources[GDEV].status.listed, what="GDEV listed once readable"
    )
    held = [r for r in caplog.records if r.msg == "first_list_held"]
    assert held and held[0].__dict__["kdp_fields"]["resource"] == GDEV
    assert not [r for r in caplog.records if r.msg == "held_device_missing"]  # (p1's: held)
    assert GDEV not in running.host.not_ready()
    await kubelet.wait_for(lambda: not {"u-0", "u-1"} & kubelet.resource(GDEV).healthy_ids)
    assert kubelet.resource(GDEV).healthy_ids == {"g0", "g1"} - {Path(p1_node).name}
    answer = await kubelet.allocate(GDEV, 1, pod_uid="p2")
    assert answer is not None
    assert [spec.host_path for spec in answer.devices] != [p1_node]


async def test_through_the_real_kubelet_a_pod_gdp_admits_before_kdp_host_registers_keeps_it(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path
) -> None:
    """hostile12 L1 through the kubelet's real device manager and generic-device-plugin:
    GDP still serves GDEV when the reload adding it lands (its pod terminating); kdp-host's
    first scan is held (the window between the reload's read and the registration held
    open) while GDP admits p1. kdp-host's first list holds p1's node back: p2 gets the
    other node, p3 none (before: 4 of 10 hostile runs put p1's node into a second pod)."""
    if harness_binary("generic-device-plugin") is None:
        pytest.skip(missing_reason("generic-device-plugin"))
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    other = nodes(short_dir, "odev", "o0")
    pattern = nodes(short_dir, "dev", "g0", "g1")
    config = short_dir / "kdp.yaml"
    config.write_text(config_text(kubelet, short_dir, (OTHER, other)))
    release = threading.Event()
    running = await start_host(
        config.read_text(), config_path=config, drivers=holding_gdev(release)
    )
    await kubelet.await_for(healthy_count(OTHER, 1), what="kdp-host serves OTHER")
    gdp = GenericDevicePlugin(kubelet.socket_dir, [gdp_device("gdev", pattern)], short_dir / "g")
    gdp.start()
    try:
        await kubelet.await_for(healthy_count(GDEV, 2), what="GDP serves g0 and g1")
        since = await kubelet.acall(kubelet.last_seq)
        config.write_text(config_text(kubelet, short_dir, (OTHER, other), (GDEV, pattern)))
        assert await running.host.reload_from(config) == "ok"
        p1 = await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1})  # (GDP's)
        assert p1["error"] == "", p1
        [p1_node] = [d["PathOnHost"] for d in p1["devices"]]
        release.set()
        first = await kubelet.acall(kubelet.first_list_after_registering, GDEV, since)
        events = await kubelet.acall(kubelet.events, since)
        assert first["healthy"] == 1, "\n".join(map(str, events))
        p2 = await kubelet.acall(kubelet.allocate, "p2", {GDEV: 1})
        assert p2["error"] == "", p2
        assert [d["PathOnHost"] for d in p2["devices"]] != [p1_node]
        p3 = await kubelet.acall(kubelet.allocate, "p3", {GDEV: 1})
        assert p3["error"] and not p3["device_ids"], p3
    finally:
        release.set()
        gdp.stop()


async def test_a_held_first_list_says_why_until_the_checkpoint_can_be_read(
    tmp_path: Path,
) -> None:
    """`CheckpointReads.listing`: while the file cannot be used the resource's problem says
    so (/readyz), each failed read is counted and tried again; once it can be, its entries
    are booked, the problem goes and the list goes out. An Allocate meanwhile is refused."""
    dp = tmp_path / "dp"
    dp.mkdir()
    (dp / "kubelet_internal_checkpoint").write_text('{"Data": nonsense')
    host, _ = restarted(tmp_path / "state", FakeNodes({"/dev/g": ("c", 2)}))
    metrics = Metrics()
    reads = CheckpointReads(host.index, str(dp), DaemonThreads(), get_logger(), metrics=metrics)
    reads.before([], [GDEV])
    problems: list[str | None] = []
    listing = asyncio.ensure_future(reads.listing(GDEV, problems.append))
    await wait_until(lambda: problems, what="the problem reported")
    assert problems[0] == UNREADABLE
    assert await reads.allocating(GDEV) is not None
    assert (metrics.registry.get_sample_value("kdp_kubelet_checkpoint_unusable_total") or 0) >= 2
    write_checkpoint(dp, entry_of(GDEV, "u-0", "/dev/g"))
    await asyncio.wait_for(listing, 30)
    assert problems[-1] is None
    assert f"{GDEV}/u-0" in booked_ids_now(host)
    assert await reads.allocating(GDEV) is None
