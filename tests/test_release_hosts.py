"""Two hosts on one stateDir (a rolling update with maxSurge: the old host and the new one run
together): a device's release and a PreStartContainer on it are one at a time across both,
and what a device owes is read fresh from both hosts' entries (`release_lock`; hostile13 M7,
M8). Each host is a release tracker with its own state store (its own writer) on one
directory, as two kdp-host processes have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from kdp_host.allocation import HookFailed
from kdp_host.config import load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.holdings import Holder, Holdings, Settle, with_unlisted
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.release import ReleaseTracker
from kdp_host.release_state import STATE_FILE, ReleaseStateStore
from kdp_host.release_use import ReleaseState
from kdp_host.start_budget import StartBudget
from kdp_host.state_lock import hold_instance
from kdp_host.timings import Timings

from .conftest import wait_until
from .test_release import FPGA, _Commands, host_yaml, real_host, release_lines, release_script


def _host(
    short_dir: Path, writer: str, commands: _Commands, replicas: int = 1, pod: bool = False
) -> ReleaseTracker:
    """A host's tracker of the resource on the shared stateDir, started (it read the file);
    `pod`: its command is given `{pod}` too."""
    argv = '"reset", "{ids}", "{pod}"' if pod else '"reset", "{ids}"'
    config = load_config_text(
        f"kubelet: {{socketDir: {short_dir}/dp}}\nstateDir: {short_dir}/state\nresources:\n"
        f'  - name: {FPGA}\n    glob: {{paths: ["/dev/fpga*"]}}\n    replicas: {replicas}\n'
        f"    release: {{command: [{argv}]}}\n"
    )
    table = DeviceTable(replicas=replicas)
    table.publish([Device("fpga0", path="/dev/fpga0")])
    store = ReleaseStateStore(config.state_dir, get_logger(), DaemonThreads(), writer)
    store.load()
    tracker = ReleaseTracker(
        config.resources[0], table, store, commands, Metrics(process_collectors=False),
        get_logger(), timings=Timings(allocation_settle=0.0),
    )  # fmt: skip
    tracker.start()
    return tracker


def _free() -> Holdings:
    """A PodResources answer asked now: nothing held."""
    return Holdings(time.monotonic(), 0.0, {FPGA: {}})


async def test_a_use_the_other_host_admitted_is_released_before_the_next_start(
    short_dir: Path,
) -> None:
    """M7: the new host started (read the state) before the old one admitted p1; p2 gets the
    device through the new host, which never saw p1: p1's use is released before p2 starts,
    once, and the old host, seeing the device free later, does not release it again."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p1, through the old host
    await old.before_start(["fpga0"])  # (its entry written before the answer)
    new.allocated(["fpga0"])  # p1 ended; p2 through the new host
    await new.before_start(["fpga0"])
    assert new_commands.runs == [["reset", "fpga0"]]
    old.holdings(_free())  # the old host's poll: p1 gone (p2 not yet shown)
    await wait_until(lambda: old.view("fpga0")["state"] == "clean", what="old host done")
    assert old_commands.runs == [] and len(new_commands.runs) == 1
    await old.close()
    await new.close()


