"""The probe runner and the shell driver, with real probe scripts in a temporary directory.

Nothing here sleeps to wait for a result: tests wait on the device table (or poll a
condition) with a generous deadline. Scripts may sleep: that is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kdp_host.backoff import Retry
from kdp_host.config import ShellDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Snapshot
from kdp_host.drivers import DriverDeps, DriverError
from kdp_host.drivers.shell import ShellDriver
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.process import CommandError, CommandResult, ProcessRunner
from kdp_host.testing import RecordingNotifier
from kdp_host.watch import PollingWatcher

from .conftest import reporter, script, wait_table, wait_until

RESOURCE = "vendor.example/dongle"
LOGGER = "test_shell"
DEADLINE = 15.0
GRACE = 0.1
_PR_SET_CHILD_SUBREAPER = 36


# --- helpers ---------------------------------------------------------------------------------


def make_deps(resource: str = RESOURCE, kill_grace: float = 1.0) -> DriverDeps:
    log = get_logger(LOGGER, resource=resource)
    return DriverDeps(log, PollingWatcher(log), commands=ProcessRunner(kill_grace=kill_grace))


async def run_command(argv: list[str], kill_grace: float = 1.0, **options: Any) -> CommandResult:
    return await ProcessRunner(kill_grace=kill_grace).run(argv, **options)


def shell(command: str, **options: Any) -> ShellDriverConfig:
    base = ShellDriverConfig(command=(command,), interval=0.05, timeout=2.0)
    return dataclasses.replace(base, **options)


def ids(snapshot: Snapshot) -> list[str]:
    return [d.id for d in snapshot.devices]


def health(snapshot: Snapshot) -> dict[str, bool]:
    return {d.id: d.healthy for d in snapshot.devices}


def errors(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "kdp_driver_errors_total", {"resource": RESOURCE, "reason": reason}
    )
    return value or 0.0


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "kdp_fields", {}) for r in caplog.records if r.getMessage() == name]


@contextlib.asynccontextmanager
async def running(
    driver: ShellDriver,
    table: DeviceTable,
    metrics: Metrics | None = None,
    threshold: int = 3,
    resource: str = RESOURCE,
) -> AsyncIterator[asyncio.Task[None]]:
    notifier = reporter(table, metrics, resource=resource, threshold=threshold, logger=LOGGER)
    task = asyncio.create_task(driver.run(notifier))
    try:
        yield task
    finally:
        task.cancel()
        # unlike `await task`, never swallows our own cancellation
        done, _ = await asyncio.wait({task}, timeout=DEADLINE)
        assert done, "the driver did not stop when cancelled"
        if not task.cancelled():
            task.result()  # a driver that crashed fails the test


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphaned grandchildren of probes become our children, so the test can reap them and
    then see them truly gone (this machine's PID 1 does not reap orphans)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("cannot become a child subreaper")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == 0:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def assert_gone(*pids: int) -> None:
    await wait_until(lambda: all(_gone(pid) for pid in pids))
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


# --- the runner ------------------------------------------------------------------------------


async def test_runner_returns_output_and_exit_status(tmp_path: Path) -> None:
    probe = script(tmp_path, "p", 'echo "$PROBE_VAR $(pwd)"; echo oops >&2; exit 3\n')
    result = await run_command([probe], timeout=5, env={"PROBE_VAR": "hello"}, cwd=str(tmp_path))
    assert result.returncode == 3
    assert not result.ok
    assert result.stdout == f"hello {tmp_path}\n".encode()
    assert result.stderr == "oops"
    assert result.describe_exit() == "exited with status 3"


async def test_runner_stdin_is_closed(tmp_path: Path) -> None:
    probe = script(tmp_path, "p", "cat; echo done\n")
    result = await run_command([probe], timeout=5)
    assert result.stdout == b"done\n"


async def test_runner_keeps_the_end_of_stderr(tmp_path: Path) -> None:
    probe = script(tmp_path, "p", "yes noise | head -c 20000 >&2; echo THE-END >&2; exit 1\n")
    result = await run_command([probe], timeout=5)
    assert len(result.stderr) <= 4100
    assert result.stderr.startswith("...")
    assert result.stderr.endswith("THE-END")


async def test_runner_spawn_failure(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as caught:
        await run_command([str(tmp_path / "missing")], timeout=5)
    assert caught.value.reason == "spawn"
    probe = script(tmp_path, "p", "true\n")
    with pytest.raises(CommandError) as caught:
        await run_command([probe], timeout=5, cwd=str(tmp_path / "nodir"))
    assert caught.value.reason == "spawn"
    assert "nodir" in str(caught.value)


async def test_runner_hang_kills_the_whole_group(tmp_path: Path, subreaper: None) -> None:
    probe = script(
        tmp_path,
        "hang",
        f"echo $$ > {tmp_path}/leader.pid\nsleep 1000 &\necho $! > {tmp_path}/child.pid\n"
        "echo partial; wait\n",
    )
    with pytest.raises(CommandError) as caught:
        await run_command([probe], timeout=0.2, kill_grace=GRACE)
    assert caught.value.reason == "timeout"
    assert "timed out after 0.2s" in str(caught.value)
    await assert_gone(read_pid(tmp_path / "leader.pid"), read_pid(tmp_path / "child.pid"))


async def test_runner_child_ignoring_sigterm_gets_sigkill(tmp_path: Path, subreaper: None) -> None:
    probe = script(
        tmp_path,
        "stubborn",
        f"(trap '' TERM; exec sleep 1000) &\necho $! > {tmp_path}/child.pid\ntrap '' TERM; wait\n",
    )
    with pytest.raises(CommandError):
        await run_command([probe], timeout=0.2, kill_grace=GRACE)
    await assert_gone(read_pid(tmp_path / "child.pid"))


async def test_runner_forked_child_holding_stdout_does_not_hang_us(
    tmp_path: Path, subreaper: None
) -> None:
    probe = script(
        tmp_path, "fork", f"echo dev0\nsleep 1000 &\necho $! > {tmp_path}/child.pid\nexit 0\n"
    )
    with pytest.raises(CommandError) as caught:
        await run_command([probe], timeout=0.2, kill_grace=GRACE)
    assert caught.value.reason == "timeout"
    assert "exited with status 0 but a process it started kept its output open" in str(caught.value)
    await assert_gone(read_pid(tmp_path / "child.pid"))


async def test_runner_background_child_is_killed_after_success(
    tmp_path: Path, subreaper: None
) -> None:
    probe = script(
        tmp_path,
        "daemonish",
        f"sleep 1000 >/dev/null 2>&1 &\necho $! > {tmp_path}/child.pid\necho dev0\n",
    )
    result = await run_command([probe], timeout=5, kill_grace=GRACE)
    assert result.ok
    assert result.stdout == b"dev0\n"
    await assert_gone(read_pid(tmp_path / "child.pid"))


async def test_runner_two_mib_of_output_is_refused(tmp_path: Path) -> None:
    probe = script(tmp_path, "big", "yes dev0 | head -c 2097152\n")
    with pytest.raises(CommandError) as caught:
        await run_command([probe], timeout=5, kill_grace=GRACE)
    assert caught.value.reason == "output_too_large"


async def test_runner_cancellation_kills_the_group(tmp_path: Path, subreaper: None) -> None:
    probe = script(
        tmp_path,
        "hang",
        f"sleep 1000 &\necho $! > {tmp_path}/child.pid\necho $$ > {tmp_path}/leader.pid\nwait\n",
    )
    task = asyncio.create_task(run_command([probe], timeout=60))
    leader = tmp_path / "leader.pid"  # written last; complete once it ends with a newline
    await wait_until(lambda: leader.exists() and leader.read_text().endswith("\n"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_gone(read_pid(tmp_path / "leader.pid"), read_pid(tmp_path / "child.pid"))


# --- poll mode -------------------------------------------------------------------------------


async def test_poll_table_follows_output_changes(tmp_path: Path) -> None:
    listing = tmp_path / "devices.txt"
    listing.write_text("a path=/dev/a\n")
    probe = script(tmp_path, "p", f"cat {listing}\n")
    table = DeviceTable()
    async with running(ShellDriver(shell(probe), make_deps()), table):
        snapshot = await wait_table(table, lambda s: ids(s) == ["a"])
        assert snapshot.devices[0].nodes[0].host_path == "/dev/a"
        listing.write_text("a\nb Unhealthy numa=1\n")
        snapshot = await wait_table(table, lambda s: ids(s) == ["a", "b"])
        assert health(snapshot) == {"a": True, "b": False}
        listing.write_text("")
        await wait_table(table, lambda s: ids(s) == [])


class SlowHost(RecordingNotifier):
    """A host that takes each list only when the test says so (a long admission)."""

    def __init__(self, runs: Path) -> None:
        super().__init__()
        self.runs = runs
        self.seen: list[tuple[str, int]] = []
        """(what happened, the probe's runs by then)."""
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    def count(self) -> int:
        return len(self.runs.read_text()) if self.runs.exists() else 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self.seen.append(("update", self.count()))

    async def taken(self) -> None:
        self.seen.append(("taken?", self.count()))
        self.waiting.set()
        await self.release.wait()
        self.release.clear()


async def test_poll_runs_again_only_once_the_host_took_its_last_list(tmp_path: Path) -> None:
    """A probe whose lists the host takes longer to admit than its interval: the next run
    waits for the last list to be taken (never a list parsed only to be replaced before its
    admission), then keeps its interval."""
    runs = tmp_path / "runs"
    probe = script(tmp_path, "p", f"printf x >> {runs}\necho a\n")
    host = SlowHost(runs)
    task = asyncio.get_running_loop().create_task(
        ShellDriver(shell(probe, interval=0.001), make_deps()).run(host)
    )
    try:
        for _ in range(3):
            await asyncio.wait_for(host.waiting.wait(), DEADLINE)
            host.waiting.clear()
            host.release.set()
        await asyncio.wait_for(host.waiting.wait(), DEADLINE)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert host.seen[:8] == [
        ("update", 1), ("taken?", 1), ("update", 2), ("taken?", 2),
        ("update", 3), ("taken?", 3), ("update", 4), ("taken?", 4),
    ]  # fmt: skip


async def test_poll_json_format(tmp_path: Path) -> None:
    probe = script(tmp_path, "p", """echo '{"devices": [{"id": "c0", "env": {"K": "v"}}]}'\n""")
    table = DeviceTable()
    async with running(ShellDriver(shell(probe, format="json"), make_deps()), table):
        snapshot = await wait_table(table, lambda s: ids(s) == ["c0"])
    assert snapshot.devices[0].env == {"K": "v"}


async def test_poll_env_and_working_dir(tmp_path: Path) -> None:
    probe = script(tmp_path, "p", 'echo "$DEVICE_NAME"; ls\n')
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "from-cwd").touch()
    config = shell(probe, env={"DEVICE_NAME": "from-env"}, working_dir=str(tmp_path / "work"))
    assert [d.id for d in await ShellDriver(config, make_deps()).scan()] == [
        "from-env",
        "from-cwd",
    ]


