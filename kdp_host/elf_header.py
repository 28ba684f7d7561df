"""What an ELF binary's headers say about starting it: the machine it was built for and the
loader it names (hostile28 G1).

The kernel execs an ELF file only when its class, byte order and machine are ones it runs
(the host's own, or a compat one: i386 on x86_64, arm on aarch64), else "Exec format error",
unless a binfmt_misc entry (qemu-user) takes it; a dynamically linked binary then has the
kernel load the program its PT_INTERP header names (`/lib64/ld-linux-x86-64.so.2`): missing,
"No such file or directory" names the binary, not the loader (a musl build on a glibc host).
The host's own machine is read from the running interpreter's header (`/proc/self/exe`)."""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Final

MAGIC: Final = b"\x7fELF"
_PT_LOAD: Final = 1
_PT_INTERP: Final = 3
_ET_EXEC: Final = 2
_ET_DYN: Final = 3
_TYPES: Final = {
    0: "an ELF file of no type",
    1: "an ELF object file (ET_REL: `gcc -c`'s output, not linked)",
    4: "an ELF core dump",
}
_COMPAT: Final = {62: frozenset({3}), 183: frozenset({40})}
"""Machines a host's kernel may also run: x86_64 runs i386; aarch64 may run arm (when the
CPU and kernel have AArch32): taken as runnable, the kernel decides."""
_MACHINES: Final = {
    3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "x86_64",
    183: "aarch64", 243: "riscv", 258: "loongarch",
}  # fmt: skip


@dataclass(frozen=True)
class ElfHeader:
    """The fields of an ELF file's header the kernel's exec looks at."""

    wide: bool
    """ELFCLASS64 (else 32)."""
    little: bool
    """Little-endian (ELFDATA2LSB)."""
    machine: int
    """e_machine."""
    kind: int = _ET_EXEC
    """e_type: the kernel execs ET_EXEC and ET_DYN only."""
    table: int = 0
    """e_phoff: where the program headers are."""
    entry_size: int = 0
    """e_phentsize."""
    entries: int = 0
    """e_phnum."""
    whole: bool = True
    """The header is all there (the file is not cut short inside it)."""

    @property
    def machine_name(self) -> str:
        return _MACHINES.get(self.machine, f"machine {self.machine}")

    @property
    def order(self) -> str:
        """The `struct` byte order of the file's fields."""
        return "<" if self.little else ">"


def elf_header(head: bytes) -> ElfHeader | None:
    """The header of the ELF file `head` begins (None: not ELF, or cut short before its
    machine; `whole` False: before its program header table's place)."""
    if not head.startswith(MAGIC) or len(head) < 20 or head[4] not in (1, 2):
        return None
    little, wide = head[5] == 1, head[4] == 2
    end = "<" if little else ">"
    kind, machine = struct.unpack_from(end + "HH", head, 16)
    if len(head) < (64 if wide else 52):
        return ElfHeader(wide, little, machine, kind, whole=False)
    (table,) = struct.unpack_from(end + ("Q" if wide else "I"), head, 32 if wide else 28)
    size, count = struct.unpack_from(end + "HH", head, 54 if wide else 42)
    return ElfHeader(wide, little, machine, kind, table, size, count)


def elf_shape_problem(file: BinaryIO, header: ElfHeader) -> str | None:
    """Why the kernel refuses to exec the host's own kind of ELF file `file` (ENOEXEC), or
    None: a type it does not start (`gcc -c`'s ET_REL object, a core dump), or a file cut
    short (an interrupted copy, a full disk at install): its header or program headers end
    past its end, or a segment it loads does (that one starts, then dies of SIGBUS).
    Blocking (a read of the program headers)."""
    if header.kind not in (_ET_EXEC, _ET_DYN):
        what = _TYPES.get(header.kind, f"an ELF file of type {header.kind}")
        return f"{what}, not an executable or a shared object"
    size = os.fstat(file.fileno()).st_size
    cut = f"a truncated ELF binary ({size} bytes: cut short by a copy or a full disk?)"
    if not header.whole or header.table + header.entry_size * header.entries > size:
        return cut
    segments = program_headers(file, header)
    if segments is None:
        return "a damaged ELF header (its program headers are not as the kernel reads them)"
    if any(kind == _PT_LOAD and offset + length > size for kind, offset, length in segments):
        return cut
    return None


def program_headers(file: BinaryIO, header: ElfHeader) -> list[tuple[int, int, int]] | None:
    """(p_type, p_offset, p_filesz) of each program header, as the kernel reads them: an
    entry size of its own struct, 1 to 65536 bytes of them (None: not so; those in the file
    only). Blocking."""
    size, count = header.entry_size, header.entries
    if not header.whole or size != (56 if header.wide else 32) or not 0 < size * count <= 65536:
        return None
    file.seek(header.table)
    table = file.read(size * count)
    fields = header.order + ("IxxxxQxxxxxxxxxxxxxxxxQ" if header.wide else "IIxxxxxxxxI")
    return [struct.unpack_from(fields, table, at) for at in range(0, len(table) - size + 1, size)]


@functools.cache
def host_elf() -> ElfHeader | None:
    """The running interpreter's own header: the machine this host runs (None: unreadable)."""
    try:
        with open("/proc/self/exe", "rb") as file:
            return elf_header(file.read(64))
    except OSError:
        return None


def foreign_machine(header: ElfHeader, host: ElfHeader | None) -> str | None:
    """Why the host's kernel does not run a binary with `header` natively (None: it does, or
    the host's machine is not known)."""
    if host is None or header.machine == host.machine:
        return None if host is None or header.little == host.little else _built(header, host)
    if header.machine in _COMPAT.get(host.machine, ()):
        return None
    return _built(header, host)


def _built(header: ElfHeader, host: ElfHeader) -> str:
    order = "" if header.little == host.little else "little-" if header.little else "big-"
    order += "endian " if order else ""
    return (
        f"an ELF binary built for {order}{header.machine_name} (this host runs {host.machine_name})"
    )


def elf_interpreter(path: str) -> str | None:
    """The loader the kernel loads to start the host's own kind of dynamically linked ELF
    binary (its PT_INTERP), None for a static one, another machine's (binfmt_misc's runner
    finds its loader its own way), or a file that is not ELF or cannot be read. Blocking."""
    try:
        with open(path, "rb") as file:
            header = elf_header(file.read(64))
            if header is None or foreign_machine(header, host_elf()):
                return None
            for kind, offset, length in program_headers(file, header) or ():
                if kind == _PT_INTERP:
                    file.seek(offset)
                    named = file.read(min(length, 4096)).split(b"\0", 1)[0]
                    return named.decode(errors="replace") or None
    except (OSError, struct.error, OverflowError, ValueError):
        return None
    return None
