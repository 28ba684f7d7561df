"""The places of the rule `handed.NeverHanded` keeps out of every container, as a config
names them (`never_handed`), and the config's own handed paths checked against it
(`handed_path_problems`).

Besides the kubelet's places and those kdp-host writes, the places whose change changes what
kdp-host runs as root (hostile11 K7, `run_places`): a pod handed one writable rewrites a
command kdp-host then runs. For each command of the config (a `shell` driver's, `health`,
`preStart`, `release`, `allocate.command`) its executable as the process runner finds it
(`process.resolve_command`): an argv[0] with a `/` and, where it exists now, its real path;
a bare name in each PATH directory it is looked for in up to the one it is found in (a pod
writing an earlier one would put its own first; the PATH of the command's `env` where it has
one: a `shell` probe's, `preStart`'s, `release`'s), and that file; the program a script's
`#!` line names, found the same way, and its own while it is a script too (hostile12 L4, L5,
hostile13 M4), the `NAME=VALUE` settings of `#!/usr/bin/env [-S] NAME=VALUE ... prog` added
to the env it is found with and runs with (hostile13 M14). Every place a variable of that
`env` (the config's, and those settings) names (`run_env.named_paths`: every absolute path
in any value, and what the known variables mean; hostile13 M1, M17): refused handed writable
as itself, anything in it or anything holding it, so `HOME: /srv/tool` keeps
`/srv/tool/.local` out as well as `/srv`. A templated value of a known variable, or one
naming `/`, is refused (`run_env_problems`). Each
`shell.workingDir` too (a relative argv[0] or PATH entry is taken there). An argv[0] that is
a template is rendered per device and is not known here. And every symlink met on the way to
any place of the rule, at its place (`link_places`: whoever writes its directory re-points
it; hostile13 M5, M6), refused handed writable as these are.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Final

from ..elf_header import elf_interpreter
from ..exec_format import INTERPRETER_DEPTH
from ..identity import Uncheckable, links_on_the_way, real_path
from ..mount_table import MountMap, read_mounts
from ..rules import GLOB_MAGIC
from ..run_env import decides_run, named_paths
from .handed import PROC, ROOT, NeverHanded
from .model import GROUP_KEY, Config, GlobDriverConfig, Problems, ShellDriverConfig
from .outputs import SOCKETS, STATE, Place, kubelet_places, written_places
from .source import FieldPath
from .syntax import render_template, template_fields

KUBELET_SOCKET_DIR: Final = "device-plugins"
"""The name of the kubelet's device-plugin directory in its root directory
(`<root-dir>/device-plugins`): where `socketDir` has it, its parent is the kubelet's root."""
KUBELET_DIRS: Final = (
    ("pods", "every pod's volumes and secrets"),
    ("pki", "the node's client key"),
    ("plugins", "CSI and other plugins' sockets"),
    ("plugins_registry", "the plugin watcher's registration sockets"),
    ("pod-resources", "the PodResources socket"),
    ("checkpoints", "pods' checkpoints"),
)
"""The directories of the kubelet's root directory no container is handed, with what each
holds (hostile11 K7: `pods` alone was; `pki` and `plugins` were handed out). The root itself
is not: a device may lie beside them (a test's or the demo's temporary root)."""


def never_handed(config: Config, config_file: str | os.PathLike[str] | None) -> NeverHanded:
    """The rule of `config` (read from `config_file`, when it came from a file). Does I/O
    (realpath): run it where the config is loaded. A place that cannot be resolved is
    compared as written (the config loader refuses such a config: `outputs`)."""
    file = None if config_file is None else os.fspath(config_file)
    places = protected_places(config, file)
    dirs: dict[str, str] = {}
    files: dict[str, str] = {}
    for place in places:  # (one what per real path: the first)
        (files if place.file else dirs).setdefault(place.real, place.what)
    run: dict[str, str] = {}
    for place in (*run_places(config), *(link for p in places for link in link_places(p))):
        run.setdefault(place.real, place.what)
    return NeverHanded(
        tuple((what, real) for real, what in dirs.items()),
        tuple((what, real) for real, what in files.items()),
        tuple((what, real) for real, what in run.items()),
    )