@pytest.mark.parametrize(
    ("mode", "reason", "detail"),
    [
        ("garbage", "parse", "line 2: unknown key 'zzz'"),
        ("exit3", "exit", "probe exited with status 3"),
        ("hang", "timeout", "timed out"),
        ("big", "output_too_large", "printed more than"),
    ],
)
async def test_poll_failure_keeps_last_good_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, reason: str, detail: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    mode_file = tmp_path / "mode"
    mode_file.write_text("good")
    probe = script(
        tmp_path,
        "p",
        f"""case "$(cat {mode_file})" in
  good) echo 'a Healthy'; echo 'b Healthy' ;;
  garbage) echo 'a'; echo 'b zzz=1 \\x01' ;;
  exit3) echo 'a'; echo 'vendor tool: card not responding' >&2; exit 3 ;;
  hang) sleep 1000 ;;
  big) yes a | head -c 2097152 ;;
esac
""",
    )
    metrics = Metrics()
    table = DeviceTable()
    driver = ShellDriver(
        shell(probe, timeout=0.3 if mode == "hang" else 2.0, failure_threshold=1000),
        make_deps(kill_grace=GRACE),
    )
    async with running(driver, table, metrics, threshold=1000):
        await wait_table(table, lambda s: ids(s) == ["a", "b"])
        await wait_until(  # a good run timed out under load is over before the mode changes
            lambda: len(events(caplog, "probe_failed")) == len(events(caplog, "probe_recovered"))
        )
        failed_before, errors_before = len(events(caplog, "probe_failed")), errors(metrics, reason)
        mode_file.write_text(mode)
        await wait_until(lambda: errors(metrics, reason) >= errors_before + 2)
        assert health(table.snapshot) == {"a": True, "b": True}
        assert table.degraded_reason is None
    failures = events(caplog, "probe_failed")[failed_before:]
    assert len(failures) == 1, "a failure is logged once per change of state, not per run"
    assert failures[0]["reason"] == reason
    assert detail in str(failures[0]["error"])
    if mode == "exit3":
        assert failures[0]["stderr"] == "vendor tool: card not responding"


