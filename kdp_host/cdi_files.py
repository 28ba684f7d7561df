"""What a CDI spec file is, what it defines, and which definition of a name wins: the one rule
of every reader of the runtime's CDI dirs (issue 17).

The runtime (containerd and CRI-O, through the CDI library) resolves a name `<kind>=<device>`
when it creates a container:

- a spec file is a `.json` or `.yaml` file of one of its dirs (`cdiRuntimeDirs`, in
  its order: `SPEC_SUFFIXES`); other names (a writer's temporary file, an owner file) are not;
- a file defines, for its `kind`, each of its `devices` by name; what a device hands out is
  each `containerEdits.deviceNodes[]` (its `hostPath`, else its `path`) and
  `containerEdits.mounts[].hostPath`, of the device and of the spec (the spec's edits go with
  each of its devices) (`parse_spec`, one parser: every file is read as YAML whatever its
  suffix, as the CDI library reads it; JSON is YAML);
- a later dir's definition wins over an earlier one's; two files of one dir that define a
  name make the runtime drop it, whatever another dir defines (`winning`).

Every reader calls this: the own spec file's clash check (`cdi_dirs.check_spec_dirs`), the
files that win over it (`cdi_resolution.winning_entries`, `cdi_disk.SpecOnDisk`), the
lookup of another plugin's names (`cdi_lookup.CdiNames`), and the watches that tell them a
file changed (`is_spec_file`). A file is parsed again only when its signature (device,
inode, size, modification time) changed (`SpecFiles`): a look costs the changed files.
"""

from __future__ import annotations

import glob
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from .atomic_files import read_or_none
from .cdi_acceptance import judge_spelled, spelled
from .state_document import Signature, signature

SPEC_SUFFIXES: Final = (".json", ".yaml")
"""The file names the runtime reads as CDI spec files (the CDI library's scan of a dir:
its own entries, not subdirectories; `.yml` is not read)."""
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_GLOB: Final = re.compile(r"[*?[]")
"""A glob character (the CDI library's wildcards in a node's host path)."""
MAX_KNOWN: Final = 4096
"""Most spec files a `SpecFiles` keeps (past it, it starts over)."""


def is_wildcard(path: str) -> bool:
    """Whether a node's host path has glob characters (the CDI library's wildcards)."""
    return _GLOB.search(path) is not None


def is_spec_file(name: str) -> bool:
    """Whether the runtime reads a file of this name (in one of its dirs) as a spec file."""
    return name.endswith(SPEC_SUFFIXES)


@dataclass(frozen=True)
class NodeNumber:
    """A device node a spec gives by number (`type` c, u or b with a `major`): the runtime
    makes it in the container from the numbers whatever is at its path (the CDI library's
    `fillMissingInfo` stats nothing then: "a device vendor may fully specify a device
    node"), so what it hands out is that number, not what the path reaches (hostile28 G9)."""

    kind: str
    """'c' or 'b' (`identity.identity_of`'s kinds of a node: 'u' is a character node)."""
    rdev: int
    text: str
    """How the spec names it (its `hostPath`, else its `path`, with the numbers): said."""


@dataclass(frozen=True)
class Edits:
    """What a device of a spec file hands out: host paths of its nodes and mounts, and the
    nodes it gives by number."""

    nodes: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    numbers: tuple[NodeNumber, ...] = ()

    def __add__(self, other: Edits) -> Edits:
        return Edits(
            tuple(dict.fromkeys((*self.nodes, *other.nodes))),
            tuple(dict.fromkeys((*self.mounts, *other.mounts))),
            tuple(dict.fromkeys((*self.numbers, *other.numbers))),
        )

    def paths(self) -> frozenset[str]:
        return frozenset((*self.nodes, *self.mounts))

    def matched(self) -> Edits:
        """These edits as the runtime resolves them now: a node's host path with glob
        characters is every path it matches (the CDI library expands such a wildcard into
        each matching node), itself where none does. Blocking (it lists directories)."""
        if not any(map(is_wildcard, self.nodes)):
            return self
        found: list[str] = []
        for node in self.nodes:
            found += (sorted(glob.glob(node)) if is_wildcard(node) else None) or [node]
        return Edits(tuple(dict.fromkeys(found)), self.mounts, self.numbers)


@dataclass(frozen=True)
class SpecFile:
    """What one spec file defines: its kind, each device's own edits, and the spec's."""

    kind: str
    devices: Mapping[str, Edits] = field(default_factory=dict)
    common: Edits = Edits()
    unsure: str = ""
    """Why the runtime may not read it (a newer cdiVersion than kdp-host knows:
    `cdi_acceptance`); empty: it does."""

    def handed(self, device: str) -> Edits:
        """What the runtime hands out for `device`: its edits and the spec's."""
        return self.devices[device] + self.common

    def entries(self, kind: str) -> dict[str, frozenset[str]]:
        """Device name -> the host paths of its own entry, for `kind` (none of another)."""
        if kind != self.kind:
            return {}
        return {name: edits.paths() for name, edits in self.devices.items()}


