"""The committed generated code is fresh; `make demo`'s command runs non-interactively."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    out = tmp_path / "api"
    out.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
            f"--python_betterproto2_out={out}",
            "--python_betterproto2_opt=client_generation=async,server_generation=async",
            *sorted(str(p) for p in (ROOT / "protos").glob("*.proto")),
        ],
        check=True, env=env, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    committed = ROOT / "kdp_host" / "api"
    fresh = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    kept = {
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh == kept, "run `make protos`"
    for name in fresh:
        assert filecmp.cmp(out / name, committed / name, shallow=False), (
            f"kdp_host/api/{name} differs from a fresh generation: run `make protos`"
        )


def test_demo_runs_and_stops_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kdp_host", "demo", "--duration", "0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "resource=demo.kdp-host.io/fpga capacity=2 allocatable=2" in out
    assert "resource=demo.kdp-host.io/dongle capacity=4 allocatable=4" in out
    assert "env        FPGA_DEVICES=fpga0" in out
    held = [line.split() for line in out.splitlines() if "default/demo-pod/main" in line]
    assert held and held[0][:4] == [
        "demo.kdp-host.io/fpga",
        "fpga0",
        "Healthy",
        "default/demo-pod/main",
    ], "who holds the device, from the simulated kubelet's PodResources"
    assert "pod_resources_unavailable" not in result.stderr
    assert "the kubelet saw the new device" in out
    assert "kdp-host stopped (exit 0)" in out
    assert "resource=demo.kdp-host.io/fpga capacity=3 allocatable=0" in out
    assert "Traceback" not in result.stderr
