"""A resource whose release tracking begins now counts every booked use of its devices
(hostile15 F1, F2): one rule (`ReleaseStateStore.begin`) for a start with no state, a live
reload or a restart that adds `release`, and a host started beside one that served the
resource without `release` (a rolling update that adds it). Through the kubelet's real
device manager (v1.32, tests/kubelet_harness.py), with PodResources polling off: the release
runs at the next container start on the device, or never (the old code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.release_state import STATE_FILE

from .test_release import FPGA, _Commands, _tracker, release_lines, release_script
from .test_release_rename import healthy
from .test_release_state_lost import _Watcher, booked

pytestmark = pytest.mark.fast  # its hosts wait FAST (conftest.start_host)

OTHER = "example.com/other"


def config(kubelet: Any, devices: Path, state: Path, command: str, release: bool) -> str:
    """FPGA (with `release` when `release`) and OTHER (with it always, so the state file is
    there with an entry while a pod holds ttyA0); PodResources polling off."""
    argv = f'    release: {{command: ["{command}", "{{ids}}", "x"]}}\n'
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, "
        f"podResourcesSocket: {kubelet.pod_resources_socket}, podResourcesInterval: 0s}}\n"
        f"stateDir: {state}\nmetrics: {{listen: 127.0.0.1:0}}\nresources:\n"
        f'  - name: {OTHER}\n    glob: {{paths: ["{devices}/ttyA0"]}}\n{argv}'
        f'  - name: {FPGA}\n    glob: {{paths: ["{devices}/fpga0"]}}\n' + (argv if release else "")
    )


@pytest.mark.parametrize("variant", ["reload", "restart"])
async def test_an_edit_that_adds_release_releases_a_use_made_before_it(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, devices: Path, variant: str
) -> None:
    """hostile15 F1: FPGA has no `release`; p1 gets fpga0; the config adds `release` (a live
    reload, or a restart: the state file is there, OTHER's pod p0 has an entry in it); p1
    ends and p2 gets fpga0 at once: p1's use is released before p2's start answers. On the
    old code no release ran (the booking counted only at a start with no state file)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state, path, command = short_dir / "state", short_dir / "c.yaml", release_script(short_dir)
    path.write_text(config(kubelet, devices, state, command, release=False))
    running = await start_host(path.read_text(), config_path=path)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    await kubelet.await_for(healthy(OTHER, 1), what="ttyA0 advertised")
    assert (await kubelet.acall(kubelet.allocate, "p0", {OTHER: 1}))["error"] == ""
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    path.write_text(config(kubelet, devices, state, command, release=True))
    since = kubelet.last_seq()
    if variant == "reload":
        assert await running.host.reload_from(path) == "ok"
    else:
        await running.shutdown()
        assert (state / STATE_FILE).exists()
        running = await start_host(path.read_text(), config_path=path)
    await kubelet.acall(kubelet.registered_at, [FPGA], since)
    # (the kubelet counts a registered resource's devices unhealthy until its first list)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 listed after the registration")
    await kubelet.acall(kubelet.release, "p1")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"], second
    lines = release_lines(short_dir)
    assert [line.split()[::2] for line in lines] == [["fpga0", "start"], ["fpga0", "done"]], (
        "p2 started with fpga0, which p1 used, and no release ran"
    )


@pytest.mark.parametrize("old_stops", [True, False])
async def test_a_rollout_that_adds_release_releases_a_use_the_old_host_made_before(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, devices: Path, old_stops: bool
) -> None:
    """hostile15 F2: host A (FPGA without `release`) gives fpga0 to p1; host B (the same
    config with `release`, the same state and socket directories) starts and registers;
    (A stops;) p1 ends and p2 gets fpga0 through B at once: A's booking, there when B
    started, is a use B releases before p2's start answers. On the old code none ran (B
    counted neither that booking, another running host's, nor any: the file was there)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    state, command = short_dir / "state", release_script(short_dir)
    old = await start_host(config(kubelet, devices, state, command, release=False))
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised by A")
    assert (await kubelet.acall(kubelet.allocate, "p0", {OTHER: 1}))["error"] == ""
    assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
    since = kubelet.last_seq()
    await start_host(config(kubelet, devices, state, command, release=True))
    await kubelet.acall(kubelet.registered_at, [FPGA], since)
    if old_stops:
        await old.shutdown()
    await kubelet.acall(kubelet.release, "p1")
    second = await kubelet.acall(kubelet.allocate, "p2", {FPGA: 1})
    assert second["error"] == "" and second["device_ids"][FPGA] == ["fpga0"], second
    lines = release_lines(short_dir)
    assert [line.split()[::2] for line in lines] == [["fpga0", "start"], ["fpga0", "done"]], (
        "p2 started with fpga0, which p1 used, and no release ran"
    )


@pytest.mark.parametrize(
    ("document", "counted"),
    [
        ({"tracked": {"": [FPGA]}}, False),  # this version's file: it was tracked
        ({}, True),  # an older version's file: which were tracked is not known
        ({"tracked": {"": [OTHER]}}, True),  # FPGA had no `release`
        ({"writers": {"a": {}, "b": {}}, "tracked": {"a": [FPGA], "b": []}}, True),  # b: none
        ({"writers": {"a": {}, "b": {}}, "tracked": {"a": [FPGA], "b": [FPGA]}}, False),
    ],
)
async def test_tracking_begins_unless_every_host_of_the_file_tracked_the_resource(
    short_dir: Path, document: dict[str, Any], counted: bool
) -> None:
    """`ReleaseStateStore.begin`: the bookings count as uses unless every host of the file
    tracked the resource; once begun, a tracker started again (a reload that keeps
    `release`) counts nothing more, and one started after the resource was served without
    `release` (`untracked`) counts them again."""
    (state := short_dir / "state").mkdir()
    (state / STATE_FILE).write_text(json.dumps({"version": 1, "resources": {}, **document}))
    tracker, _, store = _tracker(short_dir, _Commands(), start=False)
    store.follow(_Watcher(), booked("fpga1"))  # type: ignore[arg-type]
    tracker.start()
    assert tracker.view("fpga1")["state"] == ("in_use" if counted else "clean")
    await tracker.close()
    assert store.begin(FPGA) == {}  # (a runtime restarted with `release`: nothing new)
    store.untracked(FPGA)  # (a runtime served it without `release`)
    assert store.begin(FPGA) == {None: {"fpga1"}}
    await store.flush()
    assert FPGA in json.loads((state / STATE_FILE).read_text())["tracked"][""]
