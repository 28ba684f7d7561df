"""A container that joins a shared device (`replicas` > 1) starts without the device's release
only while another holder is known alive (hostile17 F2, `release_join`): pX holds fpga0::0
and p1 fpga0::1; pX ends (seen gone: no release, p1 holds the device); p1 ends and p2 is
given fpga0::0 at once, before any answer saw p1 gone. No release ran between p1 and p2."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status

from kdp_host.allocation import HookFailed
from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.handed_entries import Handed, after_release, releasing
from kdp_host.holdings import Holder, Holdings
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.release import ReleaseTracker
from kdp_host.release_state import ReleaseStateStore
from kdp_host.simulator import KubeletSimulator

from .conftest import script, wait_until

FPGA = "vendor.example/fpga"
A, B = "fpga0::0", "fpga0::1"


class _Commands:
    """Records release runs."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []

    async def run(self, argv, *, timeout, env=None, cwd=None, max_output=0):  # type: ignore[no-untyped-def]
        from kdp_host.process import CommandResult

        self.runs.append(list(argv))
        return CommandResult(0, b"", "")

    def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class _Answers:
    """The poller as a container start asks it: each call hands the tracker the next answer
    (made from the time it must be asked after), or none (False) once they ran out."""

    answering = True

    def __init__(self, *answers: Callable[[float], Holdings]) -> None:
        self.answers, self.asked = list(answers), 0
        self.tracker: ReleaseTracker | None = None

    async def answer_after(self, after: float, timeout: float) -> bool:
        self.asked += 1
        if not self.answers:
            return False
        assert self.tracker is not None
        self.tracker.holdings(self.answers.pop(0)(after + 0.1))
        return True


def _tracker(short_dir: Path, now: list[float], answers: _Answers | None = None):  # type: ignore[no-untyped-def]
    text = (
        f"kubelet: {{socketDir: {short_dir}/dp}}\nstateDir: {short_dir}/state\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["/dev/fpga*"]}}\n    replicas: 2\n'
        '    release: {command: ["reset", "{ids}", "{pod}"]}\n'
    )
    config = load_config_text(text)
    table = DeviceTable(replicas=2)
    table.publish([Device("fpga0", path="/dev/fpga0")])
    store = ReleaseStateStore(config.state_dir, get_logger(), DaemonThreads())
    store.load()
    commands = _Commands()
    tracker = ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(), clock=lambda: now[0], **({} if answers is None else {"answers": answers}),
    )  # fmt: skip
    if answers is not None:
        answers.tracker = tracker
    tracker.start()
    return tracker, commands


def _answer(asked_at: float, carried: tuple[str, ...] = (), **held: str) -> Holdings:
    """An answer asked at `asked_at`: ID -> pod (`A`, `B` by their letters), `carried` held
    by a holder the kubelet no longer lists (`holdings.Settle`)."""
    ids = {A if k == "a" else B: pod for k, pod in held.items()}
    by_id = {i: (Holder("ns", pod, "c", 0.0),) for i, pod in ids.items()}
    return Holdings(asked_at, 0.0, {FPGA: by_id}, frozenset((FPGA, i) for i in carried))


def _p1_alone(tracker: ReleaseTracker, now: list[float]) -> None:
    """pX (A) and p1 (B) shared fpga0; pX was seen gone (no release: p1 holds it)."""
    now[0] = 100.0
    tracker.allocated([A])  # pX
    now[0] = 101.0
    tracker.allocated([B])  # p1
    tracker.holdings(_answer(102.0, a="pX", b="p1"))
    tracker.holdings(_answer(103.0, b="p1"))


async def test_an_answer_after_the_join_that_shows_no_other_holder_owes_the_release(
    short_dir: Path,
) -> None:
    """p1 ended; p2 is given A at 104, before any answer saw p1 gone. The answer asked after
    that Allocate shows A alone held (p2's): every earlier user is gone, p1's use is released
    (`{pod}`: p1, not p2) and p2's container starts after it."""
    now = [0.0]
    tracker, commands = _tracker(short_dir, now)
    _p1_alone(tracker, now)
    await asyncio.sleep(0)
    assert commands.runs == []
    now[0] = 104.0
    tracker.allocated([A])  # p2: A was free since pX ended
    tracker.holdings(_answer(105.0, a="p2"))
    await tracker.before_start([A])
    assert commands.runs == [["reset", "fpga0", "p1"]], "p2 started on fpga0 unreleased"
    assert tracker.view("fpga0")["state"] == "in_use"
    tracker.holdings(_answer(106.0, a="p2"))
    await asyncio.sleep(0)
    assert len(commands.runs) == 1  # (p2's own use goes on: released once it ends)
    await tracker.close()


