"""Where a resource's CDI spec writer looks for spec files left behind (cdistale, hostile17 F3).

A SIGKILLed instance (OOM kill, forced pod delete, a crash) leaves its spec file where it
wrote it. Started again with the same `specDir`, the host takes that file over (same name,
`file_lease`); started with another one, the old file stays in the old dir, and runtimes read
both: by CDI's dir precedence (`/var/run/cdi` over `/etc/cdi`) a name it still defines, with
what it named back then, may win over the live file. So each writer looks, at start and at
each check (`file_lease.VERIFY`), at

- its own spec dir: a kdp-host file of its kind that no live instance owns is removed, a
  file that defines a name of its own (CDI then drops the name) holds the device;
- every spec dir a host on this `stateDir` has written a spec file in (`SpecDirRecord`:
  `<stateDir>/cdi-spec-dirs.json`, each dir recorded before the first write there) and the
  runtime's own dirs (`cdiRuntimeDirs`: `/etc/cdi`, `/var/run/cdi`, for a `stateDir` wiped
  with the config): a kdp-host file of its kind that no live instance owns is removed there
  the same way, and a file that defines a name of the resource's (one of its names, or any
  `<resource>:...` name: CDI names are unique to a resource) and whose owner is not a host
  running on this `stateDir` (`state_lock.running`: a killed instance's lease still running,
  a file of no kdp-host) holds the device until it goes, since which of the two a runtime
  resolves is its dirs' order. A live host on this `stateDir` (a rolling update that changes
  `specDir`) keeps its file there: it defines the same names, from its own list.

The record is one state file (`state_file.StateFile`: atomic writes, a bad or foreign file
set aside with an error line, never replaced), shared by the hosts on the `stateDir` (merged:
the union of what each recorded), read at the first writer's start; it only grows (a dir
no longer named is still looked at: a file may be left there).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .atomic_files import unlink
from .cdi_files import SpecFiles, is_spec_file
from .cdi_rules import CDI_RESOURCE_SEPARATOR
from .config.outputs import FILE_PREFIX, owner_path, resource_slug
from .file_lease import read_owner
from .files import Offload
from .logs import EventLogger
from .state_document import text
from .state_file import StateFile
from .state_files import StateFiles
from .state_lock import running

RECORD: Final = "cdi-spec-dirs.json"
VERSION: Final = 1
MAX_DIRS: Final = 1024
"""Most dirs a record holds (a larger one does not parse: set aside)."""


@dataclass(frozen=True)
class SpecDirCheck:
    """What one look at the spec dirs found besides the resource's own file."""

    stale: tuple[str, ...] = ()
    """kdp-host spec files of the kind whose owner is gone: removed."""
    taken: tuple[str, ...] = ()
    """kdp-host spec files of the kind whose owner runs on no host of the `stateDir` that
    define a name a pod holds otherwise than this host (`held`), or only held names as this
    host does: removed before their lease runs out (hostile21 F3, hostile27 F5)."""
    clashes: dict[str, frozenset[str]] = field(default_factory=dict)
    """Other files that define names of the resource's, by path (held: CDI drops a name
    two files of one dir define; of two dirs, the runtime's order decides)."""


def check_spec_dirs(
    path: str,
    kind: str,
    names: frozenset[str],
    lease: float,
    others: Iterable[str] = (),
    runs: Callable[[str], bool] | None = None,
    resource: str | None = None,
    known: SpecFiles | None = None,
    held: Mapping[str, frozenset[str] | None] | None = None,
) -> SpecDirCheck:
    """Look at the other spec files (`cdi_files.is_spec_file`: `.yaml` too) next to the spec
    file `path` of `kind` (whose names are `names`) and in the dirs `others`: remove the
    kdp-host ones of the kind no live instance owns (and their owner files), and say which
    others define a name of the resource's (in `others`: unless `runs(owner)`, a host on this
    `stateDir`; besides `names`, any name of `resource`'s). `known`: what files were found to
    define (kept across checks). A kdp-host file in `others` whose owner's lease still runs but
    who is no host running on this `stateDir` (killed, the lease not run out yet) and that
    defines a name of `held` (a pod holds it: the name -> the host paths this host's file gives
    it, None where it leaves the entry out) otherwise is removed too (`taken`): by the runtime's
    dir order its entry, frozen as its owner died, may win for that name (where this host's file
    leaves it out, always), and the pod's restarting container would get what the entry names
    now (another pod's node, hostile21 F3). So is one that defines held names only, each as
    `held` says (a stopped owner's, hostile27 F5): removed, it changes no name's resolution.
    Blocking."""
    home, own = os.path.split(path)
    files = known or SpecFiles()
    taken: list[str] = []
    prefix = None if resource is None else f"{resource_slug(resource)}{CDI_RESOURCE_SEPARATOR}"
    stale: list[str] = []
    clashes: dict[str, frozenset[str]] = {}
    looked: set[tuple[int, int]] = set()
    for directory in (home, *sorted(set(others))):
        try:
            st = os.stat(directory)
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in looked:
            continue  # (named twice, or through a link: the spec dir itself is not another)
        looked.add((st.st_dev, st.st_ino))
        at_home = directory == home
        for entry in entries:
            if (at_home and entry == own) or not is_spec_file(entry):
                continue
            other = os.path.join(directory, entry)
            defined = files.entries(other, kind)
            if not (theirs := frozenset(defined)):
                continue
            ours = theirs & names if at_home else _ours(theirs, names, prefix)
            kdp_host = entry.startswith(FILE_PREFIX) and entry.endswith(".json")
            owner = read_owner(owner_path(other), lease) if kdp_host else None
            if kdp_host and owner is None:
                unlink(other)
                unlink(owner_path(other))
                stale.append(other)
            elif (
                owner is not None
                and held
                and not at_home
                and runs is not None
                and _taken(held, defined, ours)
                and not runs(owner)
            ):
                unlink(other)
                unlink(owner_path(other))
                taken.append(other)
            elif ours and (at_home or owner is None or runs is None or not runs(owner)):
                clashes[other] = ours
    return SpecDirCheck(tuple(stale), tuple(taken), clashes)


