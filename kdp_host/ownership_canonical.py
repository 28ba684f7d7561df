"""One host path per device node and mount: the real path its claim resolved.

A device's driver gives its host paths as it found them (a probe's printed link, a udev
`by-path` link, a path below a linked directory). The ownership index resolves each one for
its claim, checked here to name what the path reaches (`checked_reach`: not so through a
magic link such as `/proc/<pid>/root/...`, whose text is not where the kernel goes), and
advertises the device with those real paths (`canonical`). Every consumer takes that one
path from the snapshot: the Allocate answer, the CDI spec's entries, the hooks'
`{hostPaths}` (argv and env); a release takes the device as its Allocate handed it out. A
link re-pointed later changes nothing handed out until the index claims it anew.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .devices import Device
from .identity import UNRESOLVABLE, Identity, Uncheckable, identity_of, names_it
from .ownership_claims import NOTHING, Claims, Reached, missing, stat_real
from .rules import device_path_problem


def checked_reach(
    path: str, real_dirs: dict[str, str] | None = None
) -> Reached | Literal["unresolvable"] | None:
    """`reach` for a device's claim, whose real path is the device's one canonical host path
    (`canonical`: what every consumer hands out): the real path must name what the path
    reaches (`identity.names_it`, one stat more, only where it is not the text), else
    UNRESOLVABLE (a magic link such as `/proc/<pid>/root/...`: the device is left out), as
    is a real path that `{hostPaths}` could not list (`rules.device_path_problem`). Where
    nothing is (yet), its place (`missing`: a mount source the runtime creates is one place
    however it is spelled). A path that cannot be checked (`identity.Uncheckable`: EACCES on
    a magic link kdp-host may not read) is UNRESOLVABLE too: the device is left out."""
    try:
        found = stat_real(path, real_dirs)
        place = missing(path, real_dirs) if found is None else None
    except Uncheckable:
        return UNRESOLVABLE  # (what it reaches is not known: fail closed)
    if found is None:
        if place is not None and place[1] != path and device_path_problem(place[1]):
            return UNRESOLVABLE
        return place
    st, real = found
    if real != path and (not names_it(st, real) or device_path_problem(real)):
        return UNRESOLVABLE
    return identity_of(st), real


def strays(now: Reached | str | None, handed: Identity | None) -> bool:
    """Whether a host path handed out may reach something else now than it was handed as
    (`handed`: what it reached then, `Handed.reached`; None: not recorded): the one rule
    of a release and a preStart (`OwnershipIndex.changed_places`), of a held CDI entry
    (`cdi_spec.render_held`) and of a held device made anew (`reaches_another`). `now`,
    what it reaches (`checked_reach`, as the index resolves it): nothing there passes (what
    acts on it reaches nothing); not known strays (None: no path, no answer in time; a str:
    UNRESOLVABLE, hung); else it strays unless it is `handed` (without one, always: the
    index then asks who owns it)."""
    if now is None or isinstance(now, str):
        return True
    return now[0][0] != NOTHING and now[0] != handed


def strays_now(path: str, handed: Identity) -> bool:
    """`strays` for what `path` reaches now (`checked_reach`). Blocking: off the loop."""
    return strays(checked_reach(path), handed)


def reaches_another(path: str, handed: Identity) -> bool:
    """Whether `path` reaches another node or file now than it was handed out with
    (`handed`): something found there (`checked_reach`) that strays (`strays`): made anew
    at that path (hostile14 N3: a driver reloaded with another number; the held-missing
    check's `replaced`, `held_replaced`). Nothing there is not (gone: `strays` passes it),
    nor what is not known (hung, unresolvable: `strays` fails closed for what acts on the
    path, but a pod is not called without its device on that). Blocking: off the loop."""
    now = checked_reach(path)
    return now is not None and not isinstance(now, str) and strays(now, handed)


def canonical(device: Device, claims: Claims) -> Device:
    """The device with each node's and mount's host path replaced by the real path its claim
    resolved (`checked_reach`): the one host path every consumer takes (the Allocate answer,
    the CDI spec, the hooks' `{hostPaths}`), so a link re-pointed later changes nothing
    handed out until the index claims it anew. Container paths stay as given; a device
    without such a path is itself (no copy)."""
    if not claims.renamed:
        return device
    real = dict(claims.renamed)
    nodes = tuple(
        dataclasses.replace(n, host_path=real[n.host_path]) if n.host_path in real else n
        for n in device.nodes
    )
    mounts = tuple(
        dataclasses.replace(m, host_path=real[m.host_path]) if m.host_path in real else m
        for m in device.mounts
    )
    d = device
    return Device(
        d.id, d.healthy, nodes, d.numa, d.env, mounts, d.annotations, d.path, d.sysfs_path
    )
