"""`kdp-host demo`: kdp-host against the built-in kubelet simulator, on fake devices.

The host runs as a real `kdp-host run` subprocess; this process plays the kubelet and
prints what the kubelet sees as it changes, performs one allocation, hot-plugs a fake
device, and waits for Ctrl-C (or `--duration`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from importlib import resources
from pathlib import Path
from typing import Any

from .simulator import KubeletSimulator, SimulatorAllocationError

DEMO_PREFIX = "/tmp/kdp-demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_demo_dir(root: Path, port: int) -> Path:
    """Fake devices and the demo config under `root`; returns the config path."""
    (root / "dev").mkdir()
    (root / "dongles").mkdir()
    for name in ("fpga0", "fpga1"):
        (root / "dev" / name).touch()
    for name in ("dongle-a", "dongle-b"):
        (root / "dongles" / name).touch()
    text = resources.files("kdp_host").joinpath("demo.yaml").read_text()
    text = text.replace(DEMO_PREFIX, str(root)).replace("127.0.0.1:9410", f"127.0.0.1:{port}")
    config = root / "demo.yaml"
    config.write_text(text)
    return config


def _say(text: str = "") -> None:
    print(text, flush=True)


def _format_response(response: object) -> list[str]:
    lines = []
    for key, value in sorted(getattr(response, "envs", {}).items()):
        lines.append(f"    env        {key}={value}")
    for spec in getattr(response, "devices", []):
        lines.append(
            f"    device     {spec.host_path} -> {spec.container_path} ({spec.permissions})"
        )
    for mount in getattr(response, "mounts", []):
        lines.append(f"    mount      {mount.host_path} -> {mount.container_path}")
    for key, value in sorted(getattr(response, "annotations", {}).items()):
        lines.append(f"    annotation {key}={value}")
    for cdi in getattr(response, "cdi_devices", []):
        lines.append(f"    cdi        {cdi.name}")
    return lines


class KubeletView:
    """Prints what the kubelet sees, one line per change. The steps call `flush()` before
    they print, so a change always shows before the text that talks about it; `follow()`
    prints changes that happen on their own (a device you touch in another terminal)."""

    def __init__(self, sim: KubeletSimulator) -> None:
        self._sim = sim
        self._last: dict[str, str] = {}

    def flush(self) -> None:
        current = self._sim.describe()
        for name, line in current.items():
            if self._last.get(name) != line:
                _say("kubelet sees: " + line)
        self._last = current

    async def follow(self) -> None:
        while True:
            seen = self._sim.version
            self.flush()
            await self._sim.wait_changed(seen)


async def _show_holders(port: int, pod: str) -> None:
    """Print `kdp-host status` once it shows `pod` holding a device (PodResources is asked
    every second in the demo)."""
    status = (sys.executable, "-m", "kdp_host", "status", "--address", f"127.0.0.1:{port}")
    deadline = time.monotonic() + 15
    while True:
        shown = await asyncio.create_subprocess_exec(
            *status, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = (await shown.communicate())[0].decode(errors="replace")
        if f"/{pod}/" in output or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for line in output.splitlines():
        _say("    " + line)


async def demo_main(root: Path, duration: float | None, loop: str) -> int:
    port = _free_port()
    config = prepare_demo_dir(root, port)
    socket_dir = root / "device-plugins"
    _say(f"kdp-host demo: fake devices and a simulated kubelet under {root}")
    _say(f"config: {config}")
    sim = KubeletSimulator(socket_dir, pod_resources_dir=root / "pod-resources")
    await sim.start()
    host = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config),
        "--log-level", "warning", "--loop", loop,
    )  # fmt: skip
    view = KubeletView(sim)
    follower: asyncio.Task[None] | None = None
    fpga, dongle = "demo.kdp-host.io/fpga", "demo.kdp-host.io/dongle"
    try:
        _say("\nkdp-host starts, registers both resources and sends their device lists ...")
        await sim.wait_for(
            lambda: sim.resource(fpga).allocatable == 2 and sim.resource(dongle).allocatable == 4,
            timeout=30,
            description="both demo resources registered with their devices",
        )
        view.flush()
        _say("(capacity: devices listed; allocatable: the healthy ones; allocated: in use by pods)")
        follower = asyncio.create_task(view.follow())

        _say(f"\nallocating 1 {fpga} for pod demo-pod, container main ...")
        try:
            response = await sim.allocate(fpga, 1, pod_uid="demo-pod", container="main")
            view.flush()
            _say("the kubelet passes these container options to the runtime:")
            for line in _format_response(response):
                _say(line)
        except SimulatorAllocationError as exc:
            _say(f"allocation failed: {exc}")

        _say("\nwho holds what: the kubelet's PodResources API, as `kdp-host status` shows it ...")
        await _show_holders(port, "demo-pod")

        new_device = root / "dev" / "fpga2"
        _say(f"\nhot-plug: creating {new_device} ...")
        started = time.perf_counter()
        new_device.touch()
        await sim.wait_for(lambda: sim.resource(fpga).capacity == 3, timeout=10)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        view.flush()
        _say(f"the kubelet saw the new device {elapsed_ms:.1f} ms later")
        if duration is None:
            _say(
                "\nTry it yourself, in another terminal:\n"
                f"  touch {root}/dev/fpga7           # hot-plug a device\n"
                f"  rm {root}/dev/fpga0              # unplug one (Unhealthy, gone after 10s)\n"
                f"  touch {root}/dongles/dongle-c    # the shell probe finds it within 2s\n"
                f"  curl -s http://127.0.0.1:{port}/metrics | grep ^kdp_\n"
                f"  curl -s http://127.0.0.1:{port}/readyz\n"
                f"  {sys.executable} -m kdp_host status --address 127.0.0.1:{port}\n"
                "Press Ctrl-C to stop."
            )
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        if host.returncode is None:
            host.send_signal(signal.SIGTERM)
        code = await host.wait()
        with contextlib.suppress(TimeoutError):
            await sim.wait_for(
                lambda: all(sim.resource(n).allocatable == 0 for n in (fpga, dongle)), timeout=2
            )
        _say(f"\nkdp-host stopped (exit {code}); the kubelet now sees:")
        for line in sim.describe().values():
            _say("  " + line)
        _say(
            "Its streams ended, so the kubelet keeps each resource's capacity but nothing is\n"
            "allocatable until a plugin registers again (docs/kubelet-contract.md §4)."
        )
        await sim.stop()
    return 0 if code == 0 else 1


def run_demo(duration: float | None = None, loop: str = "auto") -> int:
    root = Path(tempfile.mkdtemp(prefix="kdp-demo-", dir="/tmp"))
    try:
        with asyncio.Runner() as runner:
            return runner.run(_interruptible(demo_main(root, duration, loop)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _interruptible(main: Coroutine[Any, Any, int]) -> int:
    """Run the demo; Ctrl-C cancels it so the `finally` blocks shut things down cleanly."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
