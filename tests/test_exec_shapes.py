"""ELF and `#!` shapes the kernel refuses to exec are named as such (kdp_host/exec_format.py,
elf_header.py; issue 17, hostile29 H3): an ELF object file (ET_REL, `gcc -c`'s output), an
ELF binary cut short, a binary whose PT_INTERP names a `#!` script, and `#!` scripts naming
scripts deeper than the kernel runs. Each passed the needs' look and `kdp-host check` (the
devices Healthy, /readyz ready) while every Allocate failed with the kernel's ENOEXEC, EIO
or ELOOP; each is now an unmet need, named."""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdp_host.answer_checks import command_problem
from kdp_host.elf_header import elf_header, elf_interpreter
from kdp_host.exec_format import SCRIPT_LEVELS

from .test_answer_needs import R, _config, _devices, _lines, _seen


def _true() -> bytes:
    """This host's `true`, a dynamically linked ELF binary."""
    source = shutil.which("true")
    assert source is not None
    return Path(source).read_bytes()


def _write(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    path.chmod(0o755)
    return path


def _object_file(short_dir: Path) -> Path:
    """`true` with e_type ET_REL (what `gcc -c` makes)."""
    body = bytearray(_true())
    header = elf_header(bytes(body[:64]))
    assert header is not None
    body[16:18] = (1).to_bytes(2, "little" if header.little else "big")
    return _write(short_dir / "hook", bytes(body))


def _chain(short_dir: Path, scripts: int) -> Path:
    """`scripts` `#!` scripts in a row, the last naming /bin/sh: the first returned."""
    program = "/bin/sh"
    for level in range(scripts):
        body = f"#!{program}\n" + ("exit 0\n" if level == scripts - 1 else "")
        program = str(_write(short_dir / f"s{level}", body.encode()))
    return Path(program)


def _script_loader(short_dir: Path) -> Path:
    """`true` whose PT_INTERP names a short `#!` script that runs the real loader."""
    source = shutil.which("true") or "/bin/true"
    loader = elf_interpreter(source)
    if loader is None:
        pytest.skip(f"{source} is statically linked: no loader to name")
    script = _write(short_dir / "l", f'#!/bin/sh\nexec {loader} "$@"\n'.encode())
    assert len(str(script)) <= len(loader), (script, loader)
    named = str(script).encode().ljust(len(loader), b"\0")
    return _write(short_dir / "hook", _true().replace(loader.encode(), named, 1))


SHAPES = {
    "object_file": (_object_file, errno.ENOEXEC, "ET_REL"),
    "truncated": (
        lambda d: _write(d / "hook", _true()[:64]),
        errno.ENOEXEC,
        "a truncated ELF binary",
    ),
    "script_loader": (_script_loader, errno.EIO, "its ELF loader (PT_INTERP): a #! script"),
    "scripts_too_deep": (
        lambda d: _chain(d, SCRIPT_LEVELS + 1),
        errno.ELOOP,
        f"{SCRIPT_LEVELS + 1} #! scripts in a row",
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_shape_the_kernel_refuses_is_named(short_dir: Path, shape: str) -> None:
    """The kernel's own refusal (errno) of the file, and the need's name for it."""
    make, refused, named = SHAPES[shape]
    path = make(short_dir)
    with pytest.raises(OSError) as exec_error:
        subprocess.run([str(path)], check=False)
    assert exec_error.value.errno == refused
    problem = command_problem([str(path)], None) or ""
    assert named in problem, problem


def test_the_kernels_script_depth_is_the_rule(short_dir: Path) -> None:
    """SCRIPT_LEVELS scripts in a row run (the kernel's limit, not a margin past it), and an
    `env` program starts an exec of its own, counted afresh."""
    deepest = _chain(short_dir, SCRIPT_LEVELS)
    assert subprocess.run([str(deepest)], check=False).returncode == 0
    assert command_problem([str(deepest)], None) is None
    through_env = _write(short_dir / "e", f"#!/usr/bin/env {deepest}\n".encode())
    assert subprocess.run([str(through_env)], check=False).returncode == 0
    assert command_problem([str(through_env)], None) is None
    assert command_problem([shutil.which("true") or "true"], None) is None


async def test_hostile29_h3_an_object_file_hook_is_unhealthy_in_the_kubelet(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An `allocate.command` that is an object file: Unhealthy from the first list (was
    Healthy and ready while every Allocate failed `Exec format error`), named; a
    script in its place: Healthy, admitted."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory()
    dev, hook = _devices(short_dir), _object_file(short_dir)
    running = await start_host(_config(kubelet.socket_dir, dev, f'{{command: ["{hook}"]}}'))
    await kubelet.await_for(lambda k: _seen(k, "capacity") == 2, what="registered")
    assert _seen(kubelet, "healthy") == 0
    assert "allocate.command cannot be started" in running.host.not_ready()[R]
    [line] = _lines(caplog, "answer_need_unmet")
    assert "ET_REL" in line["reason"], line
    _write(hook, b"#!/bin/sh\necho '{}'\n")
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 2, what="healthy as a script")
    assert (await kubelet.acall(kubelet.allocate, "p0", {R: 1}))["error"] == ""
