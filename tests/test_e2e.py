"""End to end: glob resources served to the kubelet simulator, which follows the contract."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import grpclib.server
import pytest
from grpclib.client import Channel

from kdp_host import serving
from kdp_host.api.v1beta1 import DevicePluginStub, Empty, RegisterRequest, RegistrationBase
from kdp_host.backoff import Retry
from kdp_host.config import DriverConfig, GlobDriverConfig
from kdp_host.devices import Device
from kdp_host.drivers import Driver, DriverDeps, Notifier, make_driver
from kdp_host.simulator import KubeletSimulator, SimulatorAllocationError
from kdp_host.supervisor import RestartPolicy
from kdp_host.testing import ManualWatcher

from .cdi_spec import read_spec_file
from .conftest import glob_config, script, wait_until
from .test_offload import CountingOffload

FPGA = "vendor.example/fpga"
SERIAL = "vendor.example/serial"


def two_resources(socket_dir: Path, dev: Path) -> str:
    return glob_config(
        socket_dir,
        (FPGA, f"{dev}/fpga[0-9]*"),
        (SERIAL, f"{dev}/ttyA*"),
        extra='allocate: {env: {DEVS: "{ids}", N: "{count}", R: "{resource}"}}',
    )


async def test_two_resources_register_and_allocate(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    await start_host(two_resources(socket_dir, devices))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    options = kubelet.options(FPGA)
    # one ID per device, no NUMA node: no policy can choose better than the kubelet
    assert options is not None and not options.get_preferred_allocation_available
    assert not options.pre_start_required

    response = await kubelet.allocate(FPGA, 2, pod_uid="p1")
    assert response.envs == {"DEVS": "fpga0,fpga1", "N": "2", "R": FPGA}
    assert sorted((d.host_path, d.container_path, d.permissions) for d in response.devices) == [
        (f"{devices}/fpga0", f"{devices}/fpga0", "rw"),
        (f"{devices}/fpga1", f"{devices}/fpga1", "rw"),
    ]
    assert kubelet.preferred_allocation_calls == []
    with pytest.raises(SimulatorAllocationError, match="Requested: 1, Available: 0"):
        await kubelet.allocate(FPGA, 1, pod_uid="p2")
    await kubelet.release("p1")
    await kubelet.allocate(FPGA, 1, pod_uid="p3")


async def test_hot_plug_add_and_remove(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    await start_host(two_resources(socket_dir, devices))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    messages = kubelet.resource(FPGA).list_and_watch_messages

    (devices / "fpga2").touch()
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 3, timeout=5)
    assert "fpga2" in kubelet.resource(FPGA).healthy_ids

    (devices / "fpga0").unlink()
    await kubelet.wait_for(lambda: "fpga0" in kubelet.resource(FPGA).unhealthy_ids, timeout=5)
    assert kubelet.resource(FPGA).capacity == 3 and kubelet.resource(FPGA).allocatable == 2
    # the grace period (1s here) ends: the vanished device leaves the list
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).capacity == 2, timeout=10)
    (devices / "fpga0").touch()
    await kubelet.wait_for(lambda: "fpga0" in kubelet.resource(FPGA).healthy_ids, timeout=5)
    assert kubelet.resource(FPGA).list_and_watch_messages > messages
    assert kubelet.resource(SERIAL).registrations == 1
    assert kubelet.stale_disconnects == 0


async def test_twenty_kubelet_restarts_in_a_row(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    running = await start_host(two_resources(socket_dir, devices))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    for restart in range(1, 21):
        await kubelet.restart()
        assert kubelet.resource(FPGA).allocatable == 0  # restored from checkpoint, stopped
        await kubelet.wait_for(
            lambda r=restart: all(
                kubelet.resource(n).registrations >= r + 1
                and kubelet.resource(n).allocatable == (2 if n == FPGA else 1)
                and not kubelet.resource(n).endpoint_stopped
                for n in (FPGA, SERIAL)
            ),
            timeout=10,
            description=f"re-registration after restart {restart}",
        )
    assert kubelet.stale_disconnects == 0
    assert running.metrics.registry.get_sample_value("kdp_kubelet_restarts_total") == 20
    response = await kubelet.allocate(SERIAL, 1)
    assert [d.container_path for d in response.devices] == [f"{devices}/ttyA0"]


async def test_socket_deleted_is_served_again(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    running = await start_host(two_resources(socket_dir, devices))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    runtime = running.host.resources[FPGA]
    os.unlink(runtime.socket_path)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).registrations == 2, timeout=5)
    await wait_until(lambda: os.path.exists(runtime.socket_path), what="socket re-created")
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.allocate(FPGA, 1)
    assert kubelet.resource(SERIAL).registrations == 1
    assert kubelet.stale_disconnects == 0


async def test_a_socket_deletion_the_watcher_missed_is_found_by_the_hosts_safety_net(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    start_host,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No socket-dir event reaches the resources (a watcher that reports nothing): every
    resource's socket check runs in the host's one safety net, off the loop (through the
    host's offload), and a socket deleted meanwhile is served and registered again."""
    monkeypatch.setattr(serving, "SAFETY_CHECK_INTERVAL", 0.2)
    config = two_resources(socket_dir, devices).replace(
        "gracePeriod: 1s", "gracePeriod: 1s, rescanInterval: 1h"
    )
    offload = CountingOffload()
    running = await start_host(config, watcher=ManualWatcher(), offload=offload)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    before = offload.calls
    for name in (FPGA, SERIAL):
        os.unlink(running.host.resources[name].socket_path)
    for name in (FPGA, SERIAL):
        await kubelet.wait_for(lambda n=name: kubelet.resource(n).registrations == 2, timeout=10)
    assert offload.calls > before  # the checks that found it ran off the loop
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.allocate(FPGA, 1)