async def test_a_start_on_one_host_waits_for_the_release_the_other_runs(
    short_dir: Path,
) -> None:
    """M8: the old host runs p1's release; p2 is admitted on the device through the new host:
    its PreStartContainer answers only once that release ended (and runs none of its own)."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p1
    await old.before_start(["fpga0"])
    old_commands.gate.clear()  # the release takes a while
    old.holdings(_free())  # p1 ended: the old host releases
    await wait_until(lambda: old_commands.runs, what="the old host's release runs")
    new.allocated(["fpga0"])  # p2, through the new host
    start = asyncio.ensure_future(new.before_start(["fpga0"]))
    for _ in range(50):
        await asyncio.sleep(0.01)  # (a start that does not wait answers within these)
        assert not start.done(), "PreStartContainer answered while a release ran"
    old_commands.gate.set()
    await asyncio.wait_for(start, 30)
    assert old.view("fpga0")["state"] == "clean" and new_commands.runs == []
    await old.close()
    await new.close()


async def test_a_shared_device_another_id_of_which_is_held_is_not_released(
    short_dir: Path,
) -> None:
    """replicas: 2: q1 (the old host's) left fpga0::1, which q2 gets through the new host,
    while p1 holds fpga0::0 (through the new host): the device never was free, no release."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands, replicas=2)
    old = _host(short_dir, "host-old", old_commands, replicas=2)
    new.allocated(["fpga0::0"])  # p1
    await new.before_start(["fpga0::0"])
    old.allocated(["fpga0::1"])  # q1
    await old.before_start(["fpga0::1"])
    new.allocated(["fpga0::1"])  # q1 ended; q2
    await new.before_start(["fpga0::1"])
    assert new_commands.runs == [] and old_commands.runs == []
    await old.close()
    await new.close()


async def test_a_release_the_other_host_ran_is_not_run_again_by_one_that_saw_the_pod(
    short_dir: Path,
) -> None:
    """M8 with fast polls (hostile13 t17, PRI=1s): the new host saw p1 hold the device (a
    poll; it never allocated it), the old host releases it once p1 ended, and p2 gets it
    through the new host: the new host owes the release too, waits for the old host's and
    takes it as done (`release_done_by_peer`), instead of resetting the device twice."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p1
    await old.before_start(["fpga0"])
    held = Holdings(time.monotonic() - 1.0, 0.0, {FPGA: {"fpga0": (Holder("ns", "p1", "c", 0.0),)}})
    new.holdings(held)  # the new host's poll: p1 holds it
    old_commands.gate.clear()
    old.holdings(_free())  # p1 ended: the old host releases
    await wait_until(lambda: old_commands.runs, what="the old host's release runs")
    new.allocated(["fpga0"])  # p2, through the new host: it owes p1's release too
    start = asyncio.ensure_future(new.before_start(["fpga0"]))
    old_commands.gate.set()
    await asyncio.wait_for(start, 30)
    assert len(old_commands.runs) == 1 and new_commands.runs == []
    assert new.view("fpga0")["state"] == "in_use"
    await old.close()
    await new.close()


async def test_a_start_still_waiting_at_its_deadline_fails_with_why(short_dir: Path) -> None:
    """The other host's release still runs when the kubelet's deadline nears: the start fails
    with that (the kubelet tries again), not with the kubelet's DeadlineExceeded."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])
    await old.before_start(["fpga0"])
    old_commands.gate.clear()
    old.holdings(_free())
    await wait_until(lambda: old_commands.runs, what="the old host's release runs")
    new.allocated(["fpga0"])
    with pytest.raises(HookFailed, match="another host's release of it still runs"):
        await new.before_start(["fpga0"], StartBudget.of_call(0.8))  # (0.3 s to wait)
    old_commands.gate.set()
    await old.close()
    await new.close()


async def test_a_start_of_the_other_hosts_allocate_runs_no_release_of_that_use(
    short_dir: Path,
) -> None:
    """Seen in t30 (hostile14) while checking N8: the kubelet's Allocate of p1 went to the
    old host, its PreStartContainer to the new one (registered meanwhile), which took the
    use from the old host's booking, dated when it saw it (after that Allocate): the old
    host's entry of that same use is not an earlier use owed a release. On the old code the
    new host released the device before p1's first start (failing it while the device was
    not listed there yet)."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    (short_dir / "state").mkdir(exist_ok=True)  # (a host makes it at start)
    old.allocated(["fpga0"])  # p1, through the old host (its entry written soon)
    state = short_dir / "state" / "release-state.json"
    await wait_until(lambda: state.exists() and "host-old" in state.read_text(), what="entry")
    new.booked(["fpga0"], "host-old")  # the new host sees the old host's booking
    await new.before_start(["fpga0"])  # p1's PreStartContainer, on the new host
    assert new_commands.runs == [] and old_commands.runs == []
    assert new.view("fpga0")["state"] == "in_use"
    await old.close()
    await new.close()


class _Polls:
    """A host's PodResources answers as its poller publishes them (`Settle`, then its
    unlisted IDs), asked `at` seconds after `base` (a clock the test moves on)."""

    def __init__(self, tracker: ReleaseTracker) -> None:
        self.tracker, self.base = tracker, time.monotonic()
        self.settle = Settle(Timings(gone_after=4.0))
        self.previous: Holdings | None = None

    def poll(self, at: float, *pods: str, unlisted: float | None = None) -> None:
        """An answer asked `at` s on in which `pods` hold fpga0 (`unlisted`: fpga0 is an ID
        no answer has shown, handed out at that Unix time)."""
        by_id = {"fpga0": tuple(Holder("default", p, "c", 0.0) for p in pods)} if pods else {}
        answer = Holdings(self.base + at, 0.0, {FPGA: by_id})
        published, _ = self.settle.apply(answer, self.previous)
        if unlisted is not None:
            published = with_unlisted(published, {FPGA: {"fpga0": unlisted}})
        self.previous = published
        self.tracker.holdings(published)


async def test_a_holder_carried_after_the_other_hosts_release_does_not_run_it_again(
    short_dir: Path,
) -> None:
    """hostile14 N8 (t33): both hosts saw p1 hold the device; p1 ends. Each host carries a
    holder missing from its answers for `gone_after` from its own first miss, so the old
    host lets p1 go and releases while the new host still carries p1: its answers after that
    release are no news of p1's use (`Holdings.unshown`), and the new host, letting p1 go,
    takes the release as done (`release_done_by_peer`). On the old code it ran it again."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p1, through the old host
    await old.before_start(["fpga0"])
    polls = _Polls(new)
    polls.poll(1.0, "p1")  # the new host's poll: p1 holds it
    polls.poll(2.0)  # p1 ended: missing once, carried
    old.holdings(Holdings(polls.base + 3.0, 0.0, {FPGA: {}}))  # the old host lets p1 go
    await wait_until(lambda: old.view("fpga0")["state"] == "clean", what="the old host's release")
    polls.poll(4.0)  # missing for 2 s: still carried
    assert new.view("fpga0")["state"] == "in_use" and len(old_commands.runs) == 1
    polls.poll(6.5)  # missing for 4.5 s: let go, owed
    await wait_until(lambda: new.view("fpga0")["state"] == "clean", what="the new host done")
    assert len(old_commands.runs) == 1 and new_commands.runs == []
    await old.close()
    await new.close()


