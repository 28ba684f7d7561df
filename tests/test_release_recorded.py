"""`release_recorded`: what a release tracker takes at its start from `handed-out.json` that
`release-state.json` lacks, and what it must not take: no release under a pod still running,
none run twice, the other direction (the state keeps a use the record let go). A kill is a
host whose files are put back as they were at the moment it died (a write that had not
landed); the restarted host is another writer on the state directory, as a new process is
(its instance ID), so the lock files' records of the releases done count for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.handed_out import HANDED_FILE, HandedRecord
from kdp_host.holdings import Holder, Holdings
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.release import ReleaseTracker
from kdp_host.release_state import STATE_FILE, ReleaseStateStore

from .conftest import wait_until
from .test_release import FPGA, _Commands


class _Host:
    """One kdp-host's tracker of fpga0 on `<short_dir>/state`, with its record, on clocks
    the test moves (`tick`)."""

    def __init__(self, short_dir: Path, writer: str, commands: _Commands, at: float) -> None:
        self.state = short_dir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.mono, self.wall = [1000.0], [at]
        config = load_config_text(
            f"kubelet: {{socketDir: {short_dir}/dp}}\nstateDir: {self.state}\nresources:\n"
            f'  - name: {FPGA}\n    glob: {{paths: ["/dev/fpga*"]}}\n'
            '    release: {command: ["reset", "{ids}"]}\n'
        )
        threads, log = DaemonThreads(), get_logger()
        self.store = ReleaseStateStore(str(self.state), log, threads, writer)
        self.store.load()
        self.record = HandedRecord(str(self.state), log, threads, writer, wall=self.now)
        self.record.load()
        self.table = DeviceTable()
        self.table.publish([Device("fpga0", nodes=None, path="/dev/fpga0")])
        metrics = Metrics(process_collectors=False)
        self.tracker = ReleaseTracker(
            config.resources[0], self.table, self.store, commands, metrics, log,
            clock=lambda: self.mono[0], wall=self.now, handed=self.record.of(FPGA),
        )  # fmt: skip
        self.tracker.start()

    def now(self) -> float:
        return self.wall[0]

    def tick(self, seconds: float) -> None:
        self.mono[0] += seconds
        self.wall[0] += seconds

    async def allocate(self, after: Callable[[], object] = lambda: None) -> None:
        """An Allocate of fpga0 as the plugin answers it: the tracker asked, the record
        written (the answer goes out), `after()` (a kill there), the use taken."""
        self.tracker.asked(["fpga0"])
        self.record.hand_out(FPGA, self.table.snapshot, ["fpga0"])
        assert await self.record.written() is None
        after()
        self.tracker.taken(["fpga0"])

    def answer(self, **held: str) -> None:
        """A PodResources answer asked now (2 s after a last Allocate: news of it)."""
        holders = {d: (Holder("default", pod, "c", 0.0),) for d, pod in held.items()}
        self.tracker.holdings(Holdings(self.mono[0], 0.0, {FPGA: holders}))

    async def flushed(self) -> None:
        await self.store.flush()
        assert await self.record.written() is None

    def files(self) -> dict[str, bytes]:
        paths = [self.state / name for name in (STATE_FILE, HANDED_FILE)]
        return {path.name: path.read_bytes() for path in paths if path.exists()}

    async def killed(self, files: dict[str, bytes]) -> None:
        """Stop, the files left as `files` (what had landed when it died)."""
        await self.tracker.close()
        for name, data in files.items():
            (self.state / name).write_bytes(data)


async def test_a_use_the_state_lacks_is_released_once_its_pod_ends_not_before(
    short_dir: Path,
) -> None:
    """p1's Allocate answered, kdp-host killed before release-state.json took the use: the
    restarted host counts it used from the record (no release while an answer shows p1),
    and releases it once p1 is seen gone, once."""
    commands = _Commands()
    first = _Host(short_dir, "host-a", commands, at=50_000.0)
    await first.flushed()
    before = first.files()
    await first.allocate()
    await first.flushed()
    await first.killed({STATE_FILE: before[STATE_FILE]})  # (the use never landed)
    second = _Host(short_dir, "host-b", commands, at=50_010.0)
    assert second.tracker.view("fpga0")["state"] == "in_use"
    second.answer(fpga0="p1")
    assert second.tracker.view("fpga0")["state"] == "in_use" and commands.runs == []
    second.tick(2.0)
    second.answer()  # p1 ended
    await wait_until(lambda: commands.runs, what="the release of p1's use")
    await wait_until(lambda: second.tracker.view("fpga0")["state"] == "clean", what="released")
    second.tick(2.0)
    second.answer()
    assert commands.runs == [["reset", "fpga0"]]
    await second.tracker.close()


@pytest.mark.parametrize("owed", [False, True], ids=["use", "owed"])
async def test_a_release_done_before_the_kill_is_not_run_again(short_dir: Path, owed: bool) -> None:
    """p1 ended and fpga0's release ran; release-state.json took that (no entry), the
    record's write after it had not landed (it still keeps p1's use, not owed yet or
    owed): the restarted host takes the use from the record, and the lock file's record of
    the release covers it: not run again."""
    commands = _Commands()
    first = _Host(short_dir, "host-a", commands, at=50_000.0)
    await first.allocate()
    await first.flushed()
    first.tick(2.0)
    commands.gate.clear()  # (the release waits: the record as it is before it ends)
    before = first.files()  # (the record: p1's use, not owed yet)
    first.answer()  # p1 ended: owed
    assert await first.record.written() is None
    before = first.files() if owed else before
    commands.gate.set()
    await wait_until(lambda: first.tracker.view("fpga0")["state"] == "clean", what="run")
    await first.flushed()
    await first.killed({HANDED_FILE: before[HANDED_FILE]})
    second = _Host(short_dir, "host-b", commands, at=50_010.0)
    second.answer()
    await wait_until(lambda: second.tracker.view("fpga0")["state"] == "clean", what="done")
    assert commands.runs == [["reset", "fpga0"]]
    await second.tracker.close()


async def test_a_use_the_record_let_go_is_not_released_again(short_dir: Path) -> None:
    """The other direction: release-state.json's write after the release had not landed
    (it says fpga0 used), the record's had (the entry released and let go once no ID was
    booked). The restarted host owes the use's release when it sees fpga0 free, and the
    lock file's record covers it: not run again."""
    commands = _Commands()
    first = _Host(short_dir, "host-a", commands, at=50_000.0)
    await first.allocate()
    await first.flushed()
    before = first.files()
    first.tick(2.0)
    first.answer()
    await wait_until(lambda: first.tracker.view("fpga0")["state"] == "clean", what="released")
    first.record.let_go(lambda _resource, _advertised: False)
    await first.flushed()
    assert FPGA not in first.record.resources()
    await first.killed({STATE_FILE: before[STATE_FILE]})
    second = _Host(short_dir, "host-b", commands, at=50_010.0)
    assert second.tracker.view("fpga0")["state"] == "in_use"
    second.answer()
    await wait_until(lambda: second.tracker.view("fpga0")["state"] == "clean", what="done")
    assert commands.runs == [["reset", "fpga0"]]
    await second.tracker.close()