async def test_socket_dir_created_late_and_kubelet_started_late(
    short_dir: Path, devices: Path, start_host
) -> None:
    socket_dir = short_dir / "later" / "device-plugins"
    running = await start_host(two_resources(socket_dir, devices))
    await wait_until(lambda: running.host.resources, what="resources started")
    assert running.host.not_ready()
    sim = KubeletSimulator(socket_dir, dial_timeout=5.0)
    await sim.start()
    try:
        await sim.wait_for(lambda: sim.resource(FPGA).allocatable == 2, timeout=10)
        await sim.wait_for(lambda: sim.resource(SERIAL).allocatable == 1, timeout=10)
        await wait_until(lambda: not running.host.not_ready(), what="host ready")
    finally:
        await sim.stop()


async def test_empty_pattern_serves_zero_devices(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    await start_host(glob_config(socket_dir, ("vendor.example/none", f"{devices}/nothing*")))
    await kubelet.wait_for(lambda: kubelet.resource("vendor.example/none").registrations == 1)
    assert kubelet.resource("vendor.example/none").capacity == 0
    (devices / "nothing0").touch()
    await kubelet.wait_for(lambda: kubelet.resource("vendor.example/none").allocatable == 1)


async def test_allocate_unknown_id_is_invalid_argument(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    import grpclib
    from grpclib.client import Channel
    from grpclib.const import Status

    from kdp_host.api.v1beta1 import AllocateRequest, ContainerAllocateRequest, DevicePluginStub

    running = await start_host(two_resources(socket_dir, devices))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    channel = Channel(path=running.host.resources[FPGA].socket_path)
    try:
        stub = DevicePluginStub(channel)
        with pytest.raises(grpclib.GRPCError) as err:
            await stub.allocate(
                AllocateRequest(container_requests=[ContainerAllocateRequest(devices_ids=["nope"])])
            )
        assert err.value.status == Status.INVALID_ARGUMENT
        assert "unknown device ID(s) nope" in (err.value.message or "")
        (devices / "fpga1").unlink()
        await kubelet.wait_for(lambda: "fpga1" in kubelet.resource(FPGA).unhealthy_ids)
        with pytest.raises(grpclib.GRPCError, match="unhealthy device ID"):
            await stub.allocate(
                AllocateRequest(
                    container_requests=[ContainerAllocateRequest(devices_ids=["fpga1"])]
                )
            )
        two = await stub.allocate(
            AllocateRequest(
                container_requests=[
                    ContainerAllocateRequest(devices_ids=["fpga0"]),
                    ContainerAllocateRequest(devices_ids=["fpga0"]),
                ]
            )
        )
        assert len(two.container_responses) == 2
    finally:
        channel.close()


async def test_crashing_resource_restarts_while_others_serve(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    crashes = {"left": 2}

    class CrashingDriver:
        async def run(self, notifier: Notifier) -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("driver bug")

        async def scan(self) -> list[Device]:
            return []

    def crashing_twice(config: DriverConfig, deps: DriverDeps) -> Driver:
        serial = isinstance(config, GlobDriverConfig) and "ttyA" in config.paths[0]
        if serial and crashes["left"] > 0:
            crashes["left"] -= 1
            return CrashingDriver()
        return make_driver(config, deps)

    running = await start_host(
        two_resources(socket_dir, devices),
        drivers=crashing_twice,
        restart_policy=RestartPolicy(Retry(first=0.05, maximum=0.1)),
    )
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1, timeout=15)
    assert running.metrics.resource_restarts.labels(SERIAL).value == 2
    assert kubelet.resource(FPGA).registrations == 1


def _sigterm_script(config: Path) -> list[str]:
    return [sys.executable, "-m", "kdp_host", "run", "--config", str(config)]


async def test_sigterm_ends_streams_and_removes_sockets(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    config = short_dir / "config.yaml"
    config.write_text(two_resources(socket_dir, devices) + "metrics: {listen: '127.0.0.1:0'}\n")
    proc = await asyncio.create_subprocess_exec(
        *_sigterm_script(config), stderr=asyncio.subprocess.PIPE
    )
    try:
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=20)
        await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1, timeout=20)
        sockets = [p for p in os.listdir(socket_dir) if p.startswith("kdp-")]
        assert len(sockets) == 2
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        elapsed = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert elapsed < 2.0, f"shutdown took {elapsed:.2f}s"
    assert not [p for p in os.listdir(socket_dir) if p.startswith("kdp-")]
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 0, timeout=5)
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "event=host_stopped" in stderr
    assert "by=plugin" in stderr


