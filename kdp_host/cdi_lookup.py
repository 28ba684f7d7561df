"""The CDI names of the kubelet's checkpoint resolved into host paths (issue 17, hostile27 F3).

Another device plugin may answer Allocate with CDI names instead of DeviceSpecs (NVIDIA's
device plugin with `deviceListStrategy: cdi-cri` puts them in `cdi_devices`, with
`cdi-annotations` in a `cdi.k8s.io/<key>` annotation; Intel's GPU plugin with CDI): the
runtime turns each name into device nodes and mounts through the spec files of its CDI dirs
when it creates the container, and the kubelet's checkpoint keeps only the names. kdp-host
serving the same node under another name must hold it while the pod may have it, so each
name is resolved here the way the runtime resolves it (`cdiRuntimeDirs`, in its order), by
the one rule of what a spec file is, what it defines and which definition wins
(`cdi_files`, shared with this host's own spec file's checks): a name two files of one dir
define is dropped, but the container may have been made before one of them came, so the
paths of every such file are booked. A file the runtime's CDI library refuses (an unknown
field, cdiVersion or device name: `cdi_acceptance`) defines nothing; one it may read or not
(a cdiVersion newer than kdp-host knows) adds its definition to the one it would replace:
both are booked (hostile28 G2).

A name that resolves nowhere (no file of its kind, no such device, not a qualified name; a
file that cannot be read or parsed is named with it: it may be the one) is returned with why
(`Resolved.unresolved`): the caller says it once and counts it (not a name of a kind this
host writes: its own answer, its file removed at its stop), and books it when a file
changes (`changed_kinds`: the files are parsed again only when their signature changed, so
a look after a change costs the changed files, not all of them).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from .cdi_files import Definition, Edits, SpecFiles, is_wildcard, winning
from .cdi_rules import cdi_name_parts

MAX_NOTED: Final = 4096
"""Most (resource, name, why) said a `CdiNames` keeps (past it, it starts over)."""


@dataclass(frozen=True)
class Resolved:
    """Names resolved: the host paths they hand out, and those that could not be, with why."""

    edits: Edits = field(default_factory=Edits)
    unresolved: tuple[tuple[str, str], ...] = ()


Table = dict[str, dict[str, tuple[Edits, str]]]
"""kind -> device name -> what it hands out (every defining file's, where dropped or unsure),
and why that is more than one file's (empty: it is the winning file's)."""


def _handed(device: str, found: Definition) -> tuple[Edits, str]:
    edits = functools.reduce(Edits.__add__, (f.handed(device) for f in found.files), Edits())
    if found.dropped:
        return edits, "defined by two files of one dir: both booked"
    if found.unsure:
        return edits, f"defined by a file the runtime may not read ({found.unsure}): all booked"
    return edits, ""


class CdiNames:
    """Resolves CDI names through the spec files of the runtime's dirs (`dirs`, lowest
    priority first), each file parsed again only when it changed. Blocking; thread-safe
    (the checkpoint's reads run off the loop, some at once)."""

    def __init__(self, dirs: Sequence[str], said: Callable[[str], None] | None = None) -> None:
        self.dirs = tuple(dirs)
        self.said = said
        """Told the resource of each name first found unresolved (a metric)."""
        self._lock = threading.Lock()
        self._specs = SpecFiles()
        self._table: Table = {}
        self._matched: dict[str, tuple[str, ...]] = {}
        self._bad: dict[str, str] = {}
        self._wanted: set[str] = set()
        self._noted: set[tuple[str, str, str]] = set()
        self._skips: set[tuple[str, str]] = set()
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
                edits += found[0].matched()  # (a wildcard: what it matches now)
                if found[1]:
                    unresolved.append((name, found[1]))
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

    def newly_skipped(self) -> list[tuple[str, str]]:
        """The spec files the last look found unusable (the runtime skips them too: refused by
        its CDI library, or not parsed), each with why, that were not returned before: each
        is said once while it stays so."""
        with self._lock:
            new = [(p, why) for p, why in sorted(self._bad.items()) if (p, why) not in self._skips]
            if len(self._skips) + len(new) > MAX_NOTED:
                self._skips.clear()
            self._skips.update(new)
            return new

    def changed_kinds(self) -> frozenset[str]:
        """The kinds a name was looked up of whose definitions changed since the last look
        (files parsed again only where their signature changed), or whose wildcard node
        paths match other nodes now. Blocking."""
        with self._lock:
            before, bad, matched = self._table, dict(self._bad), self._matched
            self._refresh()
            kinds = {k for k in (*before, *self._table) if before.get(k) != self._table.get(k)}
            kinds |= {
                k for k in (*matched, *self._matched) if matched.get(k) != self._matched.get(k)
            }
            if bad != self._bad:  # (a file that could not be read may define any kind)
                kinds |= self._wanted
            return frozenset(kinds & self._wanted) - self.own_kinds

    def wants(self) -> bool:
        """Whether a name of a kind this host does not write was looked up (then the dirs
        are worth following: `cdi_spec_looks`)."""
        with self._lock:
            return bool(self._wanted - self.own_kinds)

    def wildcard_dirs(self) -> frozenset[str]:
        """The dirs of the wildcard node paths of the kinds looked up (not this host's): a
        node that comes or goes there may change what a name hands out (`changed_kinds`
        tells it; `cdi_spec_looks` follows them). A wildcard in a dir's name is not."""
        with self._lock:
            return frozenset(
                os.path.dirname(node)
                for kind in self._wanted - self.own_kinds
                for edits, _ in self._table.get(kind, {}).values()
                for node in edits.nodes
                if is_wildcard(node) and not is_wildcard(os.path.dirname(node))
            )

    def _wildcard_matches(self) -> dict[str, tuple[str, ...]]:
        """kind -> every node its wildcard node paths match now (kinds looked up only)."""
        found: dict[str, tuple[str, ...]] = {}
        for kind in self._wanted:
            for edits, _ in self._table.get(kind, {}).values():
                if (now := edits.matched()) is not edits:
                    found[kind] = (*found.get(kind, ()), *now.nodes)
        return found

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
        found = winning(self.dirs, self._specs)  # (only changed files parsed: `SpecFiles`)
        self._table = {
            kind: {device: _handed(device, d) for device, d in devices.items()}
            for kind, devices in found.defined.items()
        }
        self._bad = found.bad
        self._matched = self._wildcard_matches()
