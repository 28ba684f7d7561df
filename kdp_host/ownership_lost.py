"""Booked directories not known where they are now (issue 17: a directory a pod holds
mounted, renamed while kdp-host was down).

While the host runs, each directory a booking holds mounted is kept open by its inode
(`ownership_pinned.PinnedDirs`) and followed where a rename takes it. A host that starts
knows a booking's directory by its identity (`st_dev`, `st_ino`: its claim's key) and the
real path it had when booked; renamed while the host was down, it is not there, and the
pod's bind mount, which follows the inode, shows what is in it wherever it went: a node in
it that a pattern matches there now would be advertised under another ID and handed to a
second pod.

So while a booked directory is *lost* (no descriptor holds it: not read at its path yet,
not there, or past `PIN_LIMIT`), an admission resolves the directories above each claim it
makes (the claimed path's and its real path's, off the loop with the claims) before it
admits (`above`): a booked directory found among them is where the pod's mount is
(`BookedClaims.found_elsewhere`, as a read of a followed tree reports it): it is followed
and kept open there, and what is below it is held while the booking lives. A directory above
a claim that did not answer in time leaves that device out until the next list (fail
closed, as a claim's own path does). Nothing is resolved while no booked directory is lost.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

from .ownership_batches import Resolution
from .ownership_claims import ClaimKey, ancestors

Found = list[tuple[ClaimKey, str]]
"""A lost booked directory's identity and its real path now."""


def above(
    needs: dict[str, tuple[str, ...]],
    fresh: Mapping[str, Resolution],
    lost: Collection[ClaimKey],
) -> tuple[set[str], Found]:
    """The directories above the paths `needs` names (device ID -> its claimed paths; each
    device's entry gains them, so one that does not answer leaves the device out) that are
    not resolved yet (`fresh`), and the `lost` directories found among those that are.
    Above a claim resolved through a link, the directories above its real path are looked
    at too (once it is resolved: the second call)."""
    todo: set[str] = set()
    found: Found = []
    seen: set[str] = set()
    for device_id, paths in needs.items():
        dirs: list[str] = []
        for path in paths:
            reached = fresh.get(path)
            tops = [os.path.normpath(path)]
            if isinstance(reached, tuple) and reached[1] != tops[0]:
                tops.append(reached[1])
            for top in tops:
                for directory in ancestors(top):
                    dirs.append(directory)
                    if directory in seen:
                        continue
                    seen.add(directory)
                    if directory not in fresh:
                        todo.add(directory)
                        continue
                    there = fresh[directory]
                    if isinstance(there, tuple) and there[0] in lost:
                        found.append(there)
        needs[device_id] = (*paths, *(d for d in dict.fromkeys(dirs) if d not in paths))
    return todo, found
