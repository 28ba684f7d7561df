"""The host's one safety-net timer: periodic checks of every resource, batched.

Watches and events make a host react at once; a safety net catches what they miss (a lost
inotify event, a file system without events). Run per resource, a hundred resources would
wake the host a hundred times per interval, each for a hop to a worker thread and back, and
each time find that nothing changed. So the host has one `SafetyNet`, and a member (a
resource's scan loop) joins it with its interval, a blocking `check` ("did anything change?",
a few stats) and an on-loop `then`:

- one timer for the whole host, set to the earliest member due; when it fires, every member
  due within `BATCH_SLACK` of its interval comes along, so members with the same interval
  settle into one batch;
- the checks of a batch run in one call through the host's offload (one thread hop for the
  whole batch), each bounded: past the batch's `timeout` the checks not answered count as
  "changed" (the member rescans, and its own scan timeout reports a hung file system), and a
  member whose check hangs is not checked again until it comes back (threads never pile up);
- `then(unchanged)` runs on the loop for every member of the batch: a member that finds
  nothing changed does no work and wakes no task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .files import Offload

BATCH_SLACK = 0.1
"""A member due within this fraction of its interval joins the batch that runs now."""


@dataclass(eq=False)
class _Member:
    """One periodic check of the safety net and when it is due."""

    interval: float
    timeout: float
    check: Callable[[], bool]
    then: Callable[[bool], None]
    due: float
    checking: bool = False
    """In a batch that has not answered yet."""
    hung: bool = False
    """Its check of an earlier batch has not come back: not checked again until it does."""


@dataclass(eq=False)
class _Batch:
    """The checks of one tick, run in one call off the loop (thread-safe)."""

    members: list[_Member]
    answers: dict[_Member, bool] = field(default_factory=dict)
    running: _Member | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        for member in self.members:
            with self.lock:
                if self.closed:
                    return
                self.running = member
            try:
                unchanged = member.check()
            except Exception:  # a check that fails says "look again"
                unchanged = False
            with self.lock:
                self.answers[member] = unchanged
                self.running = None

    def close(self) -> tuple[dict[_Member, bool], _Member | None]:
        """Stop (the checks not started never run); the answers, and the check still running."""
        with self.lock:
            self.closed = True
            return dict(self.answers), self.running


class SafetyNet:
    """One timer and one offload hop per batch for every periodic check of a host (see the
    module docstring). Runs on the event loop of the first `join`."""

    def __init__(self, offload: Offload) -> None:
        self._offload = offload
        self._members: set[_Member] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Batches run (for tests and the bench)."""

    def join(
        self,
        interval: float,
        check: Callable[[], bool],
        then: Callable[[bool], None],
        *,
        timeout: float,
    ) -> Callable[[], None]:
        """Check every `interval` seconds: `check()` off the loop (True: nothing changed;
        an exception or no answer within `timeout` counts as False), then `then(answer)` on
        the loop. Returns the call that leaves the net."""
        loop = asyncio.get_running_loop()
        member = _Member(interval, timeout, check, then, loop.time() + interval)
        self._members.add(member)
        self._arm(loop, member.due)  # (the others are due no sooner than the timer)

        def leave() -> None:
            self._members.discard(member)
            if not self._members:
                self.close()

        return leave

    def close(self) -> None:
        """Stop the timer and the batches running (members joining later start it again)."""
        self._members.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float | None = None) -> None:
        """Set the timer for the earliest member due (`when`: a member's due time, where
        the timer already covers every other member)."""
        if not self._members:
            return
        if when is None:
            when = min(member.due for member in self._members)
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        due = [m for m in self._members if m.due <= now + m.interval * BATCH_SLACK]
        for member in due:
            member.due = now + member.interval
        hung = [m for m in due if m.hung]
        checked = [m for m in due if not m.hung and not m.checking]
        for member in checked:
            member.checking = True
        for member in hung:
            member.then(False)  # its check hangs: it rescans (its scan timeout reports it)
        if checked:
            task = loop.create_task(self._run(checked), name="safety-net")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm(loop)

    async def _run(self, members: list[_Member]) -> None:
        self.batches += 1
        batch = _Batch(members)
        pending = asyncio.ensure_future(self._offload.run(batch.run))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(m.timeout for m in members)):
                await asyncio.shield(pending)
        answers, running = batch.close()
        loop = asyncio.get_running_loop()
        for member in members:
            member.checking = False
            if member in self._members:
                try:
                    member.then(answers.get(member, False))
                except Exception as exc:  # one member's fault never starves the others
                    loop.call_exception_handler(
                        {"message": "safety-net member failed", "exception": exc}
                    )
        if running is None:
            return
        running.hung = True  # not checked again until its check comes back
        try:
            await pending
        finally:
            running.hung = False
