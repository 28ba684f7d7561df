"""Who holds each device: the PodResources poller, the simulator's PodResources server (checked
against the kubelet's own server and client), `/devices` and `kdp-host status`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from kdp_host.api.v1 import (
    ListPodResourcesRequest,
    ListPodResourcesResponse,
    PodResourcesListerBase,
)
from kdp_host.cli import main
from kdp_host.http import HttpServer
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.podresources import PodResourcesPoller
from kdp_host.probes import HealthState
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.podresources import RATE_LIMITED, TokenBucket
from kdp_host.status import DevicesAnswer, devices_document, print_table, status_address

from .conftest import wait_until
from .kubelet_harness import harness_binary

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

FPGA = "vendor.example/fpga"


@contextlib.contextmanager
def _poller(socket: Path, interval: float = 1.0) -> Iterator[PodResourcesPoller]:
    """A poller whose connection is closed after the test (its polls are the test's own)."""
    poller = PodResourcesPoller(
        str(socket), interval, Metrics(process_collectors=False), get_logger()
    )
    try:
        yield poller
    finally:
        poller.close()


def _count(poller: PodResourcesPoller, result: str) -> float:
    value = poller.metrics.registry.get_sample_value(
        "kdp_pod_resources_polls_total", {"result": result}
    )
    return 0.0 if value is None else value


def yaml(socket_dir: Path, devices: Path, pod_resources: Path, interval: str = "1s") -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: {pod_resources}/kubelet.sock,"
        f" podResourcesInterval: {interval}}}\n"
        f"stateDir: {pod_resources.parent}/state\n"
        "resources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
    )


def test_the_rate_limit_is_one_bucket_of_100_per_second_with_a_burst_of_10() -> None:
    now = [0.0]
    bucket = TokenBucket(clock=lambda: now[0])
    assert [bucket.allow() for _ in range(50)].count(True) == 10
    now[0] += 0.05  # 5 tokens back
    assert [bucket.allow() for _ in range(10)].count(True) == 5
    now[0] += 10.0  # never more than the burst
    assert [bucket.allow() for _ in range(20)].count(True) == 10


async def test_the_simulator_lists_holders_and_refuses_over_its_rate_limit(
    socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0, pod_resources_dir=short_dir / "pr")
    await sim.start()
    try:
        running = await start_host(yaml(socket_dir, devices, short_dir / "pr", interval="1h"))
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        await sim.allocate(FPGA, 1, pod_uid="p1", container="main")
        with _poller(short_dir / "pr" / "kubelet.sock") as poller:
            assert await poller.poll() == 1.0
            assert poller.holdings is not None
            [holder] = poller.holdings.of(FPGA)["fpga0"]
            assert (holder.namespace, holder.pod, holder.container) == ("default", "p1", "main")
            assert poller.allocatable == {FPGA: frozenset({"fpga0", "fpga1"})}
            since = holder.since
            await poller.poll()
            assert poller.holdings.of(FPGA)["fpga0"][0].since == since  # first seen, kept
            # Another client spent the burst; with the clock held still nothing refills.
            pod_resources = sim.pod_resources
            assert pod_resources is not None
            frozen = [pod_resources.limiter.clock()]
            pod_resources.limiter.clock = lambda: frozen[0]
            pod_resources.limiter.exhaust()
            delays = [await poller.poll() for _ in range(4)]
            assert _count(poller, "rate_limited") == 4
            assert poller.status.state == "rate_limited"
            assert poller.status.problem is not None and RATE_LIMITED in poller.status.problem
            assert delays == [2.0, 4.0, 8.0, 16.0]  # doubling from twice the interval
            assert poller.holdings.of(FPGA)["fpga0"][0].pod == "p1"  # the last answer stays
            frozen[0] += 0.05  # five tokens back
            assert await poller.poll() == 1.0 and poller.status.state == "ok"
        del running
    finally:
        await sim.stop()


