"""A device list longer than one message to the kubelet (issue 17, hostile5 H4), and a kubelet
that keeps ending the stream whatever the cause: through the simulator, which takes at most
the kubelet's 4 MiB per message (docs/kubelet-contract.md §4).

Before: the whole list went out in one message, the kubelet's Recv failed, it dropped the
endpoint, and the resource registered again at once, ~70 times a second, while /readyz and
the metrics said it was fine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.backoff import Retry
from kdp_host.check import too_large_warning
from kdp_host.cli import main
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.protocol.lists import ListAndWatchEncoder, Overflow, entries_overflow
from kdp_host.rules import KUBELET_MAX_RECEIVE_MESSAGE, LIST_AND_WATCH_MAX_BYTES
from kdp_host.services import RegistryWait
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.listwire import decode_device_list
from kdp_host.stream_losses import LOSSES_REASON, NOT_READY_AFTER

from .conftest import wait_until

BIG = "vendor.example/big"
NAME_LENGTH = 100
DEVICES = 40
REPLICAS = 1000


def device_name(index: int) -> str:
    return f"d{index:02d}".ljust(NAME_LENGTH, "x")


def big_config(socket_dir: Path, devices: Path, replicas: int = REPLICAS) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}}}\n"
        f"resources:\n  - name: {BIG}\n"
        f'    glob: {{paths: ["{devices}/d*"], gracePeriod: 0s}}\n'
        f"    replicas: {replicas}\n"
    )


def sample(running: Any, name: str, **labels: str) -> float | None:
    value: float | None = running.metrics.registry.get_sample_value(
        name, {"resource": BIG, **labels}
    )
    return value


def registered_ok(sim: KubeletSimulator) -> int:
    return sum(1 for a in sim.register_attempts if a.resource == BIG and a.error is None)


def test_the_limit_is_under_the_kubelets() -> None:
    assert KUBELET_MAX_RECEIVE_MESSAGE == 4 * 1024 * 1024  # grpc-go's default
    assert 0 < LIST_AND_WATCH_MAX_BYTES < KUBELET_MAX_RECEIVE_MESSAGE


async def test_a_long_list_sends_its_longest_prefix_that_fits_once_per_change() -> None:
    """The message is a valid list of the first entries, as large as fits; the encoder says
    so once per change, and a list that fits again says so too."""
    told: list[Overflow | None] = []
    encoder = ListAndWatchEncoder(on_overflow=told.append)
    table = DeviceTable(replicas=REPLICAS)
    table.publish([Device(device_name(i)) for i in range(DEVICES)])
    data = await encoder.encode(table.snapshot)
    assert len(data) <= LIST_AND_WATCH_MAX_BYTES
    ids = [device.id for device in decode_device_list(data)]
    advertised = [entry.id for entry in table.snapshot.advertised]
    assert ids == advertised[: len(ids)]
    assert 0 < len(ids) < len(advertised)
    [overflow] = told
    assert overflow is not None and overflow.advertised == len(ids)
    assert overflow.entries == DEVICES * REPLICAS and overflow.size > KUBELET_MAX_RECEIVE_MESSAGE
    assert entries_overflow(table.snapshot.advertised) == overflow  # `check`'s rule is the same
    # the next entry would not have fit
    one_more = ListAndWatchEncoder()
    longer = await one_more.encode(table.snapshot)
    assert longer == data  # the same list, the same prefix
    assert len(data) + (len(data) // len(ids)) > LIST_AND_WATCH_MAX_BYTES

    table.set_check_result(device_name(DEVICES - 1), False)  # a change past the cut
    assert await encoder.encode(table.snapshot) == data
    assert len(told) == 1  # nothing new to say

    table.publish([Device(device_name(i)) for i in range(3)])
    small = await encoder.encode(table.snapshot)
    assert len(decode_device_list(small)) == 3 * REPLICAS
    assert told == [overflow, None]


async def test_ids_pods_hold_stay_advertised_when_the_list_grows_ahead_of_them() -> None:
    """Devices that sort first push the last entries of the prefix out, but not the IDs the
    kubelet booked: those stay in the message wherever they are in the list."""
    table = DeviceTable(replicas=REPLICAS)
    table.publish([Device(device_name(i)) for i in range(DEVICES)])
    first = ListAndWatchEncoder()
    advertised = [d.id for d in decode_device_list(await first.encode(table.snapshot))]
    booked = {advertised[-1], advertised[-2]}  # the last two that fit, held by pods
    encoder = ListAndWatchEncoder(held=booked.__contains__)
    assert await encoder.encode(table.snapshot) == await first.encode(table.snapshot)

    ahead = [Device("a" + device_name(i)[1:]) for i in range(3)]  # sort before the rest
    table.publish([*ahead, *(Device(device_name(i)) for i in range(DEVICES))])
    data = await encoder.encode(table.snapshot)
    assert len(data) <= LIST_AND_WATCH_MAX_BYTES
    ids = [d.id for d in decode_device_list(data)]
    sent = set(ids)
    assert booked <= sent
    order = [entry.id for entry in table.snapshot.advertised]
    assert ids == [i for i in order if i in sent]  # in the list's order
    unbooked = [i for i in ids if i not in booked]
    assert unbooked == order[: len(unbooked)]  # the others: a prefix
    # without the bookings the same list cuts them off
    plain = [d.id for d in decode_device_list(await ListAndWatchEncoder().encode(table.snapshot))]
    assert not booked <= set(plain) and len(plain) == len(ids)


def test_check_warns_of_a_list_a_run_would_cut(
    short_dir: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kdp-host check` scans, counts replicas and warns by the rule a run follows."""
    devices = short_dir / "dev"
    devices.mkdir()
    for i in range(DEVICES):
        (devices / device_name(i)).touch()
    config = short_dir / "config.yaml"
    config.write_text(big_config(socket_dir, devices))
    assert main(["check", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 + DEVICES  # physical devices, one line each
    [warning] = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    table = DeviceTable(replicas=REPLICAS)
    table.publish([Device(device_name(i)) for i in range(DEVICES)])
    overflow = entries_overflow(table.snapshot.advertised)
    assert overflow is not None and warning == too_large_warning(BIG, table)
    assert f"only the first {overflow.advertised} of its {DEVICES * REPLICAS} entries" in warning

    config.write_text(big_config(socket_dir, devices, replicas=10))
    assert main(["check", "--config", str(config)]) == 0
    assert "warning:" not in capsys.readouterr().err


async def test_a_list_over_the_kubelets_limit_is_cut_and_served_without_spinning(
    socket_dir: Path,
    short_dir: Path,
    start_host: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices = short_dir / "dev"
    devices.mkdir()
    for i in range(DEVICES):
        (devices / device_name(i)).touch()
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0)
    await sim.start()
    try:
        with caplog.at_level(logging.INFO, logger="kdp_host"):
            running = await start_host(big_config(socket_dir, devices))
            await sim.wait_for(lambda: sim.allocatable(BIG) > 0, timeout=60)
            advertised = sim.allocatable(BIG)
            assert 0 < advertised < DEVICES * REPLICAS
            left_out = sample(running, "kdp_list_and_watch_left_out")
            assert left_out == DEVICES * REPLICAS - advertised
            await wait_until(lambda: BIG in running.host.not_ready(), what="not ready")
            reason = running.host.not_ready()[BIG]
            assert f"{advertised} of {DEVICES * REPLICAS} advertised" in reason

            # devices within the bound are allocatable
            response = await sim.allocate(BIG, 2, pod_uid="p1", container="c")
            assert response is not None and len(response.devices) >= 1

            # a window of events: a hot-plug past the cut and one before it are sent
            updates = len(sim.list_and_watch_updates)
            (devices / device_name(DEVICES)).touch()
            (devices / "d".ljust(NAME_LENGTH, "a")).touch()  # sorts first
            await sim.wait_for(lambda: len(sim.list_and_watch_updates) > updates, timeout=30)
            await sim.wait_for(lambda: sim.allocatable(BIG) <= advertised, timeout=30)
            assert registered_ok(sim) == 1  # registered once: no spin
            assert sample(running, "kdp_registrations_total", result="ok") == 1
            assert sample(running, "kdp_list_and_watch_streams_lost_total") == 0
            assert sim.capacity(BIG) == sim.allocatable(BIG)  # no stream ended

            # the list shrinks under the limit: all of it is served, ready again
            for i in range(4, DEVICES + 1):
                (devices / device_name(i)).unlink()
            await sim.wait_for(lambda: sim.allocatable(BIG) == 5 * REPLICAS, timeout=30)
            await wait_until(lambda: BIG not in running.host.not_ready(), what="ready again")
            assert sample(running, "kdp_list_and_watch_left_out") == 0
            assert registered_ok(sim) == 1
        too_large = [r for r in caplog.records if r.getMessage() == "device_list_too_large"]
        assert too_large and all(r.levelno == logging.ERROR for r in too_large)
        assert [r for r in caplog.records if r.getMessage() == "device_list_fits"]
    finally:
        await sim.stop()


async def test_a_kubelet_that_keeps_ending_the_stream_is_backed_off_and_not_ready(
    socket_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
) -> None:
    """Any cause: here a kubelet whose receive limit is below even a short list. The first
    loss registers again at once, the next ones wait (a long wait here: the test ends while
    it runs, so no registration may come within it whatever the machine's speed); a kubelet
    restart is registered with at once, the wait notwithstanding."""
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0)
    sim.max_receive_message = 10  # every list is too large for it
    await sim.start()
    wait = Retry(first=3600.0, maximum=3600.0, at_once=True)
    try:
        running = await start_host(
            f"kubelet: {{socketDir: {socket_dir}}}\n"
            f"resources:\n  - name: {BIG}\n"
            f'    glob: {{paths: ["{devices}/fpga*"], gracePeriod: 0s}}\n',
            registry_wait=RegistryWait(lost=wait),
        )
        await wait_until(
            lambda: sample(running, "kdp_list_and_watch_streams_lost_total") == 2,
            what="two streams lost",
        )
        await wait_until(lambda: BIG in running.host.not_ready(), what="not ready")
        assert LOSSES_REASON in running.host.not_ready()[BIG]
        assert registered_ok(sim) == 2  # the first loss at once, then the wait
        assert sample(running, "kdp_registered") == 0

        # a window of events during the wait: devices come and go, the kubelet is asked
        (devices / "fpga7").touch()
        (devices / "fpga0").unlink()
        table = running.host.resources[BIG].table
        await wait_until(
            lambda: [d.id for d in table.snapshot.devices] == ["fpga1", "fpga7"],
            what="the new list",
        )
        assert registered_ok(sim) == 2
        assert sample(running, "kdp_registrations_total", result="ok") == 2

        # a kubelet restart: registered at once (it takes the list now), and a registration
        # with a restarted kubelet ends the run of losses
        sim.max_receive_message = 4 * 1024 * 1024
        await sim.restart()
        await sim.wait_for(lambda: sim.allocatable(BIG) == 2, timeout=30)
        assert registered_ok(sim) == 3
        await wait_until(lambda: BIG not in running.host.not_ready(), what="ready")

        # kubelet restarts end streams too, but are no losses of ours: never waited for,
        # never "keeps ending the stream"
        for _ in range(3):
            await sim.restart()
            await sim.wait_for(lambda: sim.allocatable(BIG) == 2, timeout=30)
            await wait_until(lambda: BIG not in running.host.not_ready(), what="ready")
        assert registered_ok(sim) == 6
    finally:
        await sim.stop()


def test_the_default_wait_backs_off() -> None:
    wait = RegistryWait().lost
    assert wait.at_once and 0 < wait.first < wait.maximum <= wait.stable
    assert NOT_READY_AFTER >= 2


async def test_the_real_kubelet_takes_the_cut_list_and_allocates_from_it(
    real_kubelet_factory: Callable[..., Any], short_dir: Path, start_host: Callable[..., Any]
) -> None:
    """The kubelet's own device manager (grpc-go's 4 MiB receive limit): the cut list is
    received, its devices are allocatable, the stream stays (registered once, never
    disconnected), and /readyz names the resource."""
    kubelet = real_kubelet_factory()
    devices = short_dir / "dev"
    devices.mkdir()
    for i in range(DEVICES):
        (devices / device_name(i)).touch()
    running = await start_host(big_config(kubelet.socket_dir, devices))

    def served(k: Any) -> bool:
        seen = k.resource(BIG)
        return seen is not None and seen["allocatable"] > 0

    await kubelet.await_for(served, timeout=60, what="the cut list received")
    seen = await kubelet.acall(kubelet.resource, BIG)
    advertised = seen["allocatable"]
    assert 0 < advertised < DEVICES * REPLICAS
    assert sample(running, "kdp_list_and_watch_left_out") == DEVICES * REPLICAS - advertised
    allocated = await kubelet.acall(kubelet.allocate, "p1", {BIG: 2})
    assert allocated["error"] == "" and len(allocated["device_ids"][BIG]) == 2
    assert BIG in running.host.not_ready()
    # a window of events: a hot-plug's list received (the stream still up)
    since = await kubelet.acall(kubelet.last_seq)
    (devices / device_name(DEVICES)).touch()
    await kubelet.acall(
        kubelet.wait_events,
        lambda events: any(e["kind"] == "list_and_watch" and e["resource"] == BIG for e in events),
        since,
        30.0,
        "the hot-plug's list",
    )
    events = await kubelet.acall(kubelet.events)
    mine = [e for e in events if e["resource"] == BIG]
    assert [e["kind"] for e in mine].count("registered") == 1
    assert not [e for e in mine if e["kind"] == "disconnected"]
    assert sample(running, "kdp_list_and_watch_streams_lost_total") == 0
