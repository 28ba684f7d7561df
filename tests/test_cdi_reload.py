"""A CDI name a pod holds across a reload (issue 17, hostile6 H1), on the real kubelet.

The kubelet keeps a container's Allocate answer, CDI names and all, and hands the names to
the runtime again when the container restarts, without a new Allocate. So a name a pod holds
must never come to resolve to a node another resource (and another pod) has: not when a
reload swaps two resources' kinds, not when it renames a resource keeping its kind. The
names are unique to (resource, device), so a held name resolves to what it was handed out
with or to nothing (the container does not start), never to another resource's device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config.outputs import spec_file_name

from .conftest import wait_until
from .kubelet_harness import RealKubelet, healthy

A, B = "example.com/a", "example.com/b"
K1, K2 = "example.com/k1", "example.com/k2"


def resolved(spec_dir: Path) -> dict[str, list[str]]:
    """What each qualified CDI name resolves to in `spec_dir`, as the CDI library's cache
    does: a name two files of one directory define is a conflict and resolves to nothing."""
    found: dict[str, list[list[str]]] = {}
    for path in sorted(spec_dir.glob("*.json")):
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for device in spec["devices"]:
            nodes = device["containerEdits"].get("deviceNodes", [])
            found.setdefault(f"{spec['kind']}={device['name']}", []).append(
                [node.get("hostPath", node["path"]) for node in nodes]
            )
    return {name: nodes[0] for name, nodes in found.items() if len(nodes) == 1}


def _kind_of(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["kind"])
    except (OSError, ValueError, KeyError):
        return None


def _names(answer: dict[str, Any]) -> list[str]:
    return [c.get("Name", c.get("name")) for c in answer["cdi_devices"]]


def _config(kubelet: RealKubelet, short_dir: Path, resources: list[tuple[str, str, str]]) -> str:
    text = f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir / 'state'}\n"
    text += "resources:\n"
    for name, kind, directory in resources:
        text += (
            f'  - name: {name}\n    glob: {{paths: ["{short_dir / directory}/fpga*"]}}\n'
            f"    allocate: {{cdi: {{kind: {kind}, specDir: {short_dir / 'cdi'}}}}}\n"
        )
    return text


def _held_names_stay_theirs(spec_dir: Path, held: list[str], theirs: set[str]) -> None:
    """Each held name resolves to one of its pod's own nodes, or to nothing."""
    now = resolved(spec_dir)
    for name in held:
        assert set(now.get(name, [])) <= theirs, (name, now.get(name), now)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(
            [(A, K1, "dev"), (B, K2, "dev2")], [(A, K2, "dev"), (B, K1, "dev2")], id="swap"
        ),
        pytest.param([(A, K1, "dev")], [(B, K1, "dev2")], id="rename"),
    ],
)
async def test_a_reload_never_points_a_held_cdi_name_at_another_resources_node(
    real_kubelet_factory: Any,
    short_dir: Path,
    start_host: Any,
    before: list[tuple[str, str, str]],
    after: list[tuple[str, str, str]],
) -> None:
    """hostile6 H1: `a` (kind k1, dev/fpgaN) and `b` (k2, dev2/fpgaN) swap kinds in one
    reload, or `a` is renamed `b` on dev2 keeping its kind. p1 holds a's fpga0 and fpga1;
    then p2 is given b's. p1's names (its container restarts with them) must not resolve
    to dev2, p2's nodes."""
    kubelet = real_kubelet_factory()
    for directory in ("dev", "dev2"):
        (short_dir / directory).mkdir()
        for i in (0, 1):
            (short_dir / directory / f"fpga{i}").touch()
    spec_dir = short_dir / "cdi"
    config = short_dir / "kdp.yaml"
    config.write_text(_config(kubelet, short_dir, before))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.await_for(healthy(A, 2), what="a's fpga0 and fpga1 advertised")
    p1 = await kubelet.acall(kubelet.allocate, "p1", {A: 2})
    assert p1["error"] == "", p1
    held = _names(p1)
    mine = {str(short_dir / "dev" / f"fpga{i}") for i in (0, 1)}
    assert {node for name in held for node in resolved(spec_dir)[name]} == mine

    config.write_text(_config(kubelet, short_dir, after))
    assert await running.host.reload_from(config) == "ok"
    b_kind = next(kind for name, kind, _ in after if name == B)
    await wait_until(
        lambda: _kind_of(spec_dir / spec_file_name(B)) == b_kind, what="b's spec file rewritten"
    )
    await kubelet.await_for(healthy(B, 2), what="b's devices advertised after the reload")
    _held_names_stay_theirs(spec_dir, held, mine)

    p2 = await kubelet.acall(kubelet.allocate, "p2", {B: 2})
    assert p2["error"] == "", p2
    theirs = {str(short_dir / "dev2" / f"fpga{i}") for i in (0, 1)}
    assert {node for name in _names(p2) for node in resolved(spec_dir)[name]} == theirs
    assert not set(held) & set(_names(p2)), "one CDI name held by two pods"
    _held_names_stay_theirs(spec_dir, held, mine)