async def test_an_absent_socket_is_logged_once_counted_and_harmless(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _poller(short_dir / "nothing" / "kubelet.sock", interval=2.0) as poller:
        for _ in range(3):
            assert await poller.poll() == 2.0
        assert poller.status.state == "absent" and poller.holdings is None
        assert _count(poller, "absent") == 3
        assert poller.metrics.registry.get_sample_value("kdp_pod_resources_up") == 0
        lines = [r for r in caplog.records if r.getMessage() == "pod_resources_unavailable"]
        assert len(lines) == 1


async def test_with_polling_off_the_start_says_what_bookings_cannot_do(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    short_dir: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_host(yaml(socket_dir, devices, short_dir / "pr", interval="0s"))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
    assert running.host.pod_resources is None
    [line] = [r for r in caplog.records if r.getMessage() == "pod_resources_off"]
    consequence = line.__dict__["kdp_fields"]["consequence"]
    assert "is not booked" in consequence and "kdp-host unbook" in consequence
    assert line.levelno == logging.WARNING


class _OldKubelet(PodResourcesListerBase):
    async def list(self, message: ListPodResourcesRequest) -> ListPodResourcesResponse:
        raise GRPCError(Status.UNIMPLEMENTED, "unknown service v1.PodResourcesLister")


async def test_a_kubelet_without_the_v1_api_is_unsupported_and_asked_rarely(
    short_dir: Path,
) -> None:
    server = Server([_OldKubelet()])
    await server.start(path=str(short_dir / "old.sock"))
    try:
        with _poller(short_dir / "old.sock") as poller:
            delay = await poller.poll()
            assert poller.status.state == "unsupported" and delay >= 300
            assert "1.20" in (poller.status.problem or "")
            assert _count(poller, "unsupported") == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_wire_compatible_with_the_kubelets_own_server_and_client(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host, socket_dir: Path
) -> None:
    """Our client against the kubelet's PodResources server, and the kubelet's client
    (`kubelet-harness podresources-list`) against the simulator's server: same answers."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    running = await start_host(yaml(kubelet.socket_dir, devices, short_dir / "pr"))
    await kubelet.await_for(
        lambda k: (k.resource(FPGA) or {}).get("healthy") == 2, what="registered"
    )
    assert (await kubelet.acall(kubelet.allocate, "web-1", {FPGA: 2}))["error"] == ""
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and len(poller.holdings.of(FPGA)) == 2, what="seen")
    holders = poller.holdings.of(FPGA)
    assert {h.pod for hs in holders.values() for h in hs} == {"web-1"}
    document = devices_document(running.host)
    [resource] = document["resources"]
    assert [d["holders"][0]["pod"] for d in resource["devices"]] == ["web-1", "web-1"]
    assert document["podResources"]["state"] == "ok"
    await kubelet.acall(kubelet.release, "web-1")
    await wait_until(lambda: not poller.holdings.of(FPGA), what="gone after the pod ended")

    binary = harness_binary()
    assert binary is not None
    other = short_dir / "sim"
    other.mkdir()
    sim = KubeletSimulator(other, dial_timeout=5.0, pod_resources_dir=short_dir / "spr")
    await sim.start()
    try:
        sim2 = await start_host(yaml(other, devices, short_dir / "spr"))
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        await sim.allocate(FPGA, 1, pod_uid="db-0", container="db")
        listed = await asyncio.to_thread(
            subprocess.run,
            [str(binary), "podresources-list", "--socket", str(short_dir / "spr/kubelet.sock")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        [pod] = json.loads(listed.stdout)["pod_resources"]
        assert (pod["name"], pod["namespace"]) == ("db-0", "default")
        [container] = pod["containers"]
        assert container["name"] == "db"
        assert [(d["resource_name"], d["device_ids"]) for d in container["devices"]] == [
            (FPGA, ["fpga0"])
        ]
        allocatable = await asyncio.to_thread(
            subprocess.run,
            [str(binary), "podresources-allocatable", "--socket",
             str(short_dir / "spr/kubelet.sock")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert allocatable.returncode == 0, allocatable.stderr
        ids = sorted(i for d in json.loads(allocatable.stdout)["devices"] for i in d["device_ids"])
        assert ids == ["fpga0", "fpga1"]
        del sim2
    finally:
        await sim.stop()


async def test_devices_endpoint_and_status_command(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim_dir = short_dir / "pr"
    sim = KubeletSimulator(short_dir / "dp2", dial_timeout=5.0, pod_resources_dir=sim_dir)
    await sim.start()
    try:
        running = await start_host(yaml(short_dir / "dp2", devices, sim_dir))
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        await sim.allocate(FPGA, 1, pod_uid="job\nx", container="c0")
        poller = running.host.pod_resources
        await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="seen")
        http = HttpServer(
            "127.0.0.1", 0, running.metrics, HealthState(),
            devices=DevicesAnswer(running.host),
        )  # fmt: skip
        http.start()
        try:
            code = await asyncio.to_thread(
                main, ["status", "--address", http.address, "--format", "json"]
            )
            assert code == 0
            document = json.loads(capsys.readouterr().out)
            fpga0 = document["resources"][0]["devices"][0]
            assert fpga0["id"] == "fpga0" and fpga0["health"] == "Healthy"
            assert fpga0["holders"][0]["pod"] == "job\nx"
            assert fpga0["kubeletAllocatable"] is True
            assert await asyncio.to_thread(main, ["status", "--address", http.address]) == 0
            table = capsys.readouterr().out.splitlines()
            assert table[0].startswith("podresources: ok, last answer ")
            assert table[1].split() == ["RESOURCE", "DEVICE", "HEALTH", "HELD", "BY", "SINCE",
                                        "RELEASE"]  # fmt: skip
            assert '"job\\nx"' in table[2]  # quoted: a newline cannot break the table
            assert table[3].split()[:4] == [FPGA, "fpga1", "Healthy", "-"]
        finally:
            http.stop()
        assert await asyncio.to_thread(main, ["status", "--address", http.address]) == 1
        assert "cannot read" in capsys.readouterr().err
    finally:
        await sim.stop()


def one_resource_host(resource: str, device_ids: list[str]) -> tuple[Any, Any]:
    """A host serving `device_ids` of `resource` as far as `/devices` looks (no PodResources,
    nothing held), and that resource's runtime."""
    from types import SimpleNamespace

    from kdp_host.device_table import DeviceTable
    from kdp_host.devices import Device
    from kdp_host.held_replaced import Replaced
    from kdp_host.ownership_elsewhere import Elsewhere

    table = DeviceTable()
    table.publish([Device(device_id) for device_id in device_ids])
    replaced = Replaced()
    runtime = SimpleNamespace(
        config=SimpleNamespace(replicas=1),
        table=table,
        release=None,
        elsewhere=Elsewhere(),
        replaced=replaced,
        held_replaced=lambda devices: replaced.of(devices, lambda _device: None),
    )
    none_held: dict[str, Any] = {}  # (replaced whole when it changes: one object till then)
    ownership = SimpleNamespace(held_now=lambda resource: none_held)
    host = SimpleNamespace(pod_resources=None, resources={resource: runtime}, ownership=ownership)
    return host, runtime


def test_the_devices_answer_is_built_once_per_change_and_shared_by_scrapers() -> None:
    """hostile4 H9: every request built and encoded `/devices` again (0.5 s of GIL for
    100,000 devices: two scrapers stalled every Allocate and the loop). Now one build per
    change of what it shows, shared by the scrapers of that change, however many."""
    import threading
    from types import SimpleNamespace

    from kdp_host.devices import Device

    host, runtime = one_resource_host(FPGA, ["a", "b"])
    table = runtime.table
    answer = DevicesAnswer(host)
    start = threading.Barrier(8)
    answers: list[bytes] = []

    def scrape() -> None:
        start.wait()
        answers.append(answer())

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answer() == answers[0] and set(answers) == {answers[0]}
    assert answer.builds == 1
    assert json.loads(answers[0]) == devices_document(host)
    table.publish([Device("a"), Device("b"), Device("c")])  # a new snapshot: built again
    assert [d["id"] for d in json.loads(answer())["resources"][0]["devices"]] == ["a", "b", "c"]
    assert answer() is answer() and answer.builds == 2
    views = {"a": {"state": "running"}}
    tracker = SimpleNamespace(
        changes=0,
        view=lambda d: views.get(d, {"state": "clean"}),
        outstanding=set,
        device_ids=dict,
    )
    runtime.release = tracker
    assert json.loads(answer())["resources"][0]["devices"][0]["release"] == {"state": "running"}
    views["a"] = {"state": "clean"}
    tracker.changes += 1  # what a release tracker does on each change of its view
    assert json.loads(answer())["resources"][0]["devices"][0]["release"] == {"state": "clean"}
    assert answer.builds == 4
    host.resources = {}  # a resource removed by a reload
    assert json.loads(answer())["resources"] == [] and answer.builds == 5


def test_status_address_and_an_empty_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert status_address("0.0.0.0:9410") == "127.0.0.1:9410"
    assert status_address("[::]:9410") == "[::1]:9410"
    assert status_address("10.0.0.1:80") == "10.0.0.1:80"
    print_table({"podResources": {"state": "off"}, "resources": []})
    assert capsys.readouterr().out.splitlines()[0] == "podresources: off"


def test_status_names_a_holder_podresources_does_not_list(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """hostile10 L3: a holder the kubelet's List leaves out (a regular init container's
    device) showed as `""/""/""` in the table."""
    holder = {"namespace": "", "pod": "", "container": "", "since": "t0", "listed": False}
    device = {"id": "n0", "health": "Healthy", "holders": [holder]}
    print_table(
        {"podResources": {"state": "ok"}, "resources": [{"name": "r", "devices": [device]}]}
    )
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("r ")]
    assert row.split()[:5] == ["r", "n0", "Healthy", "(not-listed)", "t0"]


def test_status_quotes_every_field_of_the_podresources_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """hostile4 H3: the first line went to the terminal raw (an escape sequence in `state`)."""
    print_table(
        {
            "podResources": {"state": "ok\x1b[31mRED", "lastAnswer": "now\r\nFAKE"},
            "resources": [],
        }
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first == 'podresources: "ok\\x1b[31mRED", last answer "now\\r\\nFAKE"'
    assert "\x1b" not in first


async def test_holder_series_only_when_asked_and_gone_with_their_pod(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Any,
) -> None:
    sim = pod_resources_kubelet
    metrics = Metrics(process_collectors=False, holders=True)
    await start_host(yaml(socket_dir, devices, short_dir / "pr"), metrics=metrics)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    await sim.allocate(FPGA, 1, pod_uid="web-0", container="app")
    labels = {"resource": FPGA, "device": "fpga0", "namespace": "default", "pod": "web-0",
              "container": "app"}  # fmt: skip
    value = lambda: metrics.registry.get_sample_value("kdp_device_holder_info", labels)  # noqa: E731
    await wait_until(lambda: value() == 1.0, what="the holder series")
    await sim.release("web-0")
    await wait_until(lambda: value() is None, what="the series gone with the pod")
    off = Metrics(process_collectors=False)
    off.set_holders(FPGA, {("fpga0", "default", "web-0", "app")})
    assert off.registry.get_sample_value("kdp_device_holder_info", labels) is None


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"resources": [1, 2]}', "is not a devices document"),
        # Deeper than the JSON decoder's recursion: one clear line, no traceback (hostile4 H3).
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_status_refuses_an_answer_that_is_not_a_devices_document(
    capsys: pytest.CaptureFixture[str], body: bytes, said: str
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Odd(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Odd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert main(["status", "--address", f"127.0.0.1:{server.server_port}"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("with_config", [True, False])
def test_status_of_a_host_without_devices_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_config: bool
) -> None:
    """hostile13 M12: a host with `metrics.devices: false` answers /devices 404; `status`
    said only "Not Found". With the config in hand it says /devices is off there."""
    http = HttpServer("127.0.0.1", 0, Metrics(), HealthState(), devices=None)
    http.start()
    try:
        config = tmp_path / "kdp.yaml"
        config.write_text(
            f"kubelet: {{socketDir: {tmp_path}/dp}}\nstateDir: {tmp_path}/state\n"
            f"metrics: {{listen: '{http.address}', devices: false}}\n"
            f"resources:\n  - name: vendor.example/fpga\n    glob: {{paths: ['{tmp_path}/n*']}}\n"
        )
        args = ["--config", str(config)] if with_config else ["--address", http.address]
        assert main(["status", *args]) == 1
    finally:
        http.stop()
    err = capsys.readouterr().err
    said = "is off on this host (its config has metrics.devices: false)"
    assert (said if with_config else "serves no /devices (metrics.devices: false?)") in err, err