async def test_stale_sockets_of_a_killed_instance_are_removed(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    import socket as socket_module

    stale = socket_dir / "kdp-vendor.example_fpga-dead0000.sock"
    live = socket_dir / "kdp-vendor.example_fpga-live0000.sock"
    with socket_module.socket(socket_module.AF_UNIX) as dead:
        dead.bind(str(stale))
    listener = socket_module.socket(socket_module.AF_UNIX)
    listener.bind(str(live))
    listener.listen()
    try:
        await start_host(two_resources(socket_dir, devices))
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
        assert not stale.exists()
        assert live.exists()
    finally:
        listener.close()


async def test_rolling_upgrade_with_surge_recovers_from_the_stale_stream_disconnect(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    """Two instances overlap (maxSurge). The new one registers, then the old one stops: its
    stream ends after the new registration, and the kubelet disconnects the *new* client
    (docs/kubelet-contract.md §9). The new instance sees the kubelet close its stream and
    registers again. That client's own stream end may come after the new registration and
    disconnect it in turn (the kubelet's runClient does so): however often, the new instance
    registers again until the kubelet keeps one client, its own. A disconnect costs one
    Register at most: of a client the kubelet had connected (its stream closed: registered
    again), of one it was still dialling (its Register refused: tried again), or none (v1.32's
    Disconnect closes no connection not made yet: that dial goes on and registers, the
    client no longer in the kubelet's map)."""
    config = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
    old = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    new = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).registrations == 2)
    new_socket = new.host.resources[FPGA].socket_path
    await kubelet.wait_for(lambda: kubelet.plugin_clients().get(FPGA) == Path(new_socket))
    await old.shutdown()
    await kubelet.wait_for(lambda: kubelet.stale_disconnects >= 1, timeout=30)
    await kubelet.wait_for(
        lambda: (
            kubelet.clients_running(FPGA) == 1
            and kubelet.resource(FPGA).allocatable == 2
            and kubelet.register_attempts[-1].error is None
        ),
        timeout=30,
        description="the new instance registered again after every disconnect",
    )
    attempts = kubelet.register_attempts
    assert {a.endpoint for a in attempts[1:]} == {Path(new_socket).name}
    assert len(attempts) <= 2 + kubelet.stale_disconnects
    assert kubelet.plugin_clients().get(FPGA, Path(new_socket)) == Path(new_socket)
    await kubelet.allocate(FPGA, 1)


