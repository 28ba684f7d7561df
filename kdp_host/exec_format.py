"""Whether the kernel can exec a file: the one rule of what a program the host runs must be
(issue 17, hostile26 N4).

`execve` starts a file only in a format the kernel knows: an ELF binary (`\\x7fELF`), a
script whose first two bytes are `#!` (binfmt_script), or a format registered with
binfmt_misc (a magic at an offset, or a name's extension: a foreign architecture's binaries
through qemu, a `.jar`). Anything else fails with ENOEXEC ("Exec format error"): a script
saved by a Windows editor with a UTF-8 byte order mark before its `#!` (the kernel reads
`\\xef\\xbb\\xbf#!`, not `#!`), or one with no `#!` line at all. A shell, and glibc's execvp,
then run the file as a shell script instead ("as if" it were one: POSIX), which is how such a
command used to reach the exec wrapper's `sh` and fail at every run (`1: import: not found`)
while the needs' look said it could start. kdp-host takes the kernel's answer: such a program
is not startable (`process.resolve_command`, which the runner and the needs' look share), so
a shell script without `#!` is refused too, with or without the exec wrapper (without it,
Python's spawn never had the fallback). Give it a `#!/bin/sh` line, or run it as
`["/bin/sh", "script"]`.

An ELF file is taken as the kernel's `load_elf_binary` takes it: of its machine (or one it
runs besides), of type ET_EXEC or ET_DYN (not `gcc -c`'s object file), not cut short
(`elf_header.elf_shape_problem`); the loader it names an ELF file too, never a script
(`loader_problem`); and `#!` scripts naming scripts no more than SCRIPT_LEVELS deep
(`script_depth_problem`; hostile29 H3). Each is named as such.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Final

from .elf_header import MAGIC, elf_header, elf_shape_problem, foreign_machine, host_elf

HEAD: Final = 256
"""Bytes of a file the kernel reads to tell its format (BINPRM_BUF_SIZE)."""
SCRIPT_LEVELS: Final = 5
"""`#!` scripts one exec runs in a row (a script whose interpreter is a script, ...): Linux's
exec_binprm gives up past 5 format rewrites (`depth > 5`: ELOOP, "Too many levels of
symbolic links"); measured: 5 scripts run, 6 fail."""
INTERPRETER_DEPTH: Final = SCRIPT_LEVELS + 1
"""Interpreters the kernel starts for one exec: a `#!` interpreter per script, then the
loader the ELF binary at the end names (PT_INTERP; the kernel follows no loader's own)."""
BINFMT_MISC: Final = "/proc/sys/fs/binfmt_misc"
_BOM: Final = b"\xef\xbb\xbf"
_NOT_ENTRIES: Final = frozenset({"register", "status"})


def exec_format_problem(path: str, binfmt_misc: str = BINFMT_MISC) -> str | None:
    """Why the kernel's exec of the file at `path` fails with ENOEXEC (in words, naming the
    slip that made it), or None: a known format, or the file cannot be read (exec may still
    run an ELF binary it may not read; the kernel decides). Blocking (a read of `HEAD`
    bytes; binfmt_misc's entries only for a file of no other known format)."""
    try:
        with open(path, "rb") as file:
            head = file.read(HEAD)
            why = _elf_problem(file, head) if head.startswith(MAGIC) else None
    except OSError:
        return None
    if head.startswith(MAGIC):
        if why is None or _misc_format(path, head, binfmt_misc):
            return None
        return f"{why}: the kernel cannot exec it (Exec format error)"
    script = head.startswith(b"#!")
    if script and head[2:].split(b"\n", 1)[0].strip(b" \t"):
        return None
    if _misc_format(path, head, binfmt_misc):
        return None
    if script:
        return "a #! line naming no interpreter: the kernel cannot exec it (Exec format error)"
    if head.startswith(_BOM + b"#!"):
        return (
            "a UTF-8 byte order mark before its #! line (saved by a Windows editor?): the "
            "kernel sees no #! (Exec format error); save it without the BOM"
        )
    what = "empty" if not head else "no #! line and not an ELF binary"
    return (
        f"{what}: the kernel cannot exec it (Exec format error); kdp-host runs no file as a "
        "shell script without a #! line: add one (#!/bin/sh)"
    )


def _elf_problem(file: BinaryIO, head: bytes) -> str | None:
    """Why the kernel does not exec the ELF file `file` beginning `head` (ENOEXEC), or None.
    Blocking (`elf_shape_problem`)."""
    header = elf_header(head)
    if header is None:
        return "a damaged ELF header"
    foreign = foreign_machine(header, host_elf())
    return foreign if foreign is not None else elf_shape_problem(file, header)


def loader_problem(path: str) -> str | None:
    """Why the kernel cannot load the file at `path` as an ELF binary's loader (the program
    its PT_INTERP names), or None: it reads the loader as an ELF file of its own machine
    only, never as a `#!` script nor through binfmt_misc (a loader shorter than an ELF
    header: EIO; another: ELIBBAD). Blocking."""
    try:
        with open(path, "rb") as file:
            head = file.read(HEAD)
            why = _elf_problem(file, head) if head.startswith(MAGIC) else None
    except OSError:
        return None  # (the exec says why; `resolve_command` looked)
    if head.startswith(MAGIC):
        return None if why is None else f"{why}: the kernel cannot load it (Exec format error)"
    what = "a #! script" if head.startswith(b"#!") else "not an ELF file"
    error = "Input/output error" if len(head) < 64 else "Accessing a corrupted shared library"
    return f"{what}: the kernel loads only an ELF file as a binary's loader ({error})"


def script_depth_problem(scripts: int) -> str | None:
    """Why the kernel refuses an exec whose file is a `#!` script naming a script as its
    interpreter, and so on, `scripts` scripts in all (ELOOP), or None (SCRIPT_LEVELS or
    fewer). `#!/usr/bin/env X` starts X by an exec of its own, which counts afresh."""
    if scripts <= SCRIPT_LEVELS:
        return None
    return (
        f"{scripts} #! scripts in a row, each the interpreter of the one before: the kernel "
        f"runs at most {SCRIPT_LEVELS} (Too many levels of symbolic links)"
    )


def _misc_format(path: str, head: bytes, binfmt_misc: str) -> bool:
    """Whether an enabled binfmt_misc entry takes the file (its magic at its offset, with
    its mask; or its name's extension). Blocking."""
    try:
        with open(os.path.join(binfmt_misc, "status")) as status:
            if status.read().strip() != "enabled":
                return False
        names = [name for name in os.listdir(binfmt_misc) if name not in _NOT_ENTRIES]
    except OSError:
        return False
    base = os.path.basename(path)
    extension = base.rpartition(".")[2] if "." in base else None
    for name in names:
        try:
            with open(os.path.join(binfmt_misc, name)) as entry:
                fields = dict(_field(line) for line in entry.read().splitlines())
        except OSError:
            continue
        if "enabled" not in fields:
            continue
        if "extension" in fields:
            if fields["extension"].lstrip(".") == extension:
                return True
        elif "magic" in fields and _matches(head, fields):
            return True
    return False


def _field(line: str) -> tuple[str, str]:
    name, _, value = line.strip().partition(" ")
    return name.rstrip(":"), value.strip()


def _matches(head: bytes, fields: dict[str, str]) -> bool:
    """binfmt_misc's test: each byte of `head` at the offset, masked, equals the magic's."""
    try:
        magic = bytes.fromhex(fields["magic"])
        mask = bytes.fromhex(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
        offset = int(fields.get("offset", "0"))
    except ValueError:
        return False
    got = head[offset : offset + len(magic)]
    return len(got) == len(magic) and all(
        (g ^ m) & k == 0 for g, m, k in zip(got, magic, mask, strict=False)
    )
