"""Placing nodes that no listed device holds (`SysfsReader.update`): from each node upwards
to the devices it belongs to, O(nodes x depth), whatever the buses hold."""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable

from ..rules import name_text_problem
from .index import ReadIndex
from .model import USB, USB_DEVICE_NAME
from .nodes import DevNodes
from .tree import devices_reaching, resolve_entry

EntryLink = Callable[[str, str], str]
"""(source, kernel name) -> the path of its bus or class entry."""


def source_names(buses: Iterable[str], classes: Iterable[str]) -> list[str]:
    """The sources read: each bus, then `class/<name>` of each class."""
    return [*dict.fromkeys(buses), *(f"class/{k}" for k in dict.fromkeys(classes))]


def may_be_device(source: str, name: str) -> bool:
    """Whether an entry of `source` named `name` may be a device (the USB bus lists its
    interfaces, `1-1:1.0`, beside its devices)."""
    return source != USB or USB_DEVICE_NAME.fullmatch(name) is not None


def place_nodes(
    nodes: DevNodes,
    entry_link: EntryLink,
    unplaced: Iterable[str],
    sources: list[str],
    index: ReadIndex,
) -> tuple[list[tuple[str, str, str]], set[str], list[str]]:
    """The devices the nodes `unplaced` (held by no listed device) belong to, found from
    each node upwards (its directory, by device number or class entry, then the devices
    whose node walk reaches it): the entries (source, name, link) of new ones, the
    directories of listed ones, and the nodes that are there but could not be placed."""
    entries: dict[tuple[str, str], str] = {}
    reached: set[str] = set()
    unplaceable: list[str] = []
    candidates = _EntryOf(entry_link, sources, index.by_path)
    for devname in unplaced:
        directory = nodes.node_directory(devname)
        if directory is None:
            if os.path.lexists(os.path.join(nodes.dev_root, devname)):
                unplaceable.append(devname)
            continue  # else gone again, and no listed device had it
        for path in devices_reaching(directory, candidates):
            if path in index.by_path:
                reached.add(path)
            for source, name in candidates.entries.get(path, ()):
                known = index.by_entry.get((source, name))
                if known is not None:
                    reached.add(known.path)  # its name moved here: read where it points
                else:
                    entries[(source, name)] = entry_link(source, name)
    found = [(source, name, link) for (source, name), link in entries.items()]
    return found, reached, unplaceable


class _EntryOf:
    """The directories that are a listed device or the entry of one of `sources` (for
    `devices_reaching`), with the (source, name) of each entry found (`entries`)."""

    def __init__(self, entry_link: EntryLink, sources: list[str], listed: Container[str]) -> None:
        self._entry_link = entry_link
        self._sources = sources
        self._listed = listed
        self.entries: dict[str, list[tuple[str, str]]] = {}

    def __contains__(self, directory: object) -> bool:
        if not isinstance(directory, str):
            return False
        name = os.path.basename(directory)
        found = self.entries.get(directory)
        if found is None:
            found = self.entries[directory] = [
                (source, name)
                for source in self._sources
                if may_be_device(source, name)
                and name_text_problem(name) is None
                and resolve_entry(self._entry_link(source, name)) == directory
            ]
        return bool(found) or directory in self._listed
