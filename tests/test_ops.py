"""Operations: metrics, /healthz, /readyz, live config reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kdp_host.config import load_config_text
from kdp_host.host import Host
from kdp_host.http import HttpServer
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.probes import HealthState
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .conftest import glob_config, wait_until

FPGA = "vendor.example/fpga"
SERIAL = "vendor.example/serial"
NEW = "vendor.example/new"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def http(running_health: tuple[Metrics, HealthState]) -> Iterator[int]:
    metrics, health = running_health
    server = HttpServer("127.0.0.1", 0, metrics, health)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


@pytest.fixture
def running_health() -> tuple[Metrics, HealthState]:
    return Metrics(), HealthState()


@contextlib.asynccontextmanager
async def running_host(text: str, metrics: Metrics, health: HealthState) -> AsyncIterator[Host]:
    """A Host of `text` reporting to `metrics` and `health` (what the `http` fixture serves),
    running until the block ends."""
    host = Host(config=load_config_text(text), metrics=metrics, log=get_logger(), health=health)
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    try:
        yield host
    finally:
        stop.set()
        await task


async def test_http_endpoints(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, http: int, running_health
) -> None:
    metrics, health = running_health
    status, body = await asyncio.to_thread(http_get, http, "/readyz")
    assert status == 503 and "starting" in body
    status, body = await asyncio.to_thread(http_get, http, "/healthz")
    assert status == 503 and "event loop stalled" in body
    await kubelet.stop()
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), (SERIAL, f"{devices}/ttyA*"))

    async with running_host(text, metrics, health):
        await wait_until(lambda: health.attached, what="the loop answers probes")
        status, body = await asyncio.to_thread(http_get, http, "/healthz")
        assert (status, body.strip()) == (200, "ok")
        await wait_until(lambda: FPGA in health.not_ready, what="readiness computed")
        status, body = await asyncio.to_thread(http_get, http, "/readyz")
        assert status == 503 and f"not ready: {FPGA}" in body and SERIAL in body
        # readiness is computed before the first Register: wait for the one that found no
        # kubelet, or the kubelet below may start before it is tried
        await wait_until(
            lambda: value(metrics, "kdp_registrations_total", resource=FPGA, result="unavailable"),
            what="a Register without a kubelet counted",
        )
        await kubelet.start()
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
        await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
        await wait_until(lambda: not health.not_ready, what="ready")
        status, body = await asyncio.to_thread(http_get, http, "/readyz")
        assert (status, body.strip()) == (200, "ok")

        await kubelet.allocate(FPGA, 1)
        status, text_metrics = await asyncio.to_thread(http_get, http, "/metrics")
        assert status == 200
        assert value(metrics, "kdp_devices", resource=FPGA, health="healthy") == 2
        assert value(metrics, "kdp_allocations_total", resource=FPGA, result="ok") == 1
        assert value(metrics, "kdp_registrations_total", resource=FPGA, result="ok") == 1
        assert value(metrics, "kdp_registrations_total", resource=FPGA, result="unavailable") >= 1
        assert value(metrics, "kdp_registered", resource=SERIAL) == 1
        assert value(metrics, "kdp_allocate_duration_seconds_count", resource=FPGA) == 1
        # one ID per device, no NUMA node: GetPreferredAllocation is not offered nor asked
        assert value(metrics, "kdp_preferred_allocation_duration_seconds_count", resource=FPGA) == 0
        assert value(metrics, "kdp_list_and_watch_updates_total", resource=FPGA) >= 1
        assert value(metrics, "kdp_list_and_watch_streams", resource=FPGA) == 1
        assert value(metrics, "kdp_driver_scan_duration_seconds_count", resource=FPGA) >= 1
        assert "kdp_build_info{" in text_metrics and "kdp_event_loop_lag_seconds" in text_metrics

        # a kubelet restart: not ready until registered again, and counted
        await kubelet.stop()
        await wait_until(lambda: FPGA in health.not_ready, what="not ready during restart")
        status, _ = await asyncio.to_thread(http_get, http, "/readyz")
        assert status == 503
        await kubelet.start()
        await wait_until(lambda: not health.not_ready, what="ready again")
        assert value(metrics, "kdp_kubelet_restarts_total") == 1

        status, body = await asyncio.to_thread(http_get, http, "/nope")
        assert status == 404


async def test_healthz_turns_503_while_the_loop_is_blocked(
    socket_dir: Path, devices: Path, http: int, running_health
) -> None:
    metrics, health = running_health
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))

    async with running_host(text, metrics, health):
        await wait_until(lambda: health.attached, what="the loop answers probes")
        assert (await asyncio.to_thread(http_get, http, "/healthz"))[0] == 200
        # Block the event loop; the HTTP thread keeps answering, with a 503 once the loop
        # has not answered the probe for 2 s.
        result: dict[str, tuple[int, str]] = {}

        def probe_later() -> None:
            time.sleep(0.5)
            result["healthz"] = http_get(http, "/healthz")

        import threading

        prober = threading.Thread(target=probe_later)
        prober.start()
        time.sleep(3.5)  # noqa: ASYNC251 - the block under test: the loop stalls on purpose
        prober.join()
        status, body = result["healthz"]
        assert status == 503 and "event loop stalled: no answer within 2s" in body
        # The probe's late answer measured the stall.
        await wait_until(
            lambda: value(metrics, "kdp_event_loop_lag_max_seconds") > 2, what="lag recorded"
        )
        assert (await asyncio.to_thread(http_get, http, "/healthz"))[0] == 200
        assert value(metrics, "kdp_event_loop_lag_max_seconds") > 2


async def test_an_idle_host_wakes_for_nothing(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, http: int, running_health
) -> None:
    """Issue 19: a heartbeat woke the loop every half second to prove it alive. Probes now
    ask the loop when they come; an idle host with every resource registered schedules no
    timer shorter than its safety nets (and the probes still work)."""
    metrics, health = running_health
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), (SERIAL, f"{devices}/ttyA*"))

    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_at = loop.call_at

    def recording_call_at(when: float, callback, *args, context=None):  # type: ignore[no-untyped-def]
        timers.append(when - loop.time())
        return real_call_at(when, callback, *args, context=context)

    async with running_host(text, metrics, health):
        try:
            await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
            await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
            await wait_until(lambda: not health.not_ready, what="ready")
            await asyncio.sleep(0.2)
            loop.call_at = recording_call_at  # type: ignore[method-assign]
            idle_until = loop.time() + 1.5
            while loop.time() < idle_until:
                await asyncio.to_thread(time.sleep, 0.1)
            loop.call_at = real_call_at  # type: ignore[method-assign]
            short = [round(t, 3) for t in timers if t < 5.0]
            assert short == [], f"timers set while idle: {short}"
            assert await asyncio.to_thread(http_get, http, "/healthz") == (200, "ok\n")
            assert value(metrics, "kdp_event_loop_lag_seconds") < 2
        finally:
            loop.call_at = real_call_at  # type: ignore[method-assign]


def write_config(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_reload_add_remove_change_unchanged(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    (devices / "new0").touch()
    config = short_dir / "config.yaml"
    fpga = (FPGA, f"{devices}/fpga*")
    serial = (SERIAL, f"{devices}/ttyA*")
    write_config(config, glob_config(socket_dir, fpga, serial))
    running = await start_host(config.read_text(), config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    serial_socket = running.host.resources[SERIAL].socket_path
    serial_identity = os.stat(serial_socket).st_ino, os.stat(serial_socket).st_ctime_ns
    serial_messages = kubelet.resource(SERIAL).list_and_watch_messages

    # FPGA changes (allocate env), SERIAL stays, NEW is added
    text = glob_config(socket_dir, serial, (NEW, f"{devices}/new*")) + (
        f"  - name: {FPGA}\n    glob: {{paths: ['{devices}/fpga*']}}\n"
        "    allocate: {env: {CHANGED: 'yes'}}\n"
    )
    write_config(config, text)
    await kubelet.wait_for(lambda: kubelet.resource(NEW).allocatable == 1, timeout=10)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).registrations == 2, timeout=10)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    response = await kubelet.allocate(FPGA, 1)
    assert response.envs == {"CHANGED": "yes"}
    assert kubelet.resource(SERIAL).registrations == 1
    assert kubelet.resource(SERIAL).list_and_watch_messages == serial_messages
    assert (os.stat(serial_socket).st_ino, os.stat(serial_socket).st_ctime_ns) == serial_identity
    assert value(running.metrics, "kdp_config_reloads_total", result="ok") == 1
    assert value(running.metrics, "kdp_registrations_total", resource=SERIAL, result="ok") == 1

    # NEW is removed: its socket goes away, the kubelet sees its stream end
    new_socket = running.host.resources[NEW].socket_path
    write_config(config, text.replace(f"  - name: {NEW}\n", "  - name: vendor.example/other\n"))
    await kubelet.wait_for(lambda: kubelet.resource(NEW).allocatable == 0, timeout=10)
    await wait_until(lambda: not os.path.exists(new_socket), what="removed socket gone")
    assert NEW not in running.host.resources
    assert kubelet.resource(SERIAL).registrations == 1
    assert kubelet.stale_disconnects == 0


async def test_invalid_and_refused_reloads_keep_the_last_good_config(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    config = short_dir / "config.yaml"
    good = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    write_config(config, good)
    running = await start_host(good, config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)

    write_config(config, good + "  - name: foo\n    glob: {paths: [/dev/x]}\n")
    await wait_until(
        lambda: value(running.metrics, "kdp_config_reloads_total", result="invalid") == 1,
        what="invalid reload counted",
    )
    write_config(config, good.replace(str(socket_dir), str(socket_dir) + "2"))
    await wait_until(
        lambda: value(running.metrics, "kdp_config_reloads_total", result="refused") == 1,
        what="refused reload counted",
    )
    assert kubelet.resource(FPGA).registrations == 1
    await kubelet.allocate(FPGA, 1)
    running.host.request_reload()
    await wait_until(
        lambda: value(running.metrics, "kdp_config_reloads_total", result="refused") == 2,
        what="SIGHUP-style reload re-reads the file",
    )


async def test_configmap_symlink_swap(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    """A ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/,
    updated by renaming a new ..data symlink over the old one."""
    mount = short_dir / "cm"
    mount.mkdir()

    def publish(version: int, text: str) -> None:
        stamp = mount / f"..v{version}"
        stamp.mkdir()
        (stamp / "config.yaml").write_text(text)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(stamp.name)
        os.replace(tmp_link, mount / "..data")

    first = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    publish(1, first)
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    running = await start_host(first, mount / "config.yaml")
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)

    publish(2, glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), (SERIAL, f"{devices}/ttyA*")))
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1, timeout=10)
    assert kubelet.resource(FPGA).registrations == 1
    assert value(running.metrics, "kdp_config_reloads_total", result="ok") == 1
    info = [k for k in samples(running.metrics) if k[0] == "kdp_config_info"]
    assert info and dict(info[0][1])["sha256"] == running.host.config.sha256


async def test_a_removed_resource_leaves_no_series(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    config = short_dir / "config.yaml"
    both = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), (SERIAL, f"{devices}/ttyA*"))
    write_config(config, both)
    running = await start_host(both, config)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    assert value(running.metrics, "kdp_registered", resource=SERIAL) == 1

    write_config(config, glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await wait_until(lambda: SERIAL not in running.host.resources, what="SERIAL removed")
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 0, timeout=10)

    def serial_series() -> list[str]:
        return [name for name, labels in samples(running.metrics) if ("resource", SERIAL) in labels]

    await wait_until(lambda: not serial_series(), what="every SERIAL series dropped")
    # The stopped runtime must not write a series back after it was dropped.
    running.host.request_reload()
    await wait_until(
        lambda: value(running.metrics, "kdp_config_reloads_total", result="unchanged") == 1,
        what="a later reload ran",
    )
    assert serial_series() == []
    assert value(running.metrics, "kdp_registered", resource=FPGA) == 1


def test_forget_hooks_drops_exactly_the_hooks_not_kept() -> None:
    metrics = Metrics(process_collectors=False)
    for resource in ("a.io/x", "a.io/y"):
        metrics.add_pre_start(resource)
        metrics.add_allocate_hook(resource)
        metrics.add_release(resource)
        metrics.pre_start_seconds.labels(resource).observe(0.1)
        metrics.release_seconds.labels(resource).observe(0.1)
    metrics.forget_hooks("a.io/x", keep={"preStart"})

    def families(resource: str) -> set[str]:
        return {
            name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
            for name, labels in samples(metrics)
            if ("resource", resource) in labels and not name.endswith("_bucket")
        }

    assert families("a.io/x") == {
        "kdp_pre_start_calls",
        "kdp_pre_start_waits",
        "kdp_pre_start_duration_seconds",
    }
    assert families("a.io/y") >= {
        "kdp_allocate_hook_runs",
        "kdp_release_runs",
        "kdp_releases_pending",
    }


async def test_a_hook_removed_by_a_reload_leaves_no_series(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    """Issue 17 item 12: a changed resource restarts; the series of a hook its new config no
    longer has are dropped once the old runtime is gone, the others stay."""
    config = short_dir / "config.yaml"
    both = 'preStart: {command: ["true"]}\nallocate: {command: ["true"]}'
    hooked = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), extra=both)
    write_config(config, hooked)
    running = await start_host(hooked, config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)

    def hook_series() -> set[str]:
        hook_names = ("kdp_pre_start", "kdp_allocate_hook")
        return {
            name
            for name, labels in samples(running.metrics)
            if ("resource", FPGA) in labels and name.startswith(hook_names)
        }

    assert {"kdp_pre_start_calls_total", "kdp_pre_start_waits_total"} <= hook_series()
    assert "kdp_allocate_hook_runs_total" in hook_series()

    write_config(config, glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await wait_until(lambda: not hook_series(), what="the hook series dropped")
    await kubelet.wait_for(lambda: kubelet.options(FPGA) is not None)
    await kubelet.wait_for(lambda: not kubelet.options(FPGA).pre_start_required)
    await wait_until(
        lambda: value(running.metrics, "kdp_registered", resource=FPGA) == 1,
        what="the restarted resource registered",
    )
    running.host.request_reload()
    await wait_until(
        lambda: value(running.metrics, "kdp_config_reloads_total", result="unchanged") == 1,
        what="a later reload ran",
    )
    assert hook_series() == set()

    # one hook back: its series return at zero, the other's stay away
    pre_start_only = glob_config(
        socket_dir, (FPGA, f"{devices}/fpga*"), extra='preStart: {command: ["true"]}'
    )
    write_config(config, pre_start_only)
    await wait_until(lambda: "kdp_pre_start_calls_total" in hook_series(), what="preStart back")
    await wait_until(
        lambda: value(running.metrics, "kdp_config_reloads_total", result="ok") == 2,
        what="the second reload applied",
    )
    await kubelet.wait_for(lambda: kubelet.options(FPGA).pre_start_required)
    assert "kdp_allocate_hook_runs_total" not in hook_series()
    assert value(running.metrics, "kdp_pre_start_calls_total", resource=FPGA, result="ok") == 0


async def test_sighup_with_an_unchanged_file_is_logged_and_counted(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    short_dir: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = short_dir / "config.yaml"
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    write_config(config, text)
    running = await start_host(text, config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    with caplog.at_level("INFO", logger="kdp_host"):
        assert await running.host.reload_from(config) == "unchanged"
    assert value(running.metrics, "kdp_config_reloads_total", result="unchanged") == 1
    assert any(r.getMessage() == "config_unchanged" for r in caplog.records)
    assert kubelet.resource(FPGA).registrations == 1


async def test_readme_states_the_series_a_resource_has(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    """Issue 20 item 7: the README's series count per resource is counted, on a real host,
    at start, after an Allocate (preferred: none) and after a GetPreferredAllocation too."""
    import re

    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1", "ttyA0", "ttyA1"):
        (dev / name).touch()
    config = glob_config(socket_dir, (FPGA, f"{dev}/fpga*")) + "    preferred: none\n"
    # replicas: 2 (shared devices) makes GetPreferredAllocation matter, so it is advertised
    config += glob_config(socket_dir, (SERIAL, f"{dev}/ttyA*")).split("resources:\n")[1]
    config += "    replicas: 2\n"
    running = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 4)

    def series(resource: str) -> int:
        return sum(1 for _, labels in samples(running.metrics) if ("resource", resource) in labels)

    await wait_until(lambda: series(FPGA) == series(SERIAL), what="both scanned")
    at_start = series(FPGA)
    await kubelet.allocate(FPGA, 1)
    after_allocate = series(FPGA)
    await kubelet.allocate(SERIAL, 1)
    assert kubelet.preferred_allocation_calls and not any(
        call.resource == FPGA for call in kubelet.preferred_allocation_calls
    )
    after_preferred = series(SERIAL)
    counters = at_start - 15
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    stated = re.search(r"Series per resource, .*?`allocate\.command` 6 more\.", readme)
    assert stated, "the README's series count is gone"
    text = stated.group(0)
    assert f"{at_start} from its first scan ({counters} counters and gauges" in text, text
    assert f"{after_allocate} after its first Allocate" in text, text
    assert f"{after_preferred} after its first GetPreferredAllocation" in text, text
    assert f"with `off` none: {counters} per resource" in text, text


def test_metrics_conventions_from_the_first_scrape() -> None:
    """No _created series; result/reason counters start at zero for every known value;
    process and platform collectors are on the host's registry."""
    from prometheus_client import generate_latest

    from kdp_host.metric_labels import (
        ALLOCATION_RESULTS,
        CONFIG_RELOAD_RESULTS,
        DRIVER_ERROR_REASONS,
        REGISTRATION_RESULTS,
    )

    metrics = Metrics()
    metrics.add_resource(FPGA)
    metrics.allocate_seconds.labels(FPGA).observe(0.001)
    metrics.allocations.labels(FPGA, "ok").inc()
    text = generate_latest(metrics.registry).decode()
    assert "_created" not in text
    seen = samples(metrics)
    for result in ALLOCATION_RESULTS:
        assert (("kdp_allocations_total", (("resource", FPGA), ("result", result)))) in seen
    for result in REGISTRATION_RESULTS:
        assert ("kdp_registrations_total", (("resource", FPGA), ("result", result))) in seen
    for reason in DRIVER_ERROR_REASONS:
        assert ("kdp_driver_errors_total", (("reason", reason), ("resource", FPGA))) in seen
    for result in CONFIG_RELOAD_RESULTS:
        assert ("kdp_config_reloads_total", (("result", result),)) in seen
    assert seen[("kdp_registrations_total", (("resource", FPGA), ("result", "refused")))] == 0
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert (name, ()) in seen
    assert any(name == "python_info" for name, _ in seen)


