"""The paths kdp-host writes, and the one rule they must keep: none of them is, or lies inside,
a path kdp-host must not touch (hostile5 H2).

kdp-host creates, replaces and removes files at paths the config names: its state files in
`stateDir`, its sockets in the directory it serves from (`kubelet.socketDir` or
`kubelet.pluginsRegistryDir`), a CDI spec file per resource with `allocate.cdi` (and its owner
file, `file_lease`), the `nodeFeatures` file (and its owner file). A path that is the kubelet's
socket, the config file itself, a state file or another resource's spec file would be
overwritten, then deleted at stop. So `written_path_problems` refuses a config where one of
them

- lies inside a kubelet directory (`socketDir`, `pluginsRegistryDir`: kdp-host owns only its
  own sockets there; the kubelet also empties `socketDir` when it starts) or is the kubelet's
  PodResources socket;
- lies inside `stateDir` (kdp-host keeps its state files there and nothing else), or
  `stateDir` holds the config file;
- is the config file;
- is, or lies inside, what another of them writes (another resource's spec file, the
  feature file, `stateDir`);
- is a directory where kdp-host writes a file.

Paths are compared as they resolve now (`identity.real_path`: symlinks resolved as far as
the path exists, the rest normalised); a path that cannot be resolved (a `/proc/<pid>/root`
magic link kdp-host may not read) is a config error (`unchecked_problems`). The names of
the files are written here once: the CDI spec file of a resource (`spec_path`) and the
owner file next to a shared file (`owner_path`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Final

from ..identity import Uncheckable, real_path
from ..rules import path_inside
from .model import Config, Problems, ResourceConfig
from .source import FieldPath

DEFAULT_SPEC_DIR: Final = "/var/run/cdi"
FILE_PREFIX: Final = "kdp-host_"
MAX_SLUG: Final = 200


def spec_dir(resource: ResourceConfig) -> str:
    """Where the CDI spec file of `resource` is written."""
    cdi = resource.allocate.cdi
    return (cdi.spec_dir if cdi is not None else None) or DEFAULT_SPEC_DIR


def resource_slug(resource_name: str) -> str:
    """A resource name with its `/` as `_`: one-to-one, as the domain part of a resource name
    cannot hold `_` (the first `_` stands for the `/`). Names the CDI spec file and the
    resource part of CDI device names (`allocation.cdi_device_name`)."""
    return resource_name.replace("/", "_")


def spec_file_name(resource_name: str) -> str:
    """`vendor.example/fpga` -> `kdp-host_vendor.example_fpga.json`.

    One-to-one: the domain part of a resource name cannot hold `_`, so the first `_` after
    the prefix always stands for the `/`. Very long names are cut and get a hash.
    """
    slug = resource_slug(resource_name)
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha256(resource_name.encode()).hexdigest()[:12]
        slug = f"{slug[: MAX_SLUG - 13]}-{digest}"
    return f"{FILE_PREFIX}{slug}.json"


def spec_path(resource: ResourceConfig) -> str:
    """The CDI spec file of `resource`."""
    return os.path.join(spec_dir(resource), spec_file_name(resource.name))


def owner_path(spec: str) -> str:
    """The owner file of a file several instances write (`file_lease`):
    `.kdp-host_vendor.example_fpga.owner` next to it (a name CDI ignores: it reads only
    `.json` and `.yaml` files; NFD skips dot files)."""
    directory, name = os.path.split(spec)
    return os.path.join(directory, f".{name.removesuffix('.json')}.owner")


SOCKETS: Final = "sockets"
STATE: Final = "stateDir"
"""The owners of the places kdp-host writes besides resources' spec files and `nfd`."""


@dataclass(frozen=True)
class Place:
    """A path the config names, as written and as it resolves now."""

    key: FieldPath
    """Where the config sets it (the error names this key and its line)."""
    what: str
    path: str
    real: str
    owner: str = ""
    """Who writes it: places of one owner may meet (entries of one resource share a file)."""
    file: bool = False
    """A file kdp-host writes (not a directory it writes in)."""
    unchecked: str | None = None
    """Why the path cannot be resolved (`identity.Uncheckable`: a `/proc/<pid>/root/...`
    magic link kdp-host may not read); `real` is then the path normalised, and the config
    is refused (`unchecked_problems`)."""

    @classmethod
    def at(
        cls, key: FieldPath, what: str, path: str, owner: str = "", *, file: bool = False
    ) -> Place:
        try:
            return cls(key, what, path, real_path(path), owner, file)
        except Uncheckable as exc:
            return cls(key, what, path, os.path.normpath(path), owner, file, str(exc))

    def named(self) -> str:
        shown = os.path.normpath(self.path)
        return shown if self.real == shown else f"{shown} (resolved: {self.real})"


