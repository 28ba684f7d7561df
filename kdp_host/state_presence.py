"""A state file written again whenever it goes while the host runs (deleted by hand, its
directory emptied): `release-state.json` and `handed-out.json` (`ownership.json` has its own
follower, which reads it again and writes this host's part back: `ownership_sync`)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from .files import Offload
from .state_file import StateFile
from .watch import Subscription, Watcher


class KeptPresent:
    """Looks, once per burst of events of the file's name, whether a file that was there or
    was written is missing, and writes `document()` again then (`StateFile.write_again`:
    logged `<what>_lost`, not ready until written)."""

    def __init__(
        self, file: StateFile, document: Callable[[], Mapping[str, Any]], offload: Offload
    ) -> None:
        self._file, self._document, self._offload = file, document, offload
        self._checking: asyncio.Task[None] | None = None
        self._again = False

    def follow(self, watcher: Watcher) -> Subscription:
        """From now on (cancel the returned subscription to stop)."""
        directory, name = os.path.split(self._file.path)
        return watcher.subscribe(directory, self._changed_on_disk, names=[name])

    def _changed_on_disk(self, _name: str | None) -> None:
        """A watcher callback: look soon, once per burst (an event while a look runs makes
        one more: the file may have gone after it looked)."""
        self._again = True
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(
                self._check_present(), name=self._file.path.name
            )

    async def _check_present(self) -> None:
        while self._again:
            self._again = False
            if not self._file.kept:
                continue
            exists = functools.partial(os.path.lexists, self._file.path)
            if not await self._offload.run(exists):
                self._file.write_again(self._document, "deleted")