async def test_every_earlier_id_allocated_again_owes_the_release(short_dir: Path) -> None:
    """p1 (A) and p2 (B) both end; p3 gets A and p4 B at once: the Allocates themselves prove
    every earlier user gone (p3 joined no live holder), so the release is owed at p4's."""
    now = [100.0]
    tracker, commands = _tracker(short_dir, now)
    tracker.allocated([A])
    tracker.allocated([B])
    tracker.holdings(_answer(101.0, a="p1", b="p2"))
    now[0] = 102.0
    tracker.allocated([A])  # p3: joins B (p2's, as last seen)
    tracker.allocated([B])  # p4: p2 is gone too
    await tracker.before_start([A])
    await tracker.before_start([B])
    assert len(commands.runs) == 1, commands.runs
    assert commands.runs[0][:2] == ["reset", "fpga0"] and "p3" not in commands.runs[0][2]
    await tracker.close()


async def test_a_start_that_joined_asks_for_an_answer_and_waits_for_the_release(
    short_dir: Path,
) -> None:
    """p2's PreStartContainer finds its join undecided (the last answer predates its
    Allocate): it asks for one, which shows no other holder; the release runs first."""
    now = [0.0]
    answers = _Answers(lambda at: _answer(at, a="p2"))
    tracker, commands = _tracker(short_dir, now, answers)
    _p1_alone(tracker, now)
    now[0] = 104.0
    tracker.allocated([A])
    await tracker.before_start([A])
    assert answers.asked == 1
    assert commands.runs == [["reset", "fpga0", "p1"]]
    await tracker.close()


async def test_a_container_that_joins_a_live_sharer_is_not_held_back(short_dir: Path) -> None:
    """p2 joins while p1 really holds B: the answer its start asks for lists B held, so no
    release runs (the device never was free); it runs once both have ended."""
    now = [0.0]
    answers = _Answers(lambda at: _answer(at, a="p2", b="p1"))
    tracker, commands = _tracker(short_dir, now, answers)
    _p1_alone(tracker, now)
    now[0] = 104.0
    tracker.allocated([A])
    await tracker.before_start([A])
    assert answers.asked == 1 and commands.runs == []
    await tracker.before_start([A])  # (a container restart: decided, nothing asked)
    assert answers.asked == 1
    tracker.holdings(_answer(110.0, a="p2"))  # p1 ends: p2 holds it still
    await asyncio.sleep(0)
    assert commands.runs == []
    tracker.holdings(_answer(111.0))
    await tracker.before_start([B])
    assert len(commands.runs) == 1
    await tracker.close()


async def test_a_sharer_only_carried_decides_nothing(short_dir: Path) -> None:
    """The first answer p2's start gets still carries p1 (missing from the kubelet's answers
    for less than `Timings.gone_after`): no decision, another answer is asked for; once p1 is
    let go, the release runs before p2 starts."""
    now = [0.0]
    answers = _Answers(
        lambda at: _answer(at, carried=(B,), a="p2", b="p1"), lambda at: _answer(at, a="p2")
    )
    tracker, commands = _tracker(short_dir, now, answers)
    _p1_alone(tracker, now)
    now[0] = 104.0
    tracker.allocated([A])
    await tracker.before_start([A])
    assert answers.asked == 2
    assert commands.runs == [["reset", "fpga0", "p1"]]
    await tracker.close()


