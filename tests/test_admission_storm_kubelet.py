"""hostile22 F9 through the kubelet's real device manager (tests/kubelet_harness.py): hot-plug
events on a host with a glob of nodes, a glob of links to them and a glob group of held
directories wedged kdp-host's event loop for good (two admissions that changed nothing asked
for each other again, in one turn of the loop): no Allocate answered, `/healthz` 503."""

from __future__ import annotations

import asyncio
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import RealKubelet, free_port

NODES = "example.com/a"
LINKS = "example.com/b"
CARDS = "example.com/c"


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def seen(kubelet: RealKubelet, resource: str) -> tuple[int, int]:
    """(capacity, healthy) of `resource` as the kubelet sees it ((0, 0): not live)."""
    found: dict[str, Any] | None = kubelet.resource(resource)
    return (0, 0) if found is None else (found["capacity"], found["healthy"])


async def test_hot_plug_events_with_links_and_held_cards_leave_the_loop_answering(
    real_kubelet_factory, short_dir: Path, kdp_process
) -> None:
    """hostile22's minimal sequence: pa gets a node, which is unplugged under it; pb gets
    another; a link to pb's node; a free node moved out of the pattern; pc1, pc2 get both
    cards; pd gets a third node; the link removed; once the unplugged and moved nodes'
    gracePeriod is over, pb's node moved out of the pattern. Before: `/healthz` 503 ("event
    loop stalled") from the last step on, for good (2 of 2 runs), no Allocate answered."""
    dev, grp, spare = short_dir / "dev", short_dir / "grp", short_dir / "spare"
    links = dev / "by-id"
    for directory in (links, grp / "card0", grp / "card1", spare):
        directory.mkdir(parents=True)
    try:
        for minor in range(4):
            os.mknod(dev / f"fpga{minor}", 0o600 | stat.S_IFCHR, os.makedev(240, minor))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    port = free_port()
    config = short_dir / "config.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{short_dir / 'pr'}/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\n"
        f"metrics: {{listen: 127.0.0.1:{port}}}\n"
        "resources:\n"
        f'  - name: {NODES}\n    glob: {{paths: ["{dev}/fpga*"], gracePeriod: 2s}}\n'
        f'  - name: {LINKS}\n    glob: {{paths: ["{links}/*"]}}\n'
        f'  - name: {CARDS}\n    glob: {{group: [{{path: "{grp}/card{{key}}"}}]}}\n'
    )
    host = await kdp_process(config)
    await kubelet.await_for(lambda k: seen(k, NODES) == (4, 4), what="four nodes")
    await kubelet.await_for(lambda k: seen(k, CARDS) == (2, 2), what="two cards")

    async def allocate(pod: str, resource: str) -> str:
        answer = await kubelet.acall(kubelet.allocate, pod, {resource: 1})
        assert answer["error"] == "", answer
        path: str = answer["devices"][0]["PathOnHost"] if answer["devices"] else ""
        return path

    def lines(event: str, resource: str, then: str = "") -> int:
        log = host.log.read_text() if host.log.exists() else ""
        return log.count(f"event={event} resource={resource}{then}")

    async def step(change: Callable[[], object], event: str, resource: str) -> None:
        """`change` the nodes, and wait until kdp-host logs `event` of `resource` (its
        admission took the change: each step is a burst of its own, as the sequence needs)."""
        before = lines(event, resource)
        change()
        try:
            await kubelet.await_for(lambda _: lines(event, resource) > before, what=event)
        except TimeoutError:
            status = await asyncio.to_thread(healthz, port)
            raise AssertionError(f"no {event} of {resource}; /healthz {status}") from None

    unplugged = await allocate("pa", NODES)
    await step(lambda: os.unlink(unplugged), "devices_changed", NODES)  # under pa
    held = await allocate("pb", NODES)
    await step(lambda: (links / "l4").symlink_to(held), "device_held", LINKS)
    free = next(p for p in sorted(dev.glob("fpga*")) if str(p) not in (unplugged, held))
    await step(lambda: os.rename(free, spare / "n2"), "devices_changed", NODES)
    for pod in ("pc1", "pc2"):
        await allocate(pod, CARDS)
    await allocate("pd", NODES)
    graces_over = lines("devices_changed", NODES, " healthy=2 unhealthy=0")
    await step((links / "l4").unlink, "no_devices_match", LINKS)
    await kubelet.await_for(  # (the unplugged and moved nodes' gracePeriod is over)
        lambda _: lines("devices_changed", NODES, " healthy=2 unhealthy=0") > graces_over,
        what="the unplugged nodes no longer listed",
    )
    await step(lambda: os.rename(held, spare / "n1"), "devices_changed", NODES)  # pb's node
    for _ in range(3):
        status = await asyncio.to_thread(healthz, port)
        assert status == (200, "ok\n"), status
    answer = await asyncio.wait_for(kubelet.acall(kubelet.allocate, "pz", {NODES: 1}), 20)
    assert answer["error"] or answer["devices"], answer  # (answered: refused, no node is free)
