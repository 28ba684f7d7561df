"""The CDI names of the kubelet's checkpoint resolved into host paths (issue 17, hostile27 F3).

Another device plugin may answer Allocate with CDI names instead of DeviceSpecs (NVIDIA's
device plugin with `deviceListStrategy: cdi-cri` puts them in `cdi_devices`, with
`cdi-annotations` in a `cdi.k8s.io/<key>` annotation; Intel's GPU plugin with CDI): the
runtime turns each name into device nodes and mounts through the spec files of its CDI dirs
when it creates the container, and the kubelet's checkpoint keeps only the names. kdp-host
serving the same node under another name must hold it while the pod may have it, so each
name is resolved here the way the runtime resolves it (`cdiRuntimeDirs`, in its order):

- a spec file is a `.json` or `.yaml` file of one of the dirs; a name `<kind>=<device>` is
  defined by a file of that `kind` with a device of that name; a later dir's definition wins
  over an earlier one's; two files of one dir that define it make the runtime drop it (the
  container was made before one of them came, so the paths of both are booked);
- what it hands out: every `containerEdits.deviceNodes[]` (its `hostPath`, else its `path`)
  and `containerEdits.mounts[].hostPath`, of the device and of the spec (the spec's edits go
  with each of its devices).

A name that resolves nowhere (no file of its kind, no such device, not a qualified name; a
file that cannot be read or parsed is named with it: it may be the one) is returned with why
(`Resolved.unresolved`): the caller says it once and counts it (not a name of a kind this
host writes: its own answer, its file removed at its stop), and books it when a file
changes (`changed_kinds`: the files are parsed again only when their signature changed, so
a look after a change costs the changed files, not all of them).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from .atomic_files import read_or_none
from .cdi_rules import cdi_name_parts
from .state_document import Signature, signature

SPEC_SUFFIXES: Final = (".json", ".yaml", ".yml")
"""The file names the runtime reads as CDI spec files."""
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NOTED: Final = 4096
"""Most (resource, name, why) said a `CdiNames` keeps (past it, it starts over)."""


@dataclass(frozen=True)
class Edits:
    """What one device of a spec file hands out: host paths of its nodes and mounts."""

    nodes: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()

    def __add__(self, other: Edits) -> Edits:
        return Edits(
            tuple(dict.fromkeys((*self.nodes, *other.nodes))),
            tuple(dict.fromkeys((*self.mounts, *other.mounts))),
        )


@dataclass(frozen=True)
class Resolved:
    """Names resolved: the host paths they hand out, and those that could not be, with why."""

    edits: Edits = Edits()
    unresolved: tuple[tuple[str, str], ...] = ()


Parsed = dict[str, dict[str, Edits]] | str
"""A spec file's kind -> device name -> its edits (the spec's own added); text: why it
cannot be used."""
Table = dict[str, dict[str, tuple[Edits, bool]]]
"""kind -> device name -> the winning edits, and whether two files of one dir define it."""


def _edits(container_edits: Any) -> Edits:
    if not container_edits:
        return Edits()
    nodes = [n.get("hostPath") or n["path"] for n in container_edits.get("deviceNodes") or ()]
    mounts = [m["hostPath"] for m in container_edits.get("mounts") or ()]
    return Edits(tuple(map(str, nodes)), tuple(map(str, mounts)))


def parse_spec(content: bytes | None, name: str) -> Parsed:
    """A spec file's content (`name`: its file name, whose suffix says JSON or YAML)."""
    if content is None:
        return "cannot be read"
    try:
        spec = json.loads(content) if name.endswith(".json") else yaml.load(content, _YAML_LOADER)
        kind = str(spec["kind"])
        common = _edits(spec.get("containerEdits"))
        devices = {
            str(d["name"]): _edits(d.get("containerEdits")) + common for d in spec["devices"]
        }
    except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as exc:
        return f"is not a CDI spec ({type(exc).__name__})"
    return {kind: devices}