async def test_a_join_no_answer_decides_refuses_the_start(short_dir: Path) -> None:
    """No answer comes (PodResources unreachable): p2's start is refused (UNAVAILABLE, the
    kubelet tries again), neither let start unreleased nor released under a maybe-live p1."""
    now = [0.0]
    answers = _Answers()
    tracker, commands = _tracker(short_dir, now, answers)
    _p1_alone(tracker, now)
    now[0] = 104.0
    tracker.allocated([A])
    with pytest.raises(HookFailed, match="joins device fpga0") as refused:
        await tracker.before_start([A])
    assert refused.value.status == Status.UNAVAILABLE and commands.runs == []
    await tracker.close()


async def test_without_pod_resources_a_joiner_that_started_is_a_user(short_dir: Path) -> None:
    """hostile17 F5: PodResources off. pX has A, p1 joins with B and starts (on trust:
    nothing can decide); pX ends unseen and p2 is given A. Before, A "allocated again"
    left only the joiner B and the release ran on fpga0 under the running p1; now p1 is a
    user once started: p2 joins it, no release."""
    now = [100.0]
    tracker, commands = _tracker(short_dir, now)
    tracker.allocated([A])  # pX
    now[0] = 101.0
    tracker.allocated([B])  # p1 joins pX
    await tracker.before_start([B])
    now[0] = 102.0
    tracker.allocated([A])  # p2: pX has ended, p1 runs
    await tracker.before_start([A])
    assert commands.runs == [], "released under the running p1"
    await tracker.close()


async def test_a_sharer_no_answer_lists_is_a_live_one(short_dir: Path) -> None:
    """hostile17 F6: B is held by a regular init container's pod, which no answer lists (the
    kubelet holds it: unlisted). p2 joins with A: the answer its start asks for shows B held
    by that unlisted holder, a live sharer: p2 starts at once, no release (before: refused at
    every start for the holder's whole life, as undecided)."""
    now = [0.0]

    def unlisted_b(at: float, a: str | None = None) -> Holdings:
        held = {B: (Holder("", "", "", 0.0, listed=False),)}
        if a is not None:
            held[A] = (Holder("ns", a, "c", 0.0),)
        return Holdings(at, 0.0, {FPGA: held}, frozenset({(FPGA, B)}))

    answers = _Answers(lambda at: unlisted_b(at, a="p2"))
    tracker, commands = _tracker(short_dir, now, answers)
    now[0] = 100.0
    tracker.allocated([A])  # pX
    now[0] = 101.0
    tracker.allocated([B])  # the init container's pod
    tracker.holdings(unlisted_b(102.0, a="pX"))
    tracker.holdings(unlisted_b(103.0))  # pX gone
    now[0] = 104.0
    tracker.allocated([A])  # p2
    await tracker.before_start([A])
    assert commands.runs == [] and answers.asked <= 1
    await tracker.close()


def test_a_release_owed_under_joiners_keeps_their_use() -> None:
    """The record's use of fpga0 under A and B: B's user gone, A joined since. B's part is
    owed (the release acts on it), A's goes on as the newest use and stays once released."""
    from kdp_host.handed_entries import owed_but

    device = Device("fpga0", path="/dev/fpga0")
    both = Handed(device, frozenset({A, B}), 1.0)
    split = owed_but(both, frozenset({A}))
    assert (split.ids, split.owed) == ({A}, False)
    assert [(u.ids, u.owed) for u in split.earlier] == [({B}, True)]
    released = after_release(split, releasing(split))
    assert (released.ids, released.owed, released.earlier) == ({A}, False, ())
    assert owed_but(both, frozenset()) == owed_but(both, {"other"}) != both


# --------------------------------------------------------------------------- a host


def _host_yaml(socket_dir: Path, root: Path, command: str) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: {root}/pr/kubelet.sock, "
        "podResourcesInterval: 1s}\n"
        f"stateDir: {root}/state\nmetrics: {{listen: 127.0.0.1:0}}\nresources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{root}/dev/fpga0"]}}\n'
        "    replicas: 2\n"
        f'    release: {{command: ["{command}", "{{ids}}", "{{pod}}"]}}\n'
    )


