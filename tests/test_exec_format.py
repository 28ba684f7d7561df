"""A program the kernel cannot exec is not startable (kdp_host/exec_format.py; issue 17,
hostile26 N4): a script saved with a UTF-8 byte order mark before its `#!` (a Windows
editor), or with no `#!` line, passed the needs' look and `kdp-host check`, the devices
stayed Healthy in the kubelet and /readyz said ok, while the exec wrapper's `sh` answered the
kernel's ENOEXEC by reading the file as a shell script and every Allocate failed with its
exit status (`1: import: not found`). The runner and the needs now share the kernel's rule:
the need is unmet (named), `check` warns, the runner refuses the spawn."""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdp_host.answer_checks import command_problem
from kdp_host.cli import main
from kdp_host.elf_header import elf_header, elf_interpreter
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
        (b"#!\nimport json\n", "a #! line naming no interpreter"),
        (b"#! \t\nimport json\n", "a #! line naming no interpreter"),
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


def _elf_copy(short_dir: Path, how: str) -> Path:
    """A copy of this host's `true` built for another machine (e_machine patched: `arch`),
    or naming a loader the host lacks (PT_INTERP's last byte changed: `loader`, a binary
    built against musl on a glibc host): both exec'd by nothing but the kernel's refusal
    (hostile28 G1)."""
    source = shutil.which("true")
    assert source is not None
    body = bytearray(Path(source).read_bytes())
    host = elf_header(bytes(body[:64]))
    assert host is not None
    if how == "arch":
        other = 183 if host.machine != 183 else 62
        body[18:20] = other.to_bytes(2, "little" if host.little else "big")
    else:
        loader = elf_interpreter(source)
        if loader is None:
            pytest.skip(f"{source} is statically linked: no loader to name")
        at = body.index(loader.encode() + b"\0")
        body[at + len(loader) - 1] ^= 0x01
    path = short_dir / f"hook-{how}"
    path.write_bytes(bytes(body))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("how", ["arch", "loader"])
def test_an_elf_binary_the_kernel_cannot_start_is_named(short_dir: Path, how: str) -> None:
    """An ELF binary for another machine: ENOEXEC; one naming a loader the host lacks:
    ENOENT naming the binary. Both passed as startable (an ELF header was enough); the need
    now names the machine, or the loader (followed: `reached` has its path)."""
    path = _elf_copy(short_dir, how)
    with pytest.raises(OSError) as refused:
        subprocess.run([str(path)], check=False)
    assert refused.value.errno == (errno.ENOEXEC if how == "arch" else errno.ENOENT)
    reached: set[str] = set()
    problem = command_problem([str(path)], None, reached) or ""
    if how == "arch":
        assert "an ELF binary built for" in problem and "Exec format error" in problem, problem
    else:
        loader = elf_interpreter(str(path))
        assert loader is not None and loader in reached, reached
        assert problem.startswith("its ELF loader (PT_INTERP)"), problem
        assert "No such file or directory" in problem, problem
    assert command_problem([shutil.which("true") or "true"], None) is None


async def test_hostile28_g1_an_elf_hook_for_another_machine_is_unhealthy_in_the_kubelet(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """An `allocate.command` built for another machine: Unhealthy from the first list (was
    Healthy and ready while every Allocate failed `Exec format error`); the host's own
    build put in its place: Healthy, admitted."""
    kubelet = real_kubelet_factory()
    dev, hook = _devices(short_dir), _elf_copy(short_dir, "arch")
    running = await start_host(_config(kubelet.socket_dir, dev, f'{{command: ["{hook}"]}}'))
    await kubelet.await_for(lambda k: _seen(k, "capacity") == 2, what="registered")
    assert _seen(kubelet, "healthy") == 0
    assert "allocate.command cannot be started" in running.host.not_ready()[R]
    shutil.copy(shutil.which("true") or "/bin/true", hook)
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 2, what="healthy as a host build")
