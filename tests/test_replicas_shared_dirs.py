"""Replicas share all of their device (hostile24 F5): with `replicas: 2` on a device that is a
directory (a glob group of `card{key}`), or mounts one (a group's `mount: true` member, a
probe's `mounts`), the second pod was refused: the first pod's booking of the directory was
taken for another device's, since 646d2d7 follows directories a booking holds mounted. Both
replicas are handed out; a third pod finds none left (the kubelet's own count)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .kubelet_harness import healthy

pytestmark = pytest.mark.fast

R = "vendor.example/card"


def _driver(root: Path, shape: str) -> str:
    card = root / "grp" / "card0"
    if shape == "directory":
        return f'glob: {{group: [{{path: "{root}/grp/card{{key}}"}}]}}'
    if shape == "mounted":
        return (
            f'glob: {{group: [{{path: "{root}/grp/card{{key}}/n"}}, '
            f'{{path: "{root}/grp/card{{key}}/data", mount: true}}]}}'
        )
    listed = [{"id": "d0", "paths": [str(card / "n")], "mounts": [
        {"hostPath": str(card / "data"), "containerPath": "/data"}
    ]}]  # fmt: skip
    (root / "probe.json").write_text(json.dumps(listed))
    return f"shell: {{command: [cat, {root}/probe.json], format: json}}"


@pytest.mark.parametrize("shape", ["directory", "mounted", "probe"])
async def test_both_replicas_of_a_device_with_a_directory_are_handed_out(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, shape: str
) -> None:
    card = short_dir / "grp" / "card0"
    (card / "data").mkdir(parents=True)
    (card / "n").touch()
    kubelet = real_kubelet_factory()
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir}/state\n"
        f"resources:\n  - name: {R}\n    {_driver(short_dir, shape)}\n    replicas: 2\n"
    )
    await kubelet.await_for(healthy(R, 2), what="both replicas advertised")
    answers = [await kubelet.acall(kubelet.allocate, pod, {R: 1}) for pod in ("q0", "q1")]
    assert [a["error"] for a in answers] == ["", ""], answers
    assert {i for a in answers for i in a["device_ids"][R]} == {
        f"{'d0' if shape == 'probe' else '0'}::{k}" for k in (0, 1)
    }
    third = await kubelet.acall(kubelet.allocate, "q2", {R: 1})
    assert "Available: 0" in third["error"], third
