"""Another spec file that defines a resource's CDI names is seen when it is written, on the
real kubelet (issue 17, hostile27 F4).

A spec file (`.json` or `.yaml`) of the spec dir (CDI drops a name two files of one dir
define) or of a later runtime dir (its entry wins) that defines
`example.com/fpga=example.com_a:fpga0` with another node holds fpga0 Unhealthy. Before, only
the 10 s check saw it: meanwhile fpga0 was Healthy and handed out (its name resolving
nowhere, or its Allocate waiting 5 s to be refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from .kubelet_harness import healthy
from .test_cdi_stop import A
from .test_cdi_stop import _config as cdi_config

SOONER = 5.0
"""Seconds within which the clash is seen: well before the check (`file_lease.VERIFY`)."""


@pytest.mark.parametrize(
    ("where", "suffix"),
    [("same", ".json"), ("later", ".json"), ("same", ".yaml"), ("later", ".yaml")],
)
async def test_another_file_defining_a_name_holds_its_device_at_once(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, where: str, suffix: str
) -> None:
    """A `.yaml` file is a spec file to the runtime as a `.json` one is (`cdi_files`): before,
    the own-name checks read `.json` files only, and fpga0 stayed Healthy while a `.yaml`
    file dropped its name (same dir) or won over it (later dir)."""
    kubelet = real_kubelet_factory()
    for directory in ("dev", "cdi", "later"):
        (short_dir / directory).mkdir()
    for node in ("fpga0", "fpga1", "other"):
        (short_dir / "dev" / node).touch()
    await start_host(cdi_config(kubelet.socket_dir, short_dir))  # (spec dir cdi, then later)
    await kubelet.await_for(healthy(A, 2), what="fpga0 and fpga1 advertised")
    vendor = short_dir / ("cdi" if where == "same" else "later") / f"vendor{suffix}"
    node = {"path": "/dev/fpga0", "hostPath": str(short_dir / "dev" / "other")}
    device = {"name": "example.com_a:fpga0", "containerEdits": {"deviceNodes": [node]}}
    spec = {"cdiVersion": "0.5.0", "kind": "example.com/fpga", "devices": [device]}
    vendor.write_text(json.dumps(spec) if suffix == ".json" else yaml.safe_dump(spec))
    await kubelet.await_for(healthy(A, 1), SOONER, what="fpga0 held by the other file")
    p0 = await kubelet.acall(kubelet.allocate, "p0", {A: 1})
    assert p0["error"] == "" and p0["device_ids"][A] == ["fpga1"], p0

    vendor.unlink()
    await kubelet.await_for(healthy(A, 2), SOONER, what="fpga0 back once the file is gone")