def test_every_reason_a_driver_fails_with_has_its_series_and_the_readme_counts_them() -> None:
    """hostile19 F4: `too_many_paths` was counted but not declared, so its series appeared
    only with the first such failure. Every reason a DriverError is raised with in the
    drivers is declared (`abandoned` is never counted), and the README's per-resource figure
    is what a resource starts with."""
    import re

    from kdp_host.metric_labels import DRIVER_ERROR_REASONS

    drivers = Path(__file__).parent.parent / "kdp_host" / "drivers"
    raised = {
        reason
        for source in drivers.glob("*.py")
        for reason in re.findall(r'DriverError\(\s*"([a-z_]+)"', source.read_text())
    }
    assert raised and raised - {"abandoned"} <= set(DRIVER_ERROR_REASONS)
    metrics = Metrics(process_collectors=False)
    metrics.add_resource(FPGA)
    mine = [k for k in samples(metrics) if ("resource", FPGA) in k[1]]
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [stated] = re.findall(r"\((\d+) counters and gauges, and the 15 of the scan", readme)
    assert len(mine) == int(stated)


@pytest.mark.parametrize(
    ("mode", "histogram_series_per_resource", "host_histogram_series"),
    [("perResource", 45, 0), ("host", 0, 45), ("off", 0, 0)],
)
def test_histogram_modes_bound_series_per_resource(
    mode: str, histogram_series_per_resource: int, host_histogram_series: int
) -> None:
    metrics = Metrics(histograms=mode, process_collectors=False)  # type: ignore[arg-type]
    for resource in (FPGA, SERIAL):
        metrics.add_resource(resource)
        for histogram in (
            metrics.allocate_seconds,
            metrics.preferred_seconds,
            metrics.scan_seconds,
        ):
            histogram.labels(resource).observe(0.002)
    seen = samples(metrics)
    histogram_names = (
        "kdp_allocate_duration",
        "kdp_preferred_allocation_duration",
        "kdp_driver_scan_duration",
    )
    per_resource = [
        k for k in seen if k[0].startswith(histogram_names) and ("resource", FPGA) in k[1]
    ]
    host_wide = [
        k
        for k in seen
        if k[0].startswith(histogram_names) and not any(n == "resource" for n, _ in k[1])
    ]
    assert len(per_resource) == histogram_series_per_resource
    assert len(host_wide) == host_histogram_series
    if mode == "host":
        assert seen[("kdp_allocate_duration_seconds_count", ())] == 2


