"""Commands that misbehave on purpose (issue 10 items 15 and 16): a probe that leaves a daemon
holding its output leaks no descriptor, commands die with a SIGKILLed host, and a stream
command printing as fast as it can is rate-limited (logged once, counted) without stopping
its lists from coming through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kdp_host.config import ShellDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.drivers import DriverDeps, DriverError
from kdp_host.drivers.rate_limit import RateLimit
from kdp_host.drivers.shell import ShellDriver
from kdp_host.drivers.stream import DocumentReader
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.process import CommandError, ProcessRunner
from kdp_host.process_group import death_signal_wrapper
from kdp_host.watch import PollingWatcher

from .conftest import process_gone, reporter, script, wait_table, wait_until

LOGGER = "test_containment"


def pipes(pid: int | str = "self") -> set[str]:
    """The pipes (``pipe:[inode]``) a process has open."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while listed, or the process is gone
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("pipe:"):
                found.add(link)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def test_a_daemon_holding_stdout_leaks_no_descriptor(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    probe = script(
        tmp_path,
        "leaves-daemon",
        # The daemon records itself once in its own session: under load the run's timeout
        # can end the probe's process group before a daemon got there (it then died with it).
        f"setsid sh -c 'echo $$ >> {pids}; exec sleep 60' &\necho dev0\nexit 0\n",
    )
    runner = ProcessRunner(kill_grace=0.05)
    try:
        for _ in range(10):
            with pytest.raises(CommandError) as caught:
                await runner.run([probe], timeout=0.2)
            assert caught.value.reason == "timeout"
        # The daemons still hold the output pipes of their runs; this process lets go of
        # all of them: a pipe transport closes its descriptor on the loop's next round,
        # after run() returned, hence the wait. (Counting this process's pipes before and
        # after failed in full runs: other tests' threads and transports open and close
        # pipes of their own meanwhile.)
        daemons = pids.read_text().split()
        holding = [pipes(pid) for pid in daemons]
        assert daemons and all(holding), "every daemon holds its run's output pipe"
        held = set().union(*holding)
        await wait_until(lambda: not pipes() & held, what="our ends of the daemons' pipes closed")
    finally:
        for pid in pids.read_text().split() if pids.exists() else ():
            _kill(int(pid))


def test_a_sigkilled_host_leaves_no_stream_command_running(tmp_path: Path, short_dir: Path) -> None:
    socket_dir = short_dir / "dp"
    socket_dir.mkdir()
    pid_file = tmp_path / "stream.pid"
    stream = script(tmp_path, "stream", f"echo $$ > {pid_file}.tmp\nmv {pid_file}.tmp {pid_file}\n"
                    "printf 'a\\n\\n'\nexec sleep 600\n")  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {tmp_path}/state\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        "resources:\n"
        "  - name: vendor.example/streamed\n"
        f'    shell: {{command: ["{stream}"], mode: stream}}\n'
    )
    host = subprocess.Popen(
        [sys.executable, "-m", "kdp_host", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stream_pid = 0
    try:
        asyncio.run(wait_until(pid_file.exists, 30, "the stream command started"))
        stream_pid = int(pid_file.read_text())
        host.kill()
        host.wait(timeout=30)

        asyncio.run(
            wait_until(
                lambda: process_gone(stream_pid), 30, "the stream command died with the host"
            )
        )
    finally:
        if host.poll() is None:
            host.kill()
        if stream_pid:
            _kill(stream_pid)


_FORKS_WITH_PYTHON_IN_THE_CHILD: list[str] = []
_WATCHING_FORKS = threading.Event()


def _python_forked() -> None:
    if _WATCHING_FORKS.is_set():
        _FORKS_WITH_PYTHON_IN_THE_CHILD.append(threading.current_thread().name)


os.register_at_fork(before=_python_forked)


async def test_no_python_code_runs_in_the_child_before_exec(tmp_path: Path) -> None:
    """The process has threads (HTTP server, readers): a child that runs Python before exec
    (a preexec_fn) may wait for ever on a lock another thread held at fork time. CPython
    runs the at-fork handlers exactly when it prepares a child to run Python code."""
    runner = ProcessRunner(kill_grace=0.05)
    assert runner.dies_with_host, "setpriv (util-linux) and /bin/sh are on every Linux runner"
    probe = script(tmp_path, "p", "echo ok\n")
    _WATCHING_FORKS.set()
    try:
        result = await runner.run([probe], timeout=10)
    finally:
        _WATCHING_FORKS.clear()
    assert (result.returncode, result.stdout) == (0, b"ok\n")
    assert _FORKS_WITH_PYTHON_IN_THE_CHILD == []


def test_a_command_whose_host_died_before_the_death_signal_was_armed_never_runs(
    tmp_path: Path,
) -> None:
    """The wrapper's parent check: started for a host that is not its parent (as when the
    host died between fork and prctl), the command is not run at all."""
    wrapper = death_signal_wrapper()
    assert wrapper
    marker = tmp_path / "ran"
    argv = ["touch", str(marker)]
    refused = subprocess.run([*wrapper, "1", *argv], capture_output=True, timeout=30)
    assert refused.returncode == 1 and not marker.exists()
    ran = subprocess.run([*wrapper, str(os.getpid()), *argv], capture_output=True, timeout=30)
    assert ran.returncode == 0 and marker.exists()


async def test_arguments_pass_through_the_wrapper_untouched(tmp_path: Path) -> None:
    """The wrapper's shell never reads the command's arguments: quotes, `$`, globs, `;`,
    backquotes, newlines, a leading `-` and empty strings arrive as they were."""
    args = ["$HOME", "*", "a b", "'q'", '"d"', "; exit 3", "`id`", "x\ny", "-n", "", "$1", "{}"]
    printer = script(tmp_path, "args", 'for a in "$@"; do printf "%s\\0" "$a"; done\n')
    result = await ProcessRunner().run([printer, *args], timeout=10)
    assert result.ok, result.stderr
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]


async def test_a_missing_or_unusable_command_is_still_a_spawn_failure(tmp_path: Path) -> None:
    runner = ProcessRunner()
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\ntrue\n")  # not executable
    cases = [
        ([str(tmp_path / "missing")], "No such file"),
        ([str(plain)], "Permission denied"),
        ([str(tmp_path)], "Permission denied"),
        (["kdp-no-such-command-anywhere"], "not found on PATH"),
    ]
    for argv, why in cases:
        with pytest.raises(CommandError) as caught:
            await runner.run(argv, timeout=10)
        assert caught.value.reason == "spawn" and why in str(caught.value), argv
    # a bare name is looked up on the command's PATH (its env), as execvp would
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script(bindir, "only-here", "echo found\n")
    result = await runner.run(["only-here"], timeout=10, env={"PATH": str(bindir)})
    assert result.stdout == b"found\n"
    # relative paths are taken in the command's working directory, even one like an option
    dashed = tmp_path / "-n"
    dashed.mkdir()
    script(dashed, "tool", "echo dashed\n")
    for argv0, cwd in (("-n/tool", str(tmp_path)), ("./tool", str(dashed))):
        result = await runner.run([argv0], timeout=10, cwd=cwd)
        assert result.stdout == b"dashed\n", argv0
    result = await runner.run(["tool"], timeout=10, cwd=str(tmp_path), env={"PATH": "-n"})
    assert result.stdout == b"dashed\n"


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    limit = RateLimit(lambda: now[0], rate=10.0, burst=3)
    for _ in range(3):
        assert limit.delay() == 0.0
        limit.take()
    assert limit.delay() == pytest.approx(0.1)
    now[0] += 0.1
    assert limit.delay() == 0.0


async def test_a_flooding_stream_command_is_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    flag = tmp_path / "calm"
    flood = script(
        tmp_path,
        "flood",
        f'while [ ! -e {flag} ]; do echo \'[{{"id": "a"}}]\'; echo \'[{{"id": "b"}}]\'; done\n'
        """echo '[{"id": "final"}]'\nexec sleep 600\n""",
    )
    config = ShellDriverConfig(command=(flood,), mode="stream", format="json", timeout=5.0)
    metrics = Metrics()
    table = DeviceTable()
    log = get_logger(LOGGER, resource="t.io/r")
    driver = ShellDriver(
        config,
        DriverDeps(log, PollingWatcher(log), commands=ProcessRunner(kill_grace=0.1)),
        rate_limit=RateLimit(asyncio.get_running_loop().time, rate=20.0, burst=5),
    )
    task = asyncio.create_task(driver.run(reporter(table, metrics, logger=LOGGER)))

    def dropped() -> float:
        value = metrics.registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": "t.io/r", "reason": "rate_limited"}
        )
        return value or 0.0

    try:
        await wait_until(lambda: dropped() > 200, 30, "lists dropped by the rate limit")
        flag.touch()
        await wait_table(table, lambda s: [d.id for d in s.devices] == ["final"], timeout=30)
    finally:
        task.cancel()
        await asyncio.wait({task})
    started = [r for r in caplog.records if r.getMessage() == "device_lists_rate_limited"]
    # Logged once per flood, not per dropped list (on a loaded machine the flooding shell can
    # stall long enough to end one flood and start another).
    assert 1 <= len(started) <= dropped() / 100, (len(started), dropped())


