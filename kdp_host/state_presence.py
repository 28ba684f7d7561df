"""A state file written again whenever it loses what the host wrote while the host runs:
deleted (by hand, its directory emptied), replaced (a file renamed over it: a backup
restored, `{}`), truncated or rewritten in place: `release-state.json` and `handed-out.json`
(`ownership.json` has its own follower, which reads it again and writes this host's part
back: `ownership_sync`)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from .files import Offload
from .rendered_json import encoded
from .state_document import signature
from .state_file import StateFile
from .watch import Subscription, Watcher


def lost(file: StateFile) -> str | None:
    """Why `file` no longer holds what this host last wrote into it (`look`), or None."""
    return look(file)[0]


def look(file: StateFile, peers: bool = False) -> tuple[str | None, Mapping[str, Any] | None]:
    """Why `file` no longer holds what this host last wrote into it (or read from it at
    start), None when it does (or was never there); and, with `peers`, the document another
    host's write left (None: none, or this host's own write). The file as written (its
    device, inode, size and modification time: every write renames a new file into place)
    is known without a read; another is read, and holds this host's part when that part is
    as written (a shared file another host wrote since). Call it when no write of the file
    is under way (`StateFile.flush`). Blocking: O(the file) when it changed."""
    held, path = file.held, str(file.path)
    if not file.kept or held is None:  # (there: written by other hosts alone)
        return None, file.document_now() if peers and os.path.lexists(path) else None
    now = signature(path)
    if now is None and not os.path.lexists(path):
        return "deleted", None
    if now is not None and now == held[0]:
        return None, None
    aside = file.set_aside
    document = file.document_now()  # (one that cannot be read is set aside, and said so)
    if document is None:
        why = "replaced by a file that cannot be read" if file.set_aside != aside else "deleted"
        return why, None
    if encoded({"own": file.own(document)}) != encoded({"own": held[1]}):
        return "replaced or rewritten without this host's entries as written", None
    file.held = (now, held[1])  # (another host's write, with this host's part as it was)
    return None, document if peers else None


class KeptPresent:
    """Looks, once per burst of events of the file's name, whether the file still holds
    what this host wrote (`lost`), and writes `document()` again when not
    (`StateFile.write_again`: logged `<what>_lost`, not ready until written). Off the loop,
    through the host's offload."""

    def __init__(
        self,
        file: StateFile,
        document: Callable[[], Mapping[str, Any]],
        offload: Offload,
        peers: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        """`peers`: called on the loop with the file as another host wrote it (its entries
        as they are now, read once with the look)."""
        self._file, self._document, self._offload = file, document, offload
        self._peers = peers
        self._checking: asyncio.Task[None] | None = None
        self._again = False

    def follow(self, watcher: Watcher) -> Subscription:
        """From now on (cancel the returned subscription to stop)."""
        directory, name = os.path.split(self._file.path)
        return watcher.subscribe(directory, self._changed_on_disk, names=[name])

    def _changed_on_disk(self, _name: str | None) -> None:
        """A watcher callback: look soon, once per burst (an event while a look runs makes
        one more: the file may have changed after it looked)."""
        self._again = True
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(
                self._check_present(), name=self._file.path.name
            )

    async def _check_present(self) -> None:
        while self._again:
            self._again = False
            if not self._file.kept and self._peers is None:
                continue
            await self._file.flush()  # (a write under way lands first: it is what is held)
            peers = self._peers
            work = functools.partial(look, self._file, peers is not None)
            why, written = await self._offload.run(work)
            if why is not None:
                self._file.write_again(self._document, why)
            if written is not None and peers is not None:
                peers(written)