async def test_a_use_listed_after_the_other_hosts_release_is_released_again(
    short_dir: Path,
) -> None:
    """N8's bound: an answer that lists the device held after the old host's release (p2,
    a use the new host never saw allocated) is news of a use that release did not cover:
    once it is let go, the new host runs the release."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p1, through the old host
    await old.before_start(["fpga0"])
    polls = _Polls(new)
    polls.poll(1.0, "p1")
    polls.poll(2.0)  # p1 ended: carried
    old.holdings(Holdings(polls.base + 3.0, 0.0, {FPGA: {}}))  # the old host lets p1 go
    await wait_until(lambda: old.view("fpga0")["state"] == "clean", what="the old host's release")
    polls.poll(4.0, "p2")  # listed: p2 holds it now
    polls.poll(5.0)  # p2 ended
    polls.poll(9.5)  # let go: owed
    await wait_until(lambda: new_commands.runs, what="the new host's release of p2's use")
    assert len(old_commands.runs) == 1 and new_commands.runs == [["reset", "fpga0"]]
    await old.close()
    await new.close()


async def test_a_peer_use_held_unlisted_after_the_peers_release_does_not_run_it_again(
    short_dir: Path,
) -> None:
    """hostile14 N8 as its report saw it: p2, admitted through the old host, ended before
    any answer listed it; the new host took the old host's booking as a use and holds its ID
    as unlisted (until the kubelet's checkpoint no longer lists it) after the old host
    released it: those answers are no news of p2's use, and the new host takes that release
    as done. On the old code it ran it again."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p2, through the old host
    await old.before_start(["fpga0"])
    new.booked(["fpga0"], "host-old")  # the new host sees the old host's booking
    polls, booked = _Polls(new), time.time()
    polls.poll(1.0, unlisted=booked)  # no answer lists p2: held unlisted
    old.holdings(Holdings(polls.base + 2.0, 0.0, {FPGA: {}}))  # the old host lets p2 go
    await wait_until(lambda: old.view("fpga0")["state"] == "clean", what="the old host's release")
    polls.poll(3.0, unlisted=booked)  # the new host still holds it unlisted
    assert new.view("fpga0")["state"] == "in_use" and len(old_commands.runs) == 1
    polls.poll(4.0)  # the checkpoint no longer lists it: free, owed
    await wait_until(lambda: new.view("fpga0")["state"] == "clean", what="the new host done")
    assert len(old_commands.runs) == 1 and new_commands.runs == []
    await old.close()
    await new.close()


def _held_by(pod: str) -> Holdings:
    """A PodResources answer asked now: `pod` holds fpga0."""
    holder = Holder("default", pod, "c", time.time())
    return Holdings(time.monotonic(), 0.0, {FPGA: {"fpga0": (holder,)}})


async def test_a_release_owed_for_a_peer_use_is_not_given_the_next_pod(short_dir: Path) -> None:
    """hostile13 M16: p1's use (the old host's, never seen held here) is released at p2's
    start through the new host, which already saw p2 hold the device: `{pod}` is who held
    the use released as seen here (nobody: empty), never p2. On the old code: p2."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands, pod=True)
    old = _host(short_dir, "host-old", old_commands, pod=True)
    old.allocated(["fpga0"])  # p1, through the old host
    await old.before_start(["fpga0"])
    new.allocated(["fpga0"])  # p1 ended; p2 through the new host
    new.holdings(_held_by("p2"))  # (asked after p2's Allocate: p2 holds it)
    await new.before_start(["fpga0"])
    assert new_commands.runs == [["reset", "fpga0", ""]]
    await old.close()
    await new.close()


async def test_a_use_owed_from_before_and_by_the_stopped_host_is_released_once(
    short_dir: Path,
) -> None:
    """hostile23 F5: the old host saw p1 hold the device, then gone: its release of p1's use
    runs; the new host starts, takes that owed use up from the state file (owed from before)
    and waits for the lock; the old host stops mid-release. The new host runs it once, naming
    p1, and p2's start through it runs no other release of that use (on the old code: the
    old host's entry, still owed, was released again as a peer's use, `{pod}` empty; and
    when the kubelet's checkpoint still listed p1's ID at the new host's start, once more as
    that ID allocated again)."""
    old_commands, new_commands = _Commands(), _Commands()
    old = _host(short_dir, "host-old", old_commands, pod=True)
    old.allocated(["fpga0"])  # p1, through the old host
    old.holdings(_held_by("p1"))
    await old.before_start(["fpga0"])
    old_commands.gate.clear()  # (its release is stopped inside)
    old.holdings(_free())  # p1 ended: the old host releases
    await wait_until(lambda: old_commands.runs, what="the old host's release runs")
    state = short_dir / "state" / STATE_FILE
    await wait_until(lambda: '"owed": true' in state.read_text(), what="its owed entry")
    running = hold_instance(str(short_dir / "state"), "host-old", get_logger())
    new = _host(short_dir, "host-new", new_commands, pod=True)  # (owed from before)
    await old.close()  # stopped mid-release: its entry stays owed
    os.close(running)  # (the old host's end)
    await wait_until(lambda: new.view("fpga0")["state"] == "clean", what="the new host's release")
    stale = {FPGA: {"fpga0": 0.0}}  # (p1's ID, still in the kubelet's checkpoint: unlisted)
    new.holdings(with_unlisted(Holdings(time.monotonic(), 0.0, {FPGA: {}}), stale))
    new.allocated(["fpga0"])  # p2, through the new host: allocated again, p1's use owed again
    await new.before_start(["fpga0"])
    assert new_commands.runs == [["reset", "fpga0", "p1"]]
    await new.close()


async def test_a_release_owed_for_a_peer_use_names_the_pod_that_host_saw(short_dir: Path) -> None:
    """hostile23 F5: the old host saw p1 hold the device (its entry keeps who held the use);
    p1's use is released at p2's start through the new host: `{pod}` is p1, as the old host
    knew it (on the old code: empty, the entry kept no holders)."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands, pod=True)
    old = _host(short_dir, "host-old", old_commands, pod=True)
    old.allocated(["fpga0"])  # p1, through the old host
    old.holdings(_held_by("p1"))  # (the old host's poll: p1 holds it)
    await old.before_start(["fpga0"])  # (its entry written)
    new.allocated(["fpga0"])  # p1 ended; p2 through the new host
    new.holdings(_held_by("p2"))
    await new.before_start(["fpga0"])
    assert new_commands.runs == [["reset", "fpga0", "p1"]] and old_commands.runs == []
    await old.close()
    await new.close()


