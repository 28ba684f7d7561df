"""One node in at most one advertised device of the host, through the kubelet's real device
manager (v1.32, tests/kubelet_harness.py): the kubelet books per resource and ID, so only the
host can keep a node from reaching two pods."""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import glob_config

FPGA = "vendor.example/fpga"
ALIAS = "vendor.example/alias"


def host_paths(answer: dict[str, object]) -> set[str]:
    devices = answer["devices"]
    assert isinstance(devices, list)
    return {os.path.realpath(d["PathOnHost"]) for d in devices}


async def test_two_resources_never_hand_one_node_to_two_pods(
    real_kubelet_factory, short_dir: Path, devices: Path, start_host
) -> None:
    (devices / "fpga1").unlink()
    (devices / "alias0").symlink_to(devices / "fpga0")
    kubelet = real_kubelet_factory()
    running = await start_host(
        glob_config(
            kubelet.socket_dir, (FPGA, f"{devices}/fpga[0-9]*"), (ALIAS, f"{devices}/alias*")
        )
    )

    def both_registered(k) -> bool:
        return k.resource(FPGA) is not None and k.resource(ALIAS) is not None

    await kubelet.await_for(both_registered, what="both resources registered")
    first = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    second = await kubelet.acall(kubelet.allocate, "p2", {ALIAS: 1})
    granted = [a for a in (first, second) if a["error"] == ""]
    assert len(granted) == 1, (first, second)
    assert host_paths(granted[0]) == {str(devices / "fpga0")}
    seen = await kubelet.acall(kubelet.capacity)
    healthy = sorted(seen["resources"][r]["healthy"] for r in (FPGA, ALIAS))
    assert healthy == [0, 1]
    registry = running.metrics.registry
    counted = [
        registry.get_sample_value(
            "kdp_driver_skipped_total", {"resource": r, "reason": "node_owned"}
        )
        for r in (FPGA, ALIAS)
    ]
    assert sorted(counted) == [0, 1]