async def test_document_reader_refuses_an_overlong_line_in_one_chunk() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"x" * 50 + b"\n" + b'[{"id": "a"}]\n')
    stream.feed_eof()
    reader = DocumentReader(stream, "json", max_size=20)
    with pytest.raises(DriverError) as caught:
        await reader.next()
    assert caught.value.reason == "output_too_large"


async def test_document_reader_keeps_a_partial_block_across_a_cancelled_read() -> None:
    stream = asyncio.StreamReader()
    reader = DocumentReader(stream, "lines", max_size=1000)
    stream.feed_data(b"a\nb")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await reader.next()
    stream.feed_data(b"\n\nc\n")
    stream.feed_eof()
    assert await reader.next() == b"a\nb\n"
    assert await reader.next() == b"c\n"
    assert await reader.next() is None


async def test_an_exec_the_wrapper_cannot_make_is_a_spawn_failure(tmp_path: Path) -> None:
    """hostile24 F4: a script whose `#!` interpreter is gone passes the host's check (the file
    is there and executable) and fails at the wrapper's `exec`, which exits 127: that was read
    as the command's own status, so nothing looked at the resource's needs again. It is a
    spawn failure, as it is without the wrapper; the command's own 127 stays an exit status."""
    runner = ProcessRunner(kill_grace=0.05)
    assert runner.dies_with_host
    orphan = script(tmp_path, "orphan", "true\n")
    Path(orphan).write_text("#!/no/such/interpreter\ntrue\n")
    with pytest.raises(CommandError) as raised:
        await runner.run([orphan], timeout=10)
    assert raised.value.reason == "spawn" and orphan in str(raised.value), raised.value
    own = await runner.run(
        [script(tmp_path, "own", "echo 'kdp-host: x' >&2; exit 127\n")], timeout=10
    )
    assert own.returncode == 127
