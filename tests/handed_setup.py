"""Set-up shared by the tests of host paths no container is handed (`config/handed.py`:
test_handed.py, test_handed_identity.py, test_unseen_paths.py): a config in a short
directory, a probe listing the devices a test wrote, an `allocate.command` printing the
answer a test chose, and waiting for the devices left out (`unsafe_mount`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import Config, ConfigError, load_config

from .conftest import RunningHost, wait_until

PROBE = "vendor.example/probe"
FPGA = "vendor.example/fpga"


def made_dirs(short_dir: Path, *names: str) -> Path:
    """`short_dir` with `dp`, `pr`, `state`, `dev` (holding `dev/fpga0`) and `names` made."""
    for name in ("dp", "pr", "state", "dev", *names):
        (short_dir / name).mkdir()
    (short_dir / "dev" / "fpga0").touch()
    return short_dir


def head(d: Path, socket_dir: str = "dp") -> str:
    """A config's lines before its resources: the kubelet's directories and stateDir in `d`."""
    return (
        f"kubelet: {{socketDir: {d}/{socket_dir}, podResourcesSocket: {d}/pr/kubelet.sock}}\n"
        f"stateDir: {d}/state\nresources:\n"
    )


def probe(d: Path) -> str:
    """The resource PROBE: a shell probe printing `d/p.json` (the devices a test lists)."""
    return (
        f"  - name: {PROBE}\n"
        f"    shell: {{command: [cat, {d}/p.json], format: json, interval: 1s}}\n"
    )


def fpga_glob(d: Path) -> str:
    """The resource FPGA: a glob of `d/dev/fpga*` (its `allocate` key may follow)."""
    return f"  - name: {FPGA}\n    glob: {{paths: ['{d}/dev/fpga*']}}\n"


def answering_hook(d: Path, output: Mapping[str, Any]) -> Path:
    """An `allocate.command` (`d/hook.sh`) printing `output`."""
    hook = d / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho '{json.dumps(output)}'\n")
    hook.chmod(0o755)
    return hook


async def left_out(running: RunningHost, count: int, what: str) -> None:
    """Until `count` devices of PROBE were left out for a path no container is handed."""
    await wait_until(
        lambda: (
            running.sample("kdp_driver_skipped_total", resource=PROBE, reason="unsafe_mount")
            == count
        ),
        what=what,
    )


def load_resources(dirs: Path, resources: str) -> Config:
    """A config of `head(dirs)` and `resources`, loaded from `dirs/kdp.yaml`."""
    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + resources)
    return load_config(config)


def resource_problems(dirs: Path, resources: str) -> list[str]:
    """The problems loading that config raises (it must raise)."""
    with pytest.raises(ConfigError) as raised:
        load_resources(dirs, resources)
    return raised.value.problems
