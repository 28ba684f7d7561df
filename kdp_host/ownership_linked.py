"""A new device whose node is a regular file of more than one link, while pods hold trees
mounted: the tree that holds its other link is read again, as for a file of more than one
link that arrived in a followed tree (`Watching._sharers_changed`, one mechanism).

A file of a tree a pod holds mounted, read when it had one link, that becomes a device's
node by a hard link made later (`ln held/x dev/n2`, then listed by a glob or a probe): the
pod reaches the device through its mount, but nothing told the index. The link changes no
time of the tree's directory, and the kernel tells a link count's change (inotify's ATTRIB)
to a watch on the file itself only, not to its directory's; so the device was advertised
Healthy (and `/readyz` 200) until its first Allocate was refused (`ownership_hand_out`
reads the held trees for a node of more than one link), and only then held (issue 17,
tidyup item 2). Now the claim made for it is looked at (one `lstat`, on the loop, for each
new regular file claimed while a pod holds a tree mounted; a device node is found by its
number in the trees' reads already): of more than one link, the held trees are read again
once, the file found there is the claim's, and the device is held (`reason=booked`) until
no pod holds that tree, within milliseconds of its listing.
"""

from __future__ import annotations

from collections.abc import Iterable

from .identity import FILE
from .ownership_claims import Claim
from .ownership_reads import LINKED, more_than_one_link
from .ownership_watching import Watching


class LinkedClaims(Watching):
    """The index's layer for claims of files of more than one link (the module's rule)."""

    def _claims_changed(self, claims: Iterable[Claim]) -> None:
        claims = list(claims)
        super()._claims_changed(claims)
        ledger = self._ledger
        if not (ledger.mounted or ledger.shared_dirs):
            return  # (no tree a pod holds: nothing to read again; `_sharers_changed`)
        files = {real: key for key, _, real in claims if key[0] == FILE}
        if files and (linked := more_than_one_link(files)):
            self._sharers_changed(((LINKED, k[1]), r) for r, k in files.items() if k in linked)
