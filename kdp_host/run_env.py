"""The environment variables that decide what a process runs or loads (hostile13 M1, M2,
M17): a command kdp-host runs as root with one of them naming a place a pod can write runs
the pod's code as root (the dynamic loader's preload or search path, the shell's start-up
file, an interpreter's module path or user site, a tool's config or plugin directory), in
the exec wrapper too.

Which places a config's env names (`named_paths`, one rule for every variable): every
absolute path in its value, split on `:`, blanks, `=` and `,` (`NODE_OPTIONS="--require
/x.js"`, `FOO=a=/x,/y`: a list of known variables keeps missing some, hostile13 M17), and
for the known variables what they mean besides:

- directory lists (`:`-separated; an empty or relative entry is taken in the working
  directory): `PATH`, `LD_LIBRARY_PATH`, `GCONV_PATH` (glibc's character set modules),
  `PYTHONPATH`, `PYTHONHOME`, `PERL5LIB`, `PERLLIB`, `RUBYLIB`, `NODE_PATH`;
- files (a relative one taken in the working directory): `LD_PRELOAD` (`:` or blank
  separated), `LD_AUDIT`, `BASH_ENV` and `ENV` (what a non-interactive bash or a POSIX sh
  reads first), `PYTHONSTARTUP`; any other `LD_*` (the dynamic loader's, `ld.so(8)`): each
  entry holding a `/`;
- directories a program reads its start-up code or settings from, by absolute path only:
  `HOME` (Python's user site `~/.local`, shells' rc files), `PYTHONUSERBASE`,
  `XDG_CONFIG_HOME`, `XDG_DATA_HOME`, `TMPDIR`, `PYTHONPLATLIBDIR` (where Python's standard
  library is, taken in its prefix); options naming code to load: `NODE_OPTIONS`,
  `PERL5OPT`, `RUBYOPT`, `JAVA_TOOL_OPTIONS`; a shell's options: `SHELLOPTS`, `BASHOPTS`.

A config's own env (`shell.env`, `preStart.env`, `release.env`), and the `NAME=VALUE`
settings of `env` on a `#!` line (`places._interpreter`, hostile13 M14), may set any of
them: the places they name are run places (`places.run_places`); a templated value of a
known variable (`decides_run`) is refused (not known before it is rendered), and so is a
value naming `/` itself (every place lies in it). A device's own env (a probe's `env`, sysfs
attributes) is not known beforehand: a variable of it is not passed to the host commands for
the device where it sets a known variable or where its value names an absolute path other
than the devices' own nodes (`host_withheld`, `HostEnv`: a directory a pod writes, named to
a variable the command reads as code or settings, `PYTHONPYCACHEPREFIX`, `OPENSSL_CONF`:
hostile14 N7, the list's class again), or a relative path that climbs (a `..` segment: a
variable taken in a directory of the program's own, `PYTHONPLATLIBDIR=../tmp/x` from
`/usr`, hostile19 F7, names any place as an absolute path does); it still reaches the
container's env in the Allocate answer. The others are passed (a device's env names its
own nodes, `/dev/fpga0`, as a matter of course).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping
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
READ_FROM: Final = frozenset(
    {
        "HOME",
        "PYTHONUSERBASE",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "TMPDIR",
        "NODE_OPTIONS",
        "PERL5OPT",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "PYTHONPLATLIBDIR",
        "SHELLOPTS",
        "BASHOPTS",
    }
)
"""Variables naming where a program reads start-up code or settings from, or what code it
loads (hostile13 M17): their absolute paths are found as any variable's are."""
RUN_VARIABLES: Final = DIRECTORY_LISTS | FILES | READ_FROM
LOADER_PREFIX: Final = "LD_"
_LOADER_SEPARATORS: Final = re.compile(r"[:\s]+")
_SEPARATORS: Final = re.compile(r"[:\s=,]+")
_CLIMBS: Final = re.compile(r"(?:^|[/:\s=,;])\.\.(?:$|[/:\s=,;])")
"""A `..` path segment anywhere in a value (`host_withheld`)."""


def decides_run(name: str) -> bool:
    """Whether the variable `name` decides what a process runs or loads (see the module)."""
    return name in RUN_VARIABLES or name.startswith(LOADER_PREFIX)


def named_paths(name: str, value: str, cwd: str | None) -> list[str]:
    """The absolute paths the variable `name` set to `value` names (see the module): every
    absolute path in it, and a known variable's relative entries taken in `cwd` (else
    kdp-host's working directory)."""
    if name in DIRECTORY_LISTS:
        entries = [entry or "." for entry in value.split(":")]
    elif name in FILES and name not in ("LD_PRELOAD", "LD_AUDIT"):
        entries = [value] if value else []
    elif name.startswith(LOADER_PREFIX) or name in FILES:
        entries = [e for e in _LOADER_SEPARATORS.split(value) if "/" in e]
    else:
        entries = []
    entries += [token for token in _SEPARATORS.split(value) if token.startswith("/")]
    found = (os.path.abspath(os.path.join(cwd or "", entry)) for entry in entries)
    return list(dict.fromkeys(found))


def own_nodes(devices: Iterable[Device]) -> frozenset[str]:
    """The host paths of the devices' nodes (normalised): what their env may name."""
    return frozenset(os.path.normpath(n.host_path) for d in devices for n in d.nodes)


def host_withheld(name: str, value: str, nodes: Collection[str]) -> bool:
    """Whether a device's own env variable is kept from the host commands (see the module):
    it decides what they run, its value names an absolute path that is not one of `nodes`
    (`own_nodes`), or a relative path that climbs (`..`)."""
    if decides_run(name) or _CLIMBS.search(value):
        return True
    return any(p not in nodes for p in named_paths(name, value, None))


WITHHELD_WHY: Final = (
    "decides what a host command runs, or names a path other than the devices' own nodes "
    "(absolute, or climbing with ..)"
)


@dataclass
class HostEnv:
    """The devices' own env as the host commands of one resource get it: without the
    variables `host_withheld` names, each withheld logged once per device
    (`device_env_withheld`)."""

    log: EventLogger
    told: set[tuple[str, str]] = field(default_factory=set)

    def withhold(self, env: Mapping[str, str], devices: Iterable[Device]) -> dict[str, str]:
        """`env` (the devices' merged env) without those variables."""
        devices = list(devices)
        nodes = own_nodes(devices)
        kept = {n: value for n, value in env.items() if not host_withheld(n, value, nodes)}
        if len(kept) < len(env):
            for device in devices:
                names = sorted(n for n, v in device.env.items() if host_withheld(n, v, nodes))
                if names and (device.id, ",".join(names)) not in self.told:
                    self.told.add((device.id, ",".join(names)))
                    self.log.warning(
                        "device_env_withheld",
                        device=device.id,
                        names=",".join(names),
                        why=f"{WITHHELD_WHY}: passed to containers only",
                    )
        return kept
