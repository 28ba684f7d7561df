"""The clean-device promise when `release-state.json` is lost (issue 17, hostile6 M2): a
state directory emptied while kdp-host is down, the file deleted while it is down or while
it runs. What the kubelet's checkpoint and the bookings say was handed out still counts as
used, and a file deleted under a running host is written again."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdp_host.handed_out import HANDED_FILE
from kdp_host.ownership_document import OWNERSHIP_FILE
from kdp_host.release_state import STATE_FILE
from kdp_host.simulator import KubeletSimulator
from kdp_host.watch import Subscription, WatchCallback

from .conftest import wait_until
from .test_release import (
    FPGA,
    _answer,
    _Commands,
    _registered,
    _tracker,
    host_yaml,
    release_lines,
    release_script,
)


def _empty(directory: Path) -> None:
    """What a wiped hostPath (or a stateDir on an emptyDir) leaves: nothing."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


async def test_a_state_dir_emptied_while_down_still_releases_what_the_kubelet_handed_out(
    real_kubelet_factory, start_host, short_dir: Path, devices: Path
) -> None:
    """p1 used fpga0; kdp-host stops, its stateDir is emptied, p1 ends, kdp-host starts and
    p2 is given fpga0. The kubelet's checkpoint says fpga0 was handed out: it is released
    before p2 starts."""
    pod_resources = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pod_resources)
    command = release_script(short_dir)
    state = short_dir / "state"
    text = host_yaml(kubelet.socket_dir, devices, state, command, pod_resources=pod_resources)
    running = await start_host(text)
    await kubelet.await_for(_registered(kubelet), what="fpga registered")
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    await running.shutdown()
    _empty(state)
    await kubelet.acall(kubelet.release, "p1")
    await start_host(text)
    await kubelet.await_for(_registered(kubelet), what="fpga registered again")
    assert (await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1}))["error"] == ""
    lines = release_lines(short_dir)
    assert [line.split()[0] for line in lines] == ["fpga0", "fpga0"]
    assert lines[1].endswith(" done")


async def test_a_state_file_deleted_while_down_is_made_up_from_the_bookings(
    kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, devices: Path, start_host
) -> None:
    """Only release-state.json went (ownership.json stays; the simulator's checkpoint is not
    the kubelet's format, so the bookings alone tell): fpga0 is released before p2."""
    command = release_script(short_dir)
    state = short_dir / "state"
    text = host_yaml(socket_dir, devices, state, command, pod_resources=None)
    running = await start_host(text)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await running.shutdown()
    (state / STATE_FILE).unlink()
    await kubelet.release("p1")
    await start_host(text)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p2")
    assert release_lines(short_dir) == ["fpga0 // start", "fpga0 // done"]


class _Watcher:
    """Hands out subscriptions; the test calls their callbacks."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def subscribe(
        self, directory: str, callback: WatchCallback, names: object = None
    ) -> Subscription:
        subscription = Subscription(directory, callback, frozenset([STATE_FILE]))
        self.subscriptions.append(subscription)
        return subscription


def booked(*ids: str) -> Any:
    """The bookings (`ReleaseStateStore.follow`): `ids` of FPGA, this host's."""
    return lambda resource: dict.fromkeys(ids) if resource == FPGA else {}


async def test_a_missing_file_counts_what_was_handed_out_as_used(short_dir: Path) -> None:
    commands = _Commands()
    tracker, _, store = _tracker(short_dir, commands, start=False)
    store.follow(_Watcher(), booked("fpga1"))  # type: ignore[arg-type]
    tracker.start()
    assert tracker.view("fpga1")["state"] == "in_use"
    assert tracker.view("fpga0")["state"] == "clean"
    tracker.holdings(_answer(10.0**9))  # nobody holds it now
    await tracker.before_start(["fpga1"])
    assert commands.runs == [["reset", "fpga1", ""]]
    await tracker.close()


async def test_a_file_that_is_there_is_taken_as_it_is(short_dir: Path) -> None:
    """The file holds every use (written before PreStartContainer answers) of a resource it
    says was tracked: the checkpoint's entry of a pod that ended (kept until the kubelet's
    next allocation) releases nothing."""
    state = short_dir / "state"
    state.mkdir()
    document = {"version": 1, "resources": {}, "tracked": {"": [FPGA]}}
    (state / STATE_FILE).write_text(json.dumps(document))
    commands = _Commands()
    tracker, _, store = _tracker(short_dir, commands, start=False)
    store.follow(_Watcher(), booked("fpga1"))  # type: ignore[arg-type]
    tracker.start()
    assert tracker.view("fpga1")["state"] == "clean"
    await tracker.close()