def test_histograms_key_is_read_and_needs_a_restart(socket_dir: Path) -> None:
    from kdp_host.config import ConfigError
    from kdp_host.reload import restart_required

    base = glob_config(socket_dir, (FPGA, "/dev/fpga*"))
    default = load_config_text(base)
    host = load_config_text(base + "metrics: {histograms: host}\n")
    assert (default.metrics.histograms, host.metrics.histograms) == ("perResource", "host")
    assert restart_required(default, host) == [
        "metrics.histograms changed: restart kdp-host to apply"
    ]
    with pytest.raises(ConfigError, match=r"metrics\.histograms"):
        load_config_text(base + "metrics: {histograms: some}\n")


def test_promtool_check_metrics_is_clean(socket_dir: Path) -> None:
    """`promtool check metrics` on everything the host exposes (Debian: apt-get install
    prometheus). CI installs it; elsewhere this skips and says why."""
    import shutil
    import subprocess

    from prometheus_client import generate_latest

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    metrics = Metrics()
    for resource in (FPGA, SERIAL):
        metrics.add_resource(resource)
        metrics.set_device_counts(resource, 2, 1)
        metrics.allocate_seconds.labels(resource).observe(0.001)
        metrics.preferred_seconds.labels(resource).observe(0.001)
        metrics.scan_seconds.labels(resource).observe(0.01)
    metrics.config_info.info({"sha256": "0" * 64})
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(metrics.registry),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", result.stderr.decode()