def _taken(
    held: Mapping[str, frozenset[str] | None],
    theirs: Mapping[str, frozenset[str]],
    ours: frozenset[str],
) -> bool:
    """Whether a gone owner's file (its entries `theirs`, its names of the resource's `ours`)
    goes before its lease runs out: it defines a held name otherwise than `held` says (its
    entry, frozen, may win: hostile21 F3), or it defines held names only, each as `held`
    says (what a stop leaves, hostile27 F5: nothing of it resolves otherwise than this host's
    file, and kept it could only come to)."""
    if any(name in theirs and theirs[name] != paths for name, paths in held.items()):
        return True
    return bool(ours) and all(n in held and n in theirs and theirs[n] == held[n] for n in ours)


async def look_at_spec_dirs(
    path: str,
    kind: str,
    names: frozenset[str],
    lease: float,
    record: SpecDirRecord | None,
    resource: str,
    known: SpecFiles,
    offload: Offload,
    log: EventLogger,
    held: Mapping[str, frozenset[str] | None] | None = None,
) -> SpecDirCheck | None:
    """`check_spec_dirs` for the writer of `resource`'s spec file `path`, off the loop through
    `offload`: in its spec dir and `record`'s dirs (None: its spec dir alone), each file
    removed logged (`cdi_spec_stale_removed`); None when the look failed (logged)."""
    others, runs = ((), None) if record is None else (record.dirs(), record.runs)
    try:
        found = await offload.run(
            lambda: check_spec_dirs(path, kind, names, lease, others, runs, resource, known, held)
        )
    except OSError as exc:
        log.warning("cdi_spec_dir_check_failed", path=path, reason=str(exc))
        return None
    for stale in found.stale:
        log.warning("cdi_spec_stale_removed", path=stale, kind=kind, reason="no live owner")
    for gone in found.taken:
        log.warning(
            "cdi_spec_stale_removed", path=gone, kind=kind,
            reason="its owner runs on no host of the stateDir; it names a held device "
            "otherwise, or held devices only as this host does",
        )  # fmt: skip
    return found


def _ours(theirs: frozenset[str], names: frozenset[str], prefix: str | None) -> frozenset[str]:
    """The names of `theirs` that are the resource's: written now, or of its name space
    (`<resource>:`, `allocation.cdi_device_name`)."""
    return frozenset(n for n in theirs if n in names or (prefix and n.startswith(prefix)))


def parse_dirs(document: Mapping[str, Any]) -> frozenset[str]:
    """A record's dirs (absolute paths, normalised); raises ValueError or TypeError."""
    dirs = document["dirs"]
    if not isinstance(dirs, list) or len(dirs) > MAX_DIRS:
        raise ValueError(f"dirs is not a list of at most {MAX_DIRS} paths")
    found = set()
    for item in dirs:
        if not os.path.isabs(directory := text(item)) or "\0" in directory:
            raise ValueError(f"{directory!r} is not an absolute path")
        found.add(os.path.normpath(directory))
    return frozenset(found)


def _merged(mine: Mapping[str, Any], on_disk: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """What hosts sharing the record write: every dir either recorded."""
    theirs = frozenset() if on_disk is None else parse_dirs(on_disk)
    return {"dirs": sorted(parse_dirs(mine) | theirs)}


class SpecDirRecord:
    """`<stateDir>/cdi-spec-dirs.json` of a host, and the dirs its writers look at."""

    def __init__(
        self,
        state_dir: str,
        log: EventLogger,
        offload: Offload,
        runtime_dirs: Collection[str] = (),
        files: StateFiles | None = None,
    ) -> None:
        self.state_dir = state_dir
        self._offload = offload
        self.file = StateFile(
            state_dir, RECORD, "cdi_spec_dirs", VERSION, log, offload, merge=_merged,
            consequence="a spec file a killed instance left in a spec dir no longer "
            "configured is not looked for there (the runtime's dirs and the dirs written "
            "since are)",
            if_unwritten="if this host is killed and started with another specDir, a file "
            "it leaves in this spec dir is not looked for there",
        )  # fmt: skip
        if files is not None:
            files.add(self.file)
        self.order = tuple(dict.fromkeys(os.path.normpath(d) for d in runtime_dirs))
        """The runtime's dirs in its order: a name a later one's file defines wins."""
        self.runtime_dirs = frozenset(self.order)
        self.recorded: frozenset[str] = frozenset()
        self._read = False
        self._lock = asyncio.Lock()

    def dirs(self) -> frozenset[str]:
        """The dirs looked at besides a writer's own: recorded, and the runtime's."""
        return self.recorded | self.runtime_dirs

    def runs(self, instance: str) -> bool:
        """Whether `instance` is a host running on this `stateDir` (blocking)."""
        return running(self.state_dir, instance)

    async def add(self, directory: str) -> None:
        """Record `directory` before a spec file is first written there: read the record
        first (once), then wait (at most `state_file.WRITE_LIMIT`) until it holds it."""
        async with self._lock:
            if not self._read:
                found = await self._offload.run(lambda: self.file.load(parse_dirs))
                self.recorded |= found or frozenset()
                self._read = True
            directory = os.path.normpath(directory)
            if directory in self.recorded:
                return
            self.recorded |= {directory}
            self.file.changed(lambda: {"dirs": sorted(self.recorded)})
        await self.file.written()
