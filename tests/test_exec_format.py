"""A program the kernel cannot exec is not startable (kdp_host/exec_format.py; issue 17,
hostile26 N4): a script saved with a UTF-8 byte order mark before its `#!` (a Windows
editor), or with no `#!` line, passed the needs' look and `kdp-host check`, the devices
stayed Healthy in the kubelet and /readyz said ok, while the exec wrapper's `sh` answered the
kernel's ENOEXEC by reading the file as a shell script and every Allocate failed with its
exit status (`1: import: not found`). The runner and the needs now share the kernel's rule:
the need is unmet (named), `check` warns, the runner refuses the spawn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kdp_host.answer_checks import command_problem
from kdp_host.cli import main
from kdp_host.exec_format import exec_format_problem
from kdp_host.process import CommandError, ProcessRunner

from .conftest import script, wait_until
from .test_answer_needs import R, _config, _devices, _file, _lines, _seen

BOM = b"\xef\xbb\xbf"
PYTHON_BOM = BOM + b"#!/usr/bin/env python3\nimport json; print(json.dumps({}))\n"
PYTHON_BARE = b"import json\nprint(json.dumps({}))\n"


async def test_hostile26_n4_a_hook_the_kernel_cannot_exec_is_unhealthy_in_the_kubelet(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python hook saved with a BOM: Unhealthy from the first list (was Healthy, every pod
    refused by `sh`'s fallback), /readyz names the command, the line names the BOM; the
    BOM taken out: Healthy, admitted; the `#!` line dropped: Unhealthy again, named."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory()
    dev, hooks = _devices(short_dir), short_dir / "hooks"
    hooks.mkdir()
    hook = hooks / "hook"
    hook.write_bytes(PYTHON_BOM)
    hook.chmod(0o755)
    running = await start_host(_config(kubelet.socket_dir, dev, f'{{command: ["{hook}"]}}'))
    await kubelet.await_for(lambda k: _seen(k, "capacity") == 2, what="registered")
    assert _seen(kubelet, "healthy") == 0
    assert "allocate.command cannot be started" in running.host.not_ready()[R]
    [line] = _lines(caplog, "answer_need_unmet")
    assert "byte order mark before its #! line" in line["reason"], line

    hook.write_bytes(PYTHON_BOM.removeprefix(BOM))
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 2, what="healthy without the BOM")
    assert (await kubelet.acall(kubelet.allocate, "p0", {R: 1}))["error"] == ""

    hook.write_bytes(PYTHON_BARE)
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 0, what="no #! line")
    await wait_until(lambda: "no #! line" in _lines(caplog, "answer_need_unmet")[-1]["reason"])


@pytest.mark.parametrize("body", [PYTHON_BOM, BOM + b"#!/bin/sh\necho {}\n", b"echo {}\n"])
async def test_the_runner_never_runs_such_a_file_as_a_shell_script(
    short_dir: Path, body: bytes
) -> None:
    """Through the exec wrapper (`/bin/sh -c 'exec "$@"'`) `sh` ran a file the kernel
    refused as a shell script (a BOM before `#!/bin/sh`, or a shell script without `#!`,
    happened to work; a Python one failed as an exit): a spawn failure now, named, with or
    without the wrapper alike."""
    path = short_dir / "hook"
    path.write_bytes(body)
    path.chmod(0o755)
    for runner in (ProcessRunner(kill_grace=0.05), ProcessRunner(die_with_host=False)):
        with pytest.raises(CommandError, match="Exec format error") as raised:
            await runner.run([str(path)], timeout=10)
        assert raised.value.reason == "spawn"


def test_the_need_names_the_slip_and_follows_interpreters(short_dir: Path) -> None:
    """The need's (and `check`'s) words: the BOM, no `#!` line, an empty file; a `#!`
    interpreter that is itself such a file; an ELF binary and a `#!` script pass."""
    path = short_dir / "hook"
    for body, why in [
        (BOM + b"#!/bin/sh\n", "UTF-8 byte order mark before its #! line"),
        (b"true\n", "no #! line and not an ELF binary"),
        (b"", "empty"),
    ]:
        path.write_bytes(body)
        path.chmod(0o755)
        assert why in (command_problem([str(path)], None) or ""), body
    interpreter = script(short_dir, "interp", "")
    Path(interpreter).write_bytes(b'exec /bin/sh "$@"\n')
    path.write_text(f"#!{interpreter}\ntrue\n")
    problem = command_problem([str(path)], None) or ""
    assert problem.startswith("its #! interpreter") and "no #! line" in problem, problem
    assert command_problem(["/bin/sh", "-c", "true"], None) is None
    assert command_problem([script(short_dir, "ok", "true\n")], None) is None


def test_kdp_host_check_warns_of_a_bom(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (short_dir / "hooks").mkdir()
    hook = short_dir / "hooks" / "hook"
    hook.write_bytes(PYTHON_BOM)
    hook.chmod(0o755)
    assert main(["check", "--config", str(_file(short_dir, f'{{command: ["{hook}"]}}'))]) == 0
    err = capsys.readouterr().err
    assert f"warning: {R}: allocate.command cannot be started" in err, err
    assert "byte order mark" in err, err


def test_a_binfmt_misc_format_is_one_the_kernel_execs(tmp_path: Path) -> None:
    """binfmt_misc's enabled entries (a magic at an offset under a mask, or an extension)
    take a file of no other format; a disabled entry, or binfmt_misc disabled, does not."""
    misc = tmp_path / "binfmt_misc"
    misc.mkdir()
    (misc / "status").write_text("enabled\n")
    (misc / "register").write_text("")
    (misc / "wasm").write_text("enabled\ninterpreter /x\nflags: \noffset 1\nmagic 61736d\n")
    (misc / "jar").write_text("enabled\ninterpreter /j\nflags: \nextension .jar\n")
    (misc / "off").write_text("disabled\ninterpreter /o\nflags: \nextension .off\n")
    files = {"a.bin": b"\x00asm\x01", "m.jar": b"PK\x03\x04", "b.off": b"x", "c.bin": b"\x00as"}
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    found = {name: exec_format_problem(str(tmp_path / name), str(misc)) for name in files}
    assert found["a.bin"] is None and found["m.jar"] is None, found
    assert found["b.off"] is not None and found["c.bin"] is not None, found
    (misc / "status").write_text("disabled\n")
    assert exec_format_problem(str(tmp_path / "a.bin"), str(misc)) is not None