def _read_to_end(connection: socket.socket) -> bytes:
    data = b""
    while chunk := connection.recv(4096):
        data += chunk
    return data


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as resources:
        yield resources


@contextlib.contextmanager
def answering_health() -> Iterator[HealthState]:
    """A HealthState whose loop (on its own thread) answers probes, as a running host's."""
    health = HealthState()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    health.attach(loop, lambda delay: None)
    try:
        yield health
    finally:
        health.detach()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _wait_for_threads(limit: int) -> None:
    """A serving thread closes its connection a moment before it frees its slot."""
    deadline = time.monotonic() + 30
    while threading.active_count() > limit and time.monotonic() < deadline:
        time.sleep(0.01)


def test_http_closes_idle_connections_and_bounds_its_threads() -> None:
    """Issue 10 item 19: an idle connection held a thread for ever, one thread each."""
    metrics, health = Metrics(process_collectors=False), HealthState()
    server = HttpServer("127.0.0.1", 0, metrics, health, max_threads=2, request_deadline=5.0)
    server.start()
    idle: list[socket.socket] = []
    try:
        baseline = threading.active_count()
        for _ in range(6):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        # Two connections are served at once; each newcomer takes the slot of the oldest one
        # still silent, which is answered 503 and closed: the last two keep the slots.
        for connection in idle[:4]:
            answer = _read_to_end(connection)
            assert answer.startswith(b"HTTP/1.1 503") and b"busy" in answer
        assert threading.active_count() <= baseline + 2
        # The two silent ones are closed when their request deadline passes.
        assert [_read_to_end(connection) for connection in idle[4:]] == [b"", b""]
        _wait_for_threads(baseline)
        status, _ = http_get(server.port, "/metrics")
        assert status == 200
    finally:
        for connection in idle:
            connection.close()
        server.stop()