Parsed = SpecFile | str
"""A spec file as parsed; text: why it cannot be used (the runtime skips it too)."""


def _node(node: Any) -> str | NodeNumber | None:
    """What a `deviceNodes` entry hands out: the number it gives (`NodeNumber`), nothing
    for a FIFO (`type` p: no device), else its `hostPath` (else `path`)."""
    path = str(node.get("hostPath") or node["path"])
    kind, major = node.get("type"), node.get("major")
    if kind == "p":
        return None
    if kind in ("c", "u", "b") and isinstance(major, int) and major:
        minor = node.get("minor") or 0
        if not isinstance(minor, int) or major < 0 or minor < 0:
            raise ValueError("a node's major or minor")
        text = f"{path} ({kind} {major}:{minor})"
        return NodeNumber("b" if kind == "b" else "c", os.makedev(major, minor), text)
    return path


def _edits(container_edits: Any) -> Edits:
    if not container_edits:
        return Edits()
    nodes = [_node(n) for n in container_edits.get("deviceNodes") or ()]
    mounts = [m["hostPath"] for m in container_edits.get("mounts") or ()]
    paths = tuple(n for n in nodes if isinstance(n, str))
    numbers = tuple(n for n in nodes if isinstance(n, NodeNumber))
    return Edits(paths, tuple(map(str, mounts)), numbers)


class _KeyTwice(ValueError):
    """A key given twice in one object: the library's strict decoding refuses it (JSON too,
    which it reads as YAML)."""


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    _no_key_twice(key for key, _ in pairs)
    return dict(pairs)


def _no_key_twice(keys: Iterable[object]) -> None:
    seen: set[object] = set()
    for key in keys:
        if key in seen:
            raise _KeyTwice(key)
        seen.add(key)


def _yaml_keys_once(node: yaml.Node) -> None:
    if isinstance(node, yaml.MappingNode):
        _no_key_twice(k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode))
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        for child in node.value:
            for item in child if isinstance(child, tuple) else (child,):
                _yaml_keys_once(item)


def load_spec(content: bytes) -> Any:
    """A spec file's document, read as the CDI library reads every spec file, whatever its
    suffix: as YAML (sigs.k8s.io/yaml), so a `.json` file with a `# comment` line,
    single-quoted strings or YAML syntax is a spec to the runtime (hostile28 G8: kdp-host's
    `json.loads` refused it, booked nothing and handed the node to a second pod). JSON is
    YAML: text `json.loads` reads is read the same way by both, only faster (a vendor's
    large spec), so it is tried first. Raises ValueError or yaml.YAMLError."""
    try:
        return json.loads(content, object_pairs_hook=_once)
    except ValueError:  # (a key twice too: the YAML reading says so again)
        if (node := yaml.compose(content, _YAML_LOADER)) is not None:
            _yaml_keys_once(node)  # (the library decodes strictly: a key twice refuses)
        return yaml.load(content, _YAML_LOADER)


def parse_spec(content: bytes | None) -> Parsed:
    """A spec file's content (`.json` or `.yaml`: one reading, `load_spec`)."""
    if content is None:
        return "cannot be read"
    try:
        document = load_spec(content)
        spec, cased = spelled(document)
        if not isinstance(spec["devices"], list) or not isinstance(spec["kind"], str):
            raise TypeError("kind or devices")
        verdict = judge_spelled(spec, cased)
        if verdict.refused:
            return f"is refused by the runtime's CDI library ({verdict.refused}): skipped"
        devices = {str(d["name"]): _edits(d.get("containerEdits")) for d in spec["devices"]}
        common = _edits(spec.get("containerEdits"))
        return SpecFile(spec["kind"], devices, common, verdict.unsure)
    except _KeyTwice as exc:
        return f"is refused by the runtime's CDI library (key {exc.args[0]!r} given twice): skipped"
    except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as exc:
        return f"is not a CDI spec ({type(exc).__name__})"


def spec_entries(content: bytes | None, kind: str) -> dict[str, frozenset[str]]:
    """Device name -> the host paths its own entry hands out, of a spec file's content
    (this host's: none when it is missing, unreadable, or of another kind)."""
    parsed = parse_spec(content)
    return {} if isinstance(parsed, str) else parsed.entries(kind)