async def test_poll_threshold_degrades_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    mode_file = tmp_path / "mode"
    mode_file.write_text("good")
    probe = script(
        tmp_path, "p", f'[ "$(cat {mode_file})" = good ] && {{ echo a; echo b; exit 0; }}\nexit 3\n'
    )
    metrics = Metrics()
    table = DeviceTable()
    driver = ShellDriver(shell(probe, failure_threshold=3), make_deps())
    async with running(driver, table, metrics, threshold=3):
        await wait_table(table, lambda s: health(s) == {"a": True, "b": True})
        mode_file.write_text("bad")
        snapshot = await wait_table(table, lambda s: health(s) == {"a": False, "b": False})
        assert errors(metrics, "exit") >= 3
        assert table.degraded_reason is not None
        assert table.degraded_reason.startswith("exit: probe exited with status 3")
        await wait_until(lambda: errors(metrics, "exit") >= 6)
        assert ids(table.snapshot) == ["a", "b"], "the list is kept while degraded"
        mode_file.write_text("good")
        snapshot = await wait_table(table, lambda s: health(s) == {"a": True, "b": True})
        assert table.degraded_reason is None
    assert snapshot.healthy_count == 2
    assert len(events(caplog, "probe_failed")) == 1
    assert len(events(caplog, "resource_degraded")) == 1
    (recovered,) = events(caplog, "probe_recovered")
    assert recovered["was_degraded"] is True
    histogram = metrics.registry.get_sample_value(
        "kdp_driver_scan_duration_seconds_count", {"resource": RESOURCE}
    )
    assert histogram is not None and histogram >= 6