def test_http_cuts_a_dripping_client_at_its_request_deadline() -> None:
    """Hostile test: a byte every few seconds restarted the idle timeout, so a slot was
    held for ever. The deadline to deliver the request is absolute."""
    metrics, health = Metrics(process_collectors=False), HealthState(clock=lambda: 0.0)
    server = HttpServer("127.0.0.1", 0, metrics, health, max_threads=2, request_deadline=1.0)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as drip:
            drip.sendall(b"GET /metrics HTTP/1.1\r\n")
            # Keep dripping header bytes, each well inside the old idle timeout, until the
            # server closes the connection (or the generous bound ends the test).
            drip.settimeout(0.2)
            closed = False
            give_up = time.monotonic() + 60
            while not closed and time.monotonic() < give_up:
                try:
                    drip.sendall(b"X")
                    closed = drip.recv(4096) == b""
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
            assert closed, "the dripping client still held its slot"
    finally:
        server.stop()


def test_http_healthz_gets_through_slow_clients_holding_every_slot(
    stack: contextlib.ExitStack,
) -> None:
    """Hostile test: eight slow clients kept /healthz at 503 "busy" as long as they liked,
    so the kubelet restarted a healthy pod. A newcomer takes the slot of the oldest
    connection still sending its request, and the threads stay bounded."""
    slots, rounds = 3, 3
    metrics = Metrics(process_collectors=False)
    health = stack.enter_context(answering_health())
    server = HttpServer("127.0.0.1", 0, metrics, health, max_threads=slots, request_deadline=60.0)
    server.start()
    slow: list[socket.socket] = []
    try:
        baseline = threading.active_count()
        for _ in range(rounds):
            # A fresh wave of slow clients fills every slot, and the older ones drip on.
            for _ in range(slots):
                slow.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
                slow[-1].sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            for connection in slow:
                with contextlib.suppress(OSError):
                    connection.sendall(b"x")
            assert http_get(server.port, "/healthz") == (200, "ok\n")
            assert threading.active_count() <= baseline + slots
        # Every slow client that lost its slot was told so.
        evicted = slow[: len(slow) - slots]
        for connection in evicted:
            answer = _read_to_end(connection)
            assert answer.startswith(b"HTTP/1.1 503") and b"busy" in answer
    finally:
        for connection in slow:
            connection.close()
        server.stop()


