"""Where a sysfs device's nodes are under the dev root: the nodes announced at or below a
device (`uevent` with `DEVNAME`), the device a node belongs to, and the dev root's
directories to watch (a node appearing anywhere there is seen at once)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..identity import NOTHING, PathReach, own_reach
from .model import USB, NodeInfo, SysfsDevice, is_device_boundary
from .tree import (
    ATTRIBUTE_GROUPS,
    MAX_WALK_DEPTH,
    MAX_WALK_DIRS,
    is_real_dir,
    link_name,
    parse_uevent,
    read_quiet,
    resolve_entry,
)

MAX_DEV_DIRS = 1024
"""Directories below the dev root watched at most."""
MAX_DEV_DEPTH = 4
DEV_SKIPPED = frozenset({"pts", "shm", "mqueue", "hugepages", "disk", "char", "block", "serial"})
"""Directories at the top of the dev root that hold no kernel-made node: other mounts
(ptys, shared memory) and the link farms udev keeps."""


@dataclass
class NodeLooks:
    """When one read looked whether each node is there (`DevNodes.node`): `clock()` just
    before its first look, by name (relative to the dev root). The scan loop's clock counts
    the watcher's wake-ups: a change to a node named by then is one the read saw
    (`drivers.scanner.Changes.settle`)."""

    clock: Callable[[], int]
    at: dict[str, int] = field(default_factory=dict)
    reached: dict[str, PathReach] = field(default_factory=dict)
    """What the read found each node path and device directory it looked at reaches, where
    that path is its own real path (`identity.own_reach`), by path: handed to the ownership
    index with the list (`ScanResult.reached`), which then does not look at them again."""
    real_dirs: dict[str, str] = field(default_factory=dict)
    """Real paths of the directories of those paths (for this read)."""

    def look(self, path: str) -> bool:
        """Whether something is at `path` (a link followed), noting what it reaches."""
        found = own_reach(path, self.real_dirs)
        if found is None:
            return os.path.exists(path)
        self.reached[path] = found
        return found[0][0] != NOTHING

    def look_too(self, paths: Iterable[str]) -> None:
        """Look at those of `paths` not looked at yet (an update's nodes named, the
        directories of devices gone): what went is handed to the index too."""
        for path in paths:
            if path not in self.reached:
                self.look(path)

    def keep_read(self, owners: Mapping[str, set[str]], read: set[str]) -> None:
        """After an update: keep the looks at nodes whose every holder before (`owners`:
        `ReadIndex.by_node`) was read again or dropped (`read`): a holder not read again
        still lists what an earlier read saw of the node."""
        for devname in [n for n in self.at if not owners.get(n, set()) <= read]:
            del self.at[devname]


class DevNodes:
    """The nodes of sysfs devices under one dev root (blocking file access, off the loop)."""

    def __init__(self, sysfs_root: str, dev_root: str) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.looks: NodeLooks | None = None
        """Of the read running (set by `SysfsReader.scan` and `update`)."""

    def changed_names(self, changed: Iterable[str], watch: set[str]) -> list[str]:
        """The names in `changed`, with a directory that appeared replaced by the names of
        what it holds (at most MAX_DEV_DEPTH deep), and added to `watch`."""
        names: list[str] = []
        pending = list(dict.fromkeys(changed))
        while pending:
            name = pending.pop()
            path = os.path.join(self.dev_root, name)
            if name.count("/") < MAX_DEV_DEPTH and os.path.isdir(path) and not os.path.islink(path):
                if path not in watch and len(watch) < MAX_DEV_DIRS:
                    watch.add(path)
                    with contextlib.suppress(OSError):
                        pending.extend(f"{name}/{entry}" for entry in os.listdir(path))
                continue
            names.append(name)
        if self.looks is not None:  # (a node gone is looked at too: no device holds it now)
            self.looks.look_too(os.path.join(self.dev_root, name) for name in names)
        return names

    def node_directory(self, devname: str) -> str | None:
        """The sysfs directory of the device whose node is `devname` (relative to the dev
        root): by its device number, else by the class entry of its name whose uevent
        names it; None when neither finds it."""
        path = os.path.join(self.dev_root, devname)
        try:
            info = os.stat(path)
        except OSError:
            return None
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            kind = "block" if stat.S_ISBLK(info.st_mode) else "char"
            number = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
            found = resolve_entry(os.path.join(self.sysfs_root, "dev", kind, number))
            if found is not None:
                return found
        base = os.path.basename(devname)
        class_root = os.path.join(self.sysfs_root, "class")
        try:
            classes = sorted(os.listdir(class_root))
        except OSError:
            return None
        for klass in classes:
            entry = os.path.join(class_root, klass, base)
            if not os.path.lexists(entry):
                continue
            found = resolve_entry(entry)
            if found is not None:
                node = self.node_of(found)
                if node is not None and node.devname == devname:
                    return found
        return None

    def dev_directories(self) -> set[str]:
        """The directories below the dev root where the kernel may create nodes (for
        inotify: a node appearing anywhere there is seen at once), at most MAX_DEV_DIRS,
        MAX_DEV_DEPTH deep; not the mounts and link farms others keep there (DEV_SKIPPED,
        `by-*`, hidden ones) and no symlinks."""
        found: set[str] = set()
        stack = [(self.dev_root, 0)]
        while stack and len(found) < MAX_DEV_DIRS:
            directory, depth = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if (
                    (depth == 0 and name in DEV_SKIPPED)
                    or name.startswith((".", "by-"))
                    or not is_real_dir(entry)
                ):
                    continue
                found.add(entry.path)
                if depth + 1 < MAX_DEV_DEPTH:
                    stack.append((entry.path, depth + 1))
        return found

    def node_dirs(self, device: SysfsDevice) -> set[str]:
        return {os.path.dirname(os.path.join(self.dev_root, node.devname)) for node in device.nodes}

    def node(
        self, devname: str, subsystem: str, devnum: str | None, sysfs_path: str | None
    ) -> NodeInfo:
        looks = self.looks
        path = os.path.join(self.dev_root, devname)
        if looks is None:
            present = os.path.exists(path)
        else:
            if devname not in looks.at:
                looks.at[devname] = looks.clock()  # (before the look)
            present = looks.look(path)
        return NodeInfo(devname, subsystem, present, devnum, sysfs_path)

    def nodes_beneath(
        self, path: str, uevent_text: str, listing: list[os.DirEntry[str]] | None = None
    ) -> tuple[NodeInfo, ...]:
        """Every node announced at or below `path`, not crossing into other devices
        (`listing`: the entries of `path`, when the caller has listed it already).

        Only a directory with a `dev` attribute stands for a node (the kernel adds `dev`
        exactly when the device has a device number): only those uevents are read. The
        device's own directory is looked at too (`NodeLooks`: its claim of itself).
        """
        if self.looks is not None:
            self.looks.look(path)
        nodes: list[NodeInfo] = []
        stack = [(path, 0)]
        visited = 0
        while stack and visited < MAX_WALK_DIRS:
            directory, depth = stack.pop()
            visited += 1
            if depth == 0 and listing is not None:
                entries = listing
            else:
                try:
                    entries = list(os.scandir(directory))
                except OSError:
                    continue
            children = []
            has_dev = False
            for entry in entries:
                name = entry.name
                if name == "dev":
                    has_dev = True
                elif (
                    depth < MAX_WALK_DEPTH
                    and name not in ATTRIBUTE_GROUPS
                    and not is_device_boundary(name)
                    and is_real_dir(entry)
                ):
                    children.append(entry.path)
            if has_dev:
                node = self.node_of(directory, uevent_text if directory == path else None)
                if node is not None:
                    nodes.append(node)
            stack.extend((child, depth + 1) for child in sorted(children, reverse=True))
        nodes.sort(key=lambda n: (n.subsystem == USB, n.devname))
        return tuple(nodes)

    def node_of(self, directory: str, text: str | None = None) -> NodeInfo | None:
        if text is None:
            text = read_quiet(os.path.join(directory, "uevent"))
        if not text or "DEVNAME=" not in text:
            return None
        uevent = parse_uevent(text)
        devname = uevent.get("DEVNAME", "")
        if not devname or devname.startswith("/") or ".." in devname.split("/"):
            return None
        devnum = None
        if "MAJOR" in uevent and "MINOR" in uevent:
            devnum = f"{uevent['MAJOR']}:{uevent['MINOR']}"
        subsystem = link_name(os.path.join(directory, "subsystem")) or ""
        return self.node(devname, subsystem, devnum, directory)