async def test_poll_hung_probe_runs_again_after_its_timeout(tmp_path: Path) -> None:
    probe = script(tmp_path, "hang", "sleep 1000\n")
    metrics = Metrics()
    driver = ShellDriver(shell(probe, interval=0.05, timeout=0.1), make_deps(kill_grace=0.1))
    async with running(driver, DeviceTable(), metrics):
        await wait_until(lambda: errors(metrics, "timeout") >= 3)


async def test_hung_probe_does_not_delay_another_driver(tmp_path: Path) -> None:
    hung = script(tmp_path, "hung", f"echo $$ > {tmp_path}/hung.pid\nexec sleep 1000\n")
    listing = tmp_path / "devices.txt"
    listing.write_text("a\n")
    lively = script(tmp_path, "lively", f"cat {listing}\n")
    hung_table, lively_table = DeviceTable(), DeviceTable()
    hung_driver = ShellDriver(shell(hung, timeout=60), make_deps(resource="vendor.example/hung"))
    lively_driver = ShellDriver(shell(lively), make_deps())
    async with (
        running(hung_driver, hung_table, resource="vendor.example/hung"),
        running(lively_driver, lively_table),
    ):
        pid_file = tmp_path / "hung.pid"
        # `echo $$ > file` creates the file before it writes: wait for the whole line
        await wait_until(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"))
        hung_pid = read_pid(pid_file)
        await wait_table(lively_table, lambda s: ids(s) == ["a"])
        for expected in (["a", "b"], ["b"], ["a", "b", "c"]):
            listing.write_text("\n".join(expected))
            await wait_table(lively_table, lambda s, e=expected: ids(s) == e)  # type: ignore[misc]
        os.kill(hung_pid, 0)  # the hung probe is still running all along
    with contextlib.suppress(ProcessLookupError):
        await wait_until(lambda: _gone(hung_pid))


async def test_scan_poll_mode(tmp_path: Path) -> None:
    probe = script(tmp_path, "p", "echo a\necho b Unhealthy\n")
    devices = await ShellDriver(shell(probe), make_deps()).scan()
    assert [(d.id, d.healthy) for d in devices] == [("a", True), ("b", False)]
    bad = script(tmp_path, "bad", "echo 'a numa=x'\n")
    with pytest.raises(DriverError) as caught:
        await ShellDriver(shell(bad), make_deps()).scan()
    assert caught.value.reason == "parse"
    assert "line 1: numa must be a node number" in str(caught.value)


# --- stream mode -----------------------------------------------------------------------------


def open_fifo_writer(path: Path) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # the stream command has not opened it yet
            return None
        raise


@pytest.mark.parametrize("fmt", ["lines", "json"])
async def test_stream_applies_each_list_at_once(tmp_path: Path, fmt: str) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    probe = script(tmp_path, "stream", f"exec cat {fifo}\n")
    table = DeviceTable()
    # A poll interval of an hour: updates can only come from the stream itself.
    config = shell(probe, mode="stream", format=fmt, interval=3600.0, timeout=10.0)
    lists = [["a"], ["a", "b"], [], ["c"]]
    async with running(ShellDriver(config, make_deps()), table):
        writer: int | None = None

        def connected() -> bool:
            nonlocal writer
            writer = open_fifo_writer(fifo)
            return writer is not None

        await wait_until(connected)
        assert writer is not None
        try:
            for expected in lists:
                if fmt == "json":
                    document = "[" + ",".join(f'{{"id": "{i}"}}' for i in expected) + "]\n"
                else:
                    document = "".join(f"{i} Healthy\n" for i in expected) + "\n"
                await asyncio.to_thread(os.write, writer, document.encode())
                await wait_table(table, lambda s, e=expected: ids(s) == e)  # type: ignore[misc]
        finally:
            os.close(writer)


async def test_stream_bad_document_keeps_list_and_stream_goes_on(tmp_path: Path) -> None:
    probe = script(
        tmp_path,
        "stream",
        "printf 'a\\n\\n'\nprintf 'a numa=oops\\n\\n'\nprintf 'a\\nb\\n\\n'\nexec sleep 1000\n",
    )
    metrics = Metrics()
    table = DeviceTable()
    config = shell(probe, mode="stream", failure_threshold=5)
    async with running(ShellDriver(config, make_deps(kill_grace=GRACE)), table, metrics, 5):
        await wait_table(table, lambda s: ids(s) == ["a", "b"])
        assert errors(metrics, "parse") == 1
        assert errors(metrics, "exit") == 0


async def test_stream_restarts_with_backoff(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    probe = script(
        tmp_path,
        "stream",
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        'echo "run$n"\necho\nexit 1\n',
    )
    metrics = Metrics()
    table = DeviceTable()
    config = shell(probe, mode="stream", failure_threshold=3)
    driver = ShellDriver(config, make_deps(), restarts=Retry(first=0.02, maximum=0.1))
    async with running(driver, table, metrics, threshold=3):
        await wait_table(table, lambda s: ids(s) == ["run4"])
    assert errors(metrics, "exit") >= 3
    assert table.degraded_reason is None


async def test_stream_down_degrades_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    mode_file = tmp_path / "mode"
    mode_file.write_text("up")
    probe = script(
        tmp_path,
        "stream",
        f'[ "$(cat {mode_file})" = up ] || {{ echo "vendor daemon is down" >&2; exit 7; }}\n'
        f"echo $$ > {tmp_path}/stream.pid\nprintf 'a\\nb\\n\\n'\nexec sleep 1000\n",
    )
    metrics = Metrics()
    table = DeviceTable()
    config = shell(probe, mode="stream", failure_threshold=2, timeout=5.0)
    driver = ShellDriver(
        config,
        make_deps(kill_grace=GRACE),
        restarts=Retry(first=0.02, maximum=0.05),
    )
    async with running(driver, table, metrics, threshold=2):
        await wait_table(table, lambda s: health(s) == {"a": True, "b": True})
        mode_file.write_text("down")
        # Kill the running stream command: from now on every restart exits at once.
        os.kill(read_pid(tmp_path / "stream.pid"), signal.SIGKILL)
        await wait_table(table, lambda s: health(s) == {"a": False, "b": False})
        assert errors(metrics, "exit") >= 2
        mode_file.write_text("up")
        await wait_table(table, lambda s: health(s) == {"a": True, "b": True})
    (failed,) = events(caplog, "probe_failed")
    assert failed["error"] == "stream command was killed by signal SIGKILL"
    (degraded,) = events(caplog, "resource_degraded")
    assert degraded["error"] == "stream command exited with status 7"
    assert degraded["stderr"] == "vendor daemon is down"


async def test_stream_overlong_line_restarts_the_command(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    probe = script(
        tmp_path,
        "stream",
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        '[ "$n" = 1 ] && { yes x | tr -d "\\n" | head -c 5000; echo; }\n'
        """echo '[{"id": "ok"}]'\nexec sleep 1000\n""",
    )
    metrics = Metrics()
    table = DeviceTable()
    config = shell(probe, mode="stream", format="json")
    driver = ShellDriver(
        config,
        make_deps(kill_grace=GRACE),
        restarts=Retry(first=0.02, maximum=5.0),
        max_output=1000,
    )
    async with running(driver, table, metrics):
        await wait_table(table, lambda s: ids(s) == ["ok"])
    assert errors(metrics, "output_too_large") == 1


async def test_stream_scan_takes_first_list_and_stops_the_command(
    tmp_path: Path, subreaper: None
) -> None:
    probe = script(
        tmp_path,
        "stream",
        f"echo $$ > {tmp_path}/leader.pid\nsleep 1000 &\necho $! > {tmp_path}/child.pid\n"
        "printf 'a\\nb\\n\\n'\nwait\n",
    )
    driver = ShellDriver(shell(probe, mode="stream"), make_deps(kill_grace=GRACE))
    devices = await driver.scan()
    assert [d.id for d in devices] == ["a", "b"]
    await assert_gone(read_pid(tmp_path / "leader.pid"), read_pid(tmp_path / "child.pid"))


async def test_stream_scan_errors(tmp_path: Path) -> None:
    silent = script(tmp_path, "silent", "exec sleep 1000\n")
    driver = ShellDriver(shell(silent, mode="stream", timeout=0.2), make_deps(kill_grace=GRACE))
    with pytest.raises(DriverError) as caught:
        await driver.scan()
    assert caught.value.reason == "timeout"
    quits = script(tmp_path, "quits", "echo 'cannot open monitor' >&2; exit 2\n")
    with pytest.raises(DriverError) as exited:
        await ShellDriver(shell(quits, mode="stream"), make_deps()).scan()
    assert exited.value.reason == "exit"
    assert "exited with status 2 before printing a complete device list" in str(exited.value)
    assert exited.value.detail == "cannot open monitor"


async def test_stream_unterminated_last_block_counts_at_exit(tmp_path: Path) -> None:
    probe = script(tmp_path, "once", "echo a; echo b\n")
    devices = await ShellDriver(shell(probe, mode="stream"), make_deps()).scan()
    assert [d.id for d in devices] == ["a", "b"]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_pipe_connection_cancelled_while_the_host_stops_closes_it_once(loop_kind: str) -> None:
    """A probe's spawn cancelled while the host stops: the pipe's connection is cancelled
    while the loop waits for the transport. uvloop closes the descriptor itself then; the
    file object closed after it raised EBADF (logged as `resource_stop_failed`). The read end
    is closed either way, once, and nothing but the cancellation comes out."""
    from kdp_host.pipes import Pipe

    from .test_server import run_on

    async def main() -> None:
        for _ in range(3):
            read_end, write_end = os.pipe()
            try:
                task = asyncio.create_task(Pipe.connect(read_end, 1024))
                await asyncio.sleep(0)  # the connection now waits for its transport
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                for _turn in range(3):  # the standard loop's transport closes a turn later
                    await asyncio.sleep(0)
                with pytest.raises(OSError) as closed:
                    os.fstat(read_end)
                assert closed.value.errno == errno.EBADF
            finally:
                os.close(write_end)

    run_on(loop_kind, main)
