"""What the kubelet's checkpoint hands out, as claims (split from `kubelet_checkpoint`, which
reads and checks the file): each allocation's host paths, its CDI names resolved through the
runtime's spec files (`cdi_lookup`), each with the claim the ownership index books.

A CDI name hands out what the runtime resolves it to when it makes the container: a node's
host path (what it reaches, by `ownership_claims.claim_of`), a node given by number (the
runtime makes it from the numbers whatever is at its path: claimed by that number, as a
node's identity is), a host path with glob characters as every node it matches now (a
node it matches later is booked when it appears: `cdi_spec_looks` follows its dir)
(hostile28 G9).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace

from .cdi_lookup import CdiNames
from .files import FileReadError, read_attribute
from .kubelet_checkpoint import (
    CHECKPOINT_FILE,
    MAX_CHECKPOINT_BYTES,
    CheckpointError,
    Handed,
    HandedClaims,
    parse_checkpoint,
)
from .ownership_claims import Claim, Resolver, claim_of, reach


def read_handed(
    directory: str,
    resources: Collection[str] | None,
    resolve: Resolver = reach,
    skip: Collection[str] = (),
    cdi: CdiNames | None = None,
    keep: Callable[[Handed], bool] | None = None,
) -> list[HandedClaims] | None:
    """The allocations of `resources` (None: every one) but those of `skip` (and those
    `keep` refuses) in `<directory>/kubelet_internal_checkpoint`, each with the claims of its
    host paths (each path resolved once), its CDI names' host paths among them (through
    `cdi`: `with_cdi_paths`); None when there is no such file. Blocking (run it through the
    offload). Raises CheckpointError."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    try:
        blob = read_attribute(path, MAX_CHECKPOINT_BYTES)
    except FileReadError as exc:
        raise CheckpointError(str(exc)) from None
    if blob is None:
        return None
    wanted = None if resources is None else set(resources)
    parsed = parse_checkpoint(blob, wanted, skip)
    kept = parsed if keep is None else [entry for entry in parsed if keep(entry)]
    return with_claims(with_cdi_paths(kept, cdi), resolve)


def with_claims(handed: Iterable[Handed], resolve: Resolver = reach) -> list[HandedClaims]:
    """Each allocation with the claims of its host paths (each path resolved once) and of
    the nodes its CDI names give by number (by that number, as a node's identity): what
    booking it holds. Blocking (run it through the offload)."""
    out = []
    known: dict[str, Claim] = {}
    for entry in handed:
        claims = []
        for host_path in entry.paths:
            claim = known.get(host_path)
            if claim is None:
                claim = known[host_path] = claim_of(host_path, resolve)
            claims.append(claim)
        claims += (((n.kind, n.rdev), n.text, n.text) for n in entry.numbered)
        out.append(HandedClaims(entry, tuple(claims)))
    return out


def with_cdi_paths(handed: list[Handed], cdi: CdiNames | None) -> list[Handed]:
    """Each allocation with the host paths its CDI names hand out now (`cdi_lookup`, the
    dirs looked at once: deviceNodes beside its DeviceSpecs' nodes, a wildcard as every
    node it matches now, mounts after its mounts; nodes given by number in `numbered`),
    and those that resolve nowhere (all of them without `cdi`). Blocking."""
    named = [entry for entry in handed if entry.cdi_names]
    if not named:
        return handed
    if cdi is not None:
        cdi.look()
    return [_resolved(entry, cdi) if entry.cdi_names else entry for entry in handed]


def _resolved(handed: Handed, cdi: CdiNames | None) -> Handed:
    if cdi is None:
        unresolved = tuple((name, "no CDI dirs to look in") for name in handed.cdi_names)
        return replace(handed, unresolved=unresolved)
    found = cdi.resolve(handed.cdi_names, look=False)
    nodes, mounts = handed.paths[: handed.nodes], handed.paths[handed.nodes :]
    new_nodes = tuple(p for p in found.edits.nodes if p not in nodes)
    mounts = (*mounts, *(p for p in found.edits.mounts if p not in mounts and p not in nodes))
    paths = (*nodes, *new_nodes, *mounts)
    count = len(nodes) + len(new_nodes)
    numbered = found.edits.numbers
    return replace(handed, paths=paths, nodes=count, unresolved=found.unresolved, numbered=numbered)
