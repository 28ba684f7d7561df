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
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kdp_host.ownership_document import OWNERSHIP_FILE

from .conftest import KdpProcess
from .kubelet_harness import RealKubelet, healthy
from .test_ownership_kubelet import booked_head, host_paths

pytestmark = pytest.mark.fast

OLD, NEW = "example.com/a", "example.com/b"

WITHOUT_INOTIFY = (
    "import sys; from kdp_host import inotify_watch as w; "
    "w.make_watcher.__kwdefaults__['prefer_inotify'] = False; "
    "from kdp_host.__main__ import main; sys.exit(main())"
)


class PollingHost(KdpProcess):
    """kdp-host whose watcher polls (inotify not used)."""

    async def start(self) -> None:
        argv = [sys.executable, "-c", WITHOUT_INOTIFY, "--log-format", "text", "run"]
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
    new = PollingHost(_config(kubelet, short_dir, NEW, "new.yaml"), short_dir / "new.log")
    await new.start()
    try:
        await kubelet.await_for(_both_live, what="both names advertise fpga0", timeout=30)
        first = await kubelet.acall(kubelet.allocate, "p1", {OLD: 1})
        second = await kubelet.acall(kubelet.allocate, "p2", {NEW: 1})
        assert first["error"] == "", first
        assert second["error"] != "", (
            f"p1 ({OLD}) and p2 ({NEW}) were both handed {host_paths(first) & host_paths(second)}"
        )
        assert "booked by host" in second["error"] or "unknown" in second["error"], second
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
