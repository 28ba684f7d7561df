"""The kernel's sysfs tree as the reader relies on it: which directories a device's node
walk reaches (it stops at other bus devices and attribute groups), how an attribute file is
read without ever blocking, how bus and class entries resolve, what a `uevent` says."""

from __future__ import annotations

import os
import stat
from collections.abc import Container

from .model import is_device_boundary

READ_LIMIT = 64 * 1024
"""Bytes read from one attribute file at most (the kernel's attributes fit in a page)."""
MAX_WALK_DEPTH = 8
"""How deep below a device its nodes are searched (tty sits 4 levels below a USB device)."""
MAX_WALK_DIRS = 4096
"""Directories visited below one device at most: a bound against odd or hostile trees."""
ATTRIBUTE_GROUPS = frozenset(
    {"power", "msi_irqs", "queue", "mq", "holders", "slaves", "trace", "integrity", "statistics"}
)
"""Subdirectories of devices that hold attributes only, never a device: not walked."""


def devices_reaching(path: str, candidates: Container[str]) -> list[str]:
    """The `candidates` (device directories) whose node walk reaches the directory `path`,
    innermost first: `path` itself if it is one, then the devices above it up to the bus
    device it belongs to.

    The walk's own rule read upwards: it never enters another bus device (`path` itself
    being one means no device above reaches it) and goes MAX_WALK_DEPTH levels deep.
    """
    found = [path] if path in candidates else []
    if is_device_boundary(os.path.basename(path)):
        return found
    directory = path
    for _ in range(MAX_WALK_DEPTH):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
        if directory in candidates:
            found.append(directory)
        name = os.path.basename(directory)
        if name in ATTRIBUTE_GROUPS or is_device_boundary(name):
            break
    return found


def enclosing_device(path: str, candidates: Container[str]) -> str | None:
    """The outermost of `candidates` other than `path` whose node walk reaches `path`, so
    that its nodes are already that device's; None when none does."""
    reaching = devices_reaching(path, candidates)
    outer = reaching[-1] if reaching else None
    return outer if outer != path else None


def read_text(path: str) -> str:
    """An attribute file's text without its trailing newline; at most READ_LIMIT bytes.

    Opened non-blocking, so a FIFO or a tty planted in a tree cannot hold the thread.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        data = os.read(fd, READ_LIMIT)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").rstrip("\n").strip()


def resolve_entry(link: str) -> str | None:
    """The real directory of a bus or class entry, or None if it vanished."""
    found = resolve_entry_stat(link)
    return None if found is None else found[0]


def resolve_entry_stat(link: str) -> tuple[str, os.stat_result] | None:
    """The real directory of a bus or class entry and its stat, or None if it vanished.

    The kernel makes these entries relative symlinks into the real tree, which holds no
    symlinked directory: one readlink and one lstat resolve them (`os.path.realpath` would
    lstat every component, several times the cost over a thousand devices).
    """
    try:
        target = os.readlink(link)
    except OSError:
        return _resolved_slowly(link)  # gone, or no link
    path = os.path.normpath(os.path.join(os.path.dirname(link), target))
    try:
        info = os.lstat(path)
    except OSError:
        return _resolved_slowly(link)
    if not stat.S_ISDIR(info.st_mode):
        return _resolved_slowly(link)  # a link on the way
    return path, info


def _resolved_slowly(link: str) -> tuple[str, os.stat_result] | None:
    try:
        info = os.stat(link)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    return os.path.realpath(link), info


def parse_uevent(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def read_quiet(path: str) -> str | None:
    """`read_text`, or None when the file cannot be read."""
    try:
        return read_text(path)
    except OSError:
        return None


def parse_numa(text: str | None) -> int | None:
    """A `numa_node` attribute: the node, or None (absent, not a number, or -1)."""
    if text is None:
        return None
    try:
        node = int(text)
    except ValueError:
        return None
    return node if node >= 0 else None


def numa_of_parents(sysfs_root: str, path: str, known: dict[str, int | None]) -> int | None:
    """The NUMA node of the nearest parent of `path` that has one (a USB device's host
    controller); `known` remembers the answer of each directory passed (for one read)."""
    top = os.path.join(sysfs_root, "devices")
    directory = os.path.dirname(path)
    seen: list[str] = []
    result: int | None = None
    while directory.startswith(top + "/"):
        if directory in known:
            result = known[directory]
            break
        seen.append(directory)
        try:
            text: str | None = read_text(os.path.join(directory, "numa_node"))
        except OSError:
            text = None
        if text is not None:
            result = parse_numa(text)
            break
        directory = os.path.dirname(directory)
    for directory in seen:
        known[directory] = result
    return result
