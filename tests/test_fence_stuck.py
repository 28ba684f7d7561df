"""A fenced Allocate refused for want of `ownership.json.lock` is every answer's cause
(kdp_host/fence_stuck.py; issue 17, hostile23 F3; through the real kubelet:
tests/test_rollout_fence.py): each resource's need `lock` is unmet (its devices Unhealthy,
/readyz, the gauge) from the first such refusal until the lock is taken again, by a try in
the background (no Allocate needed) or by an answer (alone on the directory too: a lock kept
holds the bookings' writes, tests/test_lock_holder.py); an answer that comes meanwhile waits
for the lock `STUCK_LIMIT` at most, not the whole `FENCE_LIMIT`."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from kdp_host import fence_stuck, ownership_fence, state_hosts
from kdp_host.answer_needs import AnswerNeeds
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership_fence import AllocateFence, Unfenced

from .conftest import wait_until
from .test_ownership_fence import NODE, fence_of, lock_held
from .test_shared_bookings import R, Writer


def _needs(reported: dict[str, str | None]) -> tuple[AnswerNeeds, Metrics]:
    table = DeviceTable()
    table.publish([Device(id="a0")])
    metrics = Metrics(process_collectors=False)
    needs = AnswerNeeds(
        table, get_logger(), reported.__setitem__, metrics.answer_need_unmet, R
    )  # fmt: skip
    return needs, metrics


def _unmet(metrics: Metrics) -> float:
    return metrics.answer_need_unmet.labels(R, "lock").value


async def _answer(fence: AllocateFence) -> float:
    """Seconds until an answer is refused (raises if it is not)."""
    started = time.monotonic()
    with pytest.raises(Unfenced, match="not taken within"):
        async with fence.held(R, ["a0"], NODE, {}):
            pass
    return time.monotonic() - started


async def test_a_lock_not_taken_in_time_holds_every_answer_until_it_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """host-b runs; something keeps the lock: host-a's first answer is refused after
    FENCE_LIMIT, and from then on the need `lock` is unmet (devices Unhealthy, /readyz, the
    gauge 1); the next answer is refused within STUCK_LIMIT; once the lock is let go, the
    try in the background meets the need again with no Allocate, and answers go out."""
    monkeypatch.setattr(ownership_fence, "FENCE_LIMIT", 1.0)
    monkeypatch.setattr(fence_stuck, "STUCK_LIMIT", 0.1)
    monkeypatch.setattr(fence_stuck, "TRY_FIRST", 0.05)
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    fence = fence_of(a, tmp_path)
    reported: dict[str, str | None] = {}
    needs, metrics = _needs(reported)
    unfollow = fence.stuck.follow(needs)
    assert _unmet(metrics) == 0 and needs.table.snapshot.healthy_count == 1
    try:
        with lock_held(a):
            assert await _answer(fence) > 0.9
            assert "ownership.json.lock not taken within" in (reported["lock"] or "")
            assert _unmet(metrics) == 1 and needs.table.snapshot.healthy_count == 0
            assert await _answer(fence) < 0.5  # (not the whole FENCE_LIMIT again)
            assert needs.unmet("lock") is not None
        await wait_until(lambda: needs.unmet("lock") is None, 10, "the lock free, tried again")
        assert reported["lock"] is None and _unmet(metrics) == 0
        assert needs.table.snapshot.healthy_count == 1
        async with fence.held(R, ["a0"], NODE, {}):
            pass
    finally:
        unfollow()
        fence.close()
        b.stop()


async def test_the_need_stays_alone_while_the_lock_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock still held, and host-b has ended: alone, an answer takes no lock, but the
    bookings' writes do, so the need stays (it went, and the next write waited the whole
    write limit: hostile26 N6) until the lock is let go (and a resource that starts
    following it meanwhile is told)."""
    monkeypatch.setattr(ownership_fence, "FENCE_LIMIT", 0.2)
    monkeypatch.setattr(fence_stuck, "TRY_FIRST", 0.05)
    monkeypatch.setattr(state_hosts, "STARTING", 0.0)  # (host-b's lock file is asked)
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    fence = fence_of(a, tmp_path)
    first, _ = _needs({})
    fence.stuck.follow(first)
    with lock_held(a):
        await _answer(fence)
        later, _ = _needs({})
        fence.stuck.follow(later)  # (a resource started while it is unmet)
        assert later.unmet("lock") is not None and first.unmet("lock") is not None
        b.stop()
        await fence._look_again()
        assert not fence.live
        async with fence.held(R, ["a0"], NODE, {}):
            pass
        assert later.unmet("lock") is not None and first.unmet("lock") is not None
    await wait_until(lambda: first.unmet("lock") is None, 10, "the lock let go, tried")
    assert later.unmet("lock") is None
    fence.close()


async def test_an_answer_while_the_try_hangs_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A try in the background that does not return (a file system that does not answer):
    an answer is refused at once, not joined to another try of its own; once the try
    returns the lock free, the need is met."""
    monkeypatch.setattr(ownership_fence, "FENCE_LIMIT", 0.2)
    monkeypatch.setattr(fence_stuck, "TRY_FIRST", 0.0)
    a, b = Writer(tmp_path, "host-a"), Writer(tmp_path, "host-b")
    fence = fence_of(a, tmp_path)
    trying, answers = threading.Event(), threading.Event()

    def hung(_path: str, _aside: object) -> bool:
        trying.set()
        return answers.wait(10)

    monkeypatch.setattr(fence_stuck, "lock_free", hung)
    try:
        with lock_held(a):
            await _answer(fence)
            assert await asyncio.to_thread(trying.wait, 10)
            started = time.monotonic()
            with pytest.raises(Unfenced, match="its try has not returned"):
                async with fence.held(R, ["a0"], NODE, {}):
                    pass
            assert time.monotonic() - started < 0.1
        answers.set()
        await wait_until(lambda: fence.stuck.why is None, 10, "the hung try returned")
    finally:
        answers.set()
        fence.close()
        b.stop()