def kubelet_root(config: Config) -> str | None:
    """The kubelet's root directory (`--root-dir`, `/var/lib/kubelet` by default) where
    `kubelet.socketDir` is its `device-plugins` directory (the kubelet's own layout); None
    for a socketDir elsewhere (no guess)."""
    socket_dir = os.path.normpath(config.kubelet.socket_dir)
    if os.path.basename(socket_dir) != KUBELET_SOCKET_DIR:
        return None
    return os.path.dirname(socket_dir)


def protected_places(config: Config, config_file: str | None) -> list[Place]:
    """Every place of the rule (see `handed`) refused however it is handed out, derived from
    the kubelet's places and what kdp-host writes (`outputs.written_places`): a directory
    kdp-host writes in is protected itself, a file it writes by its directory (`file`: a
    protected file). Those refused where handed writable only are `run_places`."""
    kubelet = config.kubelet
    found = [
        *(p for p in kubelet_places(config) if p.key[-1] != "podResourcesSocket"),
        Place.at(
            ("kubelet", "podResourcesSocket"),
            "the directory of kubelet.podResourcesSocket",
            os.path.dirname(kubelet.pod_resources_socket),
        ),
    ]
    if (root := kubelet_root(config)) is not None:
        for name, holds in KUBELET_DIRS:
            what = f"the kubelet's {name} directory ({holds})"
            found.append(Place.at(("kubelet", "socketDir"), what, os.path.join(root, name)))
    for place in written_places(config):
        if place.owner in (SOCKETS, STATE):
            found.append(place)  # (a directory kdp-host writes in)
        else:  # (a file it writes, or its owner file)
            what = f"the directory of {place.what}"
            found.append(Place.at(place.key, what, os.path.dirname(place.path)))
    found.append(Place.at((), "/proc (the host's processes and kernel settings)", PROC))
    if config_file is not None:
        found.append(Place.at((), "the config file", config_file, file=True))
    return found


def link_places(place: Place) -> list[Place]:
    """Each symlink met on the way to `place` (`identity.links_on_the_way`), at its place:
    whoever writes its directory re-points it, and so where kdp-host reads, writes or runs
    by that name next (hostile13 M5, M6). The one rule for every place of `never_handed`:
    refused handed writable (`NeverHanded.run`)."""
    return [
        Place(place.key, f"the link {link} on the way to {place.what}", link, link)
        for link in links_on_the_way(place.path)
    ]


def run_places(config: Config) -> list[Place]:
    """The places whose change changes what kdp-host runs as root (see the module
    docstring): no container may be handed one writable. Does I/O (realpath, stat)."""
    found: list[Place] = []
    for index, resource in enumerate(config.resources):
        name = resource.name
        for key, argv, env, cwd in _commands(config, index):
            what = f"{name}'s {'.'.join(str(k) for k in key[2:])}"
            found.extend(_executable(key, what, argv[0], env, cwd))
            for variable, path in _env_paths(env, cwd):
                at = (*key[:-1], "env", variable)
                found.append(Place.at(at, f"{what}'s env {variable} entry", path))
        driver = resource.driver
        if isinstance(driver, ShellDriverConfig) and driver.working_dir is not None:
            key = ("resources", index, "shell", "workingDir")
            found.append(Place.at(key, f"{name}'s shell.workingDir", driver.working_dir))
    return [*found, *(link for place in found for link in link_places(place))]


def run_env_problems(config: Config) -> Problems:
    """A templated value of a config env variable that decides what a host command runs
    (`run_env.decides_run`): what it names is not known before it is rendered, so it
    cannot be kept out of containers (hostile13 M2); a value naming `/` itself (every place
    lies in it: no device could be handed writable)."""
    for index, _resource in enumerate(config.resources):
        for key, _argv, env, cwd in _commands(config, index, plain=False):
            for variable, value in (env or {}).items():
                at = (*key[:-1], "env", variable)
                if template_fields(value):
                    if decides_run(variable):
                        yield (
                            at,
                            f"{variable} decides what the command runs or loads as root: "
                            "it may not hold a template (what it names could not be kept "
                            "out of containers)",
                        )
                elif ROOT in named_paths(variable, value, cwd):
                    yield (
                        at,
                        f"{variable} names / (the host's root; an empty PATH entry is the "
                        "working directory): every place lies in it, so no container could "
                        "be handed anything writable",
                    )


_Command = tuple[FieldPath, tuple[str, ...], Mapping[str, str] | None, str | None]
"""(key, argv, environment, working directory) of a command the config runs."""


