"""The environment of the host commands run for a use of devices (`preStart.command`,
`release.command`, `allocate.command`): one rule, `host_command_env`.

A command kdp-host runs as root gets kdp-host's own environment (what started kdp-host set:
the chart's DaemonSet, a unit file; no device changes it), then the command's config `env`
(the operator's, checked when the config is loaded: `run_env`), then the devices' own env
(a probe's `env`, sysfs attributes: `allocation.device_env`) **under `KDP_DEVICE_ENV_`
only**: `FPGA_SLOT=3` of a device reaches the command as `KDP_DEVICE_ENV_FPGA_SLOT=3`.

Why a prefix, not a list of names to keep out (hostile21 F6): a device's env is written by
what its driver reads (a probe's output, a sysfs attribute), and a variable the host's
programs read changes what a command run as root does with or without a path in its value:
`PYTHONWARNINGS=ignore::mod.X` imports a module by name, `LOCPATH=tmp` loads locale data from
the working directory, `GIT_SSH_COMMAND` runs a command, `ZDOTDIR` is zsh's start-up
directory, `PERL5OPT=-Mmod` and `NODE_OPTIONS=--require mod` load code. The deny list this
replaces (the loader's and interpreters' variables, a value naming an absolute path or a
`..`) kept missing some, as any such list does. No program reads a name under the prefix but
a command written to read it, so the devices' env can no longer set anything the host's
programs read. The container's env (the Allocate answer) keeps the bare names.

The config `env` entries win over the devices' own (a configured `KDP_DEVICE_ENV_X` too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

DEVICE_ENV_PREFIX: Final = "KDP_DEVICE_ENV_"
"""What a device's own env variable is named under in a host command's env."""


def host_command_env(
    device_env: Mapping[str, str], configured: Mapping[str, str]
) -> dict[str, str]:
    """What a host command gets on top of kdp-host's own environment: the devices' own env
    (`device_env`, merged as Allocate merges it) under `DEVICE_ENV_PREFIX`, then the
    command's `configured` env (rendered), which wins."""
    env = {DEVICE_ENV_PREFIX + name: value for name, value in device_env.items()}
    env.update(configured)
    return env
