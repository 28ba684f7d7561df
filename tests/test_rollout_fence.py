"""Issue 17, hostile22 F7: two hosts on one stateDir (a `maxSurge` rolling update whose new
config renames the resource, same glob) never hand one node to two pods, through the
kubelet's real device manager (tests/kubelet_harness.py).

The kubelet admits pods back to back. The old host answers a pod of its name with the node
and writes the booking; the new host, asked for a pod of the new name right after, had not
taken that booking in yet (the watcher's delay) and handed out the same node. The race is
driven here by running the new host without inotify (its polling watcher reads the shared
file up to a second late, as a system without inotify instances left does): on the code
before the fence the second pod got the node every time."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import KdpProcess
from .kubelet_harness import RealKubelet, healthy
from .test_ops import http_get
from .test_ownership_kubelet import booked_head, host_paths

pytestmark = pytest.mark.fast

OLD, NEW = "example.com/a", "example.com/b"

FENCE_LIMIT_1S = (
    "import sys; from kdp_host import ownership_fence as f; f.FENCE_LIMIT = 1.0; "
    "from kdp_host.__main__ import main; sys.exit(main())"
)


class QuickFenceHost(KdpProcess):
    """kdp-host whose Allocate waits 1 s for `ownership.json.lock`, not 5 s (inotify used)."""

    async def start(self) -> None:
        argv = [sys.executable, "-c", FENCE_LIMIT_1S, "--log-format", "text", "run"]
        argv += ["--config", str(self.config)]
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)


def _config(kubelet: RealKubelet, short_dir: Path, name: str, file: str) -> Path:
    config, devices = short_dir / file, short_dir / "dev"
    glob = f'  - name: {name}\n    glob: {{paths: ["{devices}/fpga*"]}}\n'
    config.write_text(booked_head(kubelet, short_dir) + glob)
    return config


def _unbooked(short_dir: Path) -> Callable[[RealKubelet], bool]:
    def check(_: RealKubelet) -> bool:
        file = short_dir / "state" / OWNERSHIP_FILE
        return file.exists() and not json.loads(file.read_text())["bookings"]

    return check


def _both_live(kubelet: RealKubelet) -> bool:
    return healthy(OLD, 1)(kubelet) and healthy(NEW, 1)(kubelet)


async def test_a_renaming_rollout_never_hands_one_node_to_two_pods(
    real_kubelet_factory, short_dir: Path, kdp_process
) -> None:
    """The old host (example.com/a) answers p1 with fpga0; the new host (example.com/b, its
    watcher polling) is asked for p2 at once: refused, not handed fpga0. Once p1 ends, p3
    of the new name gets it (the fence refuses no more than that)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (short_dir / "dev").mkdir()
    (short_dir / "dev" / "fpga0").touch()
    old = await kdp_process(_config(kubelet, short_dir, OLD, "old.yaml"))
    await kubelet.await_for(healthy(OLD, 1), what="the old host serves fpga0")
    new_config = _config(kubelet, short_dir, NEW, "new.yaml")
    new = KdpProcess(new_config, short_dir / "new.log", polling=True)  # (product timings)
    await new.start()
    try:
        await kubelet.await_for(_both_live, what="both names advertise fpga0", timeout=30)
        first = await kubelet.acall(kubelet.allocate, "p1", {OLD: 1})
        second = await kubelet.acall(kubelet.allocate, "p2", {NEW: 1})
        assert first["error"] == "", first
        assert second["error"] != "", (
            f"p1 ({OLD}) and p2 ({NEW}) were both handed {host_paths(first) & host_paths(second)}"
        )
        assert any(w in second["error"] for w in ("booked by host", "unknown", "is held")), second
        await kubelet.acall(kubelet.release, "p1")
        await kubelet.acall(kubelet.release, "p2")
        await kubelet.await_for(_unbooked(short_dir), what="p1's booking ended", timeout=40)
        await kubelet.await_for(_both_live, what="fpga0 free once p1 ended", timeout=40)
        third = await kubelet.acall(kubelet.allocate, "p3", {NEW: 1})
        assert third["error"] == "", third
        fourth = await kubelet.acall(kubelet.allocate, "p4", {OLD: 1})
        assert fourth["error"] != "", f"p3 and p4 were both handed fpga0: {fourth}"
    finally:
        await new.stop()
        await old.stop()


def _readyz(config: Path) -> tuple[int, str]:
    match = re.search(r"listen: 127.0.0.1:(\d+)", config.read_text())
    assert match is not None
    return http_get(int(match.group(1)), "/readyz")


async def test_a_lock_kept_from_both_hosts_withholds_their_devices_until_it_is_free(
    real_kubelet_factory, short_dir: Path
) -> None:
    """Issue 17, hostile23 F3: something keeps `ownership.json.lock` (a host frozen while it
    holds it, a hung file system) while two hosts run on one stateDir: every Allocate of
    either host is refused. Before, the host that refused stayed ready with its devices
    Healthy, so the kubelet sent it pod after pod to fail. Now its first refusal withholds
    its devices (Unhealthy) and /readyz names it; once the lock is free again the host
    finds it by itself (no Allocate) and the devices come back; an Allocate is answered."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (short_dir / "dev").mkdir()
    (short_dir / "dev" / "fpga0").touch()
    configs = [_config(kubelet, short_dir, n, f"{n[-1]}.yaml") for n in (OLD, NEW)]
    hosts = [QuickFenceHost(c, short_dir / f"{c.stem}.log") for c in configs]
    for host in hosts:
        await host.start()
    lock = -1
    try:
        await kubelet.await_for(_both_live, what="both names advertise fpga0", timeout=30)
        lock = os.open(short_dir / "state" / f"{OWNERSHIP_FILE}.lock", os.O_RDWR | os.O_CREAT)
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        for pod, name in (("p1", OLD), ("p2", NEW)):
            refused = await kubelet.acall(kubelet.allocate, pod, {name: 1})
            assert "not taken within" in refused["error"], refused
            await kubelet.await_for(healthy(name, 0), what=f"{name} withheld", timeout=10)
        for config in configs:
            status, body = await asyncio.to_thread(_readyz, config)
            assert status == 503 and "ownership.json.lock not taken" in body, body
        os.close(lock)  # (let go: found by each host's try, no Allocate)
        lock = -1
        await kubelet.await_for(_both_live, what="fpga0 advertised again", timeout=20)
        assert [(await asyncio.to_thread(_readyz, c))[0] for c in configs] == [200, 200]
        third = await kubelet.acall(kubelet.allocate, "p3", {NEW: 1})
        assert third["error"] == "", third
    finally:
        if lock >= 0:
            os.close(lock)
        for host in hosts:
            await host.stop()