def _commands(config: Config, index: int, *, plain: bool = True) -> Iterator[_Command]:
    resource = config.resources[index]
    _plain = untemplated if plain else dict
    at: FieldPath = ("resources", index)
    driver = resource.driver
    if isinstance(driver, ShellDriverConfig):
        yield (*at, "shell", "command"), driver.command, driver.env, driver.working_dir
    if resource.health is not None:
        yield (*at, "health", "command"), resource.health.command, None, None
    if resource.pre_start is not None:
        pre_start = resource.pre_start
        yield (*at, "preStart", "command"), pre_start.command, _plain(pre_start.env), None
    if resource.release is not None:
        release = resource.release
        yield (*at, "release", "command"), release.command, _plain(release.env), None
    if resource.allocate.command is not None:
        yield (*at, "allocate", "command"), resource.allocate.command, None, None


def untemplated(env: Mapping[str, str]) -> dict[str, str]:
    """A hook's `env` as the runner passes it, where it holds no template (a `PATH` there
    decides where a bare command name is found: hostile12 L4)."""
    return {name: value for name, value in env.items() if not template_fields(value)}


def _env_paths(env: Mapping[str, str] | None, cwd: str | None) -> Iterator[tuple[str, str]]:
    """(variable, path) of each place `env` names (`run_env.named_paths`)."""
    for variable, value in (env or {}).items():
        for path in named_paths(variable, value, cwd):
            yield variable, path


def _executable(
    key: FieldPath,
    what: str,
    argv0: str,
    env: Mapping[str, str] | None,
    cwd: str | None,
    depth: int = 0,
) -> list[Place]:
    """The places of one command's executable (see the module docstring), and of the
    interpreter its `#!` line names (hostile12 L5), and so on while that is a script too
    (hostile13 M4), up to INTERPRETER_DEPTH."""
    if template_fields(argv0):
        return []  # (rendered per device: not known here)
    argv0 = render_template(argv0, {})
    if "/" in argv0:
        path: str | None = os.path.abspath(os.path.join(cwd or "", argv0))
        found: list[Place] = []
    else:
        from ..process import search_dirs  # (the runner's rule, loaded where a command is)

        found, path = [], None
        for directory in search_dirs(env, cwd):
            found.append(
                Place.at(key, f"a PATH directory {what} {argv0!r} is looked for in", directory)
            )
            if (path := shutil.which(argv0, path=directory)) is not None:
                break
    if path is None:
        return found
    found.append(Place.at(key, f"{what} executable", path))
    interpreter = None if depth >= INTERPRETER_DEPTH else program_interpreter(path)
    if interpreter is not None:
        program, settings, _ = interpreter
        settings = _expanded(settings, {**os.environ, **(env or {})})
        for variable, named in _env_paths(settings, cwd):  # (hostile13 M14)
            found.append(Place.at(key, f"{what}'s #! env {variable} entry", named))
        env = {**env, **settings} if env and settings else env or settings or None
        found += _executable(key, f"{what}'s interpreter", program, env, cwd, depth + 1)
    return found


def program_interpreter(path: str) -> tuple[str, dict[str, str], str] | None:
    """What the kernel starts first to run the file at `path`, the env settings it runs it
    with, and what that is: a script's `#!` interpreter (`script_interpreter`), or the
    loader a dynamically linked ELF binary names (`elf_header.elf_interpreter`: a binary
    built against a loader the host lacks, musl's on a glibc host, fails with ENOENT)."""
    if (script := script_interpreter(path)) is not None:
        return script
    loader = elf_interpreter(path)
    return None if loader is None else (loader, {}, ELF_LOADER)


def script_interpreter(path: str) -> tuple[str, dict[str, str], str] | None:
    """The program a script's `#!` line runs it with (`#!/usr/bin/env [options] X`: X), if
    any, the env settings `env` runs it with (`NAME=VALUE`: hostile13 M14), and what it is
    (SCRIPT_INTERPRETER, or ENV_PROGRAM).

    Read as Linux reads it (binfmt_script): the interpreter ends at the first space or tab,
    and what follows, up to the line's end less trailing spaces and tabs, is ONE argument. So
    a `\r` (a script saved with CRLF line endings) is part of the interpreter's name (the
    kernel finds no `/bin/sh\r`), and `#!/usr/bin/env sh -e` has env run a program named
    `sh -e`; only env's `-S` splits (hostile25 F5)."""
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip(" \t")
    match = _SHEBANG.fullmatch(line)
    if match is None or not match[1]:
        return None
    interpreter, argument = match[1], match[2]
    if os.path.basename(interpreter) == "env":
        program = _env_program([argument] if argument else [])
        return None if program is None else (*program, ENV_PROGRAM)
    return interpreter, {}, SCRIPT_INTERPRETER


