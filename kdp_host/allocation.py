"""Allocation: the AllocateResponse of a container (the preferred-allocation policies
are in `preferred.py`).

It runs on the admission path of every pod (the kubelet calls Allocate with no deadline),
so it does plain in-memory work on the current snapshot and nothing else.

Shared devices (`replicas: N`) are advertised as N IDs per physical device (`<id>::<k>`).
Everything a container receives is about *physical* devices: replicas of the same device
collapse into one DeviceSpec, one CDI name (that of the first of its IDs asked for), one entry
of `{ids}`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .api.v1beta1 import CdiDevice, ContainerAllocateResponse, DeviceSpec, Mount
from .cdi_rules import (
    CDI_NAME_SEPARATOR,
    CDI_RESOURCE_SEPARATOR,
    cdi_annotation_names,
    is_cdi_annotation_key,
)
from .config import MountConfig, ResourceConfig, render_template
from .config.outputs import resource_slug
from .container_paths import (
    CONFIG_MOUNTS,
    PathClaims,
    Placement,
    mount_placement,
    node_placement,
)
from .devices import Advertised, Device, DeviceMount, DeviceNode, Snapshot
from .names import CDI_NAME, make_name
from .rules import LIST_SEPARATOR, exec_string_problem, join_list, named_ids

if TYPE_CHECKING:  # only a resource with `allocate.command` parses its output
    from grpclib.const import Status

    from .command_output import ContainerExtras
    from .metric_labels import HookResult

ALLOCATION_DEPENDENT_FIELDS: Final = frozenset({"ids", "paths", "count"})
"""Template fields whose value depends on which devices a container got."""


class AllocationError(ValueError):
    """A request the plugin must refuse (unknown or unhealthy IDs, two different nodes or
    mounts for one container path): INVALID_ARGUMENT."""


class HookFailed(Exception):
    """A hook on the allocation path (`hooks`: preStart, allocate.command; a release before
    a start) that did not succeed: answer the RPC with `status` and this message."""

    def __init__(self, status: Status, result: HookResult, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result


def cdi_device_name(resource: str, kubelet_id: str) -> str:
    """The CDI device name of a kubelet device ID of `resource` (an advertised ID: the
    device's own, or a replica's `<id>::<k>`): `<resource>:<id>`, unique to the pair by
    construction, so no reload, rename or second spec file can make a name a pod holds stand
    for another resource's device (the kubelet hands a restarted container the names of its
    first Allocate, without asking again). One name per kubelet ID, not per physical device:
    two pods sharing a device (`replicas`) hold two names, each kept meaning what ITS
    Allocate handed out (`cdi_spec`: the device may be listed elsewhere since, hostile14 N6).
    With `replicas: 1` the ID is the device's, as names were before; a name an older version
    gave for a replica (the device's) is kept for its pod (`Handed.id_names`).

    The resource part is `config.outputs.resource_slug` (the resource name with its `/` as
    `_`; an extended resource name holds no `:` and its domain no `_`, so the first `:` ends
    it and it spells one resource only). The ID part is `cdi_device_part(kubelet_id)`.
    """
    return f"{resource_slug(resource)}{CDI_RESOURCE_SEPARATOR}{cdi_device_part(kubelet_id)}"


def cdi_device_part(device_id: str) -> str:
    """The device part of a CDI device name: one-to-one, so two devices of a resource never
    share a name.

    CDI device names are `[A-Za-z0-9]`, then `[A-Za-z0-9_.:-]`, ending alphanumeric. An ID
    that is such a name and holds no `::` is its own part (glob IDs, most others). Any other
    ID (`dongle/1`, `_x`, `a::b`) is `<readable>::<hex of the ID's UTF-8>`: the readable part
    has no `:`, so the first `::` starts the hex, which spells the whole ID -- distinct from
    every other ID's part by construction, and never an ID's own part (those have no `::`):
    `names.CDI_NAME`.
    """
    return make_name(device_id, CDI_NAME)


def qualified_cdi_name(kind: str, resource: str, kubelet_id: str) -> str:
    """The qualified CDI name `<kind>=<resource>:<id>` of a kubelet device ID of `resource`,
    whose CDI kind is `kind`. The Allocate response and the CDI spec file both name devices
    with `cdi_device_name`."""
    return f"{kind}{CDI_NAME_SEPARATOR}{cdi_device_name(resource, kubelet_id)}"


def named_by(entries: Iterable[Advertised]) -> dict[str, str]:
    """Physical device ID -> the kubelet ID whose CDI name a container's answer carries for
    it: the first of its IDs the container asked for (one name per device: its replicas in
    one container are one use, and the spec entries of all of them say the same)."""
    found: dict[str, str] = {}
    for entry in sorted(entries, key=lambda e: e.id):
        found.setdefault(entry.device.id, entry.id)
    return found


def has_cdi_edits(device: Device) -> bool:
    """Whether a device has something CDI can inject on its own (a node or a mount).

    CDI rejects a spec device with empty edits, so devices without either are left out of
    the spec file and get no CDI name in Allocate (their env and annotations still come
    through the Allocate response).
    """
    return bool(device.nodes or device.mounts)


HOOK: Final = "allocate.command"
"""The owner named for what an `allocate.command` printed."""


class _ContainerPaths:
    """The device nodes and mounts of one container, by container path, as its answer
    passes them: refuses two different things at one container path, or a node nested with
    anything (the rule: `container_paths.PathClaims`), keeps an identical node or mount once."""

    def __init__(self, resource: str, permissions: str) -> None:
        self._resource = resource
        self._permissions = permissions
        self._claims = PathClaims()
        self.specs: dict[str, DeviceSpec] = {}
        self.mounts: dict[str, Mount] = {}

    def add_node(self, owner: str, node: DeviceNode) -> DeviceSpec | None:
        """Claim `node`'s container path; the new DeviceSpec, or None if it was there."""
        path = node.container_path
        if not self._claim("device node", owner, path, node_placement(node.host_path)):
            return None
        spec = DeviceSpec(
            container_path=path,
            host_path=node.host_path,
            permissions=node.permissions or self._permissions,
        )
        self.specs[path] = spec
        return spec

    def add_mount(self, owner: str, mount: MountConfig | DeviceMount) -> None:
        path, host, read_only = mount.container_path, mount.host_path, mount.read_only
        if self._claim("mount", owner, path, mount_placement(host, read_only)):
            self.mounts[path] = Mount(container_path=path, host_path=host, read_only=read_only)

    def _claim(self, what: str, owner: str, path: str, placement: Placement) -> bool:
        clash = self._claims.clash(path, placement)
        if clash is not None:
            why = clash.describe(owner, path, placement)
            raise AllocationError(f"{self._resource}: cannot allocate: {what} {why}")
        return self._claims.claim(owner, path, placement)


@dataclass(frozen=True)
class Handed:
    """What an Allocate answer hands out besides its devices' own, by requested ID (each ID
    gets its container's): host paths (`allocate.mounts`, an `allocate.command`'s nodes and
    mounts) and CDI names (an `allocate.command`'s `cdiDevices`, the names `cdi.k8s.io/...`
    annotations list). The ownership index checks and books them (`ownership_allocate`)."""

    places: dict[str, list[str]]
    cdi_names: dict[str, list[str]]


@dataclass(frozen=True)
class AllocationBuilder:
    """Turns requested device IDs into the container options the kubelet passes on."""

    resource: ResourceConfig

    def container_response(
        self,
        snapshot: Snapshot,
        requested_ids: Sequence[str],
        extras: ContainerExtras | None = None,
    ) -> ContainerAllocateResponse:
        """The options for one container, with what its `allocate.command` printed (`extras`,
        whose keys and names the response has already are left out); raises AllocationError
        for unknown/unhealthy IDs, for two different nodes or mounts on one container path (or
        nested, a node among them), and for an env value no exec could pass.

        The result depends only on the *set* of physical devices behind the requested IDs
        (the kubelet sends IDs in Go map order): devices are taken in ID order.
        """
        entries = self._resolve(snapshot, requested_ids)
        allocate = self.resource.allocate
        name = self.resource.name
        physical = sorted({e.device.id: e.device for e in entries}.values(), key=_device_id)
        paths = _ContainerPaths(name, allocate.permissions)
        for device in physical:
            for node in device.nodes:
                paths.add_node(device.id, node)
        device_specs = list(paths.specs.values())
        values = template_values(name, physical, paths.specs)
        envs = {key: render_template(text, values) for key, text in allocate.env.items()}
        annotations = {
            key: render_template(text, values) for key, text in allocate.annotations.items()
        }
        _merge_device_maps(name, "env", envs, ((d.id, d.env) for d in physical))
        _merge_device_maps(
            name, "annotation", annotations, ((d.id, d.annotations) for d in physical)
        )
        for configured in allocate.mounts:
            paths.add_mount(CONFIG_MOUNTS, configured)
        for device in physical:
            for device_mount in device.mounts:
                paths.add_mount(device.id, device_mount)
        cdi, by = allocate.cdi, named_by(entries)
        specs = device_specs if cdi is None or cdi.also_device_specs else []
        named = [by[d.id] for d in physical if has_cdi_edits(d)] if cdi is not None else []
        cdi_names = [qualified_cdi_name(cdi.kind, name, i) for i in named] if cdi else []
        if extras is not None:
            for key, value in extras.env.items():
                envs.setdefault(key, value)
            for key, value in extras.annotations.items():
                annotations.setdefault(key, value)
            specs += [spec for node in extras.nodes if (spec := paths.add_node(HOOK, node))]
            for printed in extras.mounts:
                paths.add_mount(HOOK, printed)
            cdi_names = list(dict.fromkeys([*cdi_names, *extras.cdi_devices]))
        for key, value in envs.items():  # (rendered templates, devices' values joined)
            if why := exec_string_problem(value, key):
                raise AllocationError(f"{name}: cannot allocate: env {key} {why}")
        return ContainerAllocateResponse(
            envs=envs,
            mounts=list(paths.mounts.values()),
            devices=specs,
            annotations=annotations,
            cdi_devices=[CdiDevice(name=cdi_name) for cdi_name in cdi_names],
        )

    def handed(
        self,
        snapshot: Snapshot,
        requests: Sequence[Sequence[str]],
        responses: Sequence[ContainerAllocateResponse],
    ) -> Handed:
        """What each container's answer (`responses`, one per requested ID list) hands out
        besides its devices' own nodes, mounts and CDI names, by requested ID."""
        handed = Handed({}, {})
        cdi = self.resource.allocate.cdi
        for requested_ids, response in zip(requests, responses, strict=True):
            paths = {spec.host_path for spec in response.devices}
            paths.update(mount.host_path for mount in response.mounts)
            names = [c.name for c in response.cdi_devices]
            for key, value in response.annotations.items():
                if is_cdi_annotation_key(key):
                    names += cdi_annotation_names(value)
            if not paths and not names:
                continue
            physical = self.physical_devices(snapshot, requested_ids)
            extra = sorted(paths.difference(*(spelled_paths(device) for device in physical)))
            own = (
                set()
                if cdi is None
                else {qualified_cdi_name(cdi.kind, self.resource.name, i) for i in requested_ids}
            )
            foreign = [name for name in dict.fromkeys(names) if name not in own]
            for device_id in requested_ids:
                if extra:
                    handed.places.setdefault(device_id, []).extend(extra)
                if foreign:
                    handed.cdi_names.setdefault(device_id, []).extend(foreign)
        return handed

    def physical_devices(
        self, snapshot: Snapshot, requested_ids: Sequence[str], *, healthy_only: bool = True
    ) -> list[Device]:
        """The physical devices behind `requested_ids`, in ID order; raises AllocationError
        for unknown IDs (and, with `healthy_only`, for unhealthy ones)."""
        entries = self._resolve(snapshot, requested_ids, healthy_only=healthy_only)
        return sorted({e.device.id: e.device for e in entries}.values(), key=_device_id)

    def _resolve(
        self, snapshot: Snapshot, requested_ids: Sequence[str], *, healthy_only: bool = True
    ) -> list[Advertised]:
        if not requested_ids:
            raise AllocationError(f"{self.resource.name}: no device IDs in the container request")
        found: list[Advertised] = []
        unknown: list[str] = []
        unhealthy: list[str] = []
        for device_id in dict.fromkeys(requested_ids):
            entry = snapshot.by_advertised_id.get(device_id)
            if entry is None:
                unknown.append(device_id)
            elif healthy_only and not entry.healthy:
                unhealthy.append(device_id)
            else:
                found.append(entry)
        problems = []
        if unknown:
            problems.append(f"unknown device ID(s) {named_ids(unknown)}")
        if unhealthy:
            problems.append(f"unhealthy device ID(s) {named_ids(unhealthy)}")
        if problems:
            raise AllocationError(f"{self.resource.name}: cannot allocate: {'; '.join(problems)}")
        return found


def spelled_paths(device: Device) -> tuple[str, ...]:
    """Every host path a device's answer hands out, as the host spells it: its nodes'
    `host_path` (`ownership_claims.host_paths` has where kdp-host sees them), then its
    mount sources."""
    return (*(n.host_path for n in device.nodes), *(m.host_path for m in device.mounts))


def template_values(
    resource: str, physical: Sequence[Device], container_paths: Iterable[str]
) -> dict[str, str]:
    """The values of the allocate templates: `{ids}`, `{paths}`, `{count}`, `{resource}`.

    Lists are rendered by rules.join_list, whose separator no ID or device path contains,
    so they split back into exactly the devices of the container."""
    return {
        "ids": join_list(device.id for device in physical),
        "paths": join_list(container_paths),
        "count": str(len(physical)),
        "resource": resource,
    }


def hook_values(resource: str, physical: Sequence[Device]) -> dict[str, str]:
    """The templates of the preStart and allocate commands: the allocate ones (container
    paths as Allocate passes them, one per container path) plus `{hostPaths}`."""
    nodes = {n.container_path: n for device in physical for n in device.nodes}
    values = template_values(resource, physical, nodes)
    values["hostPaths"] = join_list(dict.fromkeys(n.host_path for n in nodes.values()))
    return values


def device_env(resource: str, physical: Iterable[Device]) -> dict[str, str]:
    """The devices' own env entries, distinct values joined like Allocate joins them;
    raises AllocationError like Allocate."""
    env: dict[str, str] = {}
    _merge_device_maps(resource, "env", env, ((device.id, device.env) for device in physical))
    return env


def _device_id(device: Device) -> str:
    return device.id


def _merge_device_maps(
    resource: str,
    what: str,
    target: dict[str, str],
    sources: Iterable[tuple[str, Mapping[str, str]]],
) -> None:
    """Per-device entries join the resource-level ones; configured keys win.

    When several devices set the same key, their distinct values are a list, rendered by
    rules.join_list in device order (one `FPGA_SLOT` per device becomes `FPGA_SLOT=0,1`).
    A value holding the separator could not be told apart from two values there (a USB
    serial `A,B` would name another stick's serial `B`), so such a list is refused
    (AllocationError); alone, a value is passed as it is.
    """
    collected: dict[str, dict[str, str]] = defaultdict(dict)
    for device_id, source in sources:
        for key, value in source.items():
            if key not in target:
                collected[key].setdefault(value, device_id)
    for key, values in collected.items():
        if len(values) > 1:
            for value, device_id in values.items():
                if LIST_SEPARATOR in value:
                    raise AllocationError(
                        f"{resource}: cannot allocate: {what} {key} of device {device_id} is "
                        f"{value!r}, which holds {LIST_SEPARATOR!r}: joined with the other "
                        "devices' values it would not split back into one value per device"
                    )
        target[key] = join_list(values)
