"""`ownership.json.lock` kept by a process that is no host, the host alone on its stateDir
(kdp_host/state_file_lock.py, lock_holders.py, fence_stuck.py; issue 17, hostile26 N6):
every admission waited the whole write limit (5 s) for its booking's write, the devices
stayed Healthy, the need `lock` was 0 (it applied to a registered peer host's hold only) and
each line said "stateDir does not answer". Now the stall names the lock and its holder (its
pid from /proc/locks), the need `lock` is unmet whoever keeps it, and while it is an
answer's write waits `STUCK_LIMIT`, until the try in the background finds the lock free."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kdp_host import fence_stuck, ownership_fence, state_file
from kdp_host.lock_holders import ANOTHER, lock_holder

from .conftest import wait_until
from .test_fence_stuck import _needs
from .test_ownership_fence import fence_of
from .test_shared_bookings import R, Writer

HOLD = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
)


@contextmanager
def held_by_child(path: Path) -> Iterator[subprocess.Popen[str]]:
    """The lock file at `path` held exclusively by a child process (not a host) until the
    block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "held\n"
        yield child
    finally:
        child.stdin.close()
        child.wait(10)


def test_the_holder_is_named_from_proc_locks(tmp_path: Path) -> None:
    """A child's hold: its pid and command name; this process's own hold, a lock no line
    lists, a pid not visible here (0): another process."""
    path = tmp_path / "x.lock"
    with held_by_child(path) as child:
        assert lock_holder(str(path)).startswith(f"pid {child.pid} (python")
    assert lock_holder(str(path)) == ANOTHER
    listed = tmp_path / "locks"
    device = path.stat()
    where = f"{device.st_dev >> 8:02x}:{device.st_dev & 0xFF:02x}:{device.st_ino}"
    listed.write_text(f"1: FLOCK  ADVISORY  WRITE 0 {where} 0 EOF\n")
    assert lock_holder(str(path), str(listed)) == ANOTHER


async def test_alone_a_kept_lock_is_the_need_and_answers_wait_the_short_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Alone (no other host): a booking's write waits the write limit once, the line names
    the lock and the child's pid, the need `lock` is unmet naming it; the next answer's write
    waits `STUCK_LIMIT`, not the write limit again; the lock let go, the need is met with no
    answer, and the writes land."""
    monkeypatch.setattr(state_file, "WRITE_LIMIT", 0.5)
    monkeypatch.setattr(fence_stuck, "STUCK_LIMIT", 0.1)
    monkeypatch.setattr(fence_stuck, "TRY_FIRST", 0.05)
    a = Writer(tmp_path, "host-a")
    fence = fence_of(a, tmp_path)
    reported: dict[str, str | None] = {}
    needs, _ = _needs(reported)
    unfollow = fence.stuck.follow(needs)
    caplog.set_level(logging.ERROR)
    try:
        assert not fence.live
        with held_by_child(a.file.lock_path) as child:
            a.book("d0", 0)
            a.ledger.changed()
            started = time.monotonic()
            assert not await a.file.written()
            assert time.monotonic() - started >= 0.5
            held = f"ownership.json.lock held by pid {child.pid}"
            [line] = [r.__dict__["kdp_fields"] for r in caplog.records]
            assert held in line["reason"], line
            assert f"(held by pid {child.pid}" in (needs.unmet("lock") or ""), reported
            assert needs.table.snapshot.healthy_count == 0
            a.book("d1", 1)
            a.ledger.changed()
            started = time.monotonic()
            assert not await a.file.written()
            assert time.monotonic() - started < 0.4  # (not the write limit again)
        await wait_until(lambda: needs.unmet("lock") is None, 10, "the lock let go, tried")
        await wait_until(lambda: a.file.holds_changes, 10, "the writes landed")
        assert needs.table.snapshot.healthy_count == 1
    finally:
        unfollow()
        fence.close()
        a.stop()


async def test_a_kept_lock_is_named_in_the_kubelet(
    real_kubelet_factory: Any,
    short_dir: Path,
    start_host: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real kubelet: a non-host process keeps the lock; the first pod is
    admitted after the write limit (alone, the answer goes out), then the devices are
    Unhealthy (no pod waits again), /readyz names the lock and its holder; let go, Healthy
    and ready again, and the next pod is admitted without a wait."""
    monkeypatch.setattr(state_file, "WRITE_LIMIT", 1.0)
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1"):
        (dev / name).touch()
    running = await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n  - name: {R}\n"
        f"    glob: {{paths: ['{dev}/fpga*']}}\n"
    )
    healthy = lambda k: (k.resource(R) or {}).get("healthy")  # noqa: E731
    await kubelet.await_for(lambda k: healthy(k) == 2, what="listed")
    lock = Path(running.host.config.state_dir) / "ownership.json.lock"
    with held_by_child(lock) as child:
        started = time.monotonic()
        admitted = await kubelet.acall(kubelet.allocate, "p0", {R: 1})
        assert admitted["error"] == "" and time.monotonic() - started >= 1.0, admitted
        await kubelet.await_for(lambda k: healthy(k) == 0, what="unhealthy: the lock kept")
        reason = running.host.not_ready()[R]
        assert "ownership.json.lock" in reason and f"held by pid {child.pid}" in reason, reason
        assert running.sample("kdp_answer_need_unmet", resource=R, need="lock") == 1
    await kubelet.await_for(lambda k: healthy(k) == 2, what="healthy once let go")
    await wait_until(lambda: not running.host.not_ready(), what="ready")
    started = time.monotonic()
    assert (await kubelet.acall(kubelet.allocate, "p1", {R: 1}))["error"] == ""
    assert time.monotonic() - started < 1.0
    assert ownership_fence.FENCE_LIMIT == 5.0  # (the fence's limit is not the one patched)