class _FailsFirst(_Commands):
    """Records release runs; the first fails (its run waits for `gate` as the others do)."""

    async def run(self, argv, **options):  # type: ignore[no-untyped-def]
        result = await super().run(argv, **options)
        return dataclasses.replace(result, returncode=3) if len(self.runs) == 1 else result


async def test_a_release_retried_after_the_next_pod_was_seen_names_the_earlier_one(
    short_dir: Path,
) -> None:
    """M16 on one host: p1's release (owed when p2 got the device) fails while PodResources
    shows p2 holding it; the retry (1 s later) releases p1's use: `{pod}` stays p1."""
    commands = _FailsFirst()
    tracker = _host(short_dir, "host", commands, pod=True)
    tracker.allocated(["fpga0"])  # p1
    tracker.holdings(_held_by("p1"))
    commands.gate.clear()
    tracker.allocated(["fpga0"])  # p1 ended; p2: p1's release owed, running
    await wait_until(lambda: commands.runs, what="p1's release runs")
    tracker.holdings(_held_by("p2"))
    commands.gate.set()
    await wait_until(lambda: len(commands.runs) == 2, what="the retry")
    assert [run[2] for run in commands.runs] == ["p1", "p1"]
    await tracker.close()


async def test_a_use_a_host_without_release_admitted_is_released_before_the_next_start(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """hostile13 M15, a rolling update that adds `release`: the host with it runs, then one
    whose config has none (it keeps no release state) registers and admits p1; it stops,
    the first registers again, p1 ends and p2 gets the device through it at once (no
    PodResources answer in between): p1's use, seen as the other host's booking, is released
    before p2's start answers. On the old code no release ran."""
    command = release_script(short_dir)
    kubelet, new = await real_host(
        real_kubelet_factory, start_host, short_dir, devices, command, interval="1h"
    )
    plain = host_yaml(kubelet.socket_dir, devices, short_dir / "state", command,
                      pod_resources=short_dir / "pr", interval="1h")  # fmt: skip
    since = kubelet.last_seq()
    old = await start_host(plain[: plain.index("    release:")], fast=True)
    await kubelet.acall(kubelet.registered_at, [FPGA], since)
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["device_ids"][FPGA] == ["fpga0"]
    await wait_until(lambda: _state(new) == "in_use", what="the host with release sees p1's use")
    since = kubelet.last_seq()
    await old.shutdown()  # (the other host registers again: `peer_sockets`)
    await kubelet.acall(kubelet.registered_at, [FPGA], since)
    await kubelet.acall(kubelet.release, "p1")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"]
    lines = release_lines(short_dir)
    assert [line.split()[::2] for line in lines] == [["fpga0", "start"], ["fpga0", "done"]], lines


def _state(running, device: str = "fpga0") -> ReleaseState:  # type: ignore[no-untyped-def]
    """The device's release state on a host ("clean" while its resource has not started)."""
    resource = running.host.resources.get(FPGA)
    if resource is None or resource.release is None:
        return "clean"
    state: ReleaseState = resource.release.view(device)["state"]
    return state


async def test_two_real_hosts_release_a_device_once_and_the_next_start_waits(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    """M8 as a rolling update has it (hostile13 t25): the old host admitted p1, the new host
    started on the same stateDir and saw p1 hold the device, p1 ends, p2 asks for it at once.
    Both hosts owe the release: it runs one at a time (once, unless a host's answers make it
    owe it again: `test_a_release_the_other_host_ran_is_not_run_again_by_one_that_saw_the_pod`),
    and p2's start (through the kubelet's real device manager) returns only after it ended.
    On the old code both hosts ran it, at once."""
    command = release_script(short_dir, sleep=1.0)
    kubelet, old = await real_host(real_kubelet_factory, start_host, short_dir, devices, command)
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    new = await start_host(
        host_yaml(kubelet.socket_dir, devices, short_dir / "state", command,
                  pod_resources=short_dir / "pr"),
        fast=True,
    )  # fmt: skip
    await wait_until(lambda: _state(new) == "in_use", what="the new host sees p1 hold it")
    await wait_until(lambda: _state(old) == "in_use", what="the old host sees p1 hold it")
    await kubelet.acall(kubelet.release, "p1")
    await wait_until(lambda: release_lines(short_dir), what="a release starts")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"]
    lines = release_lines(short_dir)
    assert lines and lines[-1].endswith(" done") and len(lines) % 2 == 0, lines
    await wait_until(
        lambda: _state(old) != "running" and _state(new) != "running"
        and all(not r.host.resources[FPGA].release.uses["fpga0"].owed for r in (old, new)),
        what="both hosts done with p1's use",
    )  # fmt: skip
    lines = release_lines(short_dir)  # one at a time, never two at once (the old code)
    assert [line.split()[-1] for line in lines] == ["start", "done"] * (len(lines) // 2), lines


async def test_hostile15_f5_a_device_id_too_long_for_a_file_name_still_has_its_lock(
    tmp_path: Path,
) -> None:
    """Valid IDs of 90 `%` or 100 `é` (percent-encoded: 270 and 600 bytes) made no lock file
    (`release_lock_failed`, File name too long): their releases were not serialised across
    hosts. A name past NAME_MAX is cut and hashed (`names.QUOTED_FILE_NAME`): one per pair, and
    two hosts' holds of it exclude each other."""
    from kdp_host.release_lock import LockBusy, lock_name
    from kdp_host.release_state import ReleaseStateStore as Store

    pairs = [("ex.com/p", "%" * 90), ("ex.com/p", "é" * 100), ("ex.com/p", "é" * 99 + "e")]
    names = [lock_name(*pair) for pair in pairs]
    assert len(set(names)) == 3 and all(len(n.encode()) <= 255 for n in names)
    assert lock_name("ex.com/p", "d0") == "ex.com%2Fp,d0"  # (as an older version names it)
    threads = DaemonThreads()
    one, two = (Store(str(tmp_path), get_logger(), threads, writer=w) for w in ("a", "b"))
    async with one.locks.held(*pairs[0]) as lock:
        assert lock.fd >= 0
        with pytest.raises(LockBusy):
            async with two.locks.held(*pairs[0], timeout=0.2):
                pass
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == [names[0]]


async def test_hostile20_f6_a_replica_id_of_the_other_hosts_count_holds_the_device(
    short_dir: Path,
) -> None:
    """hostile20 F6: a rollout that raises `replicas` 1 -> 2. p1's use (the old host's) is
    released; p2 gets `fpga0::0` through the new host, and the old host (`replicas: 1`) sees
    that booking and then an answer that lists p2 holding `fpga0::0`: an ID of its device
    fpga0, whatever replica count it advertises the resource with. No release under p2.
    On the old code the old host read `fpga0::0` as a device of its own name, found no ID of
    fpga0 held and reset it under the running p2."""
    old_commands, new_commands = _Commands(), _Commands()
    new = _host(short_dir, "host-new", new_commands, replicas=2)
    old = _host(short_dir, "host-old", old_commands)
    old.allocated(["fpga0"])  # p1, through the old host
    await old.before_start(["fpga0"])
    old.holdings(_free())  # p1 ended: the old host releases
    await wait_until(lambda: old.view("fpga0")["state"] == "clean", what="the old host's release")
    new.allocated(["fpga0::0"])  # p2, through the new host
    await new.before_start(["fpga0::0"])
    old.booked(["fpga0::0"], "host-new")  # the old host sees the new host's booking
    assert old.view("fpga0")["state"] == "in_use"
    p2 = Holder("default", "p2", "c", time.time())
    old.holdings(Holdings(time.monotonic(), 0.0, {FPGA: {"fpga0::0": (p2,)}}))
    assert old.view("fpga0")["state"] == "in_use", "fpga0 released under p2"
    assert len(old_commands.runs) == 1
    old.holdings(_free())  # p2 ended: the old host owes fpga0's release (p2's use)
    await wait_until(lambda: len(old_commands.runs) == 2, what="the release of p2's use")
    await old.close()
    await new.close()


async def test_hostile20_f6_an_entry_an_older_version_kept_under_a_replica_id_is_its_devices(
    short_dir: Path,
) -> None:
    """hostile20 F6, what the old code left in `release-state.json`: the old host
    (`replicas: 1`) kept the new host's booking of `fpga0::0` as a device of that name. Read
    back it is fpga0's use (merged with fpga0's entry): held while p2 holds `fpga0::0`, and
    fpga0 released once, when p2 is gone; no device named `fpga0::0` is tracked."""
    state = short_dir / "state"
    state.mkdir()
    entries = {"fpga0": {"used": ["fpga0"], "owed": False, "allocatedAt": time.time() - 9},
               "fpga0::0": {"used": ["fpga0::0"], "owed": False, "allocatedAt": time.time() - 5,
                            "bookedBy": "host-new"}}  # fmt: skip
    (state / STATE_FILE).write_text(json.dumps({"version": 1, "resources": {FPGA: entries}}))
    commands = _Commands()
    old = _host(short_dir, "host-old", commands)
    assert old.outstanding() == {"fpga0"}
    p2 = Holder("default", "p2", "c", time.time())
    old.holdings(Holdings(time.monotonic(), 0.0, {FPGA: {"fpga0::0": (p2,)}}))
    assert old.view("fpga0")["state"] == "in_use" and commands.runs == []
    old.holdings(_free())  # p2 ended
    await wait_until(lambda: old.view("fpga0")["state"] == "clean", what="fpga0 released")
    assert commands.runs == [["reset", "fpga0"]] and old.outstanding() == set()
    await old.close()