async def test_rolling_upgrade_leaves_the_cdi_spec_file_to_the_new_instance(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    """The old instance of a rolling upgrade stops while the new one serves: the CDI spec
    file (one name per resource) must stay, or the new instance's devices are Healthy and
    /readyz 200 while the runtime cannot resolve a single CDI name."""
    spec_dir = short_dir / "cdi"
    config = glob_config(
        socket_dir,
        (FPGA, f"{devices}/fpga*"),
        extra=f"allocate: {{cdi: {{kind: vendor.example/fpga, specDir: {spec_dir}}}}}",
    )
    old = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    new = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).registrations == 2)
    spec = spec_dir / "kdp-host_vendor.example_fpga.json"
    await old.shutdown()
    assert spec.exists(), "the stopping instance removed the spec file the new one serves"
    read_spec_file(spec)
    await wait_until(lambda: new.host.not_ready() == {}, what="the new instance ready")
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    assert spec.exists()
    await new.shutdown()
    assert not spec.exists()


async def test_a_second_client_closing_its_stream_does_not_reregister(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, start_host
) -> None:
    from grpclib.client import Channel

    from kdp_host.api.v1beta1 import DevicePluginStub, Empty

    running = await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga*")))
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2)
    channel = Channel(path=running.host.resources[FPGA].socket_path)
    stream = DevicePluginStub(channel).list_and_watch(Empty())  # a debugging client
    assert len((await anext(stream)).devices) == 2
    await stream.aclose()
    channel.close()
    await wait_until(
        lambda: running.metrics.list_and_watch_streams.labels(FPGA).value == 1,
        what="the debugging stream closed",
    )
    (devices / "fpga9").touch()
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 3)
    assert kubelet.resource(FPGA).registrations == 1


