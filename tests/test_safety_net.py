"""The host's one safety-net timer (`safety_net.py`) and the scan loops on it: an idle host
checks every resource in one batch, wakes no resource whose directories did not change, and
a check that hangs neither stops the others nor piles up threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers.base import Skipped
from kdp_host.drivers.scanner import DirWatch, Listed, ScanResult, ScanSettings
from kdp_host.drivers.scanning import ScanLoop
from kdp_host.files import DaemonThreads
from kdp_host.safety_net import SafetyNet
from kdp_host.simulator import KubeletSimulator
from kdp_host.testing import RecordingNotifier, driver_deps

from .conftest import reporter, wait_until
from .test_offload import CountingOffload
from .test_scan_loop import FakeScanner, old_dir


class ListsNotifier(RecordingNotifier):
    """Also keeps every distinct list object it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[int, object] = {}

    def update(self, devices: Any, skipped: Sequence[Skipped] = (), reached: Any = None) -> None:
        self.lists[id(devices)] = devices
        super().update(devices, skipped, reached)


async def test_an_idle_host_checks_every_resource_in_one_batch_and_wakes_none(
    tmp_path: Path,
) -> None:
    offload = CountingOffload()
    net = SafetyNet(offload)
    deps = driver_deps(offload=offload, safety_net=net)
    scanners, loops, notifiers, steps = [], [], [], [0] * 20
    for number in range(20):
        directory = tmp_path / f"r{number}"
        directory.mkdir()
        (directory / "d0").touch()
        old_dir(directory)
        scanner = FakeScanner(directory)
        loop = ScanLoop(scanner, ScanSettings(0.05, 60.0, 5.0), deps)
        step = loop.step

        async def counted(*args: object, _n: int = number, _step=step, **kw: bool) -> float | None:
            steps[_n] += 1
            return await _step(*args, **kw)  # type: ignore[arg-type]

        loop.step = counted  # type: ignore[method-assign]
        scanners.append(scanner)
        loops.append(loop)
        notifiers.append(ListsNotifier())
    tasks = [asyncio.create_task(lp.run(nt)) for lp, nt in zip(loops, notifiers, strict=True)]
    try:
        await wait_until(lambda: all(n.updates >= 1 for n in notifiers), what="first lists")
        calls, batches = offload.calls, net.batches
        await wait_until(lambda: net.batches >= batches + 5, what="five safety-net batches")
        await wait_until(lambda: all(n.updates >= 5 for n in notifiers), what="re-publishes")
        assert all(s.scans == 1 for s in scanners), "nothing changed: no rescan"
        assert steps == [1] * 20, "no loop task woke"
        # one hop off the loop per batch, not one per resource
        assert offload.calls - calls <= net.batches - batches + 1
        assert all(list(n.devices) == ["d0"] for n in notifiers)
        assert all(len(n.lists) == 1 for n in notifiers), "the same list object each time"
        # a change the watcher missed (no event): that resource alone looks at everything
        (tmp_path / "r3" / "d1").touch()
        # the scan counts itself before it lists: wait for the list it publishes
        await wait_until(
            lambda: list(notifiers[3].devices) == ["d0", "d1"], what="the missed change found"
        )
        assert scanners[3].scans == 2 and scanners[3].changed[1] is None
        assert [s.scans for i, s in enumerate(scanners) if i != 3] == [1] * 19
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_hung_check_counts_as_changed_and_is_never_started_twice() -> None:
    offload = CountingOffload()
    net = SafetyNet(offload)
    release = threading.Event()
    hung_calls = [0]
    answers: dict[str, list[bool]] = {"hung": [], "fine": []}

    def hangs() -> bool:
        hung_calls[0] += 1
        release.wait(30)
        return True

    leave_hung = net.join(0.05, hangs, answers["hung"].append, timeout=0.1)
    leave_fine = net.join(0.05, lambda: True, answers["fine"].append, timeout=0.1)
    try:
        await wait_until(lambda: len(answers["hung"]) >= 4, what="answers while it hangs")
        assert set(answers["hung"]) == {False}, "no answer in time: look again"
        assert hung_calls[0] == 1, "a hung check is not started again"
        assert True in answers["fine"], "the other member is still checked"
        release.set()
        await wait_until(lambda: answers["hung"][-1] is True, what="the check back")
        assert hung_calls[0] >= 2
    finally:
        release.set()
        leave_hung()
        leave_fine()


