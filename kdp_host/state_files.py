"""A host's state files as its readiness and metrics show them."""

from __future__ import annotations

import functools
from collections.abc import Callable

from .metric_series import Gauge
from .state_file import StateFile


class StateFiles:
    """A host's state files, as /readyz and `kdp_state_persist_failing{file}` show them:
    while one does not hold its latest change (its writes fail, `StateFile.unwritten`) the
    host is not ready (entry `stateDir`) and the file's series is 1, from the failure that
    starts it to the write that ends it (`changed`, the host's readiness, is called then)."""

    def __init__(self, gauge: Gauge, changed: Callable[[], None]) -> None:
        self._gauge = gauge
        self._changed = changed
        self._files: list[StateFile] = []

    def add(self, *files: StateFile | None) -> None:
        for file in filter(None, files):
            self._files.append(file)
            file.on_unwritten = functools.partial(self._report, file)
            self._report(file)

    def _report(self, file: StateFile) -> None:
        self._gauge.labels(file.path.name).set(0 if file.unwritten is None else 1)
        self._changed()

    def not_ready(self) -> dict[str, str]:
        """`{"stateDir": why}` while a file is not written, else nothing."""
        unwritten = [f.unwritten for f in self._files if f.unwritten is not None]
        return {STATE_DIR: "; ".join(unwritten)} if unwritten else {}


STATE_DIR = "stateDir"
"""The /readyz entry of the state files."""
