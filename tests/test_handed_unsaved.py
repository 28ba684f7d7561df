"""Issue 17 ("one device, one pod"), fail closed when `handed-out.json` cannot be kept
(hostile8 L2: a full `stateDir`): an Allocate whose record cannot be written is refused, so
nothing is handed out that a restart would not know; a release owed for a device whose
record was lost is not run on what its path reaches now (it waits for the next container
start on the device, and runs on what that Allocate handed out); and a refused Allocate
leaves no release owed, so no device no pod used is released after a restart."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host import state_file
from kdp_host.handed_out import HANDED_FILE
from kdp_host.release_document import checked_entry as _entry
from kdp_host.release_document import device_entry
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .conftest import wait_until
from .release_setup import R1, release_config


class Unwritable:
    """`write_atomic` failing with ENOSPC for the state files named in `names` (all of them
    when empty) while `full` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.full, self.names, self.failed = True, names, 0
        self._write = state_file.write_atomic
        monkeypatch.setattr(state_file, "write_atomic", self)

    def __call__(self, path: str, data: bytes) -> None:
        if self.full and (not self.names or os.path.basename(path) in self.names):
            self.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self._write(path, data)


def _nodes(root: Path, count: int = 3) -> None:
    (root / "a").mkdir()
    for i in range(count):
        (root / "a" / f"n{i}").touch()


def _released(log: Path) -> list[str]:
    """The IDs each release ran for, in order."""
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


async def _answers_after(running: Any, count: int = 2) -> None:
    """Until `count` more PodResources answers were taken in."""
    name = "kdp_pod_resources_polls_total"
    start = running.sample(name, result="ok")
    await wait_until(
        lambda: running.sample(name, result="ok") >= start + count,
        timeout=60,
        what=f"{count} more PodResources answers",
    )


async def test_an_allocate_whose_record_cannot_be_written_is_refused(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old code answered (readyz not ready, the gauge 1), so a restart did not know
    what the pod got; now the Allocate is refused, counted and said, until the file can be
    written again."""
    kubelet, log = pod_resources_kubelet, short_dir / "hooks.log"
    _nodes(short_dir)
    running = await start_host(release_config(socket_dir, short_dir, log))
    await kubelet.wait_for(lambda: kubelet.resource(R1).allocatable == 3)
    assert await kubelet.allocate(R1, 1, pod_uid="p1") is not None
    disk = Unwritable(monkeypatch, HANDED_FILE)
    with pytest.raises(SimulatorAllocationError, match=f"cannot allocate .*{HANDED_FILE}"):
        await kubelet.allocate(R1, 1, pod_uid="p2")
    assert running.sample("kdp_allocations_total", resource=R1, result="unsaved") == 1
    assert running.sample("kdp_allocations_total", resource=R1, result="ok") == 1
    disk.full = False
    assert await kubelet.allocate(R1, 1, pod_uid="p3") is not None


@pytest.mark.parametrize("full", [(), (HANDED_FILE,)], ids=["every-file", "handed-out-only"])
async def test_a_refused_allocate_leaves_no_release_owed_across_a_restart(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
    monkeypatch: pytest.MonkeyPatch,
    full: tuple[str, ...],
) -> None:
    """hostile8 L2 (t42 full): the stateDir fills after p1 got a device; p2's Allocate is
    refused; kdp-host restarts with the disk still full. The old code answered p2, the
    release state's write failed (its marker made), and after the restart every device
    counted as used: a device no pod had used was released. Now only p1's device is, and
    none is left owed (with `handed-out.json` alone unwritable, p2's booking is kept and
    withheld after the restart: still no release is owed for it)."""
    kubelet, log = pod_resources_kubelet, short_dir / "hooks.log"
    config = release_config(socket_dir, short_dir, log)
    _nodes(short_dir)
    first = await start_host(config, fast=True)
    await kubelet.wait_for(lambda: kubelet.resource(R1).allocatable == 3)
    [held] = (await kubelet.allocate(R1, 1, pod_uid="p1")).devices  # type: ignore[union-attr]
    p1_device = os.path.basename(held.host_path)
    await _answers_after(first)
    Unwritable(monkeypatch, *full)
    with contextlib.suppress(SimulatorAllocationError):  # (refused; the old code answered)
        await kubelet.allocate(R1, 1, pod_uid="p2")
    await first.shutdown(timeout=30)
    running = await start_host(config, fast=True)
    await kubelet.wait_for(lambda: kubelet.resource(R1).registrations >= 2)
    await _answers_after(running)
    await kubelet.release("p1")
    await wait_until(lambda: _released(log), timeout=60, what="p1's release")
    await _answers_after(running)
    assert _released(log) == [p1_device]
    assert kubelet.allocation("p2", "c0", R1) is None
    assert running.sample("kdp_releases_pending", resource=R1) == 0


async def test_a_release_whose_record_was_lost_waits_for_the_next_start_on_the_device(
    pod_resources_kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    start_host: Any,
) -> None:
    """p1 holds n0; `handed-out.json` is lost while kdp-host is down (unreadable: n0 is
    withheld). The old code ran the release on n0's path as it is now when p1 ended. Now it
    is skipped (counted `unknown`), n0 stays owed but advertised, and the next pod's start
    on it runs the release on what its Allocate handed out first."""
    kubelet, log = pod_resources_kubelet, short_dir / "hooks.log"
    config = release_config(socket_dir, short_dir, log)
    _nodes(short_dir, 1)
    first = await start_host(config, fast=True)
    await kubelet.wait_for(lambda: kubelet.resource(R1).allocatable == 1)
    assert await kubelet.allocate(R1, 1, pod_uid="p1") is not None
    await first.shutdown(timeout=30)
    (short_dir / "state" / HANDED_FILE).write_text("{lost")
    running = await start_host(config, fast=True)
    await kubelet.wait_for(lambda: kubelet.resource(R1).registrations >= 2)
    await kubelet.release("p1")
    await wait_until(
        lambda: running.sample("kdp_release_runs_total", resource=R1, result="unknown") >= 1,
        timeout=60,
        what="the release of n0 skipped",
    )
    await _answers_after(running)
    assert _released(log) == [], "the release ran on what n0's path reaches now"
    assert running.sample("kdp_releases_pending", resource=R1) == 1
    assert kubelet.resource(R1).healthy_ids == {"n0"}  # (not marked unhealthy: nothing failed)
    assert await kubelet.allocate(R1, 1, pod_uid="p3") is not None  # its start runs it first
    assert _released(log) == ["n0"]
    assert running.sample("kdp_releases_pending", resource=R1) == 0


def test_a_release_owed_for_a_lost_record_is_kept_so_across_restarts() -> None:
    """`handedUnknown` is written only when set (an older version's reader ignores it) and
    read back."""
    assert "handedUnknown" not in device_entry(["n0"], True, 1.0)
    entry = device_entry(["n0"], True, 1.0, handed_unknown=True)
    assert _entry(entry) == {
        "used": ["n0"],
        "owed": True,
        "allocatedAt": 1.0,
        "handedUnknown": True,
    }
