"""The host's one command runner (`Commands`), made at the first command.

Probes, health checks, hooks and releases run their commands through a
`process.CommandRunner`. The process machinery behind it (`process.ProcessRunner`: own
process group, capped output, the death signal) is imported and made when a part of the
host runs its first command, so a run whose config runs none never loads it (start-up time
and memory, issue 19); `commands_may_outlive_host` is logged then, where commands cannot
get the death signal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .logs import EventLogger, get_logger

if TYPE_CHECKING:
    from .process import CommandResult, ProcessRunner, RunningCommand


@dataclass
class Commands:
    """A `process.CommandRunner` that makes its `ProcessRunner` at the first command."""

    log: EventLogger | None = None
    """Where `commands_may_outlive_host` goes (None: the root logger)."""
    _runner: ProcessRunner | None = field(default=None, init=False)

    @property
    def runner(self) -> ProcessRunner:
        if self._runner is None:
            from .process import ProcessRunner

            self._runner = ProcessRunner()
            if not self._runner.dies_with_host:
                why = "no setpriv (util-linux) on PATH: commands do not get the death signal"
                (self.log or get_logger()).warning("commands_may_outlive_host", detail=why)
        return self._runner

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> contextlib.AbstractAsyncContextManager[RunningCommand]:
        return self.runner.start(argv, env=env, cwd=cwd)

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_output: int | None = None,
    ) -> CommandResult:
        """`ProcessRunner.run` (`max_output` None: its default)."""
        if max_output is None:
            return await self.runner.run(argv, timeout=timeout, env=env, cwd=cwd)
        return await self.runner.run(argv, timeout=timeout, env=env, cwd=cwd, max_output=max_output)