async def test_a_failing_check_or_member_never_stops_the_others() -> None:
    net = SafetyNet(DaemonThreads())
    answers: list[bool] = []

    def broken() -> bool:
        raise OSError("stat failed")

    def then_fails(answer: bool) -> None:
        raise RuntimeError("member fault")

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, _context: None)
    leaves = [
        net.join(0.02, broken, answers.append, timeout=5.0),
        net.join(0.02, lambda: True, then_fails, timeout=5.0),
        net.join(0.02, lambda: True, answers.append, timeout=5.0),
    ]
    try:
        await wait_until(lambda: answers.count(True) >= 3 and answers.count(False) >= 3)
    finally:
        for leave in leaves:
            leave()
        loop.set_exception_handler(None)
    batches = net.batches
    await asyncio.sleep(0)
    assert net.batches == batches, "every member left: the timer is off"


def test_the_same_list_again_is_still_checked_for_unlistable_paths() -> None:
    """The reporter remembers its check of the last list (the safety net hands it the same
    object again); a device it left out stays left out, and a new list is checked anew."""
    table = DeviceTable()
    notifier = reporter(table)
    bad = Device("bad", nodes=(DeviceNode("/dev/a,b", "/dev/a,b"),))
    good = Device("good", nodes=(DeviceNode("/dev/g", "/dev/g"),))
    listed = {"bad": bad, "good": good}
    for _ in range(2):
        notifier.update(listed)
        assert [d.id for d in table.snapshot.devices] == ["good"]
    notifier.update({"bad": bad})
    assert table.snapshot.devices == ()
    notifier.update({"fixed": Device("fixed", nodes=(DeviceNode("/dev/f", "/dev/f"),))})
    assert [d.id for d in table.snapshot.devices] == ["fixed"]


async def test_a_hung_scan_is_reported_again_at_every_safety_net_check(tmp_path: Path) -> None:
    """The loop's wait for a stuck scan ends at the scan timeout; each later check sees no
    finished scan and waits for it again, so the failures add up to a degraded resource."""
    started = [0]

    class Counting(FakeScanner):
        def scan(
            self, listed: Listed, dirs: DirWatch, changed: frozenset[str] | None
        ) -> ScanResult:
            started[0] += 1
            return super().scan(listed, dirs, changed)

    scanner = Counting(tmp_path)
    loop = ScanLoop(scanner, ScanSettings(0.05, 60.0, 0.05), driver_deps())
    notifier = RecordingNotifier()
    scanner.block.clear()
    task = asyncio.create_task(loop.run(notifier))
    try:
        await wait_until(lambda: len(notifier.failures) >= 3, what="three timeouts")
        assert {f.reason for f in notifier.failures} == {"timeout"}
        assert started == [1], "the stuck scan is never started twice"
    finally:
        scanner.block.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_idle_host_with_many_devices_scans_and_sends_nothing_at_its_checks(
    kubelet: KubeletSimulator, socket_dir: Path, tmp_path: Path, start_host: Any
) -> None:
    """The whole host, idle, 8 resources x 250 devices, every stream open: the safety-net
    checks come (one offload hop each) and find nothing; no scan, no list sent."""
    resources, devices = 8, 250
    names = [f"idle.kdp-host.io/r{i}" for i in range(resources)]
    lines = [f"kubelet: {{socketDir: {socket_dir}}}", f"stateDir: {tmp_path}/state", "resources:"]
    for number, name in enumerate(names):
        directory = tmp_path / "dev" / f"r{number}"
        directory.mkdir(parents=True)
        for device in range(devices):
            (directory / f"d{device:03d}").touch()
        old_dir(directory)
        lines += [
            f"  - name: {name}",
            f'    glob: {{paths: ["{directory}/d*"], rescanInterval: 0.1s}}',
        ]
    offload = CountingOffload()
    running = await start_host("\n".join(lines) + "\n", offload=offload)
    metrics = running.metrics.registry

    def work() -> tuple[float, ...]:
        scans = [
            metrics.get_sample_value("kdp_driver_scan_duration_seconds_count", {"resource": n})
            for n in names
        ]
        sent = [
            metrics.get_sample_value("kdp_list_and_watch_updates_total", {"resource": n})
            for n in names
        ]
        return (*(s or 0.0 for s in scans), *(s or 0.0 for s in sent))

    await kubelet.wait_for(
        lambda: all(kubelet.resource(n).allocatable == devices for n in names), timeout=60
    )
    calls = offload.calls
    await wait_until(lambda: offload.calls >= calls + 3, what="three safety-net checks")
    before, received, calls = work(), len(kubelet.list_and_watch_updates), offload.calls
    assert all(before), "every resource scanned and sent its list"
    await wait_until(lambda: offload.calls >= calls + 20, what="twenty safety-net checks")
    assert work() == before, "no scan, no list sent"
    assert len(kubelet.list_and_watch_updates) == received
