"""A booking holds its device as its driver reports it now, through the kubelet's real
device manager (issue 17): a held device that lost a booked node still grows by the
claims of it that remain (hostile28 G6), and a claim it grew by, which its device no
longer reports, is let go of (hostile29 H2)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import wait_until
from .kubelet_harness import healthy
from .test_held_inherit import _settled, _shown
from .test_ownership_kubelet import booked_head, grants

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

CARD = "example.com/card"
EVENTS = "example.com/events"
OTHER = "example.com/other"


def _reports(running: Any, resource: str, device_id: str) -> set[str]:
    """The node names the driver's last list of `resource` gives `device_id`."""
    state = running.host.ownership._resources[resource]
    device = state.reported.get(device_id)
    return set() if device is None else {Path(n.host_path).name for n in device.nodes}


async def _card_held(
    kubelet: Any, short_dir: Path, start_host: Any, other: str, pattern: str
) -> tuple[Path, Any]:
    """Resource card: glob group dev/xdma{key}_* (card 0), resource `other` a glob of
    dev/`pattern`; p0 holds card 0. Returns the dev dir and the host."""
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("xdma0_user", "xdma0_c2h_0", "other0", "other1"):
        (dev / name).touch()
    running = await start_host(
        booked_head(kubelet, short_dir)
        + f'  - name: {CARD}\n    glob: {{group: [{{path: "{dev}/xdma{{key}}_*"}}]}}\n'
        + f'  - name: {other}\n    glob: {{paths: ["{dev}/{pattern}"]}}\n'
    )
    await kubelet.await_for(healthy(CARD, 1), what="card 0 advertised")
    answer = await kubelet.acall(kubelet.allocate, "p0", {CARD: 1})
    assert answer["device_ids"][CARD] == ["0"], answer
    return dev, running


async def test_a_held_card_that_lost_a_member_still_gets_its_new_one(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """G6: p0 holds card 0; its driver tears down xdma0_c2h_0, then makes xdma0_events_0.
    The card is still the device p0 holds (its xdma0_user is booked and reported): the new
    node joins p0's booking and resource events holds it back. It went to p1."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    dev, running = await _card_held(kubelet, short_dir, start_host, EVENTS, "xdma*_events_*")
    (dev / "xdma0_c2h_0").unlink()
    await wait_until(lambda: _reports(running, CARD, "0") == {"xdma0_user"}, what="c2h_0 gone")
    (dev / "xdma0_events_0").touch()
    await _settled(running, EVENTS, "xdma0_events_0")
    await wait_until(lambda: "xdma0_events_0" in _reports(running, CARD, "0"), what="card 0")

    shown = _shown(running, EVENTS)
    assert shown["xdma0_events_0"]["health"] == "held", shown
    assert await grants(kubelet, EVENTS, "p1") == [], "xdma0_events_0 is a node of p0's card"


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
async def test_a_claim_a_held_device_reported_once_is_let_go_of(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, how: str
) -> None:
    """H2: p0 holds card 0; a link dev/xdma0_tmp to other0 matches card 0's pattern for a
    while, so card 0's booking grows by other0's node and other0 is held. Once the link is
    gone card 0 no longer reaches other0: other0 is advertised again and a pod gets it. It
    stayed held until p0 ended (days for a training job), and on file."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    dev, _ = await _card_held(kubelet, short_dir, start_host, OTHER, "other*")
    await kubelet.await_for(healthy(OTHER, 2), what="both others advertised")
    link = dev / "xdma0_tmp"
    if how == "symlink":
        link.symlink_to("other0")
    else:
        os.link(dev / "other0", link)
    await kubelet.await_for(healthy(OTHER, 1), what="other0 held by card 0's booking")
    link.unlink()
    await kubelet.await_for(healthy(OTHER, 2), what="other0 advertised again")
    assert len(await grants(kubelet, OTHER, "p1", "p2")) == 2, "other0 is free"
    saved = json.loads((short_dir / "state" / "ownership.json").read_text())
    (card,) = [b for b in saved["bookings"] if b["resource"] == CARD]
    assert {Path(c["path"]).name for c in card["claims"]} == {"xdma0_user", "xdma0_c2h_0"}
