"""The host paths no container may be handed, and the one rule that keeps them out of every
Allocate answer (hostile6 M4): the read side of `outputs.py`, which keeps what kdp-host
writes away from the same places.

A pod given the kubelet's device-plugin directory can connect to `kubelet.sock` and
register a device plugin of its own under any resource name (a read-only mount does not
stop a `connect`); a pod given `stateDir` can rewrite `ownership.json`,
`release-state.json` and `handed-out.json`; a pod given the CDI spec directory can point
any CDI name at any node; a pod given `/` has all of them. So no device node or mount
source may be, lie inside or hold:

- `/` itself (a path inside it, `/dev/fpga0`, is of course fine);
- the kubelet's `socketDir`, `pluginsRegistryDir` and the directory of its PodResources
  socket;
- kdp-host's `stateDir`, its config file, and the CDI spec directory of each resource with
  `allocate.cdi`.

Paths are compared as they resolve (`os.path.realpath`, as `outputs.py` does). The rule is
applied where the config is loaded, to every path the config itself hands out
(`handed_path_problems`: `allocate.mounts` sources, glob paths and group members without a
wildcard), and at run time by the ownership index, to every node and mount of a device any
driver reports (left out: `device_held reason=unsafe_mount`, counted in
`kdp_driver_skipped_total{reason="unsafe_mount"}`) and to every host path of an Allocate
answer, `allocate.command` output included (the Allocate is refused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from ..rules import GLOB_MAGIC, path_inside
from .model import GROUP_KEY, Config, GlobDriverConfig, Problems
from .outputs import STATE, Place, kubelet_places, spec_dir
from .source import FieldPath

UNSAFE_MOUNT: Final = "unsafe_mount"
"""The skip reason of a device left out because a path it hands out breaks the rule (or, in a
glob group, lies outside its member's directory)."""
ROOT: Final = "/"


@dataclass(frozen=True)
class NeverHanded:
    """The host paths no container may be handed, as real paths (`never_handed`); `/` is
    always one of them."""

    places: tuple[tuple[str, str], ...] = ()
    """(what, real path, normalised): refused as itself, anything inside it and anything
    holding it."""

    def problem(self, real: str) -> str | None:
        """Why the real path `real` may not be handed to a container, or None. Cheap (it
        runs for every node and mount of every device admitted): a place is compared only
        when one of the two paths starts with the other."""
        real = os.path.normpath(real)
        if real == ROOT:
            return "is / (the host's root)"
        for what, place in self.places:
            if not (real.startswith(place) or place.startswith(real)):
                continue  # (neither can lie in the other)
            if path_inside(real, place):
                how = "is" if real == place else "lies in"
            elif path_inside(place, real):
                how = "holds"
            else:
                continue
            return f"{how} {what}, which no container may be handed"
        return None


def never_handed(config: Config, config_file: str | os.PathLike[str] | None) -> NeverHanded:
    """The rule of `config` (read from `config_file`, when it came from a file). Does I/O
    (realpath): run it where the config is loaded."""
    file = None if config_file is None else os.fspath(config_file)
    return NeverHanded(tuple((p.what, p.real) for p in _protected(config, file)))


def _protected(config: Config, config_file: str | None) -> list[Place]:
    kubelet = config.kubelet
    found = [
        *(p for p in kubelet_places(config) if p.key[-1] != "podResourcesSocket"),
        Place.at(
            ("kubelet", "podResourcesSocket"),
            "the directory of kubelet.podResourcesSocket",
            os.path.dirname(kubelet.pod_resources_socket),
        ),
        Place.at(("stateDir",), "stateDir", config.state_dir, STATE),
    ]
    if config_file is not None:
        found.append(Place.at((), "the config file", config_file))
    for resource in config.resources:
        if resource.allocate.cdi is not None:
            what = f"the CDI spec directory of {resource.name}"
            found.append(Place.at((), what, spec_dir(resource)))
    return found


def handed_path_problems(config: Config, config_file: str | None) -> Problems:
    """Why a host path `config` itself hands to containers breaks the rule: an
    `allocate.mounts` source, a glob path or group member that is no pattern. Does I/O."""
    rule = never_handed(config, config_file)
    for index, resource in enumerate(config.resources):
        at: FieldPath = ("resources", index)
        for number, mount in enumerate(resource.allocate.mounts):
            key = (*at, "allocate", "mounts", number, "hostPath")
            yield from _problem(rule, key, "allocate.mounts source", mount.host_path)
        glob = resource.driver
        if not isinstance(glob, GlobDriverConfig):
            continue
        for number, path in enumerate(glob.paths):
            key = (*at, "glob", "paths", number)
            yield from _problem(rule, key, "glob path", path)
        for number, member in enumerate(glob.group):
            key = (*at, "glob", "group", number, "path")
            yield from _problem(rule, key, "glob group member", member.path)


def _problem(rule: NeverHanded, key: FieldPath, what: str, path: str) -> Problems:
    if GLOB_MAGIC.search(path) or GROUP_KEY in path:
        return  # a pattern: what it matches is checked when it is found
    place = Place.at(key, what, path)
    if why := rule.problem(place.real):
        yield key, f"{what} {place.named()} {why}"
