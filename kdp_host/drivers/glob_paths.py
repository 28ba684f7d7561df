"""What a path matched by a glob pattern is: which physical device it reaches (identity),
what its device ID is, whether it can be a device at all, and which directories to watch.

Identity: a character or block device node is identified by its device number (`st_rdev`,
so a node and every symlink or second node for it are one device), anything else by its
resolved real path. IDs: `DeviceIds`, a pure function of the path and the patterns.
"""

from __future__ import annotations

import errno
import glob as globlib
import hashlib
import os
import re
import stat
from collections.abc import Iterable
from typing import NamedTuple

from .. import rules
from .base import Skipped

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_HASH_SUFFIX = re.compile(r"-[0-9a-f]{10}\Z")

DeviceIdentity = tuple[str, int | str]
"""('c' or 'b', st_rdev) for device nodes, ('path', real path) for anything else."""


def fixed_parent(pattern: str) -> str:
    """The deepest directory of `pattern` with no wildcard in it."""
    parts = pattern.split("/")[:-1]
    for index, part in enumerate(parts):
        if rules.GLOB_MAGIC.search(part):
            parts = parts[:index]
            break
    return "/".join(parts) or "/"


def _depth(pattern: str, base: str) -> int:
    return len(pattern[len(base.rstrip("/")) :].strip("/").split("/"))


class DeviceIds:
    """The ID of every path the patterns can match: a pure function of the path and the
    patterns, distinct for distinct paths.

    The path is taken relative to the patterns' common fixed directory (`/dev/fpga0` under
    `/dev/fpga*` -> `fpga0`; `/dev/bus/usb/001/002` under `/dev/bus/usb/*/*` -> `001-002`),
    `/` written as `-`. That readable form is used only where it cannot be confused with
    another path's: characters outside `[A-Za-z0-9._-]`, `-` or `_` inside a multi-level
    path, `-` in a one-level name when the patterns reach different depths, a result that
    is too long, starts with `-` or ends like a hashed ID all take the hashed form instead:
    a sanitized prefix plus `-` and 10 hex digits of the path's SHA-256.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        bases = [fixed_parent(p) for p in patterns]
        self.base = os.path.commonpath(bases) if bases else "/"
        self._prefix = self.base.rstrip("/") + "/"
        self._mixed_depths = len({_depth(p, self.base) for p in patterns}) > 1

    def __call__(self, path: str) -> str:
        rel = path[len(self._prefix) :] if path.startswith(self._prefix) else path.lstrip("/")
        parts = rel.split("/")
        joined = "-".join(parts)
        readable = _UNSAFE_ID_CHARS.sub("_", joined)
        if (
            readable == joined
            and readable not in (".", "..")
            and rules.device_id_problem(readable) is None
            and not _HASH_SUFFIX.search(readable)
            and not (len(parts) > 1 and ("-" in rel or "_" in rel))
            and not (len(parts) == 1 and self._mixed_depths and "-" in rel)
        ):
            return readable
        digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        stem = readable[: rules.MAX_DEVICE_ID_LENGTH - 11].lstrip("-")
        return f"{stem}-{digest}" if stem else f"dev-{digest}"


def watch_dirs(pattern: str) -> list[str]:
    """Directories whose entries decide what `pattern` matches (inotify is not recursive)."""
    parent = os.path.dirname(pattern)
    base = fixed_parent(pattern)
    dirs = [base]
    if parent != base:
        parts = parent.split("/")
        for depth in range(len(base.rstrip("/").split("/")) + 1, len(parts) + 1):
            dirs.extend(p for p in globlib.glob("/".join(parts[:depth])) if os.path.isdir(p))
    return dirs


def printable_path(path: str) -> str:
    """`path` for a log line: bytes that are not printable ASCII escaped (`\\xff`, `\\n`)."""
    return repr(os.fsencode(path))[2:-1]


def name_problem(path: str) -> str | None:
    """Why a matched path cannot become a device, or None: it must pass as text to the
    kubelet and the runtime and log cleanly (no bytes that are not UTF-8, no control
    characters: rules.absolute_path_problem)."""
    return rules.absolute_path_problem(path)


class Found(NamedTuple):
    """A matched path that is a device: where it really is, and which device it is."""

    real_path: str
    identity: DeviceIdentity
    link_dir: str | None
    """For a symlink: the directory of its target (watched: the target may vanish)."""


def examine(path: str, real_dirs: dict[str, str]) -> Found | Skipped | None:
    """What a matched path is: a device, a skipped path (with why), or None (a directory, or
    gone since the glob).

    One lstat for a plain path: its real path is its directory's real path (cached in
    `real_dirs` for one scan) joined with its name; a symlink must lead to an existing
    non-directory.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    link_dir = None
    if stat.S_ISLNK(st.st_mode):
        real_path = os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            reason = "link_loop" if exc.errno == errno.ELOOP else "dangling_link"
            return Skipped(reason, printable_path(path), f"symlink leads nowhere: {exc.strerror}")
        link_dir = os.path.dirname(real_path)
    elif stat.S_ISDIR(st.st_mode):
        return None
    else:
        parent, name = os.path.split(path)
        real_parent = real_dirs.get(parent)
        if real_parent is None:
            real_parent = real_dirs[parent] = os.path.realpath(parent)
        real_path = path if real_parent == parent else os.path.join(real_parent, name)
    if stat.S_ISDIR(st.st_mode):
        return None
    identity: DeviceIdentity
    if stat.S_ISCHR(st.st_mode):
        identity = ("c", st.st_rdev)
    elif stat.S_ISBLK(st.st_mode):
        identity = ("b", st.st_rdev)
    else:
        identity = ("path", real_path)
    return Found(real_path, identity, link_dir)
