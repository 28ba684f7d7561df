#!/usr/bin/env python3
"""Run the image against the kubelet simulator and check that it serves (`make image-test`).

The simulator (kdp_host.simulator, from the development venv) plays the kubelet on a socket
directory of the host; the image runs with that directory, a directory of fake device files and
a state directory (`stateDir`: the chart mounts one from the host, since an Allocate is refused
until its record can be kept there) mounted, its config at the path the image's default CMD
reads, and the tightest settings a
runtime offers: no capabilities, a read-only root filesystem, no privilege escalation, an init,
no network. Checked: it registers, advertises the devices, sees a hot-plugged one, answers an
allocation, and on SIGTERM stops cleanly (exit 0, its socket removed).

usage: scripts/image-test.py IMAGE [--podman podman|docker]
The podman configuration (CONTAINERS_CONF) comes from the environment (scripts/image.sh). With
docker (GitHub's CI) it runs as root too (sudo), since the container's root has no capability
to write into a directory another user owns.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from kdp_host.simulator import KubeletSimulator

RESOURCE = "image-test.kdp.example/fpga"
TIMEOUT = 60.0

SECURITY = ["--cap-drop", "ALL", "--read-only", "--security-opt", "no-new-privileges", "--init"]


def config(devices: Path, state: Path) -> str:
    return textwrap.dedent(f"""\
        kubelet:
          socketDir: {devices.parent / "device-plugins"}
        stateDir: {state}
        resources:
          - name: {RESOURCE}
            glob:
              paths: ["{devices}/fpga*"]
              gracePeriod: 0s
            allocate:
              env: {{FPGA_DEVICES: "{{ids}}"}}
        """)


async def check(image: str, podman: str, work: Path) -> None:
    sockets = work / "device-plugins"
    devices = work / "dev"
    state = work / "state"
    sockets.mkdir()
    devices.mkdir()
    state.mkdir()
    for name in ("fpga0", "fpga1"):
        (devices / name).touch()
    config_file = work / "config.yaml"
    config_file.write_text(config(devices, state))

    name = f"kdp-host-image-test-{int(time.time())}"
    run = [
        podman, "run", "--detach", "--name", name, "--network", "none", *SECURITY,
        "--volume", f"{sockets}:{sockets}",
        "--volume", f"{devices}:{devices}:ro",
        "--volume", f"{state}:{state}",
        "--volume", f"{config_file}:/etc/kdp-host/config.yaml:ro",
        image,
    ]  # fmt: skip
    print("$", " ".join(run), flush=True)

    sim = KubeletSimulator(sockets)
    await sim.start()
    started = time.monotonic()
    try:
        subprocess.run(run, check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
        await sim.wait_for(
            lambda: sim.resource(RESOURCE).registrations >= 1 and sim.capacity(RESOURCE) == 2,
            TIMEOUT, description=f"{RESOURCE} registered with 2 devices",
        )  # fmt: skip
        print(f"registered, 2 devices, {time.monotonic() - started:.2f}s after podman run")
        (devices / "fpga2").touch()
        await sim.wait_for(
            lambda: sim.capacity(RESOURCE) == 3, TIMEOUT, description="the hot-plugged fpga2"
        )
        print("hot-plug seen: 3 devices")
        response = await sim.allocate(RESOURCE, 2)
        envs = dict(response.envs)
        allocated = envs["FPGA_DEVICES"].split(",")
        assert len(allocated) == 2 and set(allocated) <= {"fpga0", "fpga1", "fpga2"}, envs
        host_paths = sorted(d.host_path for d in response.devices)
        assert host_paths == sorted(str(devices / i) for i in allocated), host_paths
        print(f"allocated {allocated}")
        assert (state / "handed-out.json").is_file(), sorted(p.name for p in state.iterdir())
        plugin_socket = sim.resource(RESOURCE).socket_path
        assert plugin_socket is not None and plugin_socket.exists(), plugin_socket

        stop = subprocess.run(
            [podman, "stop", "-t", "10", name], capture_output=True, text=True, timeout=60
        )
        assert stop.returncode == 0, stop.stderr
        code = subprocess.run(
            [podman, "inspect", "--format", "{{.State.ExitCode}}", name],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        assert code == "0", f"exit code {code} after SIGTERM"
        assert not plugin_socket.exists(), f"{plugin_socket} left behind"
        print("SIGTERM: exit 0, socket removed")
    except BaseException:
        logs = subprocess.run([podman, "logs", name], capture_output=True, text=True, timeout=60)
        print(f"--- container log\n{logs.stdout}{logs.stderr}---", file=sys.stderr)
        raise
    finally:
        subprocess.run([podman, "rm", "--force", name], capture_output=True, timeout=60)
        await sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--podman", default="podman")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdp-image-test-") as tmp:
        asyncio.run(check(args.image, args.podman, Path(tmp)))
    print(f"image-test: {args.image} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
