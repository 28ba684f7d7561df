"""What a look at the kubelet's checkpoint reads (`checkpoint_follow`): the entries of the
names kdp-host does not serve, cut out of the compact JSON the kubelet writes without
parsing it (`others_entries`); whether a small file holds served names' entries only, the
look done on the loop (`served_only`, issue 19); the (resource, ID) pairs of an entry or
of the whole file checked (`entry_ids`, `listed_in`). All blocking: off the loop, but for
`served_only` on a local file system."""

from __future__ import annotations

import functools
import json
import re
from typing import Final

from .files import FileReadError, read_attribute
from .kubelet_checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, vouched_ids

Entries = frozenset[bytes]
"""Checkpoint entries, each as its JSON text (as written, or with sorted keys)."""
NAME_KEY: Final = b'"ResourceName"'
ENTRY_KEYS: Final = frozenset({"PodUID", "ContainerName", "ResourceName", "DeviceIDs", "AllocResp"})
Listed = frozenset[tuple[str, str]]
"""(resource, ID) pairs a checkpoint lists."""
ON_LOOP_BYTES: Final = 16 << 10
"""The largest file a look reads on the loop (`served_only`: ~20 us at this size here)."""


def others_entries(path: str, served: frozenset[str]) -> Entries | None:
    """The entries of the checkpoint at `path` of every resource name but `served`'s (none
    without a file); None when that cannot be told (unreadable, not the kubelet's shape: the
    read that books says why). Blocking. A file in compact JSON with no escape (as Go writes
    it) is not parsed: a scan for the names that are not served finds the entries (`_cut`);
    any other is."""
    try:
        blob = read_attribute(path, MAX_CHECKPOINT_BYTES)
    except FileReadError:
        return None
    if blob is None:
        return frozenset()
    if _compact(blob):
        found = _cut(blob, served)
        if found is not None:
            return found
    try:
        data = json.loads(blob)["Data"]
        entries = data.get("PodDeviceEntries") or []
        return frozenset(
            json.dumps(entry, sort_keys=True).encode()
            for entry in entries
            if entry.get("ResourceName", "") not in served
        )
    except (ValueError, TypeError, KeyError, AttributeError):  # (not the kubelet's shape)
        return None


def served_only(path: str, served: frozenset[str]) -> bool:
    """Whether the checkpoint at `path` is at most `ON_LOOP_BYTES` long and holds no entry
    of a name not `served` (its compact JSON, with no escape, searched once for such a name:
    what `others_entries` finds empty, at the cost of a read and one scan). Blocking: only
    on a local file system on the loop (`CheckpointFollower`); False sends the look off it."""
    try:
        blob = read_attribute(path, ON_LOOP_BYTES)
    except FileReadError:
        return False
    if blob is None:
        return True
    return _compact(blob) and _other_name(served).search(blob) is None


def _compact(blob: bytes) -> bool:
    """Whether `blob` is compact JSON without an escape, every name key followed by its
    quoted value (as Go writes it): no string in it holds a quote, so a scan finds what a
    parse would (`_cut`, `_other_name`)."""
    return b"\\" not in blob and blob.count(NAME_KEY) == blob.count(NAME_KEY + b':"')


def _cut(blob: bytes, served: frozenset[str]) -> Entries | None:
    """The entries of the names not `served` cut out of compact JSON without escapes (no
    string holds a quote): each from the entry boundary before its name (`},{`, or the
    list's `[{`) to the one after (`},{`, `}]`), checked to be one entry (a device ID that
    holds such a boundary makes it None: the file is parsed instead)."""
    out: set[bytes] = set()
    close = -1  # (the list's end, found once: each entry's own search made the cut quadratic)
    for match in _other_name(served).finditer(blob):
        at = match.start()
        start = blob.rfind(b"},{", 0, at) + 2
        if start < 2:
            start = blob.rfind(b"[{", 0, at) + 1
        if close < at:
            close = blob.find(b"}]", at)
        ends = [end for end in (blob.find(b"},{", at), close) if end >= 0]
        if start < 1 or not ends:
            return None
        text = blob[start : min(ends) + 1]
        try:
            entry = json.loads(text)
        except ValueError:
            return None
        if not isinstance(entry, dict) or not entry.keys() <= ENTRY_KEYS:
            return None
        if entry.get("ResourceName") in served:
            return None
        out.add(text)
    return frozenset(out)


def entry_ids(text: bytes) -> Listed:
    """The (resource, ID) pairs of one entry as `others_entries` gives it (none where it
    is not of the kubelet's shape: the full read that ends a booking checks the file)."""
    try:
        entry = json.loads(text)
        by_numa = entry.get("DeviceIDs") or {}
        resource = entry.get("ResourceName", "")
        return frozenset((resource, i) for ids in by_numa.values() for i in ids)
    except (ValueError, TypeError, AttributeError):
        return frozenset()


def listed_in(path: str) -> Listed | None:
    """Every (resource, ID) the checkpoint at `path` lists, checked (the kubelet's shape and
    checksum, also with no entry); None when there is no such file or it cannot be used.
    Blocking."""
    try:
        blob = read_attribute(path, MAX_CHECKPOINT_BYTES)
        return None if blob is None else vouched_ids(blob)
    except (FileReadError, CheckpointError):
        return None


@functools.lru_cache(maxsize=8)
def _other_name(served: frozenset[str]) -> re.Pattern[bytes]:
    """Finds an entry's name that is not `served`'s, in compact JSON without escapes."""
    if not served:
        return re.compile(re.escape(NAME_KEY + b':"'))
    names = b"|".join(re.escape(name.encode()) for name in sorted(served))
    return re.compile(re.escape(NAME_KEY + b':"') + b"(?!(?:" + names + b')")')