class _SlowCollector:
    """A collector whose scrape takes as long as the test likes (a big exposition)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._entering = threading.Condition()

    def collect(self) -> Iterator[object]:
        with self._entering:
            self.entered += 1
            self._entering.notify_all()
        self.release.wait(30)
        return iter(())

    def await_entered(self, count: int) -> int:
        """How many scrapes entered, once `count` have (30 s at most: a slot's thread may
        be scheduled after the refused scrapes were told)."""
        with self._entering:
            self._entering.wait_for(lambda: self.entered >= count, timeout=30)
            return self.entered


def test_http_healthz_gets_through_eight_concurrent_scrapers(
    stack: contextlib.ExitStack,
) -> None:
    """Issue 17 item 14: eight scrapes being answered held every slot, so /healthz was
    answered 503 "busy" (no slot was still receiving a request to evict). Scrapes take at
    most all but PROBE_SLOTS slots; the ones beyond are answered 503 "busy" themselves."""
    from kdp_host.http_server import MAX_THREADS, PROBE_SLOTS

    metrics = Metrics(process_collectors=False)
    health = stack.enter_context(answering_health())
    slow = _SlowCollector()
    metrics.registry.register(slow)  # type: ignore[arg-type]
    server = HttpServer("127.0.0.1", 0, metrics, health, request_deadline=60.0)
    server.start()
    scrapers: list[socket.socket] = []
    try:
        for _ in range(MAX_THREADS):
            scrapers.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
            scrapers[-1].sendall(b"GET /metrics HTTP/1.1\r\nHost: kdp\r\n\r\n")
        allowed = MAX_THREADS - PROBE_SLOTS
        # The scrapes beyond the allowance are told at once; the others wait for the data.
        refused = _answered(scrapers, PROBE_SLOTS)
        assert len(refused) == PROBE_SLOTS and slow.await_entered(allowed) == allowed
        for connection in refused:
            answer = _read_to_end(connection)
            assert answer.startswith(b"HTTP/1.1 503") and b"busy" in answer
        for _ in range(3):
            assert http_get(server.port, "/healthz") == (200, "ok\n")
        assert http_get(server.port, "/readyz")[0] == 503  # "host: starting", but answered
        slow.release.set()
        for connection in scrapers:
            if connection not in refused:
                assert _read_to_end(connection).startswith(b"HTTP/1.0 200 OK")
        assert slow.entered == allowed
    finally:
        slow.release.set()
        for connection in scrapers:
            connection.close()
        server.stop()


def _answered(connections: list[socket.socket], count: int) -> list[socket.socket]:
    """The connections with an answer to read, once `count` have one (30 s at most)."""
    import select

    deadline = time.monotonic() + 30
    ready: list[socket.socket] = []
    while len(ready) < count and time.monotonic() < deadline:
        ready = select.select(connections, [], [], 0.05)[0]
    return ready


def test_http_endpoint_logs_and_binds_an_ephemeral_port() -> None:
    server = HttpServer("127.0.0.1", 0, Metrics(process_collectors=False), HealthState())
    try:
        assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_http_server_binds_without_looking_up_the_hosts_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The standard library's HTTPServer asked `socket.getfqdn` for the server's name at
    every start: a reverse DNS query in a pod (and the idna codec loaded) for a name nothing
    reads. The server is named by its address and answers as before."""

    def no_lookup(name: str = "") -> str:
        raise AssertionError(f"getfqdn({name!r}) called")

    monkeypatch.setattr(socket, "getfqdn", no_lookup)
    server = HttpServer("127.0.0.1", 0, Metrics(process_collectors=False), HealthState())
    server.start()
    try:
        status, body = http_get(server.port, "/metrics")
        assert status == 200 and "kdp_" in body
    finally:
        server.stop()


