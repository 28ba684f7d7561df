"""Issue 17, hostile23 F5: a same-name rolling update on one stateDir, the old host SIGKILLed
while it releases a device: the new host runs that ONE use's release once, with the pod the
old host knew (through the kubelet's real device manager and PodResources server).

p1 used fpga0 through the old host and ended; the old host's release of it runs (held on a
gate file here, so the kill lands inside it every run); the new host starts, registers, and
takes that owed use up from the files the old host kept; the old host is killed. The new
host then ran the release twice before p2's container started: once as owed from before
(`release_owed_from_before`), once more as the killed host's use (`release_owed
reason=peer_use`), both with `{pod}` empty; a third time when the kubelet's checkpoint still
listed p1's ID at its start and p2 was allocated it (`release_owed reason=allocated_again`).
A third host started while p2 ran released fpga0 under p2.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.release_document import checked_entry, device_entry, merged_entry
from kdp_host.release_use import kept_use

from .conftest import KdpProcess, script, wait_until
from .kubelet_harness import RealKubelet, healthy
from .test_release import FPGA, _answer, _Commands, _tracker, host_yaml

pytestmark = pytest.mark.fast


def _gated_release(directory: Path, gate: Path) -> str:
    """A release command that logs `<ids> <ns>/<pod>/<container> start|done <host pid>` and
    ends once `gate` exists (the host is the command's parent: `$PPID`)."""
    log = directory / "release.log"
    body = f'echo "$1 $2 start $PPID" >> {log}\n'
    body += f"while [ ! -e {gate} ]; do sleep 0.02; done\n"
    body += f'echo "$1 $2 done $PPID" >> {log}\n'
    return script(directory, "release.sh", body)


def _runs(directory: Path, pid: int) -> list[tuple[str, str, str]]:
    """The release runs host `pid` began: (ids, holder, start|done) per line."""
    path = directory / "release.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(f[0], f[1], f[2]) for f in map(str.split, lines) if f[3:] == [str(pid)]]


def _started(directory: Path, pid: int) -> Callable[[RealKubelet], bool]:
    return lambda _k: any(run[2] == "start" for run in _runs(directory, pid))


def _sees_held(host: KdpProcess, pod: str) -> Callable[[RealKubelet], bool]:
    """`host`'s `/devices` shows `pod` holding fpga0 (a PodResources answer listed it)."""

    def check(_: RealKubelet) -> bool:
        found = re.search(r"event=http_serving listen=(\S+)", host.log.read_text())
        if found is None:
            return False
        with urllib.request.urlopen(f"http://{found[1]}/devices", timeout=10) as answer:
            devices = json.load(answer)["resources"][0]["devices"]
        return any(h["pod"] == pod for d in devices if d["id"] == "fpga0" for h in d["holders"])

    return check


async def _rolled(kubelet: RealKubelet, config: Path, log: Path) -> KdpProcess:
    """A host of `config` started beside the others (a rollout's new pod), registered."""
    host = KdpProcess(config, log)
    before = await kubelet.acall(kubelet.last_seq)
    await host.start()
    await kubelet.acall(kubelet.registered_at, [FPGA], before)
    return host


async def _admitted(kubelet: RealKubelet, pod: str) -> dict[str, Any]:
    """`pod` allocated fpga0 and started, once the kubelet counts it healthy. The kubelet
    drops the endpoint a same-name registration replaced, and may count the resource
    unhealthy for a moment after the new host registered (its old stream's end racing the
    new one: the new host registers again), or cut an Allocate on its way to the client it
    dropped ("the client connection is closing"); a pod admitted then is refused, not handed
    out."""
    switching = ("no healthy devices", "the client connection is closing")
    for _ in range(5):
        await kubelet.await_for(healthy(FPGA, 1), what="fpga0 healthy")
        answer: dict[str, Any] = await kubelet.acall(kubelet.allocate, pod, {FPGA: 1})
        if not any(refusal in answer["error"] for refusal in switching):
            break
    return answer


def _took_up(host: KdpProcess) -> Callable[[RealKubelet], bool]:
    """`host` decided the release it took up at its start: run, or done by another host."""
    ran, done = host.logged("event=release_started"), host.logged("event=release_done_")
    return lambda kubelet: ran(kubelet) or done(kubelet)


async def test_a_rollout_whose_old_host_is_killed_mid_release_runs_that_release_once(
    real_kubelet_factory, short_dir: Path, devices: Path, kdp_process
) -> None:
    """p1 used fpga0 through the old host and ended: its release runs there; the new host
    (same name, same stateDir) starts and registers; the old host is SIGKILLed inside the
    release. p2 is handed fpga0 through the new host and starts after ONE release of p1's
    use, which names p1 (on the old code: two, `{pod}` empty in both). Then the new host is
    killed too and a third starts while p2 runs: it runs no release under p2 (on the old
    code it did: the file's union of both hosts' entries dated the old host's owed use by
    p2's Allocate, which no release had covered)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (devices / "fpga1").unlink()
    gate = short_dir / "gate"
    config = short_dir / "kdp.yaml"
    command = _gated_release(short_dir, gate)
    config.write_text(
        host_yaml(
            kubelet.socket_dir, devices, short_dir / "state", command,
            pod_resources=short_dir / "pr", interval="1s",
        )
    )  # fmt: skip
    old = await kdp_process(config)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised by the old host")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert first["error"] == "" and first["device_ids"][FPGA] == ["fpga0"], first
    await kubelet.await_for(_sees_held(old, "p1"), what="the old host saw p1 hold fpga0")
    assert (await kubelet.acall(kubelet.release, "p1"))["found"]
    assert old.process is not None
    await kubelet.await_for(_started(short_dir, old.process.pid), what="the old host releases")
    new = await _rolled(kubelet, config, short_dir / "new.log")
    third = KdpProcess(config, short_dir / "third.log")
    try:
        assert new.process is not None
        await kubelet.await_for(
            new.logged("event=release_owed_from_before", "device=fpga0"),
            what="the new host took the owed release up (it waits for the old host's lock)",
        )
        await old.stop()  # SIGKILL, inside its release
        gate.touch()
        second = await _admitted(kubelet, "p2")
        assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"], second
        runs = _runs(short_dir, new.process.pid)
        assert runs == [("fpga0", "default/p1/c", "start"), ("fpga0", "default/p1/c", "done")], runs
        await new.stop()  # SIGKILL: p2 runs on
        third = await _rolled(kubelet, config, third.log)
        await kubelet.await_for(_took_up(third), what="the third host took the owed use up")
        assert third.process is not None and _runs(short_dir, third.process.pid) == []
        assert third.logged("event=release_done_by_peer", "device=fpga0")(kubelet)
    finally:
        await new.stop()
        await third.stop()


async def test_a_use_gone_while_its_release_is_written_is_released_before_the_next_start(
    short_dir: Path,
) -> None:
    """Seen in this file's rollout: p2's Allocate proved p1 gone (`allocated_again`) while
    the release before p1 was writing its state (its command done): the release owed then
    was that task's, which ended without running it, and p2's PreStartContainer was refused
    ("its release failed: None"). Now a release that ends with its device owed again runs
    again, and p2 starts after it."""
    now, commands = [100.0], _Commands()
    tracker, _, store = _tracker(short_dir, commands, clock=lambda: now[0])
    tracker.allocated(["fpga0"])  # p0
    await tracker.before_start(["fpga0"])
    commands.gate.clear()
    now[0] = 102.0
    tracker.holdings(_answer(101.5))  # p0 ended: its release runs
    now[0] = 103.0
    tracker.allocated(["fpga0"])  # p1, its start waits for that release
    p1 = asyncio.ensure_future(tracker.before_start(["fpga0"]))
    written, flush = asyncio.Event(), store.flush

    async def slow_flush() -> None:
        await written.wait()
        await flush()

    store.flush = slow_flush  # type: ignore[method-assign]
    commands.gate.set()
    use = tracker.uses["fpga0"]
    await wait_until(lambda: not use.owed and use.running is not None, what="being written")
    now[0] = 104.0
    tracker.allocated(["fpga0"])  # p1 ended; p2
    p2 = asyncio.ensure_future(tracker.before_start(["fpga0"]))
    written.set()
    await asyncio.wait_for(asyncio.gather(p1, p2), 30)
    assert commands.runs == [["reset", "fpga0", ""], ["reset", "fpga0", ""]]
    await tracker.close()


def test_an_owed_entry_keeps_its_use_and_holders_read_back_and_merged() -> None:
    """An owed entry keeps which use its release is for and who held it; the union of two
    hosts' entries keeps the owed one's, not the later Allocate's (which dated the killed
    host's owed use by the next pod's Allocate: a host started then released under it)."""
    owed = device_entry([], True, 10.0, owed_use=(11.0, 15.0), holders=[("ns", "p1", "c")])
    assert checked_entry(owed) == {
        "used": [], "owed": True, "allocatedAt": 10.0, "owedFor": 11.0, "owedCovers": 15.0,
        "holders": [["ns", "p1", "c"]],
    }  # fmt: skip
    assert "owedFor" not in device_entry(["fpga0"], False, 20.0, owed_use=(11.0, 15.0))
    later = device_entry(["fpga0"], False, 20.0, holders=[("ns", "p2", "c")])
    for one, other in ((owed, later), (later, owed)):
        merged = merged_entry(one, other)
        assert merged["allocatedAt"] == 20.0 and merged["owed"]
        assert (merged["owedFor"], merged["owedCovers"]) == (11.0, 15.0)
        assert merged["holders"] == [["ns", "p1", "c"]]
    use = kept_use(merged, 100.0, 30.0, 1.0)
    assert (use.owed_for, use.owed_covers, use.used) == (11.0, 15.0, {"fpga0"})
    assert use.holder_values()["pod"] == "p1"
    with pytest.raises(TypeError, match="namespace, pod, container"):
        checked_entry({**owed, "holders": [["ns", "p1"]]})
