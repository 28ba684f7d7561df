"""The `shell` driver: an operator's command prints the device list.

Output formats are parsed in `command_output.py`. Two modes: `poll` runs the command every
interval; `stream` keeps one command running and applies every complete list it prints
(read by `stream.py`, at a bounded rate), restarting it with backoff when it exits.

A failed run (spawn error, non-zero exit, timeout, too much output, output that does not
parse, a stream command exiting) is reported as a failure; what follows (keep the last good
list, degrade after `failureThreshold`) is the reporter's business, not this driver's.
"""

from __future__ import annotations

import asyncio

from ..backoff import Retries, Retry
from ..command_output import ENTRIES_PER_TURN, ProbeOutputError, Recall, parse_in_turns
from ..config import ShellDriverConfig
from ..device_changes import Derived, derive
from ..devices import Device
from ..process import MAX_OUTPUT, CommandError, RunningCommand, describe_exit, raise_if_cancelling
from ..turns import TURN_BUDGET, Pace, in_turns
from .base import DriverDeps, DriverError, Notifier
from .rate_limit import RateLimit
from .stream import STREAM_BURST, STREAM_RATE, DocumentReader, NoFirstList, first_document

STREAM_RESTARTS = Retry(first=0.5, maximum=30.0, stable=60.0)
"""A stream command that exited restarts after 0.5 s, doubling up to 30 s while it keeps
exiting; one that ran a minute before exiting restarts after the first delay again."""


def command_failure(exc: CommandError) -> DriverError:
    """The driver's view of a command that failed (its stderr tail goes to the log)."""
    return DriverError(exc.reason, str(exc), exc.stderr)


class ShellDriver:
    """Devices from an operator's command, polled or streamed (see the module docstring)."""

    def __init__(
        self,
        config: ShellDriverConfig,
        deps: DriverDeps,
        *,
        restarts: Retry = STREAM_RESTARTS,
        max_output: int = MAX_OUTPUT,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self._config = config
        self._deps = deps
        self._restarts = restarts
        self._max_output = max_output
        self._rate_limit = rate_limit or RateLimit(deps.clock, STREAM_RATE, STREAM_BURST)
        self._recall = Recall()
        self._listed: Derived | None = None
        """The last list this driver made (`_list`): the base of the next."""

    async def scan(self) -> list[Device]:
        """Run the command once; in stream mode, take its first complete list and stop it."""
        try:
            if self._config.mode == "stream":
                return await self._scan_stream()
            return await self._probe()
        except CommandError as exc:
            raise command_failure(exc) from None

    async def run(self, notifier: Notifier) -> None:
        if self._config.mode == "stream":
            await self._run_stream(notifier)
        else:
            await self._run_poll(notifier)

    async def _probe(self) -> list[Device]:
        config = self._config
        result = await self._deps.commands.run(
            config.command,
            timeout=config.timeout,
            env=config.env,
            cwd=config.working_dir,
            max_output=self._max_output,
        )
        if not result.ok:
            raise DriverError("exit", f"probe {result.describe_exit()}", result.stderr)
        return await self._parse(result.stdout)

    async def _run_poll(self, notifier: Notifier) -> None:
        """Probe every interval, measured from the start of one run to the next: a probe that
        hangs delays the next one by its timeout (plus the kill grace) at most. The next run
        also waits until the host has taken the last list (`Notifier.taken`): a probe whose
        lists take longer to admit than its interval (12,000 devices renamed every 200 ms)
        never has a list parsed only to be replaced before it is admitted."""
        clock = self._deps.clock
        while True:
            started = clock()
            try:
                devices = await self._probe()
            except CommandError as exc:
                notifier.failure(command_failure(exc))
            except DriverError as exc:
                notifier.failure(exc)
            else:
                notifier.update(await self._list(devices))
            notifier.scanned(clock() - started)
            raise_if_cancelling()
            await notifier.taken()
            await asyncio.sleep(max(0.0, started + self._config.interval - clock()))

    async def _run_stream(self, notifier: Notifier) -> None:
        restarts = Retries(self._restarts, self._deps.clock)
        while True:
            restarts.started()
            try:
                error = await self._stream_once(notifier)
            except CommandError as exc:
                error = command_failure(exc)
            except DriverError as exc:
                error = exc
            notifier.failure(error)
            delay = restarts.failed()
            self._deps.log.debug("stream_restart_scheduled", delay=delay)
            raise_if_cancelling()
            await asyncio.sleep(delay)

    async def _stream_once(self, notifier: Notifier) -> DriverError:
        """Run the stream command until it exits; returns the failure its exit counts as."""
        config = self._config
        async with self._deps.commands.start(
            config.command, env=config.env, cwd=config.working_dir
        ) as running:
            reader = DocumentReader(running.stdout, config.format, self._max_output)
            try:
                document = await first_document(reader, running, config.timeout)
            except NoFirstList as exc:
                notifier.failure(exc)
                document = await reader.next()
            while document is not None:
                document = await self._apply(document, reader, notifier)
            message = await self._wait_exit(running)
        return DriverError("exit", f"stream command {message}", running.stderr_text())

    async def _apply(
        self, document: bytes, reader: DocumentReader, notifier: Notifier
    ) -> bytes | None:
        """Apply `document` (or a newer one, if the rate limit made us wait); the next one."""
        wait = self._rate_limit.delay()
        if wait > 0:
            # Not reading meanwhile: a flooding command blocks on its full pipe.
            await asyncio.sleep(wait)
            newer, older = reader.take_newest()
            if newer is not None:
                document = newer
                notifier.rate_limited(older + 1)
        self._rate_limit.take()
        try:
            devices = await self._parse(document)
        except DriverError as exc:
            notifier.failure(exc)
        else:
            notifier.update(await self._list(devices))
        return await reader.next()

    async def _wait_exit(self, running: RunningCommand) -> str:
        try:
            async with asyncio.timeout(self._config.timeout):
                returncode = await running.process.wait()
        except TimeoutError:
            return "closed its output but did not exit"
        return describe_exit(returncode)

    async def _scan_stream(self) -> list[Device]:
        config = self._config
        async with self._deps.commands.start(
            config.command, env=config.env, cwd=config.working_dir
        ) as running:
            reader = DocumentReader(running.stdout, config.format, self._max_output)
            document = await first_document(reader, running, config.timeout)
            if document is None:
                exit_text = await self._wait_exit(running)
        if document is None:
            raise DriverError(
                "exit",
                f"stream command {exit_text} before printing a complete device list",
                running.stderr_text(),
            )
        return await self._parse(document)

    async def _list(self, devices: list[Device]) -> Derived:
        """`devices` as a list made from the last one (`device_changes.derive`, in turns of
        the loop): the reporter, the ownership index and the table then look at the entries
        that changed, not at every device of a long probe list each run (issue 19)."""
        pace = Pace(ENTRIES_PER_TURN, TURN_BUDGET)
        listed = self._listed = await in_turns(derive(self._listed, devices, pace))
        return listed

    async def _parse(self, output: bytes) -> list[Device]:
        try:
            return await parse_in_turns(
                output, self._config.format, self._recall, self._deps.offload
            )
        except ProbeOutputError as exc:
            raise DriverError("parse", f"output does not parse: {exc}") from None