@pytest.mark.fast
async def test_a_pod_admitted_right_after_the_last_sharer_ended_starts_after_the_release(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """The kubelet's PodResources and a host (hostile17 F2's repro): p2, admitted at once
    after p1 ended and given pX's long-free ID, starts only after p1's use is released."""
    kubelet, root = pod_resources_kubelet, short_dir
    (root / "dev").mkdir()
    (root / "dev" / "fpga0").touch()
    log = root / "release.log"
    command = script(root, "release.sh", f'echo "$1 $2" >> {log}\n')
    running = await start_host(_host_yaml(socket_dir, root, command))
    await kubelet.wait_for(lambda: len(kubelet.resource(FPGA).healthy_ids) == 2)
    poller = running.host.pod_resources

    def held(pod: str | None = None) -> set[str]:
        answer = {} if poller.holdings is None else poller.holdings.of(FPGA)
        return {i for i, hs in answer.items() if pod is None or any(h.pod == pod for h in hs)}

    await kubelet.allocate(FPGA, 1, pod_uid="pX")
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await wait_until(lambda: held() == {A, B}, what="both sharers shown")
    x_id, p1_id = held("pX"), held("p1")
    await kubelet.release("pX")
    await wait_until(lambda: held() == p1_id, what="pX seen gone")
    assert not log.exists(), "released while p1 held fpga0"
    await kubelet.release("p1")
    await kubelet.allocate(FPGA, 1, pod_uid="p2")  # (Allocate, then PreStartContainer)
    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == 1, f"p2 started on fpga0 with no release since p1: {lines}"
    assert lines[0].startswith("fpga0 ") and "p2" not in lines[0], lines
    await wait_until(lambda: held("p2"), what="p2 shown")
    assert held("p2") == x_id  # (the ID pX had, free since: no Allocate proved p1 gone)


async def test_an_answer_a_start_waits_for_is_asked_at_once(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path
) -> None:
    """The poller's next List is hurried for `answer_after` (an interval of an hour: without
    that, no answer would come); an answer already asked after is no new call."""
    from kdp_host.podresources import PodResourcesPoller

    poller = PodResourcesPoller(
        str(short_dir / "pr" / "kubelet.sock"), 3600.0, Metrics(process_collectors=False),
        get_logger(),
    )  # fmt: skip
    seen: list[float] = []
    poller.subscribe(lambda answer: seen.append(answer.asked_at))
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: seen, what="the first poll")
        after = poller.clock()
        assert await poller.answer_after(after, 30.0)
        assert len(seen) == 2 and seen[-1] > after
        assert await poller.answer_after(seen[0], 30.0) and len(seen) == 2
        assert not await poller.answer_after(poller.clock(), 0.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_through_the_real_kubelet_the_next_pod_starts_after_the_release(
    real_kubelet_factory: Any, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """hostile17 F2's repro through the kubelet's real device manager and PodResources
    server: p2, admitted at once after p1 ended and given pX's ID, starts after p1's release."""
    root = short_dir
    (root / "dev").mkdir()
    (root / "dev" / "fpga0").touch()
    log = root / "release.log"
    command = script(root, "release.sh", f'echo "$1 $2" >> {log}\n')
    kubelet = real_kubelet_factory(pod_resources_dir=root / "pr")
    running = await start_host(_host_yaml(kubelet.socket_dir, root, command), fast=True)
    await kubelet.await_for(
        lambda k: (k.resource(FPGA) or {}).get("healthy") == 2, what="fpga registered"
    )
    poller = running.host.pod_resources

    def held() -> set[str]:
        return set() if poller.holdings is None else set(poller.holdings.of(FPGA))

    def ids(answer: dict[str, Any]) -> set[str]:
        assert answer["error"] == "", answer
        return set(answer["device_ids"][FPGA])

    x_id = ids(await kubelet.acall(kubelet.allocate, "pX", {FPGA: 1}))
    p1_id = ids(await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))
    await wait_until(lambda: held() == {A, B}, what="both sharers shown")
    await kubelet.acall(kubelet.release, "pX")
    await wait_until(lambda: held() == p1_id, what="pX seen gone")
    assert not log.exists(), "released while p1 held fpga0"
    await kubelet.acall(kubelet.release, "p1")
    assert ids(await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})) == x_id
    lines = log.read_text().splitlines() if log.exists() else []
    assert lines == ["fpga0 p1"], f"p2 started on fpga0 with no release since p1: {lines}"
