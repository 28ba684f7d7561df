"""The disk that holds the root filesystem, so `kdp-host check` can warn before a resource
hands it (or a partition of it) to a container.

The filesystem's device number (`st_dev` of a path on it) names its block device in sysfs
(`<sysfs>/dev/block/MAJ:MIN`); from there: the whole disk when it is a partition, every
partition of that disk, and through device-mapper or md (`slaves/`) the disks below it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from .tree import parse_uevent, read_text

MAX_BLOCK_DEVICES = 256
"""Block devices followed at most (slaves of slaves...): a bound against odd trees."""


def block_number(path: str) -> str | None:
    """`MAJ:MIN` of the block device node at `path` (links followed), or None."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(info.st_mode):
        return None
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


@dataclass(frozen=True)
class RootDisk:
    """The block devices of the root filesystem's disk(s), by number and by /dev path."""

    numbers: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    """Host paths of their nodes (`/dev/vda`, `/dev/vda1`), from the kernel's DEVNAME."""
    node_number: Callable[[str], str | None] = block_number

    def holds(self, host_path: str) -> bool:
        """Whether the node at `host_path` is the root disk or one of its partitions."""
        if host_path in self.paths or os.path.realpath(host_path) in self.paths:
            return True
        number = self.node_number(host_path)
        return number is not None and number in self.numbers


def find_root_disk(path: str = "/", sysfs_root: str = "/sys") -> RootDisk:
    """The root disk of the filesystem `path` is on; empty when sysfs does not name its
    device (an overlay or tmpfs root, as in most containers: pass a path on the host's
    root filesystem, e.g. a hostPath mount)."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return RootDisk()
    start = os.path.join(sysfs_root, "dev", "block", f"{os.major(device)}:{os.minor(device)}")
    pending = [os.path.realpath(start)] if os.path.isdir(start) else []
    seen: set[str] = set()
    numbers: set[str] = set()
    paths: set[str] = set()
    while pending and len(seen) < MAX_BLOCK_DEVICES:
        block = pending.pop()
        if block in seen:
            continue
        seen.add(block)
        disk = os.path.dirname(block) if os.path.exists(os.path.join(block, "partition")) else block
        members = [disk, *_partitions(disk)]
        if disk != block:
            members.append(block)
        for member in members:
            number, devname = _identity(member)
            if number:
                numbers.add(number)
            if devname:
                paths.add("/dev/" + devname)
            seen.add(member)
        for directory in (block, disk):
            slaves = os.path.join(directory, "slaves")
            try:
                names = os.listdir(slaves)
            except OSError:
                continue
            pending.extend(os.path.realpath(os.path.join(slaves, name)) for name in names)
    return RootDisk(frozenset(numbers), frozenset(paths))


def _partitions(disk: str) -> list[str]:
    try:
        entries = list(os.scandir(disk))
    except OSError:
        return []
    return [
        entry.path
        for entry in entries
        if entry.is_dir(follow_symlinks=False)
        and os.path.exists(os.path.join(entry.path, "partition"))
    ]


def _identity(block: str) -> tuple[str | None, str | None]:
    """(`MAJ:MIN`, DEVNAME) of a block device's sysfs directory."""
    try:
        number: str | None = read_text(os.path.join(block, "dev"))
    except OSError:
        number = None
    try:
        uevent = parse_uevent(read_text(os.path.join(block, "uevent")))
    except OSError:
        uevent = {}
    devname = uevent.get("DEVNAME")
    if not devname or devname.startswith("/") or ".." in devname.split("/"):
        devname = None
    return number, devname