async def test_an_earlier_use_released_before_the_kill_is_not_released_under_the_next_pod(
    short_dir: Path,
) -> None:
    """p1 ended, p2 was handed fpga0 (p1's use owed in the record), its release ran and
    release-state.json took p2's use; the record's write after the release had not landed
    (p1's use still owed in it). The state took p2's Allocate (what it says since is
    newer): the restarted host runs no release under p2, which runs. (A restart of p2's
    container is refused while the record keeps p1's use unreleased, `in_use_sharing`:
    fail closed, as before.)"""
    commands = _Commands()
    first = _Host(short_dir, "host-a", commands, at=50_000.0)
    await first.allocate()
    await first.flushed()
    first.tick(0.5)  # (p2 within allocation_settle of p1's Allocate: no lock record covers
    # p1's use then, only the rule does)
    commands.gate.clear()
    files: dict[str, bytes] = {}
    await first.allocate(after=lambda: files.update(first.files()))
    commands.gate.set()
    await first.tracker.before_start(["fpga0"])  # p2's start: after p1's release
    await first.flushed()
    await first.killed({HANDED_FILE: files[HANDED_FILE]})
    second = _Host(short_dir, "host-b", commands, at=50_010.0)
    second.answer(fpga0="p2")
    assert second.tracker.view("fpga0")["state"] == "in_use"
    assert commands.runs == [["reset", "fpga0"]]
    await second.tracker.close()
