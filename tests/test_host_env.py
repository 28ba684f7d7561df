"""A device's own env reaches the host commands run for its use (`preStart.command`,
`release.command`, `allocate.command`) under `KDP_DEVICE_ENV_` only (`host_env.py`; issue 17,
hostile21 F6): a variable the host's programs read changes what a command run as root does
with or without a path in its value, and the deny list this replaced kept missing some
(`LOCPATH=tmp`, `PYTHONWARNINGS=ignore::mod.X`, `GIT_SSH_COMMAND`, `ZDOTDIR`). The
container's env keeps the bare names."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from kdp_host.host_env import DEVICE_ENV_PREFIX, host_command_env
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

R = "vendor.example/probe"

DEVICE_ENV = {
    "LOCPATH": "tmp",  # (glibc's locale data, taken in the working directory)
    "PYTHONWARNINGS": "ignore::mod.X",  # (Python imports mod to find X)
    "GIT_SSH_COMMAND": "touch pwned",  # (git runs it)
    "ZDOTDIR": "tmp",  # (zsh's start-up files: the BASH_ENV of zsh)
    "PERL5OPT": "-Mmod",  # (perl loads mod)
    "NODE_OPTIONS": "--require mod",  # (node loads mod)
    "BASH_ENV": "rc",  # (a relative start-up file)
    "FPGA_SLOT": "3",  # (an ordinary one: under the prefix too)
}
"""A device's own env: each variable but FPGA_SLOT changes what a host program does with no
absolute path and no `..` in its value; the first four passed the old deny list."""


def test_the_devices_env_is_passed_under_the_prefix_and_the_config_env_wins() -> None:
    env = host_command_env(
        {"LOCPATH": "tmp", "SLOT": "0,1"}, {"MODE": "reset", f"{DEVICE_ENV_PREFIX}SLOT": "9"}
    )
    assert env == {"KDP_DEVICE_ENV_LOCPATH": "tmp", "KDP_DEVICE_ENV_SLOT": "9", "MODE": "reset"}


def _recorder(root: Path, name: str, prints: str = "") -> str:
    """The argv of a command that writes its environment to `root`/`name`.json (renamed
    into place: the test reads it as soon as it is there)."""
    code = (
        "import json, os, sys; f = open(sys.argv[1] + '.tmp', 'w');"
        " json.dump(dict(os.environ), f); f.close(); os.replace(f.name, sys.argv[1]);"
        f" print({prints!r})"
    )
    return json.dumps([sys.executable, "-c", code, str(root / f"{name}.json")])


def _config(root: Path, socket_dir: Path) -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{root}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root}/state\nresources:\n"
        f"  - name: {R}\n"
        f"    shell: {{command: [cat, {root}/p.json], format: json, interval: 1s}}\n"
        f"    preStart: {{command: {_recorder(root, 'preStart')}, env: {{MODE: start}}}}\n"
        f"    release: {{command: {_recorder(root, 'release')}}}\n"
        f"    allocate: {{command: {_recorder(root, 'allocate', '{}')}}}\n"
    )


async def test_no_host_command_gets_a_devices_variable_under_its_own_name(
    pod_resources_kubelet: KubeletSimulator, socket_dir: Path, short_dir: Path, start_host: Any
) -> None:
    """preStart, allocate.command and release each get every variable of the device's env
    as `KDP_DEVICE_ENV_<name>` and none under its own name (LOCPATH, PYTHONWARNINGS,
    GIT_SSH_COMMAND and ZDOTDIR reached them before); the container gets the bare names."""
    kubelet, root = pod_resources_kubelet, short_dir
    for name in ("state", "dev"):
        (root / name).mkdir()
    (root / "dev" / "n0").touch()
    listed = [{"id": "d0", "paths": [str(root / "dev" / "n0")], "env": DEVICE_ENV}]
    (root / "p.json").write_text(json.dumps(listed))
    await start_host(_config(root, socket_dir))
    await kubelet.wait_for(lambda: kubelet.resource(R).healthy_ids == {"d0"})
    response = await kubelet.allocate(R, 1, pod_uid="p1")
    assert response is not None
    assert {k: v for k, v in response.envs.items() if k in DEVICE_ENV} == DEVICE_ENV
    await kubelet.release("p1")
    await wait_until(lambda: (root / "release.json").exists(), what="the release ran")
    for command in ("allocate", "preStart", "release"):
        seen = json.loads((root / f"{command}.json").read_text())
        for name, value in DEVICE_ENV.items():
            assert seen.get(name) == os.environ.get(name), f"{command} got {name}"
            assert seen.get(DEVICE_ENV_PREFIX + name) == value, f"{command}: {name}"
    assert json.loads((root / "preStart.json").read_text())["MODE"] == "start"