async def test_readyz_names_resources_and_short_reasons_never_host_paths(
    socket_dir: Path, devices: Path, short_dir: Path, http: int, running_health
) -> None:
    """No kubelet (registration fails) and an unwritable CDI spec dir: /readyz names both
    resources and why, without the socket dir, the spec dir or an error's path."""
    metrics, health = running_health
    blocker = short_dir / "cdi-blocker"
    blocker.write_text("a file where the CDI directory should be")
    text = glob_config(socket_dir, (SERIAL, f"{devices}/ttyA*")) + (
        f"  - name: {FPGA}\n    glob: {{paths: ['{devices}/fpga*']}}\n"
        f"    allocate: {{cdi: {{kind: {FPGA}, specDir: {blocker}/cdi}}}}\n"
    )

    async with running_host(text, metrics, health):
        await wait_until(
            lambda: "CDI spec file not written" in health.not_ready.get(FPGA, ""),
            what="CDI failure reported",
        )
        await wait_until(
            lambda: "not registered" in health.not_ready.get(SERIAL, ""), what="no kubelet"
        )
        status, body = await asyncio.to_thread(http_get, http, "/readyz")
        assert status == 503
        assert f"not ready: {FPGA}: " in body and f"not ready: {SERIAL}: " in body
        assert str(short_dir) not in body and "/" not in body.replace(FPGA, "").replace(SERIAL, "")
        assert value(metrics, "kdp_cdi_spec_write_failures_total", resource=FPGA) >= 1
        assert value(metrics, "kdp_answer_need_unmet", resource=FPGA, need="cdi") == 1
        assert value(metrics, "kdp_devices", resource=FPGA, health="unhealthy") == 2
        assert value(metrics, "kdp_devices", resource=FPGA, health="healthy") == 0


async def test_readyz_says_the_kubelet_has_not_answered_register_while_it_hangs(
    socket_dir: Path, devices: Path, running_health
) -> None:
    """hostile9 L2: a kubelet.sock that accepts and never answers held Register for its 30 s
    deadline with /readyz saying only "not registered"; it says what it waits for."""
    metrics, health = running_health
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(socket_dir / "kubelet.sock"))
    silent.listen(16)
    try:
        async with running_host(
            glob_config(socket_dir, (SERIAL, f"{devices}/ttyA*")), metrics, health
        ):
            await wait_until(
                lambda: (
                    "waiting for the kubelet to answer Register" in health.not_ready.get(SERIAL, "")
                ),
                what="the hung Register named",
            )
    finally:
        silent.close()


async def test_cdi_failure_keeps_devices_from_the_kubelet_until_written(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path, start_host
) -> None:
    blocker = short_dir / "cdi"
    blocker.write_text("a file where the CDI directory should be")
    text = glob_config(socket_dir) + (
        f"  - name: {FPGA}\n    glob: {{paths: ['{devices}/fpga*']}}\n"
        f"    allocate: {{cdi: {{kind: {FPGA}, specDir: {blocker}}}}}\n"
    )
    running = await start_host(text)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).registrations >= 1)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).capacity == 2)
    assert kubelet.resource(FPGA).allocatable == 0
    assert FPGA in running.host.not_ready()
    blocker.unlink()
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=20)
    await wait_until(lambda: not running.host.not_ready(), what="ready once written")


