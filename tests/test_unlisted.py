"""An ID the kubelet's PodResources cannot show is not free because an answer lacks it
(hostile9 H3, M1), through the simulator (which lists pods as the kubelet v1.32 does:
regular init containers left out, no API pod after a restart while the API server is
away) and through `unlisted.Unlisted` itself.

- H3: a regular init container's device (an FPGA's bitstream loader) stays held, booked and
  owed no release while its pod lives, and is released once the pod ended and the kubelet's
  checkpoint, written again at kdp-host's asking, no longer lists it.
- M1: after a kubelet restart whose pod sources stay away past the restart window, an ID
  its checkpoint lists stays held until its pod is shown again (hostile10 F5: a static pod
  shown or admitted meanwhile says nothing of it) or the checkpoint drops it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kdp_host.api.v1 import ListPodResourcesRequest, ListPodResourcesResponse
from kdp_host.files import DaemonThreads
from kdp_host.holdings import Holder, Holdings
from kdp_host.kubelet_checkpoint import CHECKPOINT_FILE
from kdp_host.kubelet_checksum import checksum
from kdp_host.logs import get_logger
from kdp_host.simulator import KubeletSimulator
from kdp_host.status import devices_document
from kdp_host.unlisted import Unlisted

from .conftest import FAST, wait_until
from .test_podresources_settle import Forgetful, forwarded, releasing_host, releasing_yaml
from .test_release import FPGA, host_yaml, release_lines, release_script
from .test_release_hosts import _state


@pytest.fixture
async def sim(socket_dir: Path, short_dir: Path):  # type: ignore[no-untyped-def]
    kubelet = KubeletSimulator(socket_dir, dial_timeout=5.0, pod_resources_dir=short_dir / "pr")
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.stop()


def _yaml(socket_dir: Path, short_dir: Path, devices: Path, **options: Any) -> str:
    """FPGA with a release script, PodResources polled (the simulator's)."""
    return host_yaml(socket_dir, devices, short_dir / "state", release_script(short_dir),
                     pod_resources=short_dir / "pr", **options)  # fmt: skip


async def _host(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> Any:
    running = await start_host(_yaml(socket_dir, short_dir, devices), fast=True)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
    return running


def _booked(running: Any) -> set[str]:
    return set(running.host.ownership.handed_out().get(FPGA, ()))


async def _answers_after(poller: Any, since: float, what: str) -> None:
    """Until the poller (of a host started `fast`) has an answer asked well after `since`: a
    booking or a release due for want of an answer listing its device would have come by
    then."""
    await wait_until(
        lambda: (
            poller.holdings is not None
            and poller.holdings.asked_at > since + FAST.heard_after + poller.interval
        ),
        timeout=60,
        what=what,
    )


async def _past_restart_window(poller: Any, since: float) -> None:
    """Until the poller (of a host started `fast`) has an answer asked past the window after
    a kubelet restart at `since` (`Timings.restart_settle`), and past the time a holder must
    be missing (`gone_after`), by two polls."""
    await wait_until(
        lambda: (
            poller.holdings.asked_at
            > since + FAST.restart_settle + FAST.gone_after + 2 * poller.interval
        ),
        timeout=60,
        what="answers past the restart window",
    )


async def _listed(poller: Any, device: str) -> None:
    """Until an answer shows p1, and p1 alone, holding `device`."""
    await wait_until(
        lambda: (
            poller.holdings is not None
            and [h.pod for h in poller.holdings.of(FPGA).get(device, ())] == ["p1"]
        ),
        what="p1 listed",
    )


async def test_a_regular_init_containers_device_stays_held_until_its_pod_ended(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    running = await _host(sim, socket_dir, short_dir, devices, start_host)
    poller = running.host.pod_resources
    await sim.allocate(FPGA, 1, pod_uid="p1", container="init-fw", init_container=True)
    # answers asked long after the Allocate: the release and the booking's end were due by
    # now had the device been taken as free because no answer lists it
    await _answers_after(poller, poller.clock(), "answers well after the Allocate")
    assert release_lines(short_dir) == [], "released under the running init container"
    assert _booked(running) == {"fpga0"}, "the booking of the node ended while p1 runs"
    assert [h.listed for h in poller.holdings.of(FPGA)["fpga0"]] == [False]
    devices_view = devices_document(running.host)
    [fpga] = [r for r in devices_view["resources"] if r["name"] == FPGA]
    [entry] = [d for d in fpga["devices"] if d["id"] == "fpga0"]
    assert entry["release"]["state"] == "in_use" and entry["holders"][0]["listed"] is False
    # the pod ends: the kubelet frees the device but writes no checkpoint; kdp-host makes it
    # write one (its list sent again), reads it, and releases the device once
    await sim.release("p1")
    await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
    assert release_lines(short_dir) == ["fpga0 // start", "fpga0 // done"]
    await wait_until(lambda: not _booked(running), timeout=60, what="the booking ended")


async def test_a_kdp_host_restart_keeps_an_init_containers_device_held(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """kdp-host exits while p1's init container holds fpga0 and starts again: no answer ever
    lists fpga0, but the kubelet's checkpoint does, so it stays held until p1 ends."""
    text = _yaml(socket_dir, short_dir, devices)
    running = await start_host(text, fast=True)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
    await sim.allocate(FPGA, 1, pod_uid="p1", container="init-fw", init_container=True)
    await running.shutdown()
    again = await start_host(text, fast=True)
    await wait_until(lambda: again.host.pod_resources is not None, what="the new poller")
    poller = again.host.pod_resources
    await _answers_after(poller, poller.clock(), "answers well after the start")
    assert release_lines(short_dir) == [], "released under the running init container"
    assert _booked(again) == {"fpga0"}
    await sim.release("p1")
    await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")


async def test_a_retired_checkpoint_booking_of_an_init_containers_node_stays_held(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """hostile10 F6: p1's init container holds fpga0; kdp-host stops, its state directory is
    lost and the config names the resource anew. The node is booked from the kubelet's
    checkpoint for the old resource (retired), which no answer ever lists: it stays held
    while p1 lives (not freed by the answers' silence), and is free once p1 ended."""
    text = _yaml(socket_dir, short_dir, devices)
    running = await start_host(text, fast=True)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
    await sim.allocate(FPGA, 1, pod_uid="p1", container="init-fw", init_container=True)
    await running.shutdown()
    shutil.rmtree(short_dir / "state")
    renamed = FPGA + "2"
    again = await start_host(text.replace(f"name: {FPGA}\n", f"name: {renamed}\n"), fast=True)
    await sim.wait_for(lambda: renamed in sim.snapshot())
    await wait_until(lambda: again.host.pod_resources is not None, what="the new poller")
    poller = again.host.pod_resources
    await _answers_after(poller, poller.clock(), "answers well after the start")
    assert sim.allocatable(renamed) == 0, "p1's node advertised while its init container runs"
    assert set(again.host.ownership.handed_out().get(FPGA, ())) == {"fpga0"}
    await sim.release("p1")
    await wait_until(lambda: sim.allocatable(renamed) == 1, timeout=60, what="the node free")
    assert not again.host.ownership.handed_out().get(FPGA)


async def test_a_kubelet_restart_while_its_pod_sources_are_away_frees_nothing(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    running = await _host(sim, socket_dir, short_dir, devices, start_host)
    poller = running.host.pod_resources
    await sim.allocate(FPGA, 1, pod_uid="p1", container="c")
    await _listed(poller, "fpga0")
    assert sim.pod_resources is not None
    sim.pod_resources.sources_ready = False  # the API server is away: no API pod listed
    await sim.restart()
    restarted = poller.clock()
    await _past_restart_window(poller, restarted)
    assert release_lines(short_dir) == [], "released under p1, which still runs"
    assert _booked(running) == {"fpga0"}, "the booking of p1's node ended"
    assert poller.holdings.of(FPGA).get("fpga0")
    # the API server answers again: p1 is listed, and its end is seen as before
    sim.pod_resources.sources_ready = True
    await wait_until(lambda: not poller.waiting, what="the pod sources back")
    await sim.release("p1")
    await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
    assert release_lines(short_dir)[0] == "fpga0 default/p1/c start"


@pytest.mark.parametrize("static", ["listed", "admitted"])
async def test_a_static_pod_says_nothing_of_the_api_pods_after_a_kubelet_restart(
    static: str,
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Any,
) -> None:
    """hostile10 F5: the kubelet, restarted while its API server is away, lists its static
    pods (the file source is ready at once) but no API pod. A static pod shown again
    (`listed`), or one admitted meanwhile (`admitted`: an Allocate of another ID), says
    nothing of p1: its device stays held and booked past the restart window. p1 then ends
    and is never shown again: it is let go once the kubelet's checkpoint, written again at
    kdp-host's asking, no longer lists its device."""
    running = await start_host(_yaml(socket_dir, short_dir, devices, pattern="fpga*"), fast=True)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    poller = running.host.pod_resources
    assert sim.pod_resources is not None
    sim.pod_resources.static_pods.add("static-agent")
    if static == "listed":
        await sim.allocate(FPGA, 1, pod_uid="static-agent", container="agent")
    await sim.allocate(FPGA, 1, pod_uid="p1", container="c")
    p1 = sim.allocation("p1", "c", FPGA)
    assert p1 is not None
    [device] = p1.device_ids
    await _listed(poller, device)
    sim.pod_resources.sources_ready = False  # the API server is away: static pods only
    await sim.restart()
    restarted = poller.clock()
    if static == "admitted":
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        await sim.allocate(FPGA, 1, pod_uid="static-agent", container="agent")
    await wait_until(
        lambda: (
            poller.holdings is not None
            and [h.pod for h in poller.holdings.of(FPGA).get(device, ())] == ["p1"]
            and any(h.pod == "static-agent" for ids in poller.holdings.of(FPGA).values()
                    for h in ids)
        ),
        what="the static pod shown after the restart",
    )  # fmt: skip
    await _past_restart_window(poller, restarted)
    assert release_lines(short_dir) == [], "released under p1, which still runs"
    assert device in _booked(running), "the booking of p1's node ended"
    assert [h.pod for h in poller.holdings.of(FPGA)[device]] == ["p1"]
    assert poller.waiting
    # p1 ends, and the API server answers again: the kubelet frees p1's device (the
    # simulator at once) but writes no checkpoint; p1 is never shown again
    await sim.release("p1")
    sim.pod_resources.sources_ready = True
    await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=90, what="released")
    assert release_lines(short_dir) == [
        f"{device} default/p1/c start",
        f"{device} default/p1/c done",
    ]
    await wait_until(lambda: device not in _booked(running), timeout=60, what="booking ended")
    assert not poller.waiting


# --------------------------------------------------------------------------- Unlisted


def _write(
    directory: Path, ids: dict[str, list[str]], written: float, *, good: bool = True
) -> None:
    entries = [
        {
            "PodUID": f"u-{i}",
            "ContainerName": "init",
            "ResourceName": resource,
            "DeviceIDs": {"-1": [i]},
            "AllocResp": base64.b64encode(b"").decode(),
        }
        for resource, listed in ids.items()
        for i in listed
    ]
    data = {"PodDeviceEntries": entries, "RegisteredDevices": {FPGA: ["a", "b"]}}
    path = directory / CHECKPOINT_FILE
    path.write_text(json.dumps({"Data": data, "Checksum": checksum(data) + (0 if good else 1)}))
    os.utime(path, (written, written))


def _unlisted(directory: Path, at: list[float]) -> Unlisted:
    return Unlisted(str(directory), DaemonThreads(), get_logger(), lambda: at[0], lambda: at[0])


async def test_an_id_no_answer_showed_goes_when_a_later_checkpoint_drops_it(tmp_path: Path) -> None:
    """A failed admission (or an ended init container's pod): the ID goes once a checkpoint
    written at least 1 s after its Allocate no longer lists it; not on an earlier write (the
    kubelet records the allocation after our answer), nor on a file it cannot use."""
    now = [1000.0]
    unlisted = _unlisted(tmp_path, now)
    unlisted.allocated(FPGA, ["a", "b"])
    _write(tmp_path, {FPGA: ["a"]}, 1000.5)
    await unlisted.refresh()
    assert set(unlisted.by_resource()[FPGA]) == {"a", "b"}
    _write(tmp_path, {FPGA: ["a"]}, 1002.0, good=False)  # checksum mismatch: fails closed
    await unlisted.refresh()
    assert set(unlisted.by_resource()[FPGA]) == {"a", "b"} and unlisted.listed(FPGA, "b")
    _write(tmp_path, {FPGA: ["a"]}, 1003.0)
    await unlisted.refresh()
    assert set(unlisted.by_resource()[FPGA]) == {"a"}
    assert unlisted.listed(FPGA, "a") and not unlisted.listed(FPGA, "b")
    # an answer asked after its Allocate shows `a`: from then on the usual rule
    now[0] = 1004.0
    unlisted.shown(Holdings(1004.0, 1004.0, {FPGA: {"a": (Holder("ns", "p", "c", 0.0),)}}))
    assert unlisted.by_resource() == {}
    # allocated again: held again, until shown or dropped
    unlisted.allocated(FPGA, ["a"])
    unlisted.shown(Holdings(1003.5, 1004.0, {FPGA: {"a": (Holder("ns", "p", "c", 0.0),)}}))
    assert set(unlisted.by_resource()[FPGA]) == {"a"}  # (asked before that Allocate)


async def test_a_checkpoint_written_too_soon_after_the_allocate_is_asked_for_again(
    tmp_path: Path,
) -> None:
    """The pod ended within `allocation_settle` of its Allocate and the kubelet wrote its
    checkpoint meanwhile (a ListAndWatch message of ours, another pod's Allocate): the file
    lacks the ID, too soon to count, and the kubelet writes no other unasked. kdp-host asks
    for one (the ID stayed held for ever before: a device at the place its booking names was
    never advertised again, CI's test_ownership_place_reuse real-kubelet flake)."""
    now = [1000.0]
    unlisted = _unlisted(tmp_path, now)
    asked: list[float] = []
    unlisted.nudge = lambda: asked.append(now[0]) is None
    unlisted.allocated(FPGA, ["a"])
    _write(tmp_path, {}, 1000.5)  # (p1 already gone when the kubelet wrote it)
    now[0] = 1002.0
    await unlisted.refresh(answered=1002.0)
    assert set(unlisted.by_resource()[FPGA]) == {"a"}, "freed on a write too soon to count"
    assert asked == [1002.0], "no write asked for: `a` held until allocated again"
    _write(tmp_path, {}, 1002.1)  # (the write asked for)
    await unlisted.refresh(answered=1003.0)
    assert unlisted.by_resource() == {}


async def test_the_asks_for_a_write_start_over_when_an_id_goes_or_comes(tmp_path: Path) -> None:
    """followburst: another plugin's pods one after another on one ID, each booked from the
    checkpoint (`take`) and ended at once (never shown): the kubelet is asked to write its
    file again, and the pod is gone at that write; the ID is freed there (even rounds) or
    the next pod is booked under it first (odd: the follower read that write, not this).
    Each waits as long as the first (before: the wait between asks doubled across them, as
    no Allocate of this host's came: 1, 2, 4, 8, 16 s)."""
    now = [1000.0]
    unlisted = _unlisted(tmp_path, now)
    asked: list[float] = []
    unlisted.nudge = lambda: asked.append(now[0]) is None
    waits = []
    for n in range(6):
        unlisted.take([("gdp.example/gdev", "g0")])
        _write(tmp_path, {"gdp.example/gdev": ["g0"]}, now[0] + 0.1)  # (its pod's entry)
        began = now[0]
        while not asked or asked[-1] <= began:  # (an answer a second, the pod gone)
            now[0] += 1.0
            await unlisted.refresh(answered=now[0])
        waits.append(now[0] - began)
        _write(tmp_path, {}, now[0] + 0.1)  # (the write asked for, without the pod)
        if n % 2 == 0:
            now[0] += 1.0
            await unlisted.refresh(answered=now[0])
            assert unlisted.by_resource() == {}
    assert max(waits) <= unlisted.timings.nudge_first + 1.0, waits


async def test_an_id_another_host_booked_is_held_as_one_this_host_handed_out(
    tmp_path: Path,
) -> None:
    """hostile14 N4: another host on the state directory booked `a` (its Allocate, seen in
    `ownership.json` at 1000): held from then on as an Allocate of this host's is, through
    answers that lack it (a regular init container's, or a pod whose admission failed after
    that Allocate: never listed) and a checkpoint written too soon after, until a later
    checkpoint no longer lists it. On the old code only this host's Allocates were held."""
    now = [1000.0]
    unlisted = _unlisted(tmp_path, now)
    unlisted.booked_elsewhere(FPGA, ["a"], "host-old")
    now[0] = 1002.0
    unlisted.shown(Holdings(1001.0, 1002.0, {FPGA: {}}))  # (an answer that lacks it)
    _write(tmp_path, {FPGA: ["a"]}, 1001.5)
    await unlisted.refresh()
    assert set(unlisted.by_resource()[FPGA]) == {"a"}
    _write(tmp_path, {}, 1000.5)  # (written before the kubelet recorded that Allocate)
    await unlisted.refresh()
    assert set(unlisted.by_resource()[FPGA]) == {"a"}, "freed on a write too soon to count"
    _write(tmp_path, {}, 1003.0)  # (the pod ended, or its admission failed: freed)
    await unlisted.refresh()
    assert unlisted.by_resource() == {}


async def test_an_id_booked_from_the_record_alone_counts_a_checkpoint_from_its_late_answer(
    tmp_path: Path,
) -> None:
    """restartrec: an ID a start booked from `handed-out.json` alone (Allocate at 1000, its
    answer may have gone out up to 15 s later): a checkpoint written before 1016 that lacks
    it says nothing (the kubelet may not have had the answer yet); one written after frees
    it. Shown held since its Allocate meanwhile."""
    now = [1020.0]
    unlisted = _unlisted(tmp_path, now)
    unlisted.take([(FPGA, "a")], 1000.0, 15.0)
    assert unlisted.by_resource() == {FPGA: {"a": 1000.0}}
    _write(tmp_path, {}, 1010.0)
    await unlisted.refresh()
    assert unlisted.by_resource() == {FPGA: {"a": 1000.0}}, "freed on a write too soon"
    _write(tmp_path, {}, 1016.5)
    await unlisted.refresh()
    assert unlisted.by_resource() == {}


async def test_at_start_the_ids_the_checkpoint_lists_are_held_until_shown(tmp_path: Path) -> None:
    """kdp-host restarted while an init container holds `a`: `a` (listed by the checkpoint)
    is held; a checkpoint it cannot use makes every booked ID held; none makes none."""
    now = [1000.0]
    unlisted = _unlisted(tmp_path, now)
    unlisted.seed([FPGA], lambda: {FPGA: {"a", "b"}})
    _write(tmp_path, {FPGA: ["a"], "other.example/x": ["z"]}, 999.0)
    await unlisted.refresh()
    assert unlisted.by_resource() == {FPGA: {"a": 0.0}}
    unlisted = _unlisted(tmp_path, now)
    unlisted.seed([FPGA], lambda: {FPGA: {"a", "b"}})
    _write(tmp_path, {FPGA: ["a"]}, 999.0, good=False)
    await unlisted.refresh()
    assert set(unlisted.by_resource()[FPGA]) == {"a", "b"}
    (tmp_path / CHECKPOINT_FILE).unlink()
    unlisted = _unlisted(tmp_path, now)
    unlisted.seed([FPGA], lambda: {FPGA: {"a", "b"}})
    await unlisted.refresh()
    assert unlisted.by_resource() == {}


# --------------------------------------------------------------------------- real kubelet


@dataclass
class InitFilter(Forgetful):
    """The kubelet's real PodResources, answering as the kubelet v1.32 does for a pod with a
    regular init container (the harness has none: a container named `init*` stands for
    one), which `List` leaves out."""

    async def list(self, message: ListPodResourcesRequest) -> ListPodResourcesResponse:
        answer = await super().list(message)
        for pod in answer.pod_resources:
            pod.containers = [c for c in pod.containers if not c.name.startswith("init")]
        return answer


async def test_the_real_kubelet_an_init_containers_device_stays_held_until_its_pod_ended(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, devices: Path
) -> None:
    """hostile9 H3 through the kubelet's real device manager: the release waits for the pod's
    end, and comes once the kubelet wrote its checkpoint without it (kdp-host asked it to)."""
    async with forwarded(real_kubelet_factory, short_dir, InitFilter) as (kubelet, _):
        running = await releasing_host(kubelet, start_host, short_dir, devices)
        granted = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}, container="init-fw")
        assert granted["error"] == ""
        poller = running.host.pod_resources
        await _answers_after(poller, poller.clock(), "answers well after the Allocate")
        assert release_lines(short_dir) == [], "released under the running init container"
        assert _booked(running) == {"fpga0"}, "the booking of the node ended while p1 runs"
        await kubelet.acall(kubelet.release, "p1")
        await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
        assert release_lines(short_dir) == ["fpga0 // start", "fpga0 // done"]


@pytest.mark.parametrize("old_releases", [True, False], ids=["same-config", "adds-release"])
async def test_the_real_kubelet_an_init_container_the_other_host_admitted_stays_held(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, devices: Path, old_releases: bool
) -> None:
    """hostile14 N4, a maxSurge rollout (both hosts with `release`, or one that adds it:
    hostile13 M15): the new host runs; the old one is the kubelet's endpoint again and admits
    p1's regular init container on fpga0 (PodResources never lists it), then stops. The
    other host's booking, a use of the device on the new host, is an ID no answer has shown:
    held (not released) while p1 lives, as an Allocate of the new host's is, and released
    once p1 ended and the kubelet's checkpoint no longer lists it. On the old code the new
    host released it under the running init container (`reason=no_longer_held`)."""
    async with forwarded(real_kubelet_factory, short_dir, InitFilter) as (kubelet, _):
        new = await releasing_host(kubelet, start_host, short_dir, devices)
        yaml = releasing_yaml(kubelet, short_dir, devices)
        since = kubelet.last_seq()
        old = await start_host(yaml if old_releases else yaml[: yaml.index("    release:")],
                               fast=True)  # fmt: skip
        await kubelet.acall(kubelet.registered_at, [FPGA], since)
        granted = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}, container="init-fw")
        assert granted["error"] == "" and granted["device_ids"][FPGA] == ["fpga0"]
        await wait_until(lambda: _state(new) == "in_use", what="the new host sees p1's use")
        since = kubelet.last_seq()
        await old.shutdown()  # (the new host registers again: `peer_sockets`)
        await kubelet.acall(kubelet.registered_at, [FPGA], since)
        poller = new.host.pod_resources
        await _answers_after(poller, poller.clock(), "answers well after the booking was seen")
        assert release_lines(short_dir) == [], "released under the running init container"
        assert _state(new) == "in_use"
        assert [h.listed for h in poller.holdings.of(FPGA).get("fpga0", ())] == [False]
        await kubelet.acall(kubelet.release, "p1")
        await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
        assert release_lines(short_dir) == ["fpga0 // start", "fpga0 // done"]


async def test_the_real_kubelet_restarted_while_its_pod_sources_are_away_frees_nothing(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, devices: Path
) -> None:
    """hostile9 M1 through the kubelet's real device manager: after its restart, List answers
    no pod (a forwarder stands for an API server away) past the 10 s + 4 s window; p1's
    device stays held (the kubelet's checkpoint lists it), and is released once p1, listed
    again, ends."""
    async with forwarded(real_kubelet_factory, short_dir) as (kubelet, fake):
        running = await releasing_host(kubelet, start_host, short_dir, devices)
        assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
        poller = running.host.pod_resources
        await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="p1 seen")
        fake.empty = True
        await kubelet.acall(kubelet.restart)
        await _past_restart_window(poller, poller.clock())
        assert release_lines(short_dir) == [], "released under p1, which still runs"
        assert _booked(running) == {"fpga0"}, "the booking of p1's node ended"
        fake.empty = False
        await wait_until(lambda: not poller.waiting, what="p1 listed again")
        await kubelet.acall(kubelet.release, "p1")
        await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
        assert release_lines(short_dir)[0] == "fpga0 default/p1/c start"


async def test_hostile16_f1_a_device_just_allocated_is_shown_held_before_the_next_answer(
    sim: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host: Any
) -> None:
    """`/devices` showed a device allocated a moment ago free (no holder) until the next
    PodResources answer: an unlisted holder stands for it from its Allocate on."""
    running = await _host(sim, socket_dir, short_dir, devices, start_host)
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings is not None, what="a first answer")
    asked = poller.holdings
    await sim.allocate(FPGA, 1, pod_uid="p1", container="c")
    [device_id] = _booked(running)
    [resource] = [r for r in devices_document(running.host)["resources"] if r["name"] == FPGA]
    [entry] = [d for d in resource["devices"] if d["id"] == device_id]
    if poller.holdings is asked:  # (no answer came since: the holder is the unlisted one)
        assert [h.get("listed", True) for h in entry["holders"]] == [False]
    assert entry["holders"], entry
