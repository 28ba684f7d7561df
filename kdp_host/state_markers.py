"""The unsaved markers of a state file (`state_file.StateFile`, `mark_unsaved`): a host that
starts takes over the markers of hosts that stopped before their write succeeded."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .logs import EventLogger

UNSAVED = ".unsaved"
"""The marker of a file whose writes fail (`mark_unsaved`): `<name>.unsaved[.<writer>]`."""


def take_over(
    path: Path,
    marker: Path,
    running: Callable[[str, str], bool] | None,
    log: EventLogger,
    what: str,
    consequence: str,
) -> tuple[bool, bool]:
    """Markers of `path` left by hosts that stopped before their write succeeded: the file
    may lack their latest changes, so it counts as unknown; this host takes each marker over
    (renamed to its own `marker`). A running host's marker stays its own. Returns (unknown,
    marked): a marker was found, and one was taken over. Blocking."""
    directory = str(path.parent)
    prefix = f"{path.name}{UNSAVED}"
    unknown = marked = False
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return unknown, marked  # no state directory yet: nothing was kept
    for name in names:
        if not (name == prefix or name.startswith(f"{prefix}.")):
            continue
        owner = name.removeprefix(prefix).removeprefix(".") or None
        if owner is not None and running is not None and running(directory, owner):
            continue
        unknown = True
        log.error(
            f"{what}_unsaved",
            reason=f"{name}: a host stopped before it could write its latest changes",
            consequence=consequence,
        )
        try:
            os.replace(os.path.join(directory, name), marker)
        except OSError as exc:
            log.warning(f"{what}_unsaved_not_taken", reason=str(exc))
        else:
            marked = True
    return unknown, marked