async def test_a_file_deleted_while_running_is_written_again_and_readyz_says_so(
    short_dir: Path,
) -> None:
    commands = _Commands()
    tracker, _, store = _tracker(short_dir, commands, start=False)
    watcher = _Watcher()
    store.follow(watcher, booked())  # type: ignore[arg-type]
    tracker.start()
    tracker.allocated(["fpga0"])
    await tracker.before_start(["fpga0"])
    path = Path(store.path)
    written = json.loads(path.read_text())
    reasons: list[str | None] = []
    store.file.on_unwritten = lambda: reasons.append(store.file.unwritten)
    path.unlink()
    for subscription in watcher.subscriptions:
        subscription.callback(STATE_FILE)
    await wait_until(path.exists, what="release-state.json written again")
    assert json.loads(path.read_text()) == written
    assert reasons == [f"{STATE_FILE} deleted: written again", None]
    await tracker.close()


async def test_a_file_never_there_is_not_written_for_a_watcher_event(short_dir: Path) -> None:
    commands = _Commands()
    tracker, _, store = _tracker(short_dir, commands, start=False)
    watcher = _Watcher()
    store.follow(watcher, booked())  # type: ignore[arg-type]
    for subscription in watcher.subscriptions:
        subscription.callback(STATE_FILE)
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == STATE_FILE))
    assert not Path(store.path).exists() and store.file.unwritten is None
    await tracker.close()


@pytest.mark.parametrize("name", [STATE_FILE, HANDED_FILE])
async def test_a_state_file_deleted_under_a_running_host_is_written_again(
    name: str,
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As ownership.json is: a kdp-host restart after the delete still knows fpga0 is used,
    and what it was handed out as (hostile11 K8: handed-out.json was written again only at
    the next Allocate, /readyz ok meanwhile; a restart then took the booked devices as
    listed, not as a record lost)."""
    state = short_dir / "state"
    await start_host(host_yaml(socket_dir, devices, state, "true", pod_resources=None))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    path = state / name
    written = json.loads(path.read_text())
    assert written["resources"][FPGA]["fpga0"]
    with caplog.at_level("ERROR", logger="kdp_host"):
        path.unlink()
        await wait_until(path.exists, what=f"{name} written again")
    assert json.loads(path.read_text())["resources"] == written["resources"]
    what = "release_state" if name == STATE_FILE else "handed_out"
    assert [r for r in caplog.records if r.getMessage() == f"{what}_lost"]


def _staged(path: Path, text: str) -> None:
    """`text` renamed over `path` (a backup restored, a config tool writing it)."""
    staged = path.with_name("staged.json")
    staged.write_text(text)
    staged.replace(path)


TAMPERS = {
    "truncated": lambda path: path.write_bytes(b""),
    "replaced_by_an_empty_valid_document": lambda path: _staged(
        path, json.dumps({"version": 1, "resources": {}})
    ),
    "replaced_by_an_empty_object": lambda path: _staged(path, "{}"),
    "rewritten_in_place_without_this_hosts_entries": lambda path: path.write_text(
        json.dumps({"version": 1, "resources": {}, "writers": {}})
    ),
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
@pytest.mark.parametrize("name", [STATE_FILE, HANDED_FILE])
async def test_hostile12_l6_a_state_file_replaced_or_truncated_under_a_running_host_is_rewritten(
    name: str,
    how: str,
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """L6: only a deleted file was noticed; one truncated or replaced (renamed over) stayed
    so, /readyz ok, until a restart found the record gone. Now the host sees its part gone
    and writes it again (`<what>_lost`; not ready until it is)."""
    state = short_dir / "state"
    await start_host(host_yaml(socket_dir, devices, state, "true", pod_resources=None))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    path = state / name
    written = json.loads(path.read_text())
    assert written["resources"][FPGA]["fpga0"]

    def restored() -> bool:
        try:
            return json.loads(path.read_text()).get("resources") == written["resources"]
        except (OSError, ValueError):
            return False

    with caplog.at_level("ERROR", logger="kdp_host"):
        TAMPERS[how](path)
        await wait_until(restored, what=f"{name} written again after it was {how}")
    what = "release_state" if name == STATE_FILE else "handed_out"
    assert [r for r in caplog.records if r.getMessage() == f"{what}_lost"]


async def test_hostile12_l9_ownership_replaced_by_an_empty_valid_document_is_written_back(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """L9 (one host): ownership.json replaced by `{"bookings": [], "version": 1}` after the
    host had read back its own write stayed so for good (the host took it for its own write:
    the other entries were the same, none), no log line, /readyz ok. Now it is written back
    at once (`ownership_state_lost`)."""
    state = short_dir / "state"
    await start_host(host_yaml(socket_dir, devices, state, "true", pod_resources=None))
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    path = state / OWNERSHIP_FILE

    def ids() -> list[str]:
        try:
            return [entry["id"] for entry in json.loads(path.read_text())["bookings"]]
        except (OSError, ValueError, KeyError):
            return []

    await wait_until(lambda: ids() == ["fpga0"], what="fpga0 booked")
    with caplog.at_level("ERROR", logger="kdp_host"):
        _staged(path, json.dumps({"bookings": [], "version": 1}))
        await wait_until(lambda: ids() == ["fpga0"], what="ownership.json written back")
    assert [r for r in caplog.records if r.getMessage() == "ownership_state_lost"]