async def test_shell_probe_resource_end_to_end(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    """A script lists the devices: changes reach the kubelet, a failing probe keeps the last
    list and then turns every device Unhealthy, and a good run recovers."""
    listing = short_dir / "dongles.txt"
    listing.write_text("d0 Healthy path=/dev/null:/dev/dongle0\nd1 Healthy\n")
    probe = script(short_dir, "probe.sh", f"[ -f {short_dir}/broken ] && exit 3\ncat {listing}\n")
    name = "vendor.example/dongle"
    await start_host(
        f"kubelet: {{socketDir: {socket_dir}}}\n"
        f"resources:\n  - name: {name}\n"
        f"    shell: {{command: [{probe}], interval: 100ms, timeout: 2s, failureThreshold: 2}}\n"
        "    allocate: {env: {DONGLES: '{ids}'}}\n"
    )
    await kubelet.wait_for(lambda: kubelet.resource(name).allocatable == 2)
    response = await kubelet.allocate(name, 1, pod_uid="p1")
    assert response.envs == {"DONGLES": "d0"}
    assert [(d.host_path, d.container_path) for d in response.devices] == [
        ("/dev/null", "/dev/dongle0")
    ]
    listing.write_text("d0 Healthy\nd1 Healthy\nd2 Unhealthy\n")
    await kubelet.wait_for(lambda: kubelet.resource(name).capacity == 3)
    assert kubelet.resource(name).unhealthy_ids == {"d2"}

    (short_dir / "broken").touch()
    await kubelet.wait_for(lambda: kubelet.resource(name).allocatable == 0, timeout=10)
    assert kubelet.resource(name).capacity == 3  # the last good list is kept
    (short_dir / "broken").unlink()
    await kubelet.wait_for(lambda: kubelet.resource(name).allocatable == 2, timeout=10)
    assert kubelet.resource(name).registrations == 1


class SlowToHangUpKubelet(RegistrationBase):
    """A kubelet on kubelet.sock that dials each registering plugin back, reads its
    ListAndWatch stream, and hangs up `delay` seconds after the stream ended: when an old
    stream's end reaches the real kubelet after a new registration, it drops the new
    client (docs/kubelet-contract.md §9). Records what happened, in order."""

    def __init__(self, socket_dir: Path, delay: float) -> None:
        self.socket_dir = socket_dir
        self.delay = delay
        self.events: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def register(self, message: RegisterRequest) -> Empty:
        self.events.append("register")
        channel = Channel(path=str(self.socket_dir / message.endpoint))
        stub = DevicePluginStub(channel)
        try:
            await stub.get_device_plugin_options(Empty())
        except BaseException:
            channel.close()
            raise
        task = asyncio.create_task(self._watch(stub, channel))
        self.tasks.add(task)
        return Empty()

    async def _watch(self, stub: DevicePluginStub, channel: Channel) -> None:
        try:
            with contextlib.suppress(Exception):
                async for _ in stub.list_and_watch(Empty()):
                    pass
            self.events.append("stream_ended")
            await asyncio.sleep(self.delay)
        finally:  # also when the test cancels it: the connection is this kubelet's to close
            channel.close()
        self.events.append("hung_up")


async def test_a_resource_registers_again_only_once_the_kubelet_hung_up(
    socket_dir: Path, devices: Path, start_host
) -> None:
    """Issue 19: Register now travels over a connection kept open, so it can reach the
    kubelet before the old stream's end did (a new connection used to take that long);
    the resource waits until the kubelet has hung up on the old server."""
    kubelet = SlowToHangUpKubelet(socket_dir, delay=0.3)
    server = grpclib.server.Server([kubelet])
    await server.start(path=str(socket_dir / "kubelet.sock"))
    try:
        running = await start_host(glob_config(socket_dir, (FPGA, f"{devices}/fpga[0-9]*")))
        await wait_until(lambda: kubelet.events == ["register"], what="registered")
        await wait_until(lambda: FPGA in running.host.resources, what="resource started")
        os.unlink(running.host.resources[FPGA].socket_path)
        await wait_until(lambda: kubelet.events.count("register") == 2, what="registered again")
        assert kubelet.events[:4] == ["register", "stream_ended", "hung_up", "register"]
    finally:
        for task in kubelet.tasks:
            task.cancel()
        await asyncio.gather(*kubelet.tasks, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_a_path_replaced_behind_an_unchanged_list_is_claimed_anew(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host
) -> None:
    """A probe lists a device at `n/p`, a plain file; another resource advertises `o/q`.
    `p` is replaced by a link to `q`: the probe's list does not change, but the host's
    watcher saw `p` change, so its claim is resolved again: it reaches `q`, which the other
    resource owns, and is held (its old claim, the file that was there, is not kept)."""
    (short_dir / "n").mkdir()
    (short_dir / "o").mkdir()
    p, q = short_dir / "n" / "p", short_dir / "o" / "q"
    p.touch()
    q.touch()
    listing = short_dir / "list.txt"
    listing.write_text(f"d0 Healthy path={p}:/dev/d0\n")
    probe = script(short_dir, "probe.sh", f"cat {listing}\n")
    await start_host(
        f"kubelet: {{socketDir: {socket_dir}}}\n"
        "resources:\n"
        f"  - name: {SERIAL}\n"
        f'    glob: {{paths: ["{short_dir}/o/q*"]}}\n'
        f"  - name: {FPGA}\n"
        f"    shell: {{command: [{probe}], interval: 100ms, timeout: 2s}}\n"
    )
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 1)
    await kubelet.wait_for(lambda: kubelet.resource(SERIAL).allocatable == 1)
    p.unlink()
    p.symlink_to(q)
    await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 0, timeout=10)
    assert kubelet.resource(SERIAL).allocatable == 1
