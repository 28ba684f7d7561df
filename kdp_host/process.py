"""Running operator-supplied commands (probes, stream commands, health checks) safely.

Every command runs without a shell, in its own process group (a new session), with stdin
closed and stdout capped. When we are done with it -- it finished, it timed out, it printed
too much, or our caller was cancelled -- the whole group is signalled: SIGTERM, then SIGKILL
after a short grace, and the leader is reaped. So a probe that hangs, or that leaves a
background child behind, can neither block the event loop nor outlive its run.

The pipes of stdout and stderr are our own (not asyncio's subprocess pipes): we close our
ends when the run is over, even if a process that escaped the group (a daemon calling
setsid) still holds the other end.

On Linux the command also dies with the host, even when the host is SIGKILLed: it is started
through an exec wrapper, util-linux's `setpriv --pdeathsig KILL` (PR_SET_PDEATHSIG), then a
fixed `/bin/sh -c` line that exits unless its parent is still the host (the host may have
died before the death signal was armed) and execs the command with its arguments untouched
(`exec "$@"`: the arguments are never read by the shell). No Python code runs between fork
and exec (no `preexec_fn`, which is unsafe in a process with threads: the HTTP server and
reader threads may hold a lock the child would then wait for forever), so the spawn takes
CPython's vfork path. The wrapper is found on PATH when the runner is made; where it is
missing (not Linux, no util-linux) commands run without the death signal, and
`ProcessRunner.dies_with_host` says so (the host logs it at its first command: `commands`).
Because the wrapper execs the command, the host resolves the command on PATH first, so a missing or
non-executable command, or one the kernel cannot exec (`exec_format`: the wrapper's shell would
run it as a shell script), is still a `spawn` failure rather than an exit status.

Neither the group kill nor the death signal reaches a process that left the group and was
forked by the command (the death signal is not inherited across fork): only a cgroup could.
Grandchildren killed here are reaped by whatever is PID 1 (or the nearest child subreaper):
in a container, run the host under an init such as tini.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .exec_format import exec_format_problem
from .pipes import Pipe
from .process_group import (
    DEFAULT_KILL_GRACE,
    child_env,
    death_signal_wrapper,
    exec_failure,
    kill_if_spawned,
    kill_process_group,
)

MAX_OUTPUT = 1 << 20
"""Most stdout bytes a probe may print (and the longest document a stream command may print)."""
STDERR_KEEP = 4096
"""How much of the end of stderr is kept for the log."""
STREAM_BUFFER = 64 * 1024
"""Bytes of a command's stdout read ahead of its reader: past this the pipe fills and the
command blocks, so a command printing faster than we consume cannot grow our memory."""

_STDERR_DRAIN = 0.1
_READ_CHUNK = 65536


class CommandError(Exception):
    """A command that could not start, timed out, printed too much, or failed.

    `reason` is the metrics label: spawn, timeout, output_too_large, exit.
    """

    def __init__(self, reason: str, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.stderr = stderr


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit code and output."""

    returncode: int
    stdout: bytes
    stderr: str
    """The last STDERR_KEEP bytes of stderr, decoded leniently."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe_exit(self) -> str:
        return describe_exit(self.returncode)


def describe_exit(returncode: int) -> str:
    """`exited with status 3`, or `was killed by signal SIGSEGV` for a negative code."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"was killed by signal {name}"


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that library code swallowed.

    On Python 3.11 a cancel that lands while an awaited operation is completing can be
    dropped on the way up (the operation's result wins). A loop that runs commands for
    ever calls this once per round, so the owner's cancel always ends it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _StderrTail:
    """Drains a stderr pipe for the command's whole life (so it never blocks on a full pipe),
    keeping only the end."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe
        self._buffer = bytearray()
        self._dropped = False
        self._task = asyncio.create_task(self._drain(pipe.reader))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            self._buffer += chunk
            if len(self._buffer) > STDERR_KEEP:
                del self._buffer[: len(self._buffer) - STDERR_KEEP]
                self._dropped = True

    async def finish(self, timeout: float) -> None:
        """Wait a little for EOF (the group is dead by now), then stop reading and close."""
        try:
            await asyncio.wait({self._task}, timeout=timeout)
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ValueError):
                await self._task
        finally:
            self._pipe.close()

    def text(self) -> str:
        text = self._buffer.decode("utf-8", errors="replace").strip()
        return f"...{text}" if self._dropped and text else text


class RunningCommand:
    """A started command: its process, its stdout stream and the tail of its stderr."""

    def __init__(
        self, process: asyncio.subprocess.Process, stdout: Pipe, stderr: Pipe, program: str = ""
    ) -> None:
        self.process = process
        self.program = program
        """The executable's absolute path, as resolved for the spawn."""
        self._stdout_pipe = stdout
        self.stdout: asyncio.StreamReader = stdout.reader
        self._stderr = _StderrTail(stderr)

    def stderr_text(self) -> str:
        return self._stderr.text()

    async def _close(self, stderr_wait: float) -> None:
        self._stdout_pipe.close()
        await self._stderr.finish(stderr_wait)


def resolve_command(argv0: str, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The absolute path of the executable `argv0` names, as execvp in the command's
    working directory would find it (on the PATH of the command's environment when it has
    no `/`); raises CommandError('spawn') when there is none, or when the kernel cannot exec
    it (`exec_format`: no shell runs it as a script instead). Absolute, so the wrapper's
    `exec` can never take it for an option."""
    where = f" in {cwd}" if cwd else ""
    if "/" in argv0:
        path = os.path.abspath(os.path.join(cwd or "", argv0))
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise CommandError("spawn", f"cannot run {argv0!r}{where}: {exc.strerror}") from None
        if stat.S_ISDIR(mode) or not os.access(path, os.X_OK):
            raise CommandError("spawn", f"cannot run {argv0!r}{where}: Permission denied")
    elif (found := shutil.which(argv0, path=os.pathsep.join(search_dirs(env, cwd)))) is None:
        where = os.pathsep.join(os.get_exec_path(child_env(env)))
        raise CommandError("spawn", f"cannot run {argv0!r}: not found on PATH ({where})")
    else:
        path, where = found, f" ({found})"
    if (why := exec_format_problem(path)) is not None:
        raise CommandError("spawn", f"cannot run {argv0!r}{where}: {why}")
    return path


def search_dirs(env: Mapping[str, str] | None, cwd: str | None) -> list[str]:
    """The directories a bare command name is looked for in, in order (`resolve_command`):
    the PATH of the command's environment, each taken in its working directory."""
    return [os.path.abspath(os.path.join(cwd or "", d)) for d in os.get_exec_path(child_env(env))]


class CommandRunner(Protocol):
    """How drivers and health checks run commands (injectable: tests pass their own)."""

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> contextlib.AbstractAsyncContextManager[RunningCommand]: ...

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_output: int = MAX_OUTPUT,
    ) -> CommandResult: ...


class ProcessRunner:
    """Runs commands contained: own process group, own pipes, death signal, bounded kill."""

    def __init__(
        self,
        *,
        kill_grace: float = DEFAULT_KILL_GRACE,
        die_with_host: bool = True,
        read_ahead: int = STREAM_BUFFER,
    ) -> None:
        self.kill_grace = kill_grace
        self._read_ahead = read_ahead
        self._wrapper = death_signal_wrapper() if die_with_host else ()

    @property
    def dies_with_host(self) -> bool:
        """Whether commands get the death signal (see the module doc)."""
        return bool(self._wrapper)

    @contextlib.asynccontextmanager
    async def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> AsyncIterator[RunningCommand]:
        """Start `argv` in a new process group; on leaving the block the group is killed and
        our pipe ends are closed.

        `env` is added to the host's environment. On normal exit from the block the group
        gets SIGTERM and, after the kill grace, SIGKILL; when the caller is cancelled it gets
        SIGKILL at once. Raises CommandError('spawn').
        """
        if not argv:
            raise CommandError("spawn", "empty command")
        program = resolve_command(argv[0], env, cwd)
        command = [program, *argv[1:]]
        if self._wrapper:
            command = [*self._wrapper, str(os.getpid()), *command]
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            try:
                process = await self._spawn(command, env, cwd, out_write, err_write)
            finally:
                os.close(out_write)
                os.close(err_write)
        except OSError as exc:
            os.close(out_read)
            os.close(err_read)
            where = f" in {cwd}" if cwd else ""
            raise CommandError(
                "spawn", f"cannot run {argv[0]!r}{where}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            os.close(out_read)
            os.close(err_read)
            raise
        cancelled = False
        running: RunningCommand | None = None
        stdout: Pipe | None = None
        try:
            try:
                stdout = await Pipe.connect(out_read, self._read_ahead)
            except BaseException:
                os.close(err_read)
                raise
            stderr = await Pipe.connect(err_read, _READ_CHUNK)
            running = RunningCommand(process, stdout, stderr, program)
            yield running
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            try:
                await kill_process_group(process, 0.0 if cancelled else self.kill_grace)
            finally:
                if running is not None:
                    await running._close(0.0 if cancelled else _STDERR_DRAIN)
                elif stdout is not None:
                    stdout.close()

    async def _spawn(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdout: int,
        stderr: int,
    ) -> asyncio.subprocess.Process:
        """create_subprocess_exec, shielded from cancellation.

        Cancelling it while it is starting can hang the caller for ever (CPython gh-103847,
        gh-125502). So the spawn runs on in its own task; if we are cancelled meanwhile, we
        wait for it (milliseconds) and kill its group, or, if cancelled once more, its group
        is killed as soon as it exists.
        """
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=child_env(env),
                cwd=cwd,
                start_new_session=True,
            )
        )
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            spawn.add_done_callback(kill_if_spawned)
            with contextlib.suppress(OSError):
                await kill_process_group(await asyncio.shield(spawn), 0.0)
            raise

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_output: int = MAX_OUTPUT,
    ) -> CommandResult:
        """Run `argv` to completion within `timeout` seconds; its exit status and output.

        The command is done when it has exited and its stdout is closed. If a process it
        started keeps stdout open after it exited, that counts as a timeout: waiting for EOF
        would otherwise wait for that process. A non-zero exit is returned, not raised;
        raises CommandError for spawn, timeout and output_too_large.
        """
        failure: tuple[str, str] | None = None
        stdout: bytes | None = b""
        returncode = -1
        async with self.start(argv, env=env, cwd=cwd) as running:
            try:
                async with asyncio.timeout(timeout):
                    stdout = await _read_capped(running.stdout, max_output)
                    if stdout is not None:
                        returncode = await running.process.wait()
            except TimeoutError:
                exited = running.process.returncode
                if exited is None:
                    failure = ("timeout", f"timed out after {timeout:g}s")
                else:
                    failure = (
                        "timeout",
                        f"{describe_exit(exited)} but a process it started kept its output "
                        f"open past the {timeout:g}s timeout",
                    )
            if stdout is None:
                failure = ("output_too_large", f"printed more than {max_output} bytes")
        stderr = running.stderr_text()
        if failure is not None:
            raise CommandError(*failure, stderr=stderr)
        assert stdout is not None
        if self._wrapper and (why := exec_failure(returncode, stderr, running.program)) is not None:
            raise CommandError("spawn", f"cannot run {argv[0]!r}: {why}", stderr=stderr)
        return CommandResult(returncode, stdout, stderr)


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes | None:
    """All of `stream` up to EOF, or None as soon as it exceeds `limit` bytes."""
    data = bytearray()
    while chunk := await stream.read(_READ_CHUNK):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)