def spec_names(directory: str) -> list[str]:
    """The spec files of `directory`, by name in order; raises OSError. Blocking."""
    return sorted(n for n in os.listdir(directory) if is_spec_file(n))


class SpecFiles:
    """Spec files as parsed, each parsed again only when its signature changed (a writer
    renames a new file into place): a vendor's large spec is not parsed at every look (10
    files of 120 KB: 9 ms a look parsed, 0.2 ms known). Blocking; thread-safe."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Signature, Parsed]] = {}
        self._lock = threading.Lock()

    def parsed(self, path: str) -> tuple[Signature, Parsed] | None:
        """The file at `path` as parsed, with its signature; None when it is gone."""
        now = signature(path)  # (before the read: a change after it shows at the next look)
        if now is None:
            return None
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == now:
            return known
        found = now, parse_spec(read_or_none(path))
        with self._lock:
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[path] = found
        return found

    def entries(self, path: str, kind: str) -> dict[str, frozenset[str]]:
        """What `path` defines for `kind`: names, each with its own entry's host paths."""
        found = self.parsed(path)
        return {} if found is None or isinstance(found[1], str) else found[1].entries(kind)


@dataclass(frozen=True)
class Definition:
    """The files that define a name where the runtime resolves it."""

    files: tuple[SpecFile, ...]
    """The files of the winning dir that define it; where it is dropped, those of every dir
    from the first that defined it twice (a container made before one of them came may have
    any of theirs); where it is `unsure`, every file it may resolve through."""
    dropped: bool = False
    """Two files of one dir define it (any dir: the runtime drops the name, a later dir's
    definition notwithstanding)."""
    unsure: str = ""
    """Why kdp-host cannot tell which of `files` the runtime takes (one the runtime may not
    read defines it: `SpecFile.unsure`); empty: it can."""

    def then(self, sure: tuple[SpecFile, ...], unsure: tuple[SpecFile, ...]) -> Definition:
        """This definition after a later dir's files that define the name: those the runtime
        reads (`sure`) and those it may not (`unsure`: whether they count is not known, so
        the definition holds both outcomes, the union of their files; fails safe)."""
        if self.dropped:
            return Definition((*self.files, *sure, *unsure), True, self.unsure)
        why = unsure[0].unsure if unsure else ""
        if len(sure) > 1:
            return Definition((*sure, *unsure), True)
        if sure:
            return Definition((*sure, *unsure), False, why)
        return Definition((*self.files, *unsure), False, why or self.unsure)


@dataclass
class Winning:
    """How the runtime resolves each name over some dirs."""

    defined: dict[str, dict[str, Definition]] = field(default_factory=dict)
    """kind -> device -> its definition."""
    bad: dict[str, str] = field(default_factory=dict)
    """Spec files that cannot be used, by path, with why (the runtime skips them too; one
    that cannot be read or parsed may define any name)."""

    def entries(self, kind: str) -> dict[str, frozenset[str] | None]:
        """Each name defined for `kind`, with its winning entry's host paths (None: dropped,
        or which file wins is not known)."""
        return {
            name: None if found.dropped or found.unsure else found.files[0].entries(kind)[name]
            for name, found in self.defined.get(kind, {}).items()
        }


def winning(dirs: Sequence[str], files: SpecFiles, kinds: Iterable[str] | None = None) -> Winning:
    """How the runtime resolves each name (of `kinds`; None: every kind) over `dirs`, lowest
    priority first: a later dir's definition wins; a name two files of one dir define is
    dropped; a file the runtime skips (`bad`) defines nothing, one it may skip adds its
    definition to the one it would replace (`Definition.then`). A dir that cannot be listed
    is skipped. Blocking."""
    wanted = None if kinds is None else frozenset(kinds)
    found = Winning()
    for directory in dirs:
        try:
            names = spec_names(directory)
        except OSError:
            continue
        here: dict[str, dict[str, tuple[SpecFile, ...]]] = {}
        for name in names:
            path = os.path.join(directory, name)
            if (parsed := files.parsed(path)) is None:
                continue  # (gone since the listing)
            if isinstance(spec := parsed[1], str):
                found.bad[path] = spec
            elif wanted is None or spec.kind in wanted:
                defined = here.setdefault(spec.kind, {})
                for device in spec.devices:
                    defined[device] = (*defined.get(device, ()), spec)
        for kind, devices in here.items():
            known = found.defined.setdefault(kind, {})
            for device, by in devices.items():
                sure = tuple(f for f in by if not f.unsure)
                unsure = tuple(f for f in by if f.unsure)
                known[device] = known.get(device, _NONE).then(sure, unsure)
    return found


_NONE: Final = Definition(())
