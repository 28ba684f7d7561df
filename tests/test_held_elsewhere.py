"""A held ID of another plugin whose node kdp-host does not serve in any device, its node
there as that plugin handed it out, is not missing (hostile12 L2: `ownership_elsewhere`)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kdp_host import ownership_elsewhere
from kdp_host.simulator import KubeletSimulator
from kdp_host.status import devices_document

from .conftest import wait_until
from .test_checkpoint_bookings import GDEV, OTHER, ForeignPlugin, config_text, nodes, serve_foreign


@pytest.mark.parametrize("form", ["group", "directory"])
async def test_a_foreign_id_whose_node_is_inside_a_served_directory_is_not_missing(
    pod_resources_kubelet: KubeletSimulator,
    short_dir: Path,
    start_host: Any,
    form: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hostile12 L2: another plugin handed p1 the node snd/c0 under its own ID; a reload adds
    the name to kdp-host serving the directory snd as one device: the directory is held for
    p1's ID (not advertised), and p1's device is neither missing nor gone (before: held
    missing, `state=gone`, and the alert's recipe deletes a healthy pod). Before the first
    look at its node (held up here) `/devices` says it is held, not missing (it said
    missing: the full suite under load saw it)."""
    looked = threading.Event()
    there = ownership_elsewhere._there

    def held_up(wanted: Mapping[str, ownership_elsewhere.Handed]) -> frozenset[str]:
        looked.wait(60)
        return there(wanted)

    monkeypatch.setattr(ownership_elsewhere, "_there", held_up)
    kubelet = pod_resources_kubelet
    other = nodes(short_dir, "odev", "o0")
    (short_dir / "dev").mkdir()
    snd = short_dir / "dev" / "snd"
    snd.mkdir()
    for name in ("c0", "c1"):
        (snd / name).touch()
    config = short_dir / "kdp.yaml"
    config.write_text(config_text(kubelet, short_dir, (OTHER, other)))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.wait_for(lambda: kubelet.allocatable(OTHER) == 1)
    foreign = {"u-0": str(snd / "c0"), "u-1": str(snd / "c1")}
    server = await serve_foreign(kubelet, ForeignPlugin(foreign))
    await kubelet.wait_for(lambda: kubelet.allocatable(GDEV) == 2)
    assert await kubelet.allocate(GDEV, 1, pod_uid="p1") is not None
    server.close()
    await server.wait_closed()
    text = config_text(kubelet, short_dir, (OTHER, other), (GDEV, str(snd)))
    if form == "group":  # (the README's row for generic-device-plugin's /dev/snd)
        text = text.replace(
            f'glob: {{paths: ["{snd}"]}}', f'glob: {{group: [{{path: "{snd}/*"}}]}}'
        )
    config.write_text(text)
    assert await running.host.reload_from(config) == "ok"
    await wait_until(
        lambda: GDEV in running.host.resources and running.host.resources[GDEV].status.listed,
        what="kdp-host serves GDEV and listed it",
    )
    poller = running.host.pod_resources
    await wait_until(lambda: bool(poller.holdings.of(GDEV)), what="p1 shown")
    await wait_until(lambda: running.host.resources[GDEV]._held, what="the runtime heard")
    assert kubelet.resource(GDEV).healthy_ids == frozenset()
    assert running.sample("kdp_devices_held_missing", resource=GDEV) == 0

    def health() -> list[str]:
        [entry] = [r for r in devices_document(running.host)["resources"] if r["name"] == GDEV]
        return [d["health"] for d in entry["devices"] if d["id"] == "u-0"]

    assert health() in (["held"], ["Healthy"]), "not looked at yet: not missing"
    looked.set()
    await wait_until(lambda: health() == ["Healthy"], what="its node looked at: there")
    assert not [r for r in caplog.records if r.msg == "held_device_missing"]
    (snd / "c0").unlink()  # (unplugged now: missing, `gone`)
    await wait_until(
        lambda: running.sample("kdp_devices_held_missing", resource=GDEV) == 1,
        what="c0 gone: missing",
    )
