"""The environment variables that decide what a process runs or loads (hostile13 M1, M2): a
command kdp-host runs as root with one of them naming a place a pod can write runs the pod's
code as root (the dynamic loader's preload or search path, the shell's start-up file, an
interpreter's module path), in the exec wrapper too.

The list (`RUN_VARIABLES`, and every `LD_*` name: the dynamic loader's, `ld.so(8)`):

- directory lists (`:`-separated; an empty entry is the working directory): `PATH`,
  `LD_LIBRARY_PATH`, `GCONV_PATH` (glibc's character set modules), `PYTHONPATH`,
  `PYTHONHOME`, `PERL5LIB`, `PERLLIB`, `RUBYLIB`, `NODE_PATH`;
- files: `LD_PRELOAD` (`:` or blank separated), `LD_AUDIT`, `BASH_ENV` and `ENV` (what a
  non-interactive bash or a POSIX sh reads first), `PYTHONSTARTUP`;
- any other `LD_*`: each path it names (an entry holding a `/`).

A config's own env (`shell.env`, `preStart.env`, `release.env`) may set them: the places they
name are run places (`places.run_places`), and a templated value is refused (not known before
it is rendered). A device's own env (a probe's `env`, sysfs attributes) is not passed to the
host commands for them (`HostEnv`; it still reaches the container's env in the Allocate answer).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from .devices import Device
from .logs import EventLogger

DIRECTORY_LISTS: Final = frozenset(
    {
        "PATH",
        "LD_LIBRARY_PATH",
        "GCONV_PATH",
        "PYTHONPATH",
        "PYTHONHOME",
        "PERL5LIB",
        "PERLLIB",
        "RUBYLIB",
        "NODE_PATH",
    }
)
FILES: Final = frozenset({"LD_PRELOAD", "LD_AUDIT", "BASH_ENV", "ENV", "PYTHONSTARTUP"})
RUN_VARIABLES: Final = DIRECTORY_LISTS | FILES
LOADER_PREFIX: Final = "LD_"
_LOADER_SEPARATORS: Final = re.compile(r"[:\s]+")


def decides_run(name: str) -> bool:
    """Whether the variable `name` decides what a process runs or loads (see the module)."""
    return name in RUN_VARIABLES or name.startswith(LOADER_PREFIX)


def named_paths(name: str, value: str, cwd: str | None) -> list[str]:
    """The absolute paths the variable `name` set to `value` names (relative ones taken in
    `cwd`, else kdp-host's working directory); [] for a variable that decides nothing."""
    if name in DIRECTORY_LISTS:
        entries = [entry or "." for entry in value.split(":")]
    elif name in ("LD_PRELOAD", "LD_AUDIT") or name not in FILES:
        if not decides_run(name):
            return []
        entries = [e for e in _LOADER_SEPARATORS.split(value) if "/" in e]
    else:
        entries = [value] if value else []
    return [os.path.abspath(os.path.join(cwd or "", entry)) for entry in entries]


@dataclass
class HostEnv:
    """The devices' own env as the host commands of one resource get it: without the
    variables that decide what they run (`decides_run`), each withheld logged once per
    device (`device_env_withheld`)."""

    log: EventLogger
    told: set[tuple[str, str]] = field(default_factory=set)

    def withhold(self, env: Mapping[str, str], devices: Iterable[Device]) -> dict[str, str]:
        """`env` (the devices' merged env) without those variables."""
        kept = {name: value for name, value in env.items() if not decides_run(name)}
        if len(kept) < len(env):
            for device in devices:
                names = sorted(n for n in device.env if decides_run(n))
                if names and (device.id, ",".join(names)) not in self.told:
                    self.told.add((device.id, ",".join(names)))
                    self.log.warning(
                        "device_env_withheld",
                        device=device.id,
                        names=",".join(names),
                        why="decides what a host command runs: passed to containers only",
                    )
        return kept
