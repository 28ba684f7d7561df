"""A release owed for a pod another plugin admitted (hostile11 K5): after a migration from
generic-device-plugin, the start books the kubelet checkpoint's entry of that plugin's ID
(`kubelet_checkpoint`), whose device kdp-host never lists. When the pod ends, the release
acts on what the checkpoint says the pod was handed (`OwnershipIndex.checkpoint_handed`), as
on a record of `handed_out`: it was retried for ever ("not listed"), its booking held the
node for good."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdp_host.status import devices_document, status_rows

from .test_kubelet_checkpoint import served

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

GDEV = "gdp.example/gdev"
OTHER = "example.com/other"


def healthy(resource: str, count: int) -> Any:
    def check(k: Any) -> bool:
        seen = k.resource(resource)
        return seen is not None and seen["healthy"] == count

    return check


@pytest.mark.parametrize("lost", [False, True], ids=["state kept", "state lost"])
async def test_another_plugins_pod_is_released_on_what_the_checkpoint_says_it_was_handed(
    real_kubelet_factory: Any,
    start_host: Any,
    short_dir: Path,
    devices: Path,
    caplog: pytest.LogCaptureFixture,
    lost: bool,
) -> None:
    """`lost`: the state directory is emptied too (what each ID was handed out as is not
    known: `handed_unknown`); the other plugin's ID is never handed out again, so its
    release runs on the checkpoint's paths as well."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    mine, theirs, log = short_dir / "state", short_dir / "theirs", short_dir / "release.log"
    # an existing install: its state directory keeps its bookings
    running = await start_host(served(OTHER, kubelet, devices, mine, glob="ttyA0"))
    await kubelet.await_for(healthy(OTHER, 1), what="other advertised")
    assert (await kubelet.acall(kubelet.allocate, "p0", {OTHER: 1}))["error"] == ""
    await running.shutdown()
    # another plugin (its own IDs, its own state) gives fpga0 to p1, then stops
    listing = short_dir / "p.json"
    listing.write_text(f'[{{"id": "b1ef8fa7", "paths": ["{devices}/fpga0"]}}]')
    probe = f'  - name: {GDEV}\n    shell: {{command: [cat, "{listing}"], format: json}}\n'
    their_config = served(OTHER, kubelet, devices, theirs, glob="fpga1") + probe
    running = await start_host(their_config)
    await kubelet.await_for(healthy(GDEV, 1), what="their plugin advertises fpga0")
    assert (await kubelet.acall(kubelet.allocate, "p1", {GDEV: 1}))["error"] == ""
    await running.shutdown()
    if lost:
        shutil.rmtree(mine)
    # kdp-host takes the resource name over, with a release
    release = f'    release: {{command: [sh, -c, "echo {{hostPaths}} >> {log}"]}}\n'
    glob = f'  - name: {GDEV}\n    glob: {{paths: ["{devices}/fpga*"]}}\n' + release
    since = await kubelet.acall(kubelet.last_seq)
    running = await start_host(served(OTHER, kubelet, devices, mine, glob="ttyA0") + glob)
    first = await kubelet.acall(kubelet.first_list_after_registering, GDEV, since)
    assert first["healthy"] == 1, "fpga0 is held while p1 may hold it"
    rows = {r[1]: r for r in status_rows(devices_document(running.host)) if r[0] == GDEV}
    assert rows["fpga0"][2:4] == ("held", f"(booked {GDEV} b1ef8fa7)"), rows
    await kubelet.acall(kubelet.release, "p1")
    await kubelet.await_for(healthy(GDEV, 2), what="fpga0 released and advertised")
    assert log.read_text().split() == [f"{devices}/fpga0"]
    failed = [r for r in caplog.records if r.getMessage() == "release_failed"]
    assert not failed
    assert (await kubelet.acall(kubelet.allocate, "p2", {GDEV: 2}))["error"] == ""