def test_readme_metrics_table_lists_every_metric_and_label_value() -> None:
    """The README's metrics table stays true: every kdp_ family the host exposes has a row
    with its labels, and every known result/reason value is named in it."""
    import re

    from kdp_host.metric_labels import (
        ALLOCATE_HOOK_RESULTS,
        ALLOCATION_RESULTS,
        ANSWER_NEEDS,
        CONFIG_RELOAD_RESULTS,
        DRIVER_ERROR_REASONS,
        DRIVER_SKIP_REASONS,
        HELD_MISSING_RESULTS,
        POD_RESOURCES_RESULTS,
        PRE_START_RESULTS,
        REGISTRATION_RESULTS,
        RELEASE_RESULTS,
    )

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows: dict[str, tuple[str, str]] = {}
    for line in readme.splitlines():
        match = re.match(r"\| `(kdp_[a-z_]+)` \| [a-z]+ \|([^|]*)\|([^|]*)\|$", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    metrics = Metrics(process_collectors=False, holders=True)  # the opt-in per-pod series
    metrics.add_resource(FPGA)
    metrics.add_pre_start(FPGA)
    metrics.add_allocate_hook(FPGA)
    metrics.add_release(FPGA)
    metrics.add_pod_resources()
    metrics.set_holders(FPGA, {("fpga0", "default", "web-0", "app")})
    metrics.state_persist_failing.labels("ownership.json").set(0)  # a host's, at its start
    metrics.held_missing_actions.labels(FPGA, "event", "sent").inc()  # (with heldMissing)
    metrics.answer_need_unmet.labels(FPGA, "mounts").set(0)  # (with allocate.mounts)
    metrics.cdi_unresolved.labels(FPGA).inc()  # (a checkpoint's CDI name resolved nowhere)
    for histogram in (
        metrics.allocate_seconds,
        metrics.preferred_seconds,
        metrics.scan_seconds,
        metrics.pre_start_seconds,
        metrics.release_seconds,
    ):
        histogram.labels(FPGA).observe(0.001)
    metrics.config_info.info({"sha256": "0" * 64})
    exposed: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name = name + "_info" if family.type == "info" else name
        labels = exposed.setdefault(name, set())
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
    assert sorted(exposed) == sorted(rows)
    for name, labels in exposed.items():
        documented = set(re.findall(r"`([a-z0-9_]+)`", rows[name][0]))
        assert documented == labels, name
    values = {
        "kdp_allocations_total": ALLOCATION_RESULTS,
        "kdp_registrations_total": REGISTRATION_RESULTS,
        "kdp_driver_errors_total": DRIVER_ERROR_REASONS,
        "kdp_driver_skipped_total": DRIVER_SKIP_REASONS,
        "kdp_config_reloads_total": CONFIG_RELOAD_RESULTS,
        "kdp_pre_start_calls_total": PRE_START_RESULTS,
        "kdp_allocate_hook_runs_total": ALLOCATE_HOOK_RESULTS,
        "kdp_release_runs_total": RELEASE_RESULTS,
        "kdp_pod_resources_polls_total": POD_RESOURCES_RESULTS,
        "kdp_held_missing_actions_total": HELD_MISSING_RESULTS,
        "kdp_answer_need_unmet": ANSWER_NEEDS,
    }
    for name, known in values.items():
        assert set(known) <= set(re.findall(r"`([a-z_]+)`", rows[name][1])), name


async def test_readyz_follows_registration_at_once_not_at_the_next_heartbeat(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    """Issue 17 item 14: readiness is event-driven. The step that marks a resource registered
    (or not) also updates what /readyz serves, before the loop runs anything else (a probe's
    answer on the loop refreshes it too)."""
    running = await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    health = running.host.health

    await wait_until(lambda: FPGA in running.host.resources, what="resource started")
    status = running.host.resources[FPGA].status

    async def on_every_iteration_until(ready: bool) -> None:
        """Polled on every loop iteration (on purpose, hence no Event): nothing else can
        slip in between the status change and the look at what /readyz serves."""
        async with asyncio.timeout(30):
            while status.ready is not ready:  # noqa: ASYNC110
                await asyncio.sleep(0)

    await on_every_iteration_until(True)
    assert health.not_ready == {}
    await kubelet.stop()
    await on_every_iteration_until(False)
    assert FPGA in health.not_ready


async def test_readyz_and_a_gauge_say_while_a_state_file_cannot_be_written(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    http: int,
    running_health: tuple[Metrics, HealthState],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hostile3 G11/G3: while a booking cannot be written (disk full, a lock that cannot be
    made), the host is not ready (`stateDir`, the file and the error's code) and
    `kdp_state_persist_failing{file}` is 1; both clear once the write lands. (A full disk
    refuses the Allocate: its record cannot be written to `handed-out.json` either.)"""
    from kdp_host import state_file

    from .test_state_file import FullDisk

    monkeypatch.setattr(state_file, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(state_file, "RETRY_MAX", 0.05)
    metrics, health = running_health
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    async with running_host(text, metrics, health) as host:
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
        await wait_until(lambda: health.attached, what="the loop answers probes")
        for name in ("ownership.json", "release-state.json", "handed-out.json"):  # from the start
            assert ("kdp_state_persist_failing", (("file", name),)) in samples(metrics)
        disk = FullDisk(monkeypatch)
        with pytest.raises(SimulatorAllocationError, match=r"handed-out\.json not written"):
            await kubelet.allocate(FPGA, 1, pod_uid="p1")
        await wait_until(lambda: disk.attempts >= 2, what="the booking's write tried again")
        status, body = await asyncio.to_thread(http_get, http, "/readyz")
        assert status == 503, body
        assert 'not ready: stateDir: "' in body
        assert "ownership.json not written (ENOSPC): retrying" in body
        assert "handed-out.json not written (ENOSPC): retrying" in body  # (why it was refused)
        await asyncio.to_thread(http_get, http, "/metrics")
        assert value(metrics, "kdp_state_persist_failing", file="ownership.json") == 1
        assert value(metrics, "kdp_state_persist_failing", file="release-state.json") == 0
        disk.full = False
        await wait_until(lambda: host.not_ready() == {}, what="the write landed")
        status, body = await asyncio.to_thread(http_get, http, "/readyz")
        assert (status, body.strip()) == (200, "ok")
        await asyncio.to_thread(http_get, http, "/metrics")
        assert value(metrics, "kdp_state_persist_failing", file="ownership.json") == 0
