"""The host paths no container may be handed, and the one rule that keeps them out of every
Allocate answer (hostile6 M4, hostile7 F1 F2 F4 L2): the read side of `outputs.py`, which
keeps what kdp-host writes away from the same places.

A pod given the kubelet's device-plugin directory can connect to `kubelet.sock` and
register a device plugin of its own under any resource name (a read-only mount does not
stop a `connect`); a pod given `stateDir` can rewrite `ownership.json`,
`release-state.json` and `handed-out.json`; a pod given the CDI spec directory can point
any CDI name at any node; a pod given the directory of the `nodeFeatures` file can forge
node labels; a pod given the kubelet's `pods` directory reads every pod's secrets; a pod
given `/` has all of them. So no device node or mount source may be, lie inside or hold:

- `/` itself (a path inside it, `/dev/fpga0`, is of course fine);
- `/proc` (`PROC`): the host's processes (a glob link to `/proc/self/environ` resolves to
  kdp-host's own environment, and in a container `/proc/<pid>` names another process of the
  host) and kernel settings (`/proc/sys`), never a device;
- a mount of one of the kernel's own file systems (`KERNEL_FILE_SYSTEMS`, by the mount
  table's type, wherever it is mounted: the host's `/proc` again at `/host/proc`, hostile18
  F6): procfs, debugfs and tracefs whatever the mode, sysfs, cgroupfs, securityfs and the
  other kernel interfaces where handed writable;
- the kubelet's `socketDir`, `pluginsRegistryDir`, the directory of its PodResources socket
  and, where `socketDir` is `<root>/device-plugins` (the kubelet's layout, whatever its
  `--root-dir`), its `pods` (every pod's volumes, secrets, service-account tokens), `pki`
  (the node's client key), `plugins`, `plugins_registry`, `pod-resources` and
  `checkpoints` directories (`places.KUBELET_DIRS`; hostile11 K7: `pods` alone was);
- every place kdp-host writes (`outputs.written_places`, the one list): `stateDir`, the
  directory it serves its sockets from, the directory of each file it writes (the CDI spec
  file of each resource with `allocate.cdi`, the `nodeFeatures` file) and the config file;
- where handed out writable (a device node, a mount with `readOnly: false`) only: every
  place whose change changes what kdp-host runs as root (`places.run_places`, hostile11 K7):
  each command's executable (as written and resolved) and its `#!` interpreters (with the
  settings of `env` on a `#!` line as their env), the PATH directories a bare name is looked
  for in, every absolute path a value of its env names and the places of the variables
  that decide what runs (`run_env.named_paths`: a place in a named directory is refused as
  one holding it is), each `shell.workingDir`, and every symlink on the way to any
  protected place (`places.link_places`). A read-only mount of them cannot change them.

What a path is, not how it is spelled, decides (`NeverHanded.problem`):

- its real path (`identity.real_path`: symlinks), at every place the mount table shows it
  (`mount_table.MountMap`: a bind mount of a protected directory, of a directory above it,
  or of `/`, is that directory), against every place the mount table shows each protected
  path or a part of it (`MountMap.showing`: `/data` holds `/var/lib/kubelet/device-plugins`
  when `/var/lib/kubelet` is a bind mount of `/data/kubelet`), and against the mount point
  of every mount of a kernel file system (`MountMap.of_types`: a bind mount of a part of
  one has the type too), found once per table (no lookup per path);
- its identity (`identity.identity_of`, where the caller knows it): a directory that is a
  protected directory or `/` by (st_dev, st_ino), a file that is a hard link of the config
  file or of any file in or below a protected directory (`kubelet.sock`, a state file, an
  owner file, the kubelet's `pki/` key, a CSI socket in `plugins/<driver>/`: hostile12 L7),
  on its file system (a hard link never leaves one), up to `TREE_LIMIT` entries of each,
  breadth-first, listed again when it changes (its mtime; within VIEW_AGE, a directory
  listed below it), or, handed writable, a hard link of a command's executable;
- a path that cannot be resolved or stat'ed (`identity.Uncheckable`: a `/proc/<pid>/root`
  magic link kdp-host may not read) is refused: what it reaches is not known;
- so is a path where nothing is in kdp-host's view (`identity.UNSEEN`, hostile9 H5): in a
  container kdp-host sees only its volumes, and the host's runtime resolves the path on the
  host (where it may be a link to `/` or the kubelet's root, or `/data/kubelet/pods` of the
  "kubelet on the data disk" layout), creating a missing mount source. A config's
  `allocate.mounts` source may be missing (the host may make it later: `check` warns), its
  Allocates are refused while it is.

The rule is applied where the config is loaded, to every path the config itself hands out
(`places.handed_path_problems`: `allocate.mounts` sources, glob paths and group members without a
wildcard), and at run time by the ownership index, to every node and mount of a device any
driver reports (left out: `device_held reason=unsafe_mount`, counted in
`kdp_driver_skipped_total{reason="unsafe_mount"}`) and to every host path of an Allocate
answer, `allocate.command` output included (the Allocate is refused).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from stat import S_ISREG as st_isreg
from typing import Final

from ..identity import (
    DIRECTORY,
    FILE,
    NOTHING,
    OTHER,
    UNSEEN,
    Identity,
    Uncheckable,
    identity_of,
    real_path,
    unseen,
)
from ..mount_table import MountMap
from ..rules import path_inside
from .handed_tree import Followed, Listings, View
from .kernel_fs import KERNEL_FILE_SYSTEMS, KERNEL_WHY

UNSAFE_MOUNT: Final = "unsafe_mount"
"""The skip reason of a device left out because a path it hands out breaks the rule (or, in a
glob group, lies outside its member's directory)."""
ROOT: Final = "/"
PROC: Final = "/proc"
_NO_MOUNTS: Final = MountMap()
RUN_WHY: Final = " writable (kdp-host runs, loads or follows it as root)"
"""Why a place of `NeverHanded.run` may be handed read-only only."""


VIEW_AGE: Final = 1.0
"""Seconds the stats of the protected places serve the ownership index's admissions (which
compare every file and directory claim of a list) before they are taken again; an Allocate
answer, `check` and the config take them fresh (`problem(fresh=True)`)."""
NEAR_LIMIT: Final = 4096
"""Directories whose nearby protected places a mount table's `_Shown` keeps."""
TREE_LIMIT: Final = 1024
"""Entries listed in and below one protected directory for the hard links of its files
(breadth-first, on its file system): the kubelet's `pki` holds a few, `plugins` a socket per
CSI driver one level down; a larger tree (`pods` on a busy node, its emptyDirs) is covered
that far, its nearest files first, and its directories stat'ed once per view (`View`)."""


class _Shown:
    """Every place a mount table shows each protected place at, and per directory those a
    path directly in it could lie in or hold (one of the two starts with the other: a
    superset of the places the rule compares it with, in their order), found once."""

    __slots__ = ("near", "places")

    def __init__(self, places: tuple[tuple[str, str, str], ...]) -> None:
        self.places = places
        """(what, place, why it is refused only handed writable, "" where refused whatever
        the mode: `RUN_WHY` for `NeverHanded.run`, `KERNEL_WHY`)."""
        self.near: dict[str, tuple[tuple[str, str, str], ...]] = {}

    def near_to(self, directory: str) -> tuple[tuple[str, str, str], ...]:
        near = self.near.get(directory)
        if near is None:
            near = tuple(
                (what, place, only)
                for what, place, only in self.places
                if place.startswith(directory) or directory.startswith(place)
            )
            if len(self.near) >= NEAR_LIMIT:
                self.near.clear()
            self.near[directory] = near
        return near


@dataclass(frozen=True)
class NeverHanded:
    """The host paths no container may be handed, as real paths (`never_handed`); `/` is
    always one of them."""

    places: tuple[tuple[str, str], ...] = ()
    """(what, real path, normalised): refused as itself, anything inside it and anything
    holding it; a directory among them also by its identity, and the files in and below
    it (`handed_tree.walk`)."""
    files: tuple[tuple[str, str], ...] = ()
    """(what, real path) of protected files (the config file): refused by identity too."""
    run: tuple[tuple[str, str], ...] = ()
    """(what, real path, normalised) of the places that change what kdp-host runs as root
    (`places.run_places`): refused as `places` are, and a file among them by identity too,
    where handed writable only (`problem(writable=...)`)."""
    _shown: list[tuple[MountMap, _Shown]] = field(default_factory=list, compare=False, repr=False)
    """The last mount table asked with (kept: its `id` is not another's while it is) and every
    place it shows each place at."""
    _listed: Listings = field(
        default_factory=lambda: Listings(lambda: (VIEW_AGE, TREE_LIMIT), PROC),
        compare=False,
        repr=False,
    )
    _view: list[View] = field(default_factory=list, compare=False, repr=False)
    _kept: list[tuple[View, frozenset[Identity | None]]] = field(
        default_factory=list, compare=False, repr=False
    )
    """The last view and the identities `_found` compares with in it (`_compared`)."""

    def problem(
        self,
        real: str,
        key: Identity | None = None,
        mounts: MountMap | None = None,
        *,
        fresh: bool = False,
        since: float | None = None,
        writable: bool = True,
        followed: Followed | None = None,
    ) -> str | None:
        """Why the real path `real` (reaching `key`, where known; a claim of a path where
        nothing is, `identity.NOTHING`, is refused: `identity.UNSEEN`) may not be handed to a
        container, or None. Cheap where nothing is mounted twice and `key` is a device
        node or on no protected place's file system (it runs for every node and mount of
        every device admitted): a place is compared only when one of the two paths starts
        with the other; `fresh`: the protected places stat'ed now (else up to VIEW_AGE
        old), or, given `since` (a `time.monotonic()` reading), stat'ed at or after it: the
        paths of one Allocate answer share the stats taken for its first path, and where
        `followed` vouches for the places that did not change since the last stats, only
        those that did are stat'ed again (issue 19: 7 stats per Allocate); `writable`:
        handed so (a device node, a mount with `readOnly: false`), where the
        places of `run` are refused too."""
        mounts = mounts or _NO_MOUNTS
        shown, real = self._shown_at(mounts), os.path.normpath(real)
        dirs = mounts.entry_dirs(real)  # (an entry shown only through its directory's places)
        if dirs is None or any(map(shown.near_to, dirs)):  # (else none is near it either)
            places = mounts.places(real)
            if ROOT in places:
                return "is / (the host's root)"
            for at in places:  # (a path's directory: the devices of one directory ask alike)
                for what, place, why in shown.near_to(at.rpartition("/")[0]):
                    if (why and not writable) or not (at.startswith(place) or place.startswith(at)):
                        continue  # (neither can lie in the other)
                    if path_inside(at, place):
                        how = "is" if at == place else "lies in"
                    elif path_inside(place, at):
                        how = "holds"
                    else:
                        continue
                    return f"{how} {what}, which no container may be handed{why}"
        if unseen(key):
            return UNSEEN  # (hostile9 H5: what it reaches on the host is not known)
        if key is not None and key[0] in (DIRECTORY, FILE, OTHER):
            return self._identity_problem(key, fresh, writable, since, followed)
        return None

    def path_problem(
        self,
        path: str,
        mounts: MountMap | None = None,
        *,
        later: bool = False,
        writable: bool = True,
    ) -> str | None:
        """`problem` for a host path as written: resolved and stat'ed here (I/O); a path that
        cannot be (`identity.Uncheckable`) is refused, as is one where nothing is
        (`identity.UNSEEN`) unless `later` (a config's mount source the host may make
        later: judged by its place only, and refused at each Allocate while missing)."""
        try:
            real = real_path(path)
            try:
                key: Identity | None = identity_of(os.stat(path))
            except FileNotFoundError:
                key = None if later else (NOTHING, real)
            except OSError as exc:
                raise Uncheckable(path, exc) from None
        except Uncheckable as exc:
            return f"{exc}: what it reaches is not known"
        except ValueError:
            return None  # (a NUL: the text rules refuse it)
        if (why := self.problem(real, key, mounts, fresh=True, writable=writable)) is None:
            return None
        shown = os.path.normpath(path)
        return why if real == shown else f"(resolved: {real}) {why}"

    def _shown_at(self, mounts: MountMap) -> _Shown:
        if self._shown and self._shown[0][0] is mounts:
            return self._shown[0][1]
        found = [(w, at, "") for w, p in self.places for at in mounts.showing(p)]
        found += [(w, at, "") for w, p in self.files for at in mounts.showing(p)]
        found += [(w, at, RUN_WHY) for w, p in self.run for at in mounts.showing(p)]
        kernel = mounts.of_types(KERNEL_FILE_SYSTEMS)  # (what a path is, wherever it is)
        for point, kind in sorted(kernel, key=lambda m: -m[0].count("/")):  # (the nearest)
            holds, only = KERNEL_FILE_SYSTEMS[kind]
            found.append((f"the {kind} mount at {point} ({holds})", point, KERNEL_WHY * only))
        self._shown[:] = [(mounts, _Shown(tuple(dict.fromkeys(found))))]
        return self._shown[0][1]  # (a new table is a new object: `remount`)

    def _identity_problem(
        self,
        key: Identity,
        fresh: bool,
        writable: bool,
        since: float | None = None,
        followed: Followed | None = None,
    ) -> str | None:
        """What `key` is by identity: a protected directory or `/`, the config file, a hard
        link of a file in or below a protected directory (listed again only when one of
        its directories listed changed: `Listings.holds`). A problem found on stats up to
        VIEW_AGE old is confirmed on stats taken now: a file gone from a protected
        directory since may have left its inode number to the file asked of (ext4 hands a
        freed one out again at once: the kubelet's checkpoint, rewritten at each Allocate,
        then the next device file made)."""
        view = self._stats(fresh, since if fresh else None, followed if fresh else None)
        why = self._found(view, key, writable, kept=not fresh, followed=followed if fresh else None)
        return why if why is None or fresh else self._found(self._stats(True), key, writable)

    def _found(
        self,
        view: View,
        key: Identity,
        writable: bool,
        kept: bool = False,
        followed: Followed | None = None,
    ) -> str | None:
        """`kept`: a key none of the view's identities is (`_compared`) is none of them."""
        if int(key[1]) >> 64 not in view.devices:
            return None
        if kept and key not in self._compared(view):
            return None  # (the common file of an admission: no walk of the places)
        if key == view.root:
            return "is / (the host's root)"
        for what, identity, run in view.files:
            if identity == key and (writable or not run):
                return f"is {what} (a hard link of it), which no container may be handed" + (
                    RUN_WHY if run else ""
                )
        for what, path, identity, mtime in view.dirs:
            if identity == key:
                return f"is {what} (by identity), which no container may be handed"
            if key[0] in (FILE, OTHER) and self._listed.holds(
                path, identity, mtime, view.taken, key, followed
            ):
                return f"lies in {what} (a hard link), which no container may be handed"
        return None

    def _compared(self, view: View) -> frozenset[Identity | None]:
        """Every identity `_found` compares a key with in `view` (the root, the files, each
        directory and what is listed in and below it, each listing taken as `Listings.holds` takes
        it), found once per view: every file claim of every device admitted asks."""
        if self._kept and self._kept[0][0] is view:
            return self._kept[0][1]
        found: set[Identity | None] = {view.root, *(f[1] for f in view.files)}
        for _, path, identity, mtime in view.dirs:
            self._listed.holds(path, identity, mtime, view.taken, identity)  # (anew if changed)
            found |= {identity, *self._listed.files(path)}
        self._kept[:] = [(view, frozenset(found))]
        return self._kept[0][1]

    def followed_paths(self) -> tuple[tuple[str, bool], ...]:
        """Each path the view is made of (`_stats`), with whether what is in it counts too
        (a protected directory's mtime: its listing, `Listings.holds`), for `Followed`."""
        paths = {ROOT: False}
        paths.update((path, False) for _, path in (*self.files, *self.run))
        paths.update((path, True) for _, path in self.places)
        return tuple(paths.items())

    def _stats(
        self, fresh: bool, since: float | None = None, followed: Followed | None = None
    ) -> View:
        """The protected places' stats: taken now when `fresh` (or at or after `since`,
        when given; of those `followed` says may have changed only, where it vouches for
        the others), else up to VIEW_AGE old."""
        now = time.monotonic()
        last = self._view[0] if self._view else None
        if last is not None and (
            (since is not None and last.taken >= since) if fresh else now - last.taken < VIEW_AGE
        ):
            return last
        changed = None if followed is None else followed.changed(self)  # (first: follows)
        if changed is None or last is None:
            stats = {path: _stat(path) for path, _ in self.followed_paths()}
        elif not changed:
            # (nothing changed: the same stats, vouched for now)
            self._view[:] = [View(now, last.devices, last.root, last.files, last.dirs, last.stats)]
            return self._view[0]
        else:
            stats = {**last.stats, **{path: _stat(path) for path in changed}}
        root = stats[ROOT]
        files = [(w, st, False) for w, path in self.files if (st := stats[path]) is not None]
        files += [(w, st, True) for w, p in self.run if (st := stats[p]) and st_isreg(st.st_mode)]
        dirs = [(w, p, st) for w, p in self.places if (st := stats[p]) is not None]
        view = View(
            now,
            frozenset(st.st_dev for st in (root, *(f[1] for f in files), *(d[2] for d in dirs))
                      if st is not None),
            None if root is None else identity_of(root),
            tuple((what, identity_of(st), run) for what, st, run in files),
            tuple((w, p, identity_of(st), st.st_mtime_ns) for w, p, st in dirs),
            stats,
        )  # fmt: skip
        self._view[:] = [view]
        return view


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None