def written_places(config: Config) -> list[Place]:
    """Every path kdp-host writes (or writes in) with this config."""
    kubelet = config.kubelet
    serve_key = "pluginsRegistryDir" if kubelet.registration == "pluginsRegistry" else "socketDir"
    places = [
        Place.at(("stateDir",), "stateDir", config.state_dir, STATE),
        Place.at(("kubelet", serve_key), f"kubelet.{serve_key}", kubelet.serve_dir, SOCKETS),
    ]
    for index, resource in enumerate(config.resources):
        cdi = resource.allocate.cdi
        if cdi is None:
            continue
        key: FieldPath = ("resources", index, "allocate", "cdi")
        key += ("specDir",) if cdi.spec_dir is not None else ()
        spec = spec_path(resource)
        what = f"the CDI spec file of {resource.name}"
        places.append(Place.at(key, what, spec, resource.name, file=True))
        places.append(Place.at(key, f"{what}'s owner file", owner_path(spec), resource.name))
    if (features := config.node_features) is not None:
        key = ("nodeFeatures", "file")
        places.append(Place.at(key, "the nodeFeatures file", features.file, "nfd", file=True))
        places.append(
            Place.at(key, "the nodeFeatures owner file", owner_path(features.file), "nfd")
        )
    return places


def kubelet_places(config: Config) -> list[Place]:
    """The kubelet's own: kdp-host writes nothing there but its sockets."""
    kubelet = config.kubelet
    keys = (
        ("socketDir", kubelet.socket_dir),
        ("pluginsRegistryDir", kubelet.plugins_registry_dir),
        ("podResourcesSocket", kubelet.pod_resources_socket),
    )
    return [Place.at(("kubelet", key), f"kubelet.{key}", path) for key, path in keys]


def written_path_problems(config: Config, config_file: str | None) -> Problems:
    """Why a path kdp-host would write with `config` (read from `config_file`, when it came
    from a file) is one it must not touch; see the module docstring. One problem per pair
    of owners. Does I/O (realpath, stat): run it where the config is loaded, off the event
    loop."""
    written = written_places(config)
    yield from unchecked_problems([*written, *kubelet_places(config)])
    seen: set[tuple[str, str]] = set()
    for place in written:
        if place.owner == SOCKETS:
            continue  # the sockets are the kubelet directory's own
        for kubelet in kubelet_places(config):
            if path_inside(place.real, kubelet.real) and _first(seen, place.owner, kubelet.what):
                yield (
                    place.key,
                    (
                        f"{place.what}, {place.named()}, lies in {kubelet.what} "
                        f"({kubelet.named()}): the kubelet's, where kdp-host writes only its own "
                        "sockets (and the kubelet empties socketDir when it starts)"
                    ),
                )
    for index, place in enumerate(written):
        for later, other in enumerate(written):
            if other.owner in (place.owner, SOCKETS) or not path_inside(place.real, other.real):
                continue  # a place in the sockets' directory is the kubelet check's
            if place.real == other.real and later > index:
                continue  # equal paths: one problem, on the later key
            if not _first(seen, place.owner, other.owner):
                continue
            how = "is" if place.real == other.real else "lies inside"
            why = (
                "kdp-host keeps its state files there, and nothing else"
                if other.owner == STATE
                else "kdp-host would overwrite one with the other, and remove it at stop"
            )
            yield place.key, f"{place.what}, {place.named()}, {how} {other.what}: {why}"
    if config_file is not None:
        yield from _config_file_problems(written, Place.at((), "", config_file))
    for place in written:
        if place.file and os.path.isdir(place.real):
            yield (
                place.key,
                (f"{place.what}, {place.named()}, is a directory: kdp-host writes a file there"),
            )


def unchecked_problems(places: list[Place]) -> Problems:
    """A problem for each place that cannot be resolved (`Place.unchecked`), once per key:
    what it reaches is not known, so it can be checked against nothing (hostile7 F5)."""
    seen: set[FieldPath] = set()
    for place in places:
        if place.unchecked is not None and place.key not in seen:
            seen.add(place.key)
            yield place.key, f"{place.what}, {os.path.normpath(place.path)}, {place.unchecked}"


def _first(seen: set[tuple[str, str]], owner: str, other: str) -> bool:
    """Whether this is the first problem between the two (one error per pair of owners)."""
    found = (owner, other) in seen
    seen.add((owner, other))
    return not found


def _config_file_problems(written: list[Place], config: Place) -> Problems:
    """The config file is written by none of them, and not kept in stateDir."""
    for place in written:
        if place.real == config.real:
            yield (
                place.key,
                (f"{place.what}, {place.named()}, is the config file: kdp-host would overwrite it"),
            )
        elif place.owner == STATE and path_inside(config.real, place.real):
            yield (
                place.key,
                (
                    f"stateDir, {place.named()}, holds the config file {config.named()}: "
                    "kdp-host keeps its state files there, and nothing else"
                ),
            )
