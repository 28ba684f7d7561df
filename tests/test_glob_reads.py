"""Files a driver reads never block for ever (issue 10 item 14): a FIFO or a tty as
numaNodeFile is refused at once, a read that hangs times out with a logged, counted reason,
and a thread stuck in read(2) never keeps the process from exiting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.drivers import DriverDeps
from kdp_host.drivers.glob import GlobDriver
from kdp_host.files import DaemonThreads, FileReader, FileReadError, read_attribute
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.watch import PollingWatcher

from .conftest import reporter, wait_table, wait_until


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "numa_node"
    os.mkfifo(fifo)
    with pytest.raises(FileReadError) as caught:
        read_attribute(str(fifo), 16)
    assert caught.value.reason == "read_refused"
    with pytest.raises(FileReadError):
        read_attribute("/dev/zero", 16)  # a character device is no attribute file


def test_reads_are_capped(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"1" * 100)
    with pytest.raises(FileReadError) as caught:
        FileReader(limit=10).read(str(tmp_path / "big"))
    assert caught.value.reason == "read_refused"
    assert FileReader().read(str(tmp_path / "missing")) is None


def test_a_hung_read_times_out_and_stuck_reads_are_bounded() -> None:
    release = threading.Event()

    def hangs(path: str, limit: int) -> bytes | None:
        release.wait(30)
        return b"0"

    reader = FileReader(timeout=0.05, max_stuck=2, read_file=hangs)
    try:
        for _ in range(2):
            with pytest.raises(FileReadError) as caught:
                reader.read("/sys/hung/numa_node")
            assert caught.value.reason == "read_timeout"
        assert reader.stuck == 2
        with pytest.raises(FileReadError, match="earlier reads hang"):
            reader.read("/sys/hung/numa_node")
    finally:
        release.set()


async def test_a_numa_fifo_is_logged_and_counted_and_the_device_stays(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "accel0").touch()
    os.mkfifo(tmp_path / "numa")
    metrics = Metrics()
    table = DeviceTable()
    log = get_logger().bind(resource="t.io/r")
    config = GlobDriverConfig(paths=(f"{tmp_path}/dev/accel*",), numa_node_file=f"{tmp_path}/numa")
    task = asyncio.create_task(
        GlobDriver(config, DriverDeps(log, PollingWatcher(log))).run(reporter(table, metrics))
    )
    try:
        snapshot = await wait_table(table, lambda s: [d.id for d in s.devices] == ["accel0"])
        assert snapshot.devices[0].numa is None
        value = metrics.registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": "t.io/r", "reason": "read_refused"}
        )
        assert value == 1
    finally:
        task.cancel()
        await asyncio.wait({task})


def test_a_read_stuck_in_the_kernel_does_not_keep_the_process_alive() -> None:
    """The reader thread is a daemon: the interpreter exits while it is still stuck."""
    program = textwrap.dedent(
        """
        import threading
        from kdp_host.files import FileReader, FileReadError
        reader = FileReader(timeout=0.1, read_file=lambda p, n: threading.Event().wait())
        try:
            reader.read("/stuck")
        except FileReadError as exc:
            print(exc.reason, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "read_timeout"
    assert done.returncode == 0


def test_sigterm_exits_while_a_numa_file_is_a_fifo(tmp_path: Path, short_dir: Path) -> None:
    """Today's host blocked for ever in open() of the FIFO, and SIGTERM could not end it."""
    socket_dir = short_dir / "dp"
    socket_dir.mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "accel0").touch()
    os.mkfifo(tmp_path / "numa")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {tmp_path}/state\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        "resources:\n"
        "  - name: vendor.example/accel\n"
        f'    glob: {{paths: ["{tmp_path}/dev/accel*"], numaNodeFile: "{tmp_path}/numa"}}\n'
    )
    with subprocess.Popen(  # leaving the block closes the stderr pipe
        [sys.executable, "-m", "kdp_host", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stderr is not None
            for line in process.stderr:
                if "path_skipped" in line:  # the scan got past the FIFO
                    break
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_a_scan_that_hangs_is_a_timeout_failure_and_degrades(tmp_path: Path) -> None:
    """A hung file system (here: a directory check that never answers) fails the scan with
    reason `timeout` after the scan timeout; the notifier's policy degrades the resource."""
    (tmp_path / "dev0").touch()
    release = threading.Event()

    def hangs(directory: str) -> bool:
        release.wait(30)
        return True

    metrics = Metrics()
    table = DeviceTable()
    log = get_logger().bind(resource="t.io/r")
    glob_driver = GlobDriver(
        GlobDriverConfig(paths=(f"{tmp_path}/dev*",), rescan_interval=0.05),
        DriverDeps(log, PollingWatcher(log)),
        dir_readable=hangs,
        scan_timeout=0.1,
    )
    notifier = reporter(table, metrics, threshold=1)
    task = asyncio.create_task(glob_driver.run(notifier))
    try:
        await wait_until(lambda: notifier.degraded, 15, "the resource degraded")
        value = metrics.registry.get_sample_value(
            "kdp_driver_errors_total", {"resource": "t.io/r", "reason": "timeout"}
        )
        assert value is not None and value >= 1
        release.set()
        await wait_table(
            table, lambda s: [(d.id, d.healthy) for d in s.devices] == [("dev0", True)]
        )
    finally:
        release.set()
        task.cancel()
        await asyncio.wait({task})


async def test_scan_threads_are_reused_and_a_stuck_one_does_not_block_the_others() -> None:
    threads = DaemonThreads(workers=2, stuck_after=0.05)
    names = await asyncio.gather(*(threads.run(threading.current_thread) for _ in range(20)))
    assert len({thread.ident for thread in names}) <= 2
    assert all(thread.daemon for thread in names)
    release = threading.Event()
    stuck = [asyncio.ensure_future(threads.run(lambda: release.wait(30))) for _ in range(2)]
    try:
        assert await asyncio.wait_for(threads.run(lambda: "served"), 15) == "served"
    finally:
        release.set()
        await asyncio.gather(*stuck)