class CdiNames:
    """Resolves CDI names through the spec files of the runtime's dirs (`dirs`, lowest
    priority first), each file parsed again only when it changed. Blocking; thread-safe
    (the checkpoint's reads run off the loop, some at once)."""

    def __init__(self, dirs: Sequence[str], said: Callable[[str], None] | None = None) -> None:
        self.dirs = tuple(dirs)
        self.said = said
        """Told the resource of each name first found unresolved (a metric)."""
        self._lock = threading.Lock()
        self._files: dict[str, tuple[Signature, Parsed]] = {}
        self._table: Table = {}
        self._bad: dict[str, str] = {}
        self._wanted: set[str] = set()
        self._noted: set[tuple[str, str, str]] = set()
        self.own_kinds: frozenset[str] = frozenset()
        """The kinds this host's resources write (`allocate.cdi.kind`): such a name is this
        host's own answer, whose spec file it removed at its stop; not said (PodResources
        books the ID by its device: `ownership_adopt`)."""

    def resolve(self, names: Iterable[str], look: bool = True) -> Resolved:
        """What `names` hand out now, and those that resolve nowhere (with why); `look`
        False: by the files as the last look saw them (one look for a read's entries)."""
        with self._lock:
            if look:
                self._refresh()
            edits, unresolved = Edits(), []
            for name in names:
                kind, device = cdi_name_parts(name)
                self._wanted.add(kind)
                found = self._table.get(kind, {}).get(device) if device else None
                if found is None:
                    unresolved.append((name, self._why(kind, device)))
                    continue
                edits += found[0]
                if found[1]:
                    unresolved.append((name, "defined by two files of one dir: both booked"))
            return Resolved(edits, tuple(unresolved))

    def look(self) -> None:
        """Look at the dirs now (files parsed again where they changed): `resolve` with
        `look` False then answers by what this look saw."""
        with self._lock:
            self._refresh()

    def first_said(self, resource: str, name: str, why: str) -> bool:
        """Whether this (resource, name, why) is said for the first time (then counted); a
        name of `own_kinds` never is."""
        if cdi_name_parts(name)[0] in self.own_kinds:
            return False
        with self._lock:
            key = (resource, name, why)
            if key in self._noted:
                return False
            if len(self._noted) >= MAX_NOTED:
                self._noted.clear()  # (said again rather than kept without end)
            self._noted.add(key)
        if self.said is not None:
            self.said(resource)
        return True

    def changed_kinds(self) -> frozenset[str]:
        """The kinds a name was looked up of whose definitions changed since the last look
        (files parsed again only where their signature changed). Blocking."""
        with self._lock:
            before, bad = self._table, dict(self._bad)
            self._refresh()
            kinds = {k for k in (*before, *self._table) if before.get(k) != self._table.get(k)}
            if bad != self._bad:  # (a file that could not be read may define any kind)
                kinds |= self._wanted
            return frozenset(kinds & self._wanted) - self.own_kinds

    def wants(self) -> bool:
        """Whether a name of a kind this host does not write was looked up (then the dirs
        are worth following: `cdi_spec_looks`)."""
        with self._lock:
            return bool(self._wanted - self.own_kinds)

    def _why(self, kind: str, device: str) -> str:
        if not kind or not device:
            return "not a qualified CDI name (<vendor>/<class>=<device>)"
        why = (
            f"kind {kind} has no device {device}"
            if kind in self._table
            else f"no spec file of kind {kind} in {', '.join(self.dirs) or 'no dir'}"
        )
        if self._bad:
            shown = "; ".join(f"{path} {text}" for path, text in sorted(self._bad.items())[:3])
            why += f" (unusable: {shown})"
        return why

    def _refresh(self) -> None:
        table: Table = {}
        seen: dict[str, tuple[Signature, Parsed]] = {}
        for directory in self.dirs:
            try:
                names = sorted(n for n in os.listdir(directory) if n.endswith(SPEC_SUFFIXES))
            except OSError:
                continue
            here: Table = {}
            for name in names:
                path = os.path.join(directory, name)
                parsed = self._parsed(path, name)
                if parsed is None:
                    continue
                seen[path] = parsed
                if isinstance(parsed[1], str):
                    continue
                for kind, devices in parsed[1].items():
                    defined = here.setdefault(kind, {})
                    for device, edits in devices.items():
                        twice = defined.get(device)
                        defined[device] = (
                            (edits, False) if twice is None else (twice[0] + edits, True)
                        )
            for kind, won in here.items():
                table.setdefault(kind, {}).update(won)
        self._files, self._table = seen, table
        self._bad = {path: p[1] for path, p in seen.items() if isinstance(p[1], str)}

    def _parsed(self, path: str, name: str) -> tuple[Signature, Parsed] | None:
        now = signature(path)  # (before the read: a change after it shows at the next look)
        if now is None:
            return None  # (gone since the listing)
        known = self._files.get(path)
        if known is not None and known[0] == now:
            return known
        return now, parse_spec(read_or_none(path), name)