def _expanded(settings: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """`settings` with each `${NAME}` replaced as `env -S` does, from the env the command
    gets (`-S PATH=${HOME}/bin:/usr/bin`: the host's HOME)."""
    return {
        name: _REFERENCE.sub(lambda m: env.get(m[1], ""), value) for name, value in settings.items()
    }


_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SHEBANG: Final = re.compile(r"([^ \t]*)(?:[ \t]+(.*))?", re.DOTALL)
"""A `#!` line's interpreter and its one argument (the kernel's split)."""
SCRIPT_INTERPRETER: Final = "#! interpreter"
ENV_PROGRAM: Final = "#! interpreter (run by env)"
"""`#!/usr/bin/env X`'s X: env starts it by an exec of its own (`#!` levels count afresh)."""
ELF_LOADER: Final = "ELF loader (PT_INTERP)"
_ENV_OPTIONS_WITH_ARGUMENT = frozenset({"-u", "--unset", "-C", "--chdir"})


def _env_program(words: list[str]) -> tuple[str, dict[str, str]] | None:
    """The program `env` runs given its arguments, and the NAME=VALUE settings it runs it
    with (its env: where it is found, what it loads); options skipped, `-S` split as env
    splits it. An unset (`-u`) or emptied (`-i`) variable is kept (the settings only add)."""
    rest, settings = list(words), {}
    while rest:
        word = rest.pop(0)
        if word in _ENV_OPTIONS_WITH_ARGUMENT:
            rest = rest[1:]
        elif word.startswith("-S") and len(word) > 2:
            rest[:0] = word[2:].split()
        elif word.startswith("--split-string="):
            rest[:0] = word.partition("=")[2].split()
        elif word.startswith("-"):
            continue
        elif "=" in word:
            name, _, value = word.partition("=")
            settings[name] = value
        else:
            return word, settings
    return None


def handed_path_problems(config: Config, config_file: str | None) -> Problems:
    """Why a host path `config` itself hands to containers breaks the rule: an
    `allocate.mounts` source, a glob path or group member that is no pattern. Does I/O
    (realpath, stat, the mount table)."""
    yield from run_env_problems(config)
    rule = never_handed(config, config_file)
    mounts = read_mounts()
    for index, resource in enumerate(config.resources):
        at: FieldPath = ("resources", index)
        for number, mount in enumerate(resource.allocate.mounts):
            key = (*at, "allocate", "mounts", number, "hostPath")
            yield from _problem(
                rule, mounts, key, "allocate.mounts source", mount.host_path, not mount.read_only
            )
        glob = resource.driver
        if not isinstance(glob, GlobDriverConfig):
            continue
        for number, path in enumerate(glob.paths):
            key = (*at, "glob", "paths", number)
            yield from _problem(rule, mounts, key, "glob path", path)
        for number, member in enumerate(glob.group):
            key = (*at, "glob", "group", number, "path")
            mounted = member.mount or os.path.isdir(member.path)  # (a directory is mounted)
            writable = not (mounted and member.read_only)
            yield from _problem(rule, mounts, key, "glob group member", member.path, writable)


def _problem(
    rule: NeverHanded,
    mounts: MountMap,
    key: FieldPath,
    what: str,
    path: str,
    writable: bool = True,
) -> Problems:
    """A glob path (a node: writable) or mount source that is no pattern, checked."""
    magic = GLOB_MAGIC.search(path)
    at = min(magic.start() if magic else len(path), path.find(GROUP_KEY) % (len(path) + 1))
    if at < len(path):  # a pattern: what it matches is checked when it is found, but the
        try:  # directory it starts from must resolve
            real_path(os.path.dirname(path[:at]) or ROOT)
        except Uncheckable as exc:
            yield key, f"{what} {os.path.normpath(path)}: {exc}: what it matches is not known"
        return
    if why := rule.path_problem(path, mounts, later=True, writable=writable):
        yield key, f"{what} {os.path.normpath(path)} {why}"
