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
settings of `env` on a `#!` line (`places.script_interpreter`, hostile13 M14), may set any of
them: the places they name are run places (`places.run_places`); a templated value of a
known variable (`decides_run`) is refused (not known before it is rendered), and so is a
value naming `/` itself (every place lies in it). A device's own env (a probe's `env`, sysfs
attributes) sets none of them: it reaches the host commands under a prefix only
(`host_env`, hostile21 F6).
"""

from __future__ import annotations

import os
import re
from typing import Final

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
