"""The host's one command runner (`commands.Commands`): the process machinery is made at
the first command, and says then when commands cannot get the death signal."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdp_host.commands import Commands
from kdp_host.logs import get_logger


async def test_the_first_command_makes_the_runner_and_warns_without_setpriv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No setpriv on PATH: nothing is said until a command runs; the first one runs (without
    the death signal) and `commands_may_outlive_host` is logged once; the next ones reuse
    the runner."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no setpriv (the commands are absolute)
    commands = Commands(get_logger())

    def warnings() -> int:
        return sum(r.getMessage() == "commands_may_outlive_host" for r in caplog.records)

    with caplog.at_level("WARNING", logger="kdp_host"):
        assert warnings() == 0
        result = await commands.run(["/bin/sh", "-c", "echo one"], timeout=30)
        assert (result.returncode, result.stdout) == (0, b"one\n")
        assert not commands.runner.dies_with_host
        async with commands.start(["/bin/sh", "-c", "echo two"]) as running:
            assert await running.stdout.read() == b"two\n"
        assert warnings() == 1
