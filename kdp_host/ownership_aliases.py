"""Which claim a path names when what it reaches has changed: the claim table's index of the
paths each claim was made through.

A path where nothing is is claimed by its text (`ownership_claims.NOTHING`), another key than
the identity it had (`identity`: a file's inode, a device node's number). Why a path still
has to clash with that identity: what a path reaches can change while a claim made through
it is held. A node removed while its device is advertised (or its claim lingers: a pod may
still hold it) leaves that claim in the table under the node's identity; a device whose list
still names the path (made before the node went, or a probe that prints it) resolves it to
nothing and claims its text. The path is the same, and a node that comes back there is what
both devices would hand out: so the text claim clashes with the key the path was last
claimed under, while a claim of that key is held. The other way round, a device that claims
a path where nothing is yet hands out whatever appears there: a claim of a node that appears
at that path clashes with the claim by text (until its device claims the path anew, or lets
go of it). Two identities at one path (a file made anew while the old one is held) stay two
claims. A node's claim of the host path it is handed out at where kdp-host sees it elsewhere
(`ownership_claims.PLACE`) is a claim by text too: it clashes with the claim of whatever
another device finds at that path, and a claim by text of that path (hostile10 L4). A
sysfs device's claim of itself is the same, within its kind: by its directory's
inode, by its text once the directory is gone (`ownership_claims.sysfs_claim`). The table
asks `PathAliases.of` for each claim it checks (`ClaimTable._conflict`), and tells it every
claim made (`enter`) and every key gone (`leave`). The paths are indexed from the first
claim by text on (a host where every path reaches something pays nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from .ownership_claims import NOTHING, PLACE, SYSFS, Claim, ClaimKey

ALIASED = frozenset((NOTHING, SYSFS, PLACE))
"""The claim kinds that may name another claim of the table by their text (`PathAliases.of`)."""


@dataclass
class PathAliases:
    """The key each path was last claimed under (not by text), and the claims by text."""

    named: dict[str, ClaimKey] | None = None
    """Host path (normalised) and real path -> the key of the claim last made through it
    that is not by text, while that key is in the table; kept from the first claim by text
    that is checked on (None before)."""
    names: dict[ClaimKey, tuple[str, ...]] = field(default_factory=dict)
    """Key -> the paths `named` gives it under (dropped with the key)."""
    texts: set[ClaimKey] = field(default_factory=set)
    """The claims by text (`by_text`) the table holds."""

    def of(
        self,
        claim: Claim,
        exclusive: Container[ClaimKey],
        shared: Container[ClaimKey],
        made: Callable[[], Iterable[Claim]],
    ) -> ClaimKey | None:
        """The other claim of the table (`exclusive`, `shared`: its keys; `made`: its
        claims, read once to index them) that a claim's path names: for a claim by text,
        the key that path was last claimed under (if its claim is held); for any other
        claim, the claim by text of its real path or its host path, if one is held."""
        key, path, real = claim
        sysfs = key[0] == SYSFS
        if by_text(key):
            if self.named is None:
                self.named = {}
                for made_claim in made():
                    self._name(made_claim)
            named = self.named.get(real)
            if named is None or named == key or (named[0] == SYSFS) != sysfs:
                return None
            return named
        if not self.texts:
            return None
        for name in (real,) if path is real else (real, os.path.normpath(path)):
            for kind in (SYSFS,) if sysfs else (NOTHING, PLACE):
                if (text := (kind, name)) in exclusive or text in shared:
                    return text
        return None

    def enter(self, claim: Claim) -> None:
        """A claim is made: a claim by text is noted, any other names its key (`_name`)."""
        if by_text(claim[0]):
            self.texts.add(claim[0])
        else:
            self._name(claim)

    def _name(self, claim: Claim) -> None:
        """Its paths name the key of a claim not by text (the last claim through a path
        names it), once paths are indexed."""
        key, path, real = claim
        named = self.named
        if named is None or by_text(key):
            return
        names = self.names.get(key, ())
        for name in (real,) if path is real or path == real else (real, os.path.normpath(path)):
            named[name] = key
            if name not in names:
                names = (*names, name)
        self.names[key] = names

    def leave(self, key: ClaimKey) -> None:
        """A key is gone from the table: its claim by text, or its names, go too."""
        if by_text(key):
            self.texts.discard(key)
            return
        named = self.named
        for name in self.names.pop(key, ()):
            if named is not None and named.get(name) == key:
                del named[name]


def by_text(key: ClaimKey) -> bool:
    """Whether a claim is by text: a path where nothing is, a host path a node is handed out
    at (`ownership_claims.PLACE`), or a sysfs device whose directory is gone
    (`ownership_claims.sysfs_claim`: its text, not its inode)."""
    return key[0] in (NOTHING, PLACE) or (key[0] == SYSFS and isinstance(key[1], str))
